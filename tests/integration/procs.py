"""Support code for the integration tests: real processes on loopback ports.

Nothing here imports sipsuite: the tests drive the proxy from the outside, the
way a phone or sipp does, so a bug in the package cannot hide itself in the
test harness.

- ports: ``free_port`` (free for UDP and TCP at once on 127.0.0.1 or ::1);
  ``bracket`` / ``hostport`` write an IPv6 literal the way SIP does ([::1]:5060);
- the proxy: ``write_config`` (TOML), ``start_proxy`` -> ``ProxyProcess``
  (own process group, waits for an OPTIONS answer, SIGTERM then SIGKILL;
  ``listen=`` for other sockets than udp/tcp 127.0.0.1, IPv6 included);
- raw SIP: ``SipMessage`` (a small independent parser), ``build_request`` /
  ``build_response``; over UDP ``UdpEndpoint``; over TCP ``TcpEndpoint`` (a
  client connection) and ``TcpServerEndpoint`` (a listener), both framing the
  stream by Content-Length; ``RawCallee`` (a threaded callee on UDP or TCP,
  IPv4 or IPv6, whose behaviour each test sets); ``options_ping``, ``tcp_exchange``;
- sipp: ``SippProcess`` / ``run_sipp`` (always bounded: ``-m``, ``-timeout``,
  an outer wall-clock limit) -> ``SippResult`` with exit code, call counts from
  the ``-trace_stat`` csv and the error/screen logs for assertion messages;
  ``parse_sipp_messages`` reads a ``-trace_msg`` file back into messages.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
LOCALHOST6 = "::1"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def shared_dir() -> Path:
    """The read-only shared/ folder: $SIPSUITE_SHARED, else ../shared beside the repo."""
    env = os.environ.get("SIPSUITE_SHARED")
    return Path(env) if env else (REPO / ".." / "shared").resolve()


def sipp_dir() -> Path:
    return shared_dir() / "sipp"


# --------------------------------------------------------------------------- addresses


def family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal (bare or in brackets), else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bracket(host: str) -> str:
    """An IPv6 literal in brackets, as SIP URIs and Via sent-by write it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def hostport(host: str, port: int) -> str:
    """'127.0.0.1:5060' / '[::1]:5060'."""
    return f"{bracket(host)}:{port}"


# --------------------------------------------------------------------------- ports

_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port(kind: Literal["udp", "tcp", "both"] = "both", host: str = LOCALHOST) -> int:
    """A port the OS calls free on ``host`` (for UDP and TCP alike with "both");
    ``host`` may be an IPv6 address (``LOCALHOST6``).

    Ports are never handed out twice by one test process, so two fixtures asking
    in a row cannot get the same number before either has bound it.
    """
    with _port_lock:
        for _ in range(200):
            first_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
            with socket.socket(family(host), first_type) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
                if port in _handed_out:
                    continue
                if kind == "both":
                    try:
                        with socket.socket(family(host), socket.SOCK_STREAM) as t:
                            t.bind((host, port))
                    except OSError:
                        continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free {kind} port found on {host}")


def port_bound(port: int, kind: Literal["udp", "tcp"]) -> bool:
    """Whether something on this host has bound UDP ``port`` / listens on TCP ``port``
    (read from /proc/net, so probing never steals the port)."""
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and (kind == "udp" or state == "0A"):
                return True
    return False


def wait_bound(port: int, kind: Literal["udp", "tcp"], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_bound(port, kind):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- config (TOML)

TomlValue = str | int | float | bool | Sequence[str] | Sequence[int]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(v: TomlValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def toml_dumps(tables: Mapping[str, Mapping[str, TomlValue]]) -> str:
    """Tables of scalars/lists -> TOML text; table names may be dotted ("location.static")."""
    out: list[str] = []
    for table, items in tables.items():
        out.append(f"[{table}]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in items.items())
        out.append("")
    return "\n".join(out)


def default_listen(port: int, host: str = LOCALHOST) -> list[str]:
    """UDP and TCP on one address and port, as the proxy's ``listen`` writes them."""
    return [f"udp:{hostport(host, port)}", f"tcp:{hostport(host, port)}"]


def write_config(
    path: Path,
    *,
    port: int,
    static: Mapping[str, Sequence[str]] | None = None,
    domains: Sequence[str] = ("example.com", "sipsuite.test"),
    trusted: Sequence[str] = (),
    timer_c: float = 2.0,
    dns_timeout: float = 1.0,
    log_level: str = "info",
    extra_proxy: Mapping[str, TomlValue] | None = None,
    listen: Sequence[str] | None = None,
) -> Path:
    """Write a proxy config listening on UDP and TCP ``127.0.0.1:port``, or on
    ``listen`` ("udp:[::1]:5060", ...) when given."""
    tables: dict[str, dict[str, TomlValue]] = {
        "proxy": {
            "listen": list(listen) if listen is not None else default_listen(port),
            "domains": list(domains),
            "trusted": list(trusted),
            "dns_timeout": dns_timeout,
            **(extra_proxy or {}),
        },
        "timers": {"timer_c": timer_c},
        "location.static": {user: list(uris) for user, uris in (static or {}).items()},
        "log": {"level": log_level},
    }
    path.write_text(toml_dumps(tables))
    return path


# --------------------------------------------------------------------------- SIP messages

COMPACT = {
    "v": "via", "i": "call-id", "f": "from", "t": "to", "m": "contact",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
    "e": "content-encoding", "o": "event", "u": "allow-events", "r": "refer-to",
}


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and <...>."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = angle = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle = True
        elif not quoted and ch == ">":
            angle = False
        elif ch == "," and not quoted and not angle:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


@dataclass
class SipMessage:
    """A SIP message as the tests see it: start line, (name, value) headers in
    order with names lower-cased and compact forms expanded, body bytes."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        """Lenient parse; raises ValueError only when there is no start line."""
        data = data.lstrip(b"\r\n")
        for sep in (b"\r\n\r\n", b"\n\n"):
            head, found, body = data.partition(sep)
            if found:
                break
        else:
            head, body = data, b""
        lines = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
        if not lines or not lines[0].strip():
            raise ValueError("no start line")
        unfolded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip()
            elif line:
                unfolded.append(line)
        headers: list[tuple[str, str]] = []
        for line in unfolded:
            name, colon, value = line.partition(":")
            if not colon:
                continue
            key = name.strip().lower()
            headers.append((COMPACT.get(key, key), value.strip()))
        return cls(lines[0], headers, body, data)

    # start line
    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("SIP/")

    @property
    def status(self) -> int:
        if not self.is_response:
            return 0
        try:
            return int(self.start_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            return 0

    @property
    def reason(self) -> str:
        parts = self.start_line.split(" ", 2)
        return parts[2] if self.is_response and len(parts) > 2 else ""

    @property
    def method(self) -> str:
        return "" if self.is_response else self.start_line.split(" ", 1)[0]

    @property
    def request_uri(self) -> str:
        parts = self.start_line.split(" ")
        return parts[1] if not self.is_response and len(parts) > 1 else ""

    # headers
    def header(self, name: str) -> str | None:
        name = COMPACT.get(name.lower(), name.lower())
        return next((v for n, v in self.headers if n == name), None)

    def header_lines(self, name: str) -> list[str]:
        name = COMPACT.get(name.lower(), name.lower())
        return [v for n, v in self.headers if n == name]

    def header_values(self, name: str) -> list[str]:
        return [p for line in self.header_lines(name) for p in split_commas(line)]

    @property
    def vias(self) -> list[str]:
        return self.header_values("via")

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.header("cseq") or ""
        num, _, method = value.partition(" ")
        try:
            return int(num), method.strip()
        except ValueError:
            return -1, method.strip()

    def __str__(self) -> str:
        text = self.raw.decode("utf-8", "replace") if self.raw else self.start_line
        return text if len(text) < 3000 else text[:3000] + "...(cut)"


def via_branch(via: str) -> str | None:
    m = re.search(r";\s*branch\s*=\s*([^;,\s]+)", via, re.I)
    return m.group(1) if m else None


def via_sent_by(via: str) -> str:
    """'SIP/2.0/UDP host:port;params' -> 'host:port' (lower-cased)."""
    m = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*\S+\s+([^;\s]+)", via, re.I)
    return m.group(1).lower() if m else ""


def via_transport(via: str) -> str:
    """'SIP/2.0/TCP host;...' -> 'TCP'."""
    m = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*(\w+)", via, re.I)
    return m.group(1).upper() if m else ""


def uri_of(name_addr: str) -> str:
    """The URI of a name-addr ('"Bob" <sip:b@h;lr>;p=1' -> 'sip:b@h;lr') or of a
    bare addr-spec (its header parameters cut off)."""
    m = re.search(r"<([^>]*)>", name_addr)
    return m.group(1) if m else name_addr.split(";", 1)[0].strip()


def is_final(msg: SipMessage) -> bool:
    return msg.is_response and msg.status >= 200


def new_branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:16]


def new_tag() -> str:
    return uuid.uuid4().hex[:10]


def build_request(
    method: str,
    ruri: str,
    *,
    sent_by: str,
    branch: str | None = None,
    call_id: str | None = None,
    from_uri: str = "sip:alice@sipsuite.test",
    from_tag: str | None = None,
    to_uri: str | None = None,
    to_tag: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    transport: str = "UDP",
    max_forwards: int | None = 70,
    contact: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """A well-formed request; defaults give a fresh transaction and dialog."""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sent_by};branch={branch or new_branch()};rport",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.append(f"From: <{from_uri}>;tag={from_tag or new_tag()}")
    lines.append(f"To: <{to_uri or ruri}>" + (f";tag={to_tag}" if to_tag else ""))
    lines.append(f"Call-ID: {call_id or uuid.uuid4().hex}@sipsuite.test")
    lines.append(f"CSeq: {cseq} {cseq_method or method}")
    if contact:
        lines.append(f"Contact: <{contact}>")
    lines.extend(f"{n}: {v}" for n, v in extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A response copying every Via line, From, To (+ tag), Call-ID, CSeq (RFC 3261 8.2.6.2)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines.extend(f"Via: {v}" for v in request.header_lines("via"))
    to = request.header("to") or ""
    if to_tag and not re.search(r";\s*tag\s*=", to, re.I):
        to += f";tag={to_tag}"
    lines += [
        f"From: {request.header('from') or ''}",
        f"To: {to}",
        f"Call-ID: {request.call_id or ''}",
        f"CSeq: {request.header('cseq') or ''}",
    ]
    lines.extend(f"{n}: {v}" for n, v in extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SDP_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 9 RTP/AVP 0\r\n"
)


def build_invite(
    ruri: str, *, sent_by: str, transport: str = "UDP", extra: Sequence[tuple[str, str]] = (),
    **kwargs: Any,
) -> bytes:
    """An INVITE with a Contact at ``sent_by`` and a small SDP offer (other
    keywords as for build_request)."""
    contact = f"sip:alice@{sent_by}" + (";transport=tcp" if transport.upper() == "TCP" else "")
    return build_request(
        "INVITE", ruri, sent_by=sent_by, transport=transport, contact=contact,
        extra=[("Content-Type", "application/sdp"), *extra], body=SDP_OFFER, **kwargs,
    )


def build_ack_for(invite: bytes | SipMessage, response: SipMessage) -> bytes:
    """Hop-by-hop ACK for a non-2xx final (RFC 3261 17.1.1.3): same R-URI, top Via,
    From, Call-ID, CSeq number as the INVITE; To of the response."""
    inv = invite if isinstance(invite, SipMessage) else SipMessage.parse(invite)
    lines = [
        f"ACK {inv.request_uri} SIP/2.0",
        f"Via: {inv.vias[0]}",
        "Max-Forwards: 70",
        f"From: {inv.header('from')}",
        f"To: {response.header('to')}",
        f"Call-ID: {inv.call_id}",
        f"CSeq: {inv.cseq[0]} ACK",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def build_ack_for_2xx(
    invite: bytes | SipMessage, response: SipMessage, *, sent_by: str, transport: str = "UDP"
) -> bytes:
    """End-to-end ACK for a 2xx (RFC 3261 13.2.2.4, 12.1.2): to the response's
    Contact, with the route set its Record-Route gives (reversed), a new branch."""
    inv = invite if isinstance(invite, SipMessage) else SipMessage.parse(invite)
    lines = [
        f"ACK {uri_of(response.header('contact') or inv.request_uri)} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sent_by};branch={new_branch()};rport",
        "Max-Forwards: 70",
        f"From: {inv.header('from')}",
        f"To: {response.header('to')}",
        f"Call-ID: {inv.call_id}",
        f"CSeq: {inv.cseq[0]} ACK",
    ]
    lines += [f"Route: {r}" for r in reversed(response.header_values("record-route"))]
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def statuses(seen: Iterable[Received]) -> list[int]:
    """The status codes among ``seen``, in order (for assertion messages)."""
    return [r.msg.status for r in seen if r.msg.is_response]


# --------------------------------------------------------------------------- raw UDP and TCP

Address = tuple[str, int]
Transport = Literal["udp", "tcp"]


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

    def __init__(self, dest: Address, timeout: float = 2.0) -> None:
        self.sock = socket.create_connection(dest, timeout=timeout)
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


def options_ping(host: str, port: int, timeout: float = 1.0) -> SipMessage | None:
    """OPTIONS sip:host:port over UDP from an ephemeral port (IPv6 when ``host``
    is); the final answer or None."""
    with UdpEndpoint(LOCALHOST6 if family(host) == socket.AF_INET6 else LOCALHOST) as ep:
        uri = f"sip:{hostport(host, port)}"
        req = build_request("OPTIONS", uri, sent_by=ep.sent_by, to_uri=uri)
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


# --------------------------------------------------------------------------- the proxy


class ProxyStartError(RuntimeError):
    pass


# Twisted's own chatter (one DNS query = a UDP port opened and closed) buries the
# proxy's lines in a log tail; diagnostics leave it out.
_NOISE = re.compile(
    r"Starting protocol|Stopping protocol|DNSDatagramProtocol starting|\(UDP Port \d+ Closed\)"
)


def _tail(path: Path, lines: int, drop_noise: bool = False) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    kept = [ln for ln in text.splitlines() if not (drop_noise and _NOISE.search(ln))]
    return "\n".join(kept[-lines:])


@dataclass
class ProxyProcess:
    """A running proxy: ``python -m twisted sipsuite --config FILE --listen ...``."""

    port: int
    workdir: Path
    config_path: Path
    log_path: Path
    out_path: Path
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    host: str = LOCALHOST  # the address of its first UDP listener (pinged at start)

    @property
    def address(self) -> Address:
        return self.host, self.port

    @property
    def hostport(self) -> str:
        """'127.0.0.1:5060' / '[::1]:5060': the proxy as Via, Record-Route, URIs write it."""
        return hostport(self.host, self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self, lines: int = 60) -> str:
        state = "running" if self.alive() else f"exited rc={self.proc.returncode if self.proc else None}"
        return (
            f"--- proxy ({state}) {' '.join(self.command)}\n"
            f"--- config {self.config_path}:\n{self.config_path.read_text(errors='replace')}\n"
            f"--- proxy log tail ({self.log_path}, Twisted chatter left out):\n"
            f"{_tail(self.log_path, lines, drop_noise=True)}\n"
            f"--- proxy stdout/stderr tail ({self.out_path}):\n{_tail(self.out_path, 30)}\n"
        )

    def start(self, ready_timeout: float = 15.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProxyStartError("proxy exited during start-up\n" + self.diagnostics())
            if options_ping(self.host, self.port, timeout=0.3) is not None:
                return
        self.stop()
        raise ProxyStartError(
            f"proxy did not answer OPTIONS on udp:{self.hostport} within {ready_timeout} s\n"
            + self.diagnostics()
        )

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after ``grace`` s; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


ProxyFactory = Callable[..., ProxyProcess]


def proxy_command(
    config: Path, port: int, log: Path, plugin: str = "sipsuite", listen: Sequence[str] | None = None
) -> list[str]:
    """twistd, as an operator runs it: foreground, no pid file, log to ``log``.

    Not ``python -m twisted`` (twist): it filters every event below its own
    --log-level, so [log] level = "debug" would not show. twisted.scripts.twistd
    has no __main__, hence -c."""
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", f"--logfile={log}",
        plugin, "--config", str(config),
        *(arg for spec in (listen or default_listen(port)) for arg in ("--listen", spec)),
    ]


def _first_udp_host(listen: Sequence[str] | None) -> str:
    """The host of the first "udp:HOST:PORT" of ``listen`` (brackets removed)."""
    for spec in listen or ():
        transport, _, rest = spec.partition(":")
        if transport.lower() == "udp":
            return rest.rsplit(":", 1)[0].strip("[]")
    return LOCALHOST


def start_proxy(
    workdir: Path,
    config: Path,
    port: int,
    *,
    plugin: str = "sipsuite",
    ready_timeout: float = 15.0,
    listen: Sequence[str] | None = None,
) -> ProxyProcess:
    """Start the proxy (raises ProxyStartError with its log when it does not come up).

    ``listen`` ("udp:[::1]:PORT", ...) replaces the default UDP and TCP on
    127.0.0.1:``port``; it must name a UDP socket, which the start-up ping uses."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "proxy.log"
    proxy = ProxyProcess(
        port=port, workdir=workdir, config_path=config, log_path=log,
        out_path=workdir / "proxy.out", command=proxy_command(config, port, log, plugin, listen),
        host=_first_udp_host(listen),
    )
    proxy.start(ready_timeout)
    return proxy


# --------------------------------------------------------------------------- sipp


def sipp_binary() -> str:
    """Path of sipp; raises (so tests FAIL, never skip) when it is missing."""
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester); the integration tests need it")
    return path


@dataclass
class SippResult:
    name: str
    rc: int | None  # None: killed by the outer time limit
    workdir: Path
    stats: dict[str, str] = field(default_factory=dict)

    def _int(self, key: str) -> int | None:
        try:
            return int(float(self.stats[key]))
        except (KeyError, ValueError):
            return None

    @property
    def successful(self) -> int | None:
        return self._int("SuccessfulCall(C)")

    @property
    def failed(self) -> int | None:
        return self._int("FailedCall(C)")

    @property
    def created(self) -> int | None:
        return self._int("TotalCallCreated")

    def file(self, suffix: str) -> Path:
        return self.workdir / f"{self.name}{suffix}"

    @property
    def messages_path(self) -> Path:
        return self.file(".msg.log")

    def summary(self, lines: int = 40) -> str:
        parts = [
            f"--- sipp {self.name}: rc={self.rc} successful={self.successful} failed={self.failed}"
            f" created={self.created} (files in {self.workdir})",
            f"--- {self.name} command: {_tail(self.file('.cmd'), 1)}",
            f"--- {self.name} error log tail:\n{_tail(self.file('.err.log'), lines)}",
            f"--- {self.name} screen tail:\n{_screen_summary(self.file('.screen.log'))}",
            f"--- {self.name} stdout/stderr tail:\n{_tail(self.file('.out'), 10)}",
        ]
        return "\n".join(parts)


def _screen_summary(path: Path) -> str:
    """The scenario screen (message counts table) of a -trace_screen file."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    block = text.split("Statistics Screen")[0]
    return "\n".join(line.rstrip() for line in block.splitlines()[-30:])


def read_sipp_stats(path: Path) -> dict[str, str]:
    """The last row of a ``-trace_stat`` csv (';'-separated) as {column: value}."""
    try:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    except OSError:
        return {}
    rows = [r for r in rows if r]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


class SippProcess:
    """One sipp run, started in the background; ``wait()`` gives a SippResult.

    Always bounded: ``-m calls``, ``-timeout``, and an outer wall-clock limit
    (``timeout_s + 15`` s) after which the process group is killed.
    """

    def __init__(
        self,
        scenario: Path,
        *,
        name: str,
        workdir: Path,
        local_port: int,
        calls: int,
        timeout_s: float,
        remote: Address | None = None,
        transport: Transport = "udp",
        service: str | None = None,
        rate: float | None = None,
        duration_ms: int | None = None,
        trace_msg: bool = False,
        timeout_error: bool = True,
        extra: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.outer_timeout = timeout_s + 15
        workdir.mkdir(parents=True, exist_ok=True)
        f = lambda suffix: str(workdir / f"{name}{suffix}")  # noqa: E731
        cmd = [sipp_binary()]
        if remote is not None:
            cmd.append(f"{remote[0]}:{remote[1]}")
        cmd += [
            "-sf", str(scenario), "-i", LOCALHOST, "-p", str(local_port),
            "-t", "t1" if transport == "tcp" else "u1",
            "-mi", LOCALHOST, "-mp", str(free_port("udp")),
            "-m", str(calls), "-timeout", f"{int(timeout_s)}s",
            "-nostdin", "-buff_size", "4194304",
            "-trace_err", "-error_file", f(".err.log"),
            "-trace_screen", "-screen_file", f(".screen.log"),
            "-trace_stat", "-stf", f(".stat.csv"),
        ]
        if timeout_error:
            cmd.append("-timeout_error")
        if service:
            cmd += ["-s", service]
        if rate is not None:
            cmd += ["-r", str(rate)]
        if duration_ms is not None:
            cmd += ["-d", str(duration_ms)]
        if trace_msg:
            cmd += ["-trace_msg", "-message_file", f(".msg.log")]
        cmd += list(extra)
        self.command = cmd
        Path(f(".cmd")).write_text(" ".join(cmd) + "\n")
        self.started = time.monotonic()
        with open(f(".out"), "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def wait(self) -> SippResult:
        left = max(1.0, self.outer_timeout - (time.monotonic() - self.started))
        rc: int | None
        try:
            rc = self.proc.wait(left)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        result = SippResult(self.name, rc, self.workdir)
        result.stats = read_sipp_stats(result.file(".stat.csv"))
        return result


def run_sipp(scenario: Path, **kwargs: Any) -> SippResult:
    """Run sipp in the foreground (see SippProcess for the arguments)."""
    return SippProcess(scenario, **kwargs).wait()


@dataclass
class TracedMessage:
    direction: Literal["received", "sent"]
    transport: str
    msg: SipMessage


_TRACE_SEP = re.compile(r"^-{20,} \d{4}-\d\d-\d\d[^\n]*\n", re.M)
_TRACE_HEAD = re.compile(r"^(\w+) message (received|sent)", re.I)


def parse_sipp_messages(path: Path) -> list[TracedMessage]:
    """Messages of a sipp ``-trace_msg`` file, in order."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    out: list[TracedMessage] = []
    for block in _TRACE_SEP.split(text):
        head, _, rest = block.partition("\n")
        m = _TRACE_HEAD.match(head.strip())
        if not m:
            continue
        body = rest.lstrip("\n")
        with contextlib.suppress(ValueError):
            msg = SipMessage.parse(body.encode("utf-8", "surrogateescape"))
            out.append(TracedMessage(m.group(2).lower(), m.group(1).upper(), msg))  # type: ignore[arg-type]
    return out


_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"
