"""TLS peers for the integration tests, on Python's ssl: ``TlsClient`` (a
phone's connection to the proxy) and ``TlsServer`` (a threaded TLS SIP
server the proxy connects to, answering INVITEs with a set status).
Nothing here imports sipsuite (see procs.py).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import LOCALHOST, Address, hostport
from endpoints import StreamFramer
from sipmsg import SipMessage, build_response, new_tag


def client_context(ca: Path | None, cert: Path | None = None, key: Path | None = None,
                   check: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None and check:
        ctx.load_verify_locations(str(ca))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class TlsClient:
    """A TLS connection to ``dest`` that speaks SIP (framed by Content-Length).

    The handshake runs at construction (``ssl.SSLError`` if it fails on our
    side); a server that refuses us after it (TLS 1.3 client-certificate
    checks) shows as ``recv`` returning None with ``error`` set."""

    def __init__(self, dest: Address, ctx: ssl.SSLContext, server_hostname: str = LOCALHOST,
                 timeout: float = 5.0) -> None:
        raw = socket.create_connection(dest, timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.local: Address = self.sock.getsockname()[:2]
        self.framer = StreamFramer()
        self.queue: list[SipMessage] = []
        self.closed = False
        self.error: BaseException | None = None

    @property
    def sent_by(self) -> str:
        return hostport(*self.local)

    def peer_certificate(self) -> bytes:
        return self.sock.getpeercert(binary_form=True) or b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> SipMessage | None:
        deadline = time.monotonic() + timeout
        while not self.queue:
            left = deadline - time.monotonic()
            if self.closed or left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65535)
            except TimeoutError:
                return None
            except (ssl.SSLError, OSError) as e:
                self.error, self.closed = e, True
                return None
            if not chunk:
                self.closed = True
                return None
            self.queue += self.framer.feed(chunk)
        return self.queue.pop(0)

    def recv_until(self, done: Callable[[SipMessage], bool], timeout: float,
                   seen: list[SipMessage] | None = None) -> SipMessage | None:
        """Messages until one ``done`` accepts (returned); all go to ``seen``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is None:
                return None
            if seen is not None:
                seen.append(msg)
            if done(msg):
                return msg
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TlsServer:
    """Accepts TLS connections on ``host`` (a free port) with ``cert``/``key``;
    answers each INVITE with ``status`` and records handshakes and messages."""

    def __init__(self, cert: Path, key: Path, status: int = 486, host: str = LOCALHOST) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.status = status
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host = host
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.handshakes = 0
        self.handshake_errors: list[str] = []
        self.received: list[SipMessage] = []
        self._stop = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def uri(self, user: str, host: str | None = None) -> str:
        return f"sip:{user}@{host or self.host}:{self.port};transport=tls"

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.handshake_errors.append(str(e))
            raw.close()
            return
        self.handshakes += 1
        framer = StreamFramer()
        try:
            while not self._stop:
                try:
                    chunk = conn.recv(65535)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                for msg in framer.feed(chunk):
                    self.received.append(msg)
                    if msg.method == "INVITE":
                        conn.sendall(build_response(msg, self.status, "Busy Here",
                                                    to_tag=new_tag()))
        except (ssl.SSLError, OSError) as e:
            # After a TLS 1.3 handshake the client's rejection of our
            # certificate arrives as an alert on the first read.
            self.handshake_errors.append(str(e))
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
