"""TCP and TLS: one SIPStreamProtocol per connection (framing by Content-Length,
the idle and whole-message timeouts), and the factories that admit inbound
connections and make outbound ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IHandshakeListener, ITCPTransport
from twisted.logger import LogLevel
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from sipsuite.hosts import bracket
from sipsuite.log import enabled, get_logger
from sipsuite.proxy.net.listener import Listener, Source, log_wire
from sipsuite.proxy.net.localaddr import (
    is_wildcard,
)
from sipsuite.sip.message import KeepAlive, ParseError
from sipsuite.sip.parser import StreamParser

if TYPE_CHECKING:
    from sipsuite.proxy.net.transport import TransportLayer


log = get_logger("sipsuite.proxy.transport")


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a TCP or TLS transport that the kernel has not taken
    yet: Twisted's write buffer (past its offset, plus the writes not yet
    joined into it), and for TLS the small writes gathered for the next
    reactor turn (BufferingTLSTransport, at most 64 kB), the cleartext
    waiting for the handshake, and the encrypted bytes in the TCP connection
    under it.  Private attributes:
    Twisted has no public count, and its public signal (a streaming producer
    paused at 64 kB) would keep loseConnection from ever closing a connection
    whose peer does not read.  tests/proxy/net/test_write_queue.py checks
    them against real sockets, so a Twisted that renames them fails there."""
    total = 0
    if isinstance(transport, TLSMemoryBIOProtocol):
        # Not through the wrapper's attributes: it forwards unknown ones to
        # the transport under it, which would count the TCP buffer twice.
        gathered = getattr(vars(transport).get("_aggregator"), "_buffer", None) or ()
        total += sum(len(x) for x in gathered)
        total += sum(len(x) for x in transport._appSendBuffer)
        transport = transport.transport
    if isinstance(transport, FileDescriptor):
        total += len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return total


@implementer(IHandshakeListener)
class SIPStreamProtocol(protocol.Protocol):
    """One TCP or TLS connection, inbound or outbound; both carry requests and
    responses in either direction (RFC 3261 18.3)."""

    # Set by makeConnection before any method here runs, and a TCP one (TLS's
    # transport is an ITLSTransport, which extends ITCPTransport).
    transport: ITCPTransport

    def __init__(self, layer: TransportLayer, listener: Listener) -> None:
        self.layer = layer
        self.listener = listener
        self.kind = listener.transport  # 'tcp' | 'tls'
        self.outbound = False
        self.secured = False
        self.tls_name = ""  # outbound TLS: the name the server's certificate was checked for
        self.parser = StreamParser()
        self.peer: tuple[str, int] = ("", 0)
        self.idle_call: Any = None
        # Running while a message is being read: [proxy] tcp_message_timeout.
        self.message_call: Any = None
        # Counted in layer.limits (under this source, None for one we opened).
        self.counted = False
        self.source_key: str | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.connected_ok = False
        self.closed = False
        self.aliases: set[tuple[str, int]] = set()  # keys aliased to it (TransportLayer.alias)

    def connectionMade(self) -> None:
        if self.closed:
            # Given up while connecting (overflow): what it queued is gone.
            self.transport.abortConnection()
            return
        peer = self.transport.getPeer()
        self.peer = (peer.host, peer.port)
        if not self.outbound and is_wildcard(self.listener.host):
            # Accepted on a wildcard: the connection's own socket knows which address.
            self.listener = self.layer.local_listener(self.listener, self.transport.getHost().host)
        self.connected_ok = True
        self.layer.connection_up(self)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()
        self.pending_bytes = 0
        self.touch()
        if self.kind == "tls" and not self.secured:
            # The handshake is timed like a message: its bytes never reach
            # dataReceived, so they would not even touch the idle timer.
            self.message_call = self.layer.clock.callLater(self.layer.tcp_message_timeout,
                                                           self.message_timeout)

    def touch(self) -> None:
        timeout = self.layer.tcp_idle_timeout
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.reset(timeout)
        else:
            self.idle_call = self.layer.clock.callLater(timeout, self.idle_timeout)

    def handshakeCompleted(self) -> None:
        self.secured = True
        if self.message_call is not None:
            self.message_call.cancel()
            self.message_call = None

    def idle_timeout(self) -> None:
        log.debug("closing idle {k} connection to {p}", k=self.kind, p=self.peer)
        if unsent_bytes(self.transport):
            # Idle with bytes the peer has not taken: it does not read, and a
            # close would wait for them for as long as it keeps the window shut.
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def message_timeout(self) -> None:
        """A message begun more than tcp_message_timeout ago is still not
        complete: a slowloris (one byte now and then holds a connection
        forever against the idle timer alone), or a peer gone silent
        mid-message. Aborted, not closed: it may not read what we write."""
        self.message_call = None
        self.layer.stats_drop("tcp_message_timeout")
        what = "complete message" if self.secured or self.kind != "tls" else "TLS handshake"
        log.info("closing {k} connection with {h}:{p}: no {w} within {t} s", k=self.kind,
                 h=bracket(self.peer[0]), p=self.peer[1], w=what, t=self.layer.tcp_message_timeout)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.touch()
        if enabled(LogLevel.debug):
            log_wire("received from", self.kind, self.peer[0], self.peer[1], data)
        if self.message_call is None and data.strip(b"\r\n"):
            # A message begins (CRLF keep-alives between messages do not
            # start one). It may also end in this very read, then the timer
            # stops below; what follows an ended message is timed from the
            # next read on, at most one idle timeout later.
            self.message_call = self.layer.clock.callLater(self.layer.tcp_message_timeout,
                                                           self.message_timeout)
        for item in self.parser.feed(data):
            if not isinstance(item, KeepAlive) and self.message_call is not None:
                self.message_call.cancel()
                self.message_call = None
            if isinstance(item, KeepAlive):
                # RFC 5626 3.5.1: a double-CRLF ping is answered with one CRLF
                # (through the cap: pings from a peer that never reads would
                # queue pongs without end).
                if not self.write(b"\r\n"):
                    return
                continue
            if isinstance(item, ParseError):
                self.layer.stats_drop("parse")
                reply = item.response_bytes()
                if reply is not None:
                    self.transport.write(reply)
                # Framing is lost after a malformed message: the stream cannot
                # be resynchronised (RFC 4475 3.1.2.3).
                self.transport.loseConnection()
                return
            tap = self.layer.tap
            if tap is not None:
                self.layer.tapped(tap, True, item.to_bytes(), self.kind, self.listener,
                                  self.peer[0], self.peer[1])
            source = Source(self.kind, self.peer[0], self.peer[1], self.listener, self)
            try:
                self.layer.handler(item, source)
            except Exception:  # noqa: BLE001
                log.failure("unhandled error processing a message from {src}", src=source)

    def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        if enabled(LogLevel.debug):
            log_wire("sending to", self.kind, self.peer[0], self.peer[1], data)
        if not self.connected_ok:
            self.pending_bytes += len(data)
            if self.pending_bytes > self.layer.tcp_write_queue_max:
                self.overflow(self.pending_bytes)
                return False
            self.pending.append(data)
            return True
        if not self.write(data):
            return False
        self.touch()
        return True

    def write(self, data: bytes) -> bool:
        """Write unless the bytes the peer has not taken exceed [proxy]
        tcp_write_queue_max: a peer that stops reading (hung, or on
        purpose) would otherwise make us keep everything sent to it."""
        self.transport.write(data)
        queued = unsent_bytes(self.transport)
        if queued > self.layer.tcp_write_queue_max:
            self.overflow(queued)
            return False
        return True

    def overflow(self, queued: int) -> None:
        """Aborted, not closed: closing would wait to send what it will not read."""
        self.closed = True
        self.layer.stats_drop("tcp_write_queue")
        log.warn("closing {k} connection with {h}:{p}: {n} bytes it has not read, over"
                 " [proxy] tcp_write_queue_max ({m})", k=self.kind, h=bracket(self.peer[0]),
                 p=self.peer[1], n=queued, m=self.layer.tcp_write_queue_max)
        if self.connected_ok:
            self.transport.abortConnection()
        self.pending.clear()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()
        if self.message_call is not None:
            self.message_call.cancel()
            self.message_call = None
        self.layer.uncount(self)
        if self.kind == "tls" and not self.secured:
            # No handshake: a peer without an acceptable certificate, an
            # impostor, or not TLS at all.  Outbound, the branches waiting on
            # it fail over now instead of at timer B/F.
            why = reason.getErrorMessage() if reason is not None else "closed"
            log.info("tls handshake with {h}:{p} failed: {r}", h=bracket(self.peer[0]),
                     p=self.peer[1], r=why)
            self.layer.stats_drop("tls_handshake")
            if self.outbound:
                self.layer.connection_failed(self)
                return
        self.layer.connection_down(self)


class InboundFactory(protocol.ServerFactory):
    def __init__(self, layer: TransportLayer, listener: Listener) -> None:
        self.layer = layer
        self.listener = listener

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:
        proto = SIPStreamProtocol(self.layer, self.listener)
        self.layer.count(proto, addr.host)
        return proto


class Admission(protocol.ServerFactory):
    """In front of a listener's factory (the TLS one too, which cannot be
    told no): a connection over a limit gets no protocol, so Twisted closes
    it as soon as it is accepted."""

    def __init__(self, layer: TransportLayer, inner: protocol.Factory) -> None:
        self.layer = layer
        self.inner = inner

    def doStart(self) -> None:
        self.inner.doStart()

    def doStop(self) -> None:
        self.inner.doStop()

    def logPrefix(self) -> str:
        return self.inner.logPrefix()

    def buildProtocol(self, addr: Any) -> Any:
        if not self.layer.admit(addr.host):
            return None
        return self.inner.buildProtocol(addr)


class OutboundFactory(protocol.ClientFactory):
    def __init__(self, proto: SIPStreamProtocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.proto.closed = True
        self.proto.layer.uncount(self.proto)
        self.proto.layer.connection_failed(self.proto)
