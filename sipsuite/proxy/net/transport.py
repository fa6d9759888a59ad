"""UDP, TCP and TLS transports: bytes in from the network, parsed messages out
to the core; bytes out to a (transport, host, port) destination.  TLS is the
TCP stream handling under a TLS layer (contexts from sipsuite.tlsctx).

The core never touches sockets. It hands every received message to
``handler(message, source)`` and sends with ``TransportLayer.send``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.logger import LogLevel
from zope.interface import implementer

from sipsuite.log import enabled, get_logger
from sipsuite.proxy.net.localaddr import (
    PKTINFO,
    WildcardListeners,
    is_wildcard,
    listen_pktinfo,
    source_ancillary,
)
from sipsuite.proxy.net.stun import stun_reply
from sipsuite.proxy.net.tcplimits import ConnectionLimits
from sipsuite.sip.message import (
    KeepAlive,
    ParseError,
    Request,
    Response,
    StreamParser,
    parse_datagram,
)

log = get_logger("sipsuite.proxy.transport")

# RFC 3261 18.1.1: a request within 200 bytes of the path MTU must not go over
# UDP unreliably fragmented; we only warn-and-send, since switching a call to
# TCP behind the caller's back breaks phones that do not listen on TCP.
MAX_UDP = 65507


def strip_brackets(host: str) -> str:
    if host.startswith("["):
        return host[1:-1]
    return host


def bracket(host: str) -> str:
    """IPv6 literals carry brackets in Via, Record-Route and URIs."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(strip_brackets(host))
    except ValueError:
        return False
    return True


def _grow_buffers(sock: socket.socket, size: int) -> None:
    """A burst (or a pause of ours) must queue in the kernel, not be lost:
    an ACK for a 2xx is never retransmitted. The default 208 KiB holds well
    under a second of a few hundred calls/s."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        try:
            # The FORCE variants pass net.core.*mem_max when we run as root.
            sock.setsockopt(socket.SOL_SOCKET, force if force is not None else plain, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                log.warn("could not set UDP socket buffers to {n} bytes", n=size)


def _log_wire(what: str, transport: str, host: str, port: int, data: bytes) -> None:
    """Whole messages at debug level, as sngrep would show them."""
    text = data.decode("utf-8", "backslashreplace")
    log.debug("{what} {t}:{h}:{p} ({n} bytes):\n{text}", what=what, t=transport, h=bracket(host),
              p=port, n=len(data), text=text)


class Listener:
    """One configured listening socket, and the address it advertises.

    A wildcard one (0.0.0.0, ::) has a child per local address messages
    reach it on (TransportLayer.local_listener): the same socket, that
    address in Via and Record-Route (unless ``pinned``: [proxy] advertise),
    and answers sent from it."""

    __slots__ = ("transport", "host", "port", "advertise", "advertise_port", "family", "port_obj",
                 "pinned", "parent")

    def __init__(self, transport: str, host: str, port: int, advertise: str,
                 advertise_port: int | None = None, pinned: bool = False) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.advertise = advertise
        # Behind a port-mapping NAT the port peers reach may differ too.
        self.advertise_port = advertise_port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.port_obj: Any = None
        self.pinned = pinned
        self.parent: Listener | None = None

    @property
    def root(self) -> Listener:
        """The configured listener (this one, or the wildcard it is a child of)."""
        return self.parent if self.parent is not None else self

    def child(self, local: str) -> Listener:
        """This wildcard listener as reached on the local address ``local``."""
        # An IPv4 peer of a [::] socket reached ::ffff:a.b.c.d: it knows us as a.b.c.d.
        mapped = ipaddress.ip_address(local).ipv4_mapped if ":" in local else None
        shown = self.advertise if self.pinned else str(mapped or local)
        child = Listener(self.transport, local, self.port, shown, self.advertise_port, self.pinned)
        child.family = self.family  # the socket's: a [::] socket reaches v4-mapped peers too
        child.parent = self
        child.port_obj = self.port_obj
        return child

    def sent_by(self) -> str:
        return f"{bracket(self.advertise)}:{self.advertise_port or self.port}"

    def __repr__(self) -> str:
        return f"{self.transport}:{bracket(self.host)}:{self.port}"


class Source:
    """Where a message came from: enough to answer it the way RFC 3261 18.2.2
    and RFC 3581 ask, and to reuse its TCP connection."""

    __slots__ = ("transport", "host", "port", "listener", "connection")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        listener: Listener,
        connection: SIPStreamProtocol | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.listener = listener
        self.connection = connection

    def __str__(self) -> str:
        return f"{self.transport}:{bracket(self.host)}:{self.port}"


Handler = Callable[[Request | Response, Source], None]


class SIPDatagramProtocol(protocol.DatagramProtocol):
    def __init__(self, layer: TransportLayer, listener: Listener) -> None:
        self.layer = layer
        self.listener = listener
        # Set when the socket reports each datagram's local address (localaddr).
        self.pktinfo = False

    def datagramReceived(self, data: bytes, addr: tuple[Any, ...], local: str | None = None) -> None:
        host, port = addr[0], addr[1]
        if enabled(LogLevel.debug):
            _log_wire("received from", "udp", host, port, data)
        if len(data) <= 4 and not data.strip():
            # CRLF keep-alives from phones behind NAT (RFC 5626 allows them on UDP too).
            return
        listener = self.listener if local is None else self.layer.local_listener(self.listener, local)
        origin = listener.host if listener.parent is not None else None
        if data[0] < 2 and self.layer.stun():
            # No SIP message starts with a control byte; a STUN one does (RFC 5389 6).
            reply = stun_reply(data, host, port)
            if reply is not None:
                self.send(reply, host, port, origin)
            return
        try:
            msg = parse_datagram(data)
        except ParseError as err:
            self.layer.stats_drop("parse")
            self.layer.answer_parse_error(err, data, host, port, self, origin)
            return
        source = Source("udp", host, port, listener)
        try:
            self.layer.handler(msg, source)
        except Exception:  # noqa: BLE001 - one bad message must never stop the socket
            log.failure("unhandled error processing a message from {src}", src=source)

    def send(self, data: bytes, host: str, port: int, origin: str | None = None) -> bool:
        """``origin``: the local address to send from (a wildcard socket's
        child listener), else the kernel's choice."""
        transport = self.transport
        if transport is None:
            return False
        if enabled(LogLevel.debug):
            _log_wire("sending to", "udp", host, port, data)
        try:
            # Straight to the socket: Port.write re-validates the address
            # family on every datagram, and our destinations are always IP
            # literals of the listener's family (pick_listener saw to that).
            if origin is not None and self.pktinfo:
                transport.socket.sendmsg([data], source_ancillary(origin), 0, (host, port))
            else:
                transport.socket.sendto(data, (host, port))
        except InterruptedError:
            return self.send(data, host, port, origin)
        except (OSError, AttributeError) as exc:
            self.layer.stats_drop("send")
            log.warn("udp send to {h}:{p} failed: {e}", h=host, p=port, e=exc)
            return False
        return True


@implementer(IHandshakeListener)
class SIPStreamProtocol(protocol.Protocol):
    """One TCP or TLS connection, inbound or outbound; both carry requests and
    responses in either direction (RFC 3261 18.3)."""

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
        self.connected_ok = False
        self.closed = False
        self.aliases: set[tuple[str, int]] = set()  # keys aliased to it (TransportLayer.alias)

    def connectionMade(self) -> None:
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
            _log_wire("received from", self.kind, self.peer[0], self.peer[1], data)
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
                # RFC 5626 3.5.1: a double-CRLF ping is answered with one CRLF.
                self.transport.write(b"\r\n")
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
            source = Source(self.kind, self.peer[0], self.peer[1], self.listener, self)
            try:
                self.layer.handler(item, source)
            except Exception:  # noqa: BLE001
                log.failure("unhandled error processing a message from {src}", src=source)

    def send(self, data: bytes) -> bool:
        if self.closed:
            return False
        if enabled(LogLevel.debug):
            _log_wire("sending to", self.kind, self.peer[0], self.peer[1], data)
        if not self.connected_ok:
            self.pending.append(data)
            return True
        self.transport.write(data)
        self.touch()
        return True

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


class _InboundFactory(protocol.ServerFactory):
    def __init__(self, layer: TransportLayer, listener: Listener) -> None:
        self.layer = layer
        self.listener = listener

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:
        proto = SIPStreamProtocol(self.layer, self.listener)
        self.layer.count(proto, addr.host)
        return proto


class _Admission(protocol.ServerFactory):
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


class _OutboundFactory(protocol.ClientFactory):
    def __init__(self, proto: SIPStreamProtocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.proto.closed = True
        self.proto.layer.uncount(self.proto)
        self.proto.layer.connection_failed(self.proto)


class TransportLayer(WildcardListeners):
    """Owns the listeners and the TCP connection table."""

    def __init__(
        self,
        reactor: Any,
        handler: Handler,
        tcp_idle_timeout: float = 600.0,
        udp_buffer: int = 4 * 1024 * 1024,
        tcp_message_timeout: float = 20.0,
    ) -> None:
        super().__init__()
        self.udp_buffer = udp_buffer
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.handler = handler
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_message_timeout = tcp_message_timeout
        self.limits = ConnectionLimits()
        self.listeners: list[Listener] = []
        self.udp: dict[Listener, SIPDatagramProtocol] = {}
        # (host, port) -> connection; inbound and outbound alike, so responses
        # and in-dialog requests go back over the connection the peer opened.
        self.connections: dict[tuple[str, int], SIPStreamProtocol] = {}
        # (host, port) -> a connection from host at another port (its phone
        # registered that port as its Contact): see alias().
        self.aliases: dict[tuple[str, int], SIPStreamProtocol] = {}
        # Answer STUN Binding requests on UDP listeners (RFC 5626 8).
        self.stun: Callable[[], bool] = lambda: False
        self.drops: dict[str, int] = {}
        # sipsuite.tlsctx.TLSContexts, set by the service when a tls: listener exists.
        self.tls: Any = None
        # The listeners (as configured) whose clients must show a certificate.
        self.require_client_cert: Callable[[], set[str]] = set
        self.on_connection_failed: Callable[[str, int], None] | None = None

    # -- set-up --------------------------------------------------------------
    def listen(self, listener: Listener) -> None:
        if listener.transport == "udp":
            proto = SIPDatagramProtocol(self, listener)
            if is_wildcard(listener.host) and PKTINFO and hasattr(self.reactor, "addReader"):
                listener.port_obj = listen_pktinfo(self.reactor, listener.port, proto,
                                                   listener.host, MAX_UDP)
                proto.pktinfo = True
            else:
                listener.port_obj = self.reactor.listenUDP(
                    listener.port, proto, interface=listener.host, maxPacketSize=MAX_UDP
                )
            if listener.port == 0:
                listener.port = listener.port_obj.getHost().port
            _grow_buffers(listener.port_obj.getHandle(), self.udp_buffer)
            self.udp[listener] = proto
        elif listener.transport == "tcp":
            listener.port_obj = self.reactor.listenTCP(
                listener.port, _Admission(self, _InboundFactory(self, listener)),
                interface=listener.host
            )
            if listener.port == 0:
                listener.port = listener.port_obj.getHost().port
        elif listener.transport == "tls" and self.tls is not None:
            configured = repr(listener)
            factory = self.tls.server_factory(
                _InboundFactory(self, listener), lambda: configured in self.require_client_cert())
            listener.port_obj = self.reactor.listenTCP(listener.port, _Admission(self, factory),
                                                       interface=listener.host)
            if listener.port == 0:
                listener.port = listener.port_obj.getHost().port
        else:
            raise ValueError(f"unsupported transport {listener.transport}")
        self.listeners.append(listener)

    def stop(self) -> list[Any]:
        results = []
        for listener in self.listeners:
            if listener.port_obj is not None:
                results.append(listener.port_obj.stopListening())
        for conn in list(self.connections.values()):
            conn.transport.loseConnection()
        return results

    # -- choosing an outgoing socket ----------------------------------------
    def pick_listener(self, transport: str, host: str, prefer: Listener | None,
                      peer: str | None = None) -> Listener | None:
        """The listener to send to ``host`` from: ``prefer`` (the one a
        request arrived on) when it fits, else the first of the transport and
        family; on a wildcard, which local address (localaddr.outgoing)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        chosen = None
        if prefer is not None and prefer.transport == transport and prefer.family == family:
            chosen = prefer
        else:
            chosen = next((li for li in self.listeners
                           if li.transport == transport and li.family == family), None)
        if chosen is None or not is_wildcard(chosen.root.host):
            return chosen
        # The local address the request arrived on, whichever transport it used.
        arrived = (prefer.host if prefer is not None and prefer.parent is not None
                   and prefer.family == family else None)
        return self.outgoing(chosen.root, strip_brackets(host), peer, arrived)

    # -- sending ---------------------------------------------------------------
    def send(self, data: bytes, transport: str, host: str, port: int, listener: Listener,
             name: str = "", connect: bool = True) -> bool:
        """``name``: for TLS, the host the certificate must be for (default:
        ``host``). ``connect=False``: over an existing connection only (a flow)."""
        host = strip_brackets(host)
        if transport == "udp":
            proto = self.udp.get(listener.root)
            if proto is None:
                return False
            return proto.send(data, host, port, listener.host if listener.parent is not None else None)
        conn = self.connection_to(host, port)
        if not connect and (conn is None or conn.kind != transport):
            return False
        if (conn is None or conn.closed or conn.kind != transport
                or (transport == "tls" and not self._proves(conn, name or host, bool(name)))):
            if transport == "tls" and (self.tls is None or not self.tls.name_ok(name or host)):
                # No TLS, or a name no certificate can be checked for (IDNA
                # refuses it): the branch fails over now.
                self.stats_drop("tls_name")
                return False
            if not self.admit(None):
                return False
            conn = self.connect(host, port, listener, name)
        return conn.send(data)

    @staticmethod
    def _proves(conn: SIPStreamProtocol, name: str, named: bool) -> bool:
        """Whether a TLS connection may carry a request for ``name``: one we
        opened and checked for that name (two names may share an address).
        A connection the peer opened was checked for no name at all: fine
        for an address (a phone's flow, a response), never for a host name
        (RFC 5922: the certificate must be for the name we meant)."""
        if conn.outbound:
            return conn.tls_name == name
        return not named

    def connection_to(self, host: str, port: int) -> SIPStreamProtocol | None:
        """The live connection to (host, port), or one aliased to it."""
        conn = self.connections.get((host, port)) or self.aliases.get((host, port))
        return None if conn is None or conn.closed else conn

    def alias(self, conn: SIPStreamProtocol, host: str, port: int) -> None:
        """Kamailio's tcp connection aliasing: requests to (host, port) go
        over ``conn`` while it lives, unless a connection of its own exists."""
        key = (host, port)
        if key not in self.connections and not conn.closed:
            self.aliases[key] = conn
            conn.aliases.add(key)

    def send_on(self, data: bytes, conn: SIPStreamProtocol) -> bool:
        return conn.send(data)

    def connect(self, host: str, port: int, listener: Listener, name: str = "") -> SIPStreamProtocol:
        proto = SIPStreamProtocol(self, listener)
        proto.peer = (host, port)
        proto.outbound = True
        self.count(proto, None)
        self.connections[(host, port)] = proto
        factory: Any = _OutboundFactory(proto)
        if proto.kind == "tls":
            proto.tls_name = name or host
            factory = self.tls.client_factory(factory, proto.tls_name)
        # From a wildcard's child: from the address our Via and Record-Route name.
        if listener.parent is not None:
            self.reactor.connectTCP(host, port, factory, timeout=10, bindAddress=(listener.host, 0))
        else:
            self.reactor.connectTCP(host, port, factory, timeout=10)
        return proto

    def connection_up(self, conn: SIPStreamProtocol) -> None:
        self.connections[conn.peer] = conn

    def connection_down(self, conn: SIPStreamProtocol) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
        for key in conn.aliases:
            if self.aliases.get(key) is conn:
                del self.aliases[key]

    def connection_failed(self, conn: SIPStreamProtocol) -> None:
        self.connection_down(conn)
        if self.on_connection_failed is not None:
            self.on_connection_failed(conn.peer[0], conn.peer[1])

    # -- limits --------------------------------------------------------------------
    def configure(self, proxy: Any) -> None:
        """Take the [proxy] TCP settings that may change at run time; open
        connections over a lowered limit stay, new ones are refused."""
        self.tcp_message_timeout = proxy.tcp_message_timeout
        self.limits.max_connections = proxy.tcp_max_connections
        self.limits.max_per_source = proxy.tcp_max_per_source

    def admit(self, host: str | None) -> bool:
        """Whether one more connection (from ``host``, or None: to a next hop) may open."""
        cause = self.limits.refusal(host)
        if cause is None:
            return True
        self.stats_drop(cause)
        self.limits.refused(cause, host)
        return False

    def count(self, conn: SIPStreamProtocol, host: str | None) -> None:
        conn.counted = True
        conn.source_key = host
        self.limits.opened(host)

    def uncount(self, conn: SIPStreamProtocol) -> None:
        if conn.counted:
            conn.counted = False
            self.limits.closed(conn.source_key)

    # -- malformed input -------------------------------------------------------
    def stats_drop(self, cause: str) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + 1

    def answer_parse_error(
        self, err: ParseError, data: bytes, host: str, port: int, proto: SIPDatagramProtocol,
        origin: str | None = None,
    ) -> None:
        reply = err.response_bytes()
        log.info("malformed message from udp:{h}:{p}: {s} {r}", h=host, p=port, s=err.status, r=err.reason)
        if reply is None:
            return
        # Answer where RFC 3261 18.2.2 / RFC 3581 would: the source address,
        # at the rport (source port) when asked, else the Via sent-by port.
        via = err.source_via
        dest_port = port
        if via is not None and via.rport is None:
            dest_port = via.port or 5060
        proto.send(reply, host, dest_port, origin)
