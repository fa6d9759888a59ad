"""The write queue of a TCP connection is bounded ([proxy] tcp_write_queue_max):
a real peer on loopback that never reads gets its connection aborted once
what it has not taken, beyond the kernel's socket buffers, exceeds the cap,
with a warning naming it; a peer that reads the same volume keeps its
connection.  Over TCP and TLS.  Real sockets and the real reactor: the
count of unsent bytes reads Twisted's write buffers (stream.unsent_bytes),
which only real transports have."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import tlscerts
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent

from sipsuite.config import TLSConfig
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.net.stream import SIPStreamProtocol, unsent_bytes
from sipsuite.proxy.net.transport import TransportLayer
from sipsuite.tlsctx import TLSContexts

CAP = 128 * 1024
CHUNK = b"x" * 32768
# Enough to fill any loopback socket buffers (tcp_wmem / tcp_rmem max, a few
# MB on Linux) and the cap many times over.
VOLUME = 48 * 1024 * 1024
OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-wq\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
           b"Call-ID: wq1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
           b"Content-Length: 0\r\n\r\n")


def kernel_buffers() -> int:
    """The most the two loopback sockets' kernel buffers can hold: our send
    buffer and the peer's receive buffer at their autotuning maximum."""
    total = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            total += int(f.read().split()[2])
    return total


class Server:
    """A TransportLayer listening on a TCP port of 127.0.0.1 (port 0: the OS
    picks) that keeps the Source of each message it receives."""

    def __init__(self, kind: str = "tcp", folder: Path | None = None) -> None:
        self.sources: list[Source] = []
        self.layer = TransportLayer(_reactor, lambda msg, src: self.sources.append(src),
                                    tcp_write_queue_max=CAP)
        self.kind = kind
        if kind == "tls":
            assert folder is not None
            issued = tlscerts.TestPKI(folder).issue("server", ips=["127.0.0.1"])
            config = TLSConfig(certificate=str(issued.cert), private_key=str(issued.key),
                               ca_list="", verify_server=False, require_client_cert=[])
            self.layer.use_tls(TLSContexts(lambda: config), set)
        self.listener = Listener(kind, "127.0.0.1", 0, "127.0.0.1")
        self.layer.listen(self.listener)

    async def connection_from(self, peer: socket.socket) -> tuple[SIPStreamProtocol,
                                                                  socket.socket]:
        """The connection ``peer`` opens (for TLS: the TLS socket over it)."""
        peer.connect(("127.0.0.1", self.listener.port))
        if self.kind == "tls":
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
            peer = client.wrap_socket(peer, do_handshake_on_connect=False)
            peer.setblocking(False)
            deadline = time.monotonic() + 10.0
            while True:  # the handshake, with the reactor running between tries
                try:
                    peer.do_handshake()
                    break
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    assert time.monotonic() < deadline, "no TLS handshake"
                    await deferLater(_reactor, 0.01, lambda: None)
            peer.setblocking(True)
        peer.sendall(OPTIONS)
        deadline = time.monotonic() + 10.0
        while not self.sources and time.monotonic() < deadline:
            await deferLater(_reactor, 0.01, lambda: None)
        assert self.sources, "the request never arrived"
        conn = self.sources[0].connection
        assert isinstance(conn, SIPStreamProtocol)
        return conn, peer

    async def stop(self) -> None:
        for port in self.layer.stop():
            await port


async def pump(conn: SIPStreamProtocol, volume: int, reader: socket.socket | None = None
               ) -> tuple[int, int]:
    """Send ``volume`` bytes in chunks, letting the reactor write between
    them (and ``reader`` drain what arrives); (bytes accepted by send, most
    bytes seen queued in Twisted after an accepted send)."""
    accepted = most = 0
    while accepted < volume:
        if not conn.send(CHUNK):
            break
        accepted += len(CHUNK)
        most = max(most, unsent_bytes(conn.transport))
        await deferLater(_reactor, 0.001, lambda: None)
        if reader is not None:
            try:
                while reader.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
    return accepted, most


@pytest.mark.parametrize("kind", ["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_a_peer_that_never_reads_is_cut_off_at_the_cap(
        kind: str, events: list[dict[str, Any]], tmp_path: Path) -> None:
    server = Server(kind, tmp_path)
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        conn, peer = await server.connection_from(peer)
        name = f"127.0.0.1:{peer.getsockname()[1]}"
        # The count itself: a write not yet handed to the kernel (that waits
        # for the reactor) is counted once, whole (TLS: plus its record's
        # overhead), not twice through the TLS wrapper.
        before = unsent_bytes(conn.transport)
        assert conn.send(b"y" * 1000)
        assert 1000 <= unsent_bytes(conn.transport) - before <= 1100
        accepted, most = await pump(conn, VOLUME)
        assert conn.closed and conn.send(b"more") is False
        # Everything accepted fits in the kernel's buffers plus the cap (and
        # the chunk that crossed it): the queue stopped growing there.
        assert accepted <= kernel_buffers() + CAP, accepted
        assert accepted < VOLUME
        assert most <= CAP, most
        assert server.layer.drops.get("tcp_write_queue") == 1, server.layer.drops
        lines = [formatEvent(e) for e in events if "tcp_write_queue_max" in e.get("log_format", "")]
        assert len(lines) == 1 and name in lines[0], lines
        # Aborted: gone from the table and the counts, and the peer's socket
        # is reset (or ended), not left open.
        peer.setblocking(False)
        ended = False
        deadline = time.monotonic() + 5.0
        while not ended and time.monotonic() < deadline:
            await deferLater(_reactor, 0.01, lambda: None)
            try:
                while data := peer.recv(1 << 20):
                    del data
                ended = True
            except BlockingIOError:
                pass
            except (ConnectionResetError, ssl.SSLError):
                ended = True
        assert ended, "the peer's connection is still open"
        assert server.layer.limits.total == 0 and not server.layer.connections
    finally:
        peer.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_reads_keeps_its_connection() -> None:
    server = Server()
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        conn, peer = await server.connection_from(peer)
        peer.setblocking(False)
        volume = 4 * 1024 * 1024
        accepted, _ = await pump(conn, volume, reader=peer)
        assert accepted >= volume and not conn.closed
        assert "tcp_write_queue" not in server.layer.drops
    finally:
        peer.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_crlf_pings_from_a_peer_that_never_reads_are_bounded_too() -> None:
    """Each double-CRLF ping is answered with a CRLF (RFC 5626): pings sent
    without reading the pongs end at the cap, not in an ever longer queue."""
    server = Server()
    server.layer.tcp_write_queue_max = 4096
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        conn, peer = await server.connection_from(peer)
        pings = b"\r\n\r\n" * 16384  # 64 kB of pings, 32 kB of pongs each round
        peer.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 30.0
        while not conn.closed and time.monotonic() < deadline:
            try:
                sent += peer.send(pings)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            await deferLater(_reactor, 0.001, lambda: None)
        assert conn.closed, f"{sent} bytes of pings and still open"
        assert server.layer.drops.get("tcp_write_queue") == 1
    finally:
        peer.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_idle_timeout_aborts_a_connection_with_unsent_bytes() -> None:
    """At the idle timeout a close would wait for the unsent bytes for as
    long as the peer keeps its window shut: the connection is aborted."""
    server = Server()
    server.layer.tcp_write_queue_max = 64 * 1024 * 1024  # not the cap at work here
    server.layer.tcp_idle_timeout = 0.5
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        conn, peer = await server.connection_from(peer)
        # Fill the kernel's buffers, then queue more than they could ever
        # take (our send buffer grows, up to tcp_wmem's maximum, and would
        # let a close finish with a smaller queue).
        deadline = time.monotonic() + 10.0
        while unsent_bytes(conn.transport) < kernel_buffers() and time.monotonic() < deadline:
            assert conn.send(CHUNK * 8)
            await deferLater(_reactor, 0.001, lambda: None)
        assert unsent_bytes(conn.transport) >= kernel_buffers()
        deadline = time.monotonic() + 5.0
        while server.layer.connections and time.monotonic() < deadline:
            await deferLater(_reactor, 0.05, lambda: None)
        assert not server.layer.connections and server.layer.limits.total == 0
        assert "tcp_write_queue" not in server.layer.drops
    finally:
        peer.close()
        await server.stop()
