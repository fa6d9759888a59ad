"""SIP peers for the integration tests, over real sockets: ``UdpEndpoint``; over
TCP ``TcpEndpoint`` (a client connection) and ``TcpServerEndpoint`` (a listener),
both framing the stream by Content-Length (``StreamFramer``); ``RawCallee`` (a
threaded callee on UDP or TCP, IPv4 or IPv6, whose ``CalleeBehaviour`` each test
sets); ``options_ping``, ``tcp_exchange``; ``statuses``.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from common import LOCALHOST, LOCALHOST6, Address, Transport, family, hostport
from sipmsg import SipMessage, build_request, build_response, new_tag, via_branch

# --------------------------------------------------------------------------- raw UDP and TCP


@dataclass
class Received:
    at: float
    msg: SipMessage
    addr: Address


class _Receiver:
    """``recv_until`` and ``collect`` on top of a ``recv(timeout)``."""

    def recv(self, timeout: float) -> Received | None:
        raise NotImplementedError

    def recv_until(
        self, pred: Callable[[SipMessage], bool], timeout: float, seen: list[Received] | None = None
    ) -> Received | None:
        """Receive until ``pred`` holds (None on timeout); every message goes to ``seen``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is None:
                return None
            if seen is not None:
                seen.append(got)
            if pred(got.msg):
                return got
        return None

    def collect(self, duration: float) -> list[Received]:
        out: list[Received] = []
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is None:
                break
            out.append(got)
        return out


class UdpEndpoint(_Receiver):
    """A UDP socket that speaks SIP messages (one per datagram); IPv4 or IPv6
    after ``host``."""

    def __init__(self, host: str = LOCALHOST, port: int = 0) -> None:
        self.sock = socket.socket(family(host), socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        bound_host, bound_port = self.sock.getsockname()[:2]
        self.local: Address = (bound_host, bound_port)

    @property
    def address(self) -> Address:
        """Where the socket is bound (still known once it is closed)."""
        return self.local

    @property
    def sent_by(self) -> str:
        return hostport(*self.address)

    def send(self, data: bytes, dest: Address) -> None:
        self.sock.sendto(data, dest)

    def recv(self, timeout: float) -> Received | None:
        """The next datagram that parses as SIP, or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            with contextlib.suppress(ValueError):
                return Received(time.monotonic(), SipMessage.parse(data), addr[:2])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamFramer:
    """Splits a SIP byte stream (TCP) into messages by Content-Length (RFC 3261
    18.3); CRLF keep-alives between messages are skipped."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[SipMessage]:
        self.buf += data
        out: list[SipMessage] = []
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            head, found, rest = self.buf.partition(b"\r\n\r\n")
            if not found:
                return out
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(rest) < length:
                return out
            with contextlib.suppress(ValueError):
                out.append(SipMessage.parse(head + b"\r\n\r\n" + rest[:length]))
            self.buf = rest[length:]


class TcpEndpoint(_Receiver):
    """A TCP client connection that speaks SIP; ``closed_at`` records when the
    peer closed it (``recv`` saw EOF)."""

    def __init__(self, dest: Address, timeout: float = 2.0, source: str | None = None) -> None:
        """``source``: the local address to connect from (127.0.0.2, ...)."""
        self.sock = socket.create_connection(
            dest, timeout=timeout, source_address=(source, 0) if source else None)
        self.sock.setblocking(False)
        self.peer: Address = (dest[0], dest[1])
        self.framer = StreamFramer()
        self.queue: list[Received] = []
        self.late: list[Received] = []
        self.closed_at: float | None = None
        host, port = self.sock.getsockname()[:2]
        self.local: Address = (host, port)

    @property
    def address(self) -> Address:
        """Our end of the connection (still known once it is closed)."""
        return self.local

    @property
    def sent_by(self) -> str:
        return hostport(*self.address)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> Received | None:
        """The next message on the connection; None after ``timeout`` s or at EOF."""
        deadline = time.monotonic() + timeout
        while not self.queue:
            left = deadline - time.monotonic()
            if self.closed_at is not None or left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            try:
                chunk = self.sock.recv(65535)
            except BlockingIOError:
                continue
            except OSError:  # reset by the peer: closed all the same
                chunk = b""
            now = time.monotonic()
            if not chunk:
                self.closed_at = now
                return None
            self.queue += [Received(now, m, self.peer) for m in self.framer.feed(chunk)]
        return self.queue.pop(0)

    def wait_closed(self, timeout: float) -> float | None:
        """When the peer closed the connection (time.monotonic()), or None if it
        is still open after ``timeout`` s; messages read meanwhile go to ``late``."""
        deadline = time.monotonic() + timeout
        while self.closed_at is None and (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is not None:
                self.late.append(got)
        return self.closed_at

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TcpEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpServerEndpoint(_Receiver):
    """A listening TCP socket that speaks SIP on every connection accepted:
    ``recv`` gives messages from any of them (``addr`` = the peer), ``send``
    writes on the connection of a peer. ``accepted`` lists every peer that
    connected, in order."""

    def __init__(self, host: str = LOCALHOST, port: int = 0) -> None:
        self.sock = socket.socket(family(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.conns: dict[Address, socket.socket] = {}
        self.framers: dict[Address, StreamFramer] = {}
        self.accepted: list[Address] = []
        self.queue: list[Received] = []
        bound_host, bound_port = self.sock.getsockname()[:2]
        self.local: Address = (bound_host, bound_port)

    @property
    def address(self) -> Address:
        """Where the socket listens (still known once it is closed)."""
        return self.local

    @property
    def sent_by(self) -> str:
        return hostport(*self.address)

    def send(self, data: bytes, dest: Address) -> None:
        conn = self.conns.get(dest)
        if conn is None:
            raise ConnectionError(f"no connection from {dest} (have {list(self.conns)})")
        conn.setblocking(True)
        try:
            conn.sendall(data)
        finally:
            conn.setblocking(False)

    def recv(self, timeout: float) -> Received | None:
        deadline = time.monotonic() + timeout
        while not self.queue:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock, *self.conns.values()], [], [], left)
            if not ready:
                return None
            for s in ready:
                if s is self.sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, addr = self.sock.accept()
                        conn.setblocking(False)
                        peer = (addr[0], addr[1])
                        self.conns[peer] = conn
                        self.framers[peer] = StreamFramer()
                        self.accepted.append(peer)
                    continue
                peer = next(p for p, c in self.conns.items() if c is s)
                try:
                    chunk = s.recv(65535)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    s.close()
                    del self.conns[peer]
                    continue
                now = time.monotonic()
                self.queue += [Received(now, m, peer) for m in self.framers[peer].feed(chunk)]
        return self.queue.pop(0)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
        self.sock.close()

    def __enter__(self) -> TcpServerEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def options_ping(
    host: str, port: int, timeout: float = 1.0, max_forwards: int = 70
) -> SipMessage | None:
    """OPTIONS sip:host:port over UDP from an ephemeral port (IPv6 when ``host``
    is); the final answer or None. ``max_forwards=0`` gets a 483 from any
    proxy whose script runs at all (Kamailio's readiness check)."""
    with UdpEndpoint(LOCALHOST6 if family(host) == socket.AF_INET6 else LOCALHOST) as ep:
        uri = f"sip:{hostport(host, port)}"
        req = build_request("OPTIONS", uri, sent_by=ep.sent_by, to_uri=uri,
                            max_forwards=max_forwards)
        deadline = time.monotonic() + timeout
        ep.send(req, (host, port))
        got = ep.recv_until(lambda m: m.is_response and m.status >= 200, max(0.0, deadline - time.monotonic()))
        return got.msg if got else None


def tcp_exchange(dest: Address, data: bytes, timeout: float = 2.0) -> SipMessage | None:
    """Send one request over a new TCP connection; the first final response, or None."""
    with TcpEndpoint(dest, timeout=timeout) as conn:
        conn.send(data)
        got = conn.recv_until(lambda m: m.is_response and m.status >= 200, timeout)
        return got.msg if got else None


@dataclass
class CalleeBehaviour:
    """How a RawCallee answers an INVITE."""

    provisional: Sequence[int] = (180,)
    final: int | None = None  # None: never answers finally
    final_delay: float = 0.0
    answer_cancel: bool = False  # 200 to CANCEL and 487 to the INVITE
    # Answer like a UA making a dialog: 18x and 2xx carry a Contact and a copy
    # of the INVITE's Record-Route values (RFC 3261 12.1.1).
    dialog: bool = False


_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
            404: "Not Found", 486: "Busy Here", 487: "Request Terminated", 603: "Decline"}


class RawCallee:
    """A user agent run by a thread, for callee behaviour sipp cannot easily
    give (never answering, counting retransmissions exactly). UDP on 127.0.0.1
    by default; ``host`` may be another loopback address or ``LOCALHOST6``, and
    ``transport="tcp"`` makes it listen on TCP and answer on the connection
    each request came in on.

    Every message received is recorded in ``received`` (with arrival time).
    INVITE retransmissions (same top branch) get the last response again,
    like an RFC 3261 server transaction, and are counted all the same.
    """

    def __init__(
        self,
        port: int = 0,
        behaviour: CalleeBehaviour | None = None,
        *,
        host: str = LOCALHOST,
        transport: Transport = "udp",
    ) -> None:
        self.transport = transport
        self.ep: UdpEndpoint | TcpServerEndpoint = (
            TcpServerEndpoint(host, port) if transport == "tcp" else UdpEndpoint(host, port)
        )
        self.host, self.port = self.ep.address
        self.behaviour = behaviour or CalleeBehaviour()
        self.received: list[Received] = []
        self.errors: list[str] = []  # sends that failed (a TCP connection gone)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: list[tuple[float, bytes, Address, str]] = []
        self._last_response: dict[str, tuple[bytes, Address]] = {}
        self._tags: dict[str, str] = {}  # top branch -> our To tag (one per INVITE transaction)
        self._thread = threading.Thread(target=self._run, name=f"callee-{self.port}", daemon=True)
        self._thread.start()

    def reset(self, behaviour: CalleeBehaviour | None = None) -> None:
        with self._lock:
            self.behaviour = behaviour or CalleeBehaviour()
            self.received.clear()
            self._pending.clear()
            self._last_response.clear()
            self._tags.clear()
            self.errors.clear()

    @property
    def sent_by(self) -> str:
        return hostport(self.host, self.port)

    def uri(self, user: str) -> str:
        """sip:user@host:port (;transport=tcp on TCP): a binding that reaches us."""
        tport = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{user}@{self.sent_by}{tport}"

    def messages(self, method: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if method is None or r.msg.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages(method)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return self.messages(method)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.ep.close()

    # -- the thread ---------------------------------------------------------------
    def _send(self, data: bytes, addr: Address, key: str | None = None) -> None:
        try:
            self.ep.send(data, addr)
        except OSError as e:
            self.errors.append(f"send to {addr}: {e}")
        if key:
            self._last_response[key] = (data, addr)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                due = [p for p in self._pending if p[0] <= now]
                self._pending = [p for p in self._pending if p[0] > now]
            for _, data, addr, key in due:
                self._send(data, addr, key)
            try:
                got = self.ep.recv(0.02)
            except OSError:
                return
            if got is None or got.msg.is_response:
                if got is not None:
                    with self._lock:
                        self.received.append(got)
                continue
            with self._lock:
                self.received.append(got)
                self._handle(got)

    def _handle(self, got: Received) -> None:
        msg, addr, b = got.msg, got.addr, self.behaviour
        branch = via_branch(msg.vias[0]) if msg.vias else None
        key = f"{branch}/{msg.method}"
        if msg.method == "INVITE":
            if str(branch) in self._tags:  # retransmission: repeat the last response, if any
                if key in self._last_response:
                    data, dest = self._last_response[key]
                    self._send(data, dest)
                return
            tag = self._tags.setdefault(str(branch), new_tag())
            dialog: list[tuple[str, str]] = []
            if b.dialog:
                dialog = [("Contact", f"<{self.uri('callee')}>")]
                dialog += [("Record-Route", v) for v in msg.header_lines("record-route")]
            for code in b.provisional:
                reason = _REASONS.get(code, "Whatever")
                resp = build_response(msg, code, reason, to_tag=tag if code > 100 else None,
                                      extra=dialog if code > 100 else ())
                self._send(resp, addr, key)
            if b.final is not None:
                final = build_response(msg, b.final, _REASONS.get(b.final, "Whatever"), to_tag=tag,
                                       extra=dialog if b.final < 300 else ())
                self._pending.append((time.monotonic() + b.final_delay, final, addr, key))
        elif msg.method == "CANCEL":
            if b.answer_cancel:
                self._send(build_response(msg, 200, "OK"), addr)
                inv = next(
                    (r.msg for r in self.received if r.msg.method == "INVITE"
                     and r.msg.vias and via_branch(r.msg.vias[0]) == branch),
                    None,
                )
                if inv is not None:
                    tag = self._tags.setdefault(str(branch), new_tag())
                    resp = build_response(inv, 487, "Request Terminated", to_tag=tag)
                    self._pending = [p for p in self._pending if p[3] != f"{branch}/INVITE"]
                    self._send(resp, addr, f"{branch}/INVITE")
        elif msg.method != "ACK":
            self._send(build_response(msg, 200, "OK", to_tag=new_tag()), addr)


def statuses(seen: Iterable[Received]) -> list[int]:
    """The status codes among ``seen``, in order (for assertion messages)."""
    return [r.msg.status for r in seen if r.msg.is_response]
