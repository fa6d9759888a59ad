"""UDP, TCP and TLS transports: bytes in from the network, parsed messages out
to the core; bytes out to a (transport, host, port) destination.  TLS is the
TCP stream handling under a TLS layer (contexts from sipsuite.tlsctx).

The core never touches sockets. It hands every received message to
``handler(message, source)`` and sends with ``TransportLayer.send``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol, udp
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel

from sipsuite.hosts import unbracket
from sipsuite.log import enabled, get_logger
from sipsuite.proxy.net import reuseport
from sipsuite.proxy.net.listener import Handler, Listener, Source, log_wire
from sipsuite.proxy.net.localaddr import (
    PKTINFO,
    WildcardListeners,
    is_wildcard,
    listen_pktinfo,
    source_ancillary,
)
from sipsuite.proxy.net.siblings import Siblings
from sipsuite.proxy.net.stream import (
    Admission,
    InboundFactory,
    OutboundFactory,
    SIPStreamProtocol,
)
from sipsuite.proxy.net.stun import stun_reply
from sipsuite.proxy.net.tcplimits import ConnectionLimits
from sipsuite.sip.message import ParseError, Response
from sipsuite.sip.parser import parse_datagram

log = get_logger("sipsuite.proxy.transport")

# RFC 3261 18.1.1: a request within 200 bytes of the path MTU must not go over
# UDP unreliably fragmented; we only warn-and-send, since switching a call to
# TCP behind the caller's back breaks phones that do not listen on TCP.
MAX_UDP = 65507


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


def _asks_rport(data: bytes) -> bool:
    """Whether ``data`` is a request whose top Via carries ``rport``. The
    proxy writes its own Via as ``Via: `` above every other Via
    (add_header(top=True), make_request; only a Record-Route may go above
    it), so the first such line is ours: two bounded finds, no parse."""
    if data.startswith(b"SIP/2.0 "):
        return False
    start = data.find(b"\r\nVia: ")
    if start < 0:
        return False
    return data.find(b";rport", start, data.find(b"\r\n", start + 2)) >= 0


# A response a worker got on the shared port for another worker's request
# (a next hop that answers to the source port although the Via asks for no
# rport, as sipp does): passed to the worker whose private port the Via
# names, with the original source before the message: MARK host port LF.
RELAY_MARK = b"\x7fsipsuite-relay "


#: tap(incoming, data, transport, listener, remote host, remote port).
WireTap = Callable[[bool, bytes, str, Listener, str, int], None]


_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


class SIPDatagramProtocol(protocol.DatagramProtocol):
    # listenUDP's (or listen_pktinfo's) port, whose socket send() writes to
    # directly; None until it listens.
    transport: udp.Port | None

    def __init__(self, layer: TransportLayer, listener: Listener) -> None:
        self.layer = layer
        self.listener = listener
        # Set when the socket reports each datagram's local address (localaddr).
        self.pktinfo = False
        # Worker processes: a shared socket steers other workers' responses
        # to them, a private one takes those relayed to it (RELAY_MARK).
        self.shared = False
        self.private = False

    def datagramReceived(self, data: bytes, addr: tuple[Any, ...], local: str | None = None) -> None:
        host, port = addr[0], addr[1]
        if enabled(LogLevel.debug):
            log_wire("received from", "udp", host, port, data)
        if len(data) <= 4 and not data.strip():
            # CRLF keep-alives from phones behind NAT (RFC 5626 allows them on UDP too).
            return
        if self.private and data.startswith(RELAY_MARK):
            relayed = self.layer.unwrap_relay(data, host, port, self.listener)
            if relayed is None:
                return
            data, host, port = relayed
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
        if self.shared and type(msg) is Response and self.layer.steer(msg, data, host, port, listener):
            return
        tap = self.layer.tap
        if tap is not None:
            try:
                tap(True, data, "udp", listener, host, port)
            except Exception:  # noqa: BLE001 - a broken tap must never cost a message
                log.failure("the wire tap failed on a message from {h}:{p}", h=host, p=port)
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
            log_wire("sending to", "udp", host, port, data)
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


class TransportLayer(WildcardListeners):
    """Owns the listeners and the TCP connection table."""

    def __init__(
        self,
        reactor: Any,
        handler: Handler,
        tcp_idle_timeout: float = 600.0,
        udp_buffer: int = 4 * 1024 * 1024,
        tcp_message_timeout: float = 20.0,
        tcp_write_queue_max: int = 262144,
    ) -> None:
        super().__init__()
        self.udp_buffer = udp_buffer
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.handler = handler
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_message_timeout = tcp_message_timeout
        self.tcp_write_queue_max = tcp_write_queue_max
        self.limits = ConnectionLimits()
        self.listeners: list[Listener] = []
        self.udp: dict[Listener, SIPDatagramProtocol] = {}
        # Worker processes ([proxy] workers > 1): listeners bound with
        # SO_REUSEPORT, and each UDP one's private socket (reuseport.py).
        self.workers = False
        self.private: dict[Listener, SIPDatagramProtocol] = {}
        self.private_ports: list[Any] = []
        # The other workers' private ports, the only ones steer() passes a
        # response to; the supervisor sends them (proxy/workerlink.py).
        # None until then: nothing is steered.
        self.sibling_ports: frozenset[int] | None = None
        # A worker's channel to its siblings (net/siblings.py): connections
        # other workers hold, reached through them; None with one process.
        self.siblings: Siblings | None = None
        # (host, port) -> connection; inbound and outbound alike, so responses
        # and in-dialog requests go back over the connection the peer opened.
        self.connections: dict[tuple[str, int], SIPStreamProtocol] = {}
        # (host, port) -> a connection from host at another port (its phone
        # registered that port as its Contact): see alias().
        self.aliases: dict[tuple[str, int], SIPStreamProtocol] = {}
        # Answer STUN Binding requests on UDP listeners (RFC 5626 8).
        self.stun: Callable[[], bool] = lambda: False
        self.drops: dict[str, int] = {}
        # sipsuite.tlsctx.TLSContexts when a tls: listener exists (use_tls).
        self.tls: Any = None
        # The listeners (as configured) whose clients must show a certificate.
        self.require_client_cert: Callable[[], set[str]] = set
        self.on_connection_failed: Callable[[str, int], None] | None = None
        # The wire taps (add_tap: the flight recorder, HEP export): every SIP
        # message in and out.  ``tap`` is what the hot path calls: None, the
        # one tap itself (no call in between), or a fan-out over several.
        self.tap: WireTap | None = None
        self.taps: list[WireTap] = []

    # -- set-up --------------------------------------------------------------
    def listen(self, listener: Listener) -> None:
        if listener.transport == "udp":
            proto = SIPDatagramProtocol(self, listener)
            listener.port_obj = self._listen_udp(listener.port, proto, listener.host, self.workers)
            if listener.port == 0:
                listener.port = listener.port_obj.getHost().port
            _grow_buffers(listener.port_obj.getHandle(), self.udp_buffer)
            self.udp[listener] = proto
            if self.workers:
                proto.shared = True
                self._listen_private(listener)
        elif listener.transport == "tcp":
            factory = Admission(self, InboundFactory(self, listener))
            if self.workers:
                listener.port_obj = reuseport.start(
                    reuseport.ReuseTCPPort(listener.port, factory, 50, listener.host, self.reactor))
            else:
                listener.port_obj = self.reactor.listenTCP(listener.port, factory,
                                                           interface=listener.host)
            if listener.port == 0:
                listener.port = listener.port_obj.getHost().port
        elif listener.transport == "tls" and self.tls is not None:
            configured = repr(listener)
            factory = self.tls.server_factory(
                InboundFactory(self, listener), lambda: configured in self.require_client_cert())
            if self.workers:
                listener.port_obj = reuseport.start(reuseport.ReuseTCPPort(
                    listener.port, Admission(self, factory), 50, listener.host, self.reactor))
            else:
                listener.port_obj = self.reactor.listenTCP(listener.port, Admission(self, factory),
                                                           interface=listener.host)
            if listener.port == 0:
                listener.port = listener.port_obj.getHost().port
        else:
            raise ValueError(f"unsupported transport {listener.transport}")
        self.listeners.append(listener)

    def _listen_udp(self, port: int, proto: SIPDatagramProtocol, host: str, reuse: bool) -> Any:
        """Bind a UDP socket (with SO_REUSEPORT when ``reuse``: worker processes)."""
        if is_wildcard(host) and PKTINFO and hasattr(self.reactor, "addReader"):
            proto.pktinfo = True
            if reuse:
                return reuseport.start(reuseport.ReusePktinfoPort(port, proto, host, MAX_UDP,
                                                                  self.reactor))
            return listen_pktinfo(self.reactor, port, proto, host, MAX_UDP)
        if reuse:
            return reuseport.start(reuseport.ReuseUDPPort(port, proto, host, MAX_UDP, self.reactor))
        return self.reactor.listenUDP(port, proto, interface=host, maxPacketSize=MAX_UDP)

    def _listen_private(self, listener: Listener) -> None:
        """A worker's own UDP socket beside a shared listener: requests it
        forwards leave from it and its Via names its port, so their answers
        come back to this worker, not to whichever the kernel picks for the
        shared port (net/reuseport.py)."""
        proto = SIPDatagramProtocol(self, listener)
        proto.private = True
        port_obj = self._listen_udp(0, proto, listener.host, False)
        _grow_buffers(port_obj.getHandle(), self.udp_buffer)
        listener.via_port = port_obj.getHost().port
        self.private[listener] = proto
        self.private_ports.append(port_obj)

    def steer(self, msg: Response, data: bytes, host: str, port: int, listener: Listener) -> bool:
        """A response that reached this worker's shared socket while its top
        Via names another worker's private port (its next hop answered to
        the source port of a request sent from the shared one): passed to
        that port with its source before it (RELAY_MARK). True if passed."""
        try:
            via = msg.top_via
        except ValueError:
            return False
        root = listener.root
        siblings = self.sibling_ports
        if (via.port is None or via.port in (listener.via_port, root.port)
                or siblings is None or via.port not in siblings):
            return False
        if unbracket(via.host) not in (listener.advertise, root.advertise, listener.host):
            return False
        proto = self.udp.get(root)
        if proto is None:
            return False
        dest = root.host if not is_wildcard(root.host) else (
            "::1" if root.family == socket.AF_INET6 else "127.0.0.1")
        return proto.send(RELAY_MARK + f"{host} {port}\n".encode() + data, dest, via.port)

    def unwrap_relay(self, data: bytes, host: str, port: int,
                     listener: Listener) -> tuple[bytes, str, int] | None:
        """The message and original source of a response another worker
        passed on (steer), if it came from a shared socket of ours."""
        root = listener.root
        ours = host == root.host or host in _LOOPBACK
        nl = data.find(b"\n")
        fields = data[len(RELAY_MARK):nl].split() if nl > 0 else []
        if port != root.port or not ours or len(fields) != 2 or not fields[1].isdigit():
            self.stats_drop("relay")
            return None
        return data[nl + 1:], fields[0].decode("ascii", "replace"), int(fields[1])

    def stop(self) -> list[Any]:
        if self.siblings is not None:
            self.siblings.stop()
        results = [p.stopListening() for p in self.private_ports]
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
        return self.outgoing(chosen.root, unbracket(host), peer, arrived)

    # -- sending ---------------------------------------------------------------
    def send(self, data: bytes, transport: str, host: str, port: int, listener: Listener,
             name: str = "", connect: bool = True) -> bool:
        """``name``: for TLS, the host the certificate must be for (default:
        ``host``). ``connect=False``: over an existing connection only (a flow)."""
        host = unbracket(host)
        tap = self.tap
        if tap is not None:
            try:
                tap(False, data, transport, listener, host, port)
            except Exception:  # noqa: BLE001 - a broken tap must never cost a message
                log.failure("the wire tap failed on a message to {h}:{p}", h=host, p=port)
        if transport == "udp":
            proto = None
            if self.private and _asks_rport(data):
                # A worker's request whose Via asks for rport (a dispatcher
                # probe) is answered at its source port: it leaves from the
                # worker's private port. Every other request leaves from the
                # shared port, the one a phone behind a port-restricted NAT
                # registered to and lets through, while its Via names the
                # private port, where RFC 3261 18.2.2 sends the answer; the
                # answers and CRLF keep-alives leave from the shared port too.
                proto = self.private.get(listener.root)
            proto = proto or self.udp.get(listener.root)
            if proto is None:
                return False
            return proto.send(data, host, port, listener.host if listener.parent is not None else None)
        conn = self.connection_to(host, port)
        if (conn is None and self.siblings is not None and not (transport == "tls" and name)
                and self.siblings.hand_over(transport, host, port, data)):
            # Another worker holds the peer's connection: it writes the
            # message there (never a new connection to a phone behind NAT).
            # Not for a TLS host name: a connection the peer opened proves none.
            return True
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
            if self.siblings is not None and not conn.outbound:
                self.siblings.have(conn, host, port)

    def sibling_holds(self, transport: str, host: str, port: int) -> str | None:
        """The listener name (repr) of another worker's connection to
        host:port, which ``send`` reaches through that worker; None when no
        sibling holds one (and always with one process)."""
        if self.siblings is None:
            return None
        held = self.siblings.holder(transport, host, port)
        return None if held is None else held[1]

    def accepted_connections(self) -> list[SIPStreamProtocol]:
        """The live connections peers opened to us."""
        return [c for c in self.connections.values() if not c.outbound and not c.closed]

    def relayed_in(self, msg: Response, transport: str, host: str, port: int,
                   listener: Listener) -> None:
        """A response a sibling passed on (net/siblings.py): handled as if
        it had arrived from host:port on our own connection."""
        source = Source(transport, host, port, listener)
        try:
            self.handler(msg, source)
        except Exception:  # noqa: BLE001 - one bad message must never stop the channel
            log.failure("unhandled error processing a message from {src}", src=source)

    def set_stun(self, enabled: Callable[[], bool]) -> None:
        """Answer STUN Binding requests on the UDP listeners while
        ``enabled()`` says so (outbound, RFC 5626 8)."""
        self.stun = enabled

    def use_tls(self, contexts: Any, require_client_cert: Callable[[], set[str]]) -> None:
        """Serve and open TLS with ``contexts`` (a sipsuite.tlsctx.TLSContexts);
        ``require_client_cert()`` names the listeners (as configured) whose
        clients must show a certificate, asked at each handshake.  Called by
        the wiring before the listeners are bound."""
        self.tls = contexts
        self.require_client_cert = require_client_cert

    def send_on(self, data: bytes, conn: SIPStreamProtocol) -> bool:
        tap = self.tap
        if tap is not None:
            self.tapped(tap, False, data, conn.kind, conn.listener, conn.peer[0], conn.peer[1])
        return conn.send(data)

    @staticmethod
    def tapped(tap: WireTap, incoming: bool, data: bytes, transport: str, listener: Listener,
               host: str, port: int) -> None:
        try:
            tap(incoming, data, transport, listener, host, port)
        except Exception:  # noqa: BLE001 - a broken tap must never cost a message
            log.failure("the wire tap failed on a message to/from {h}:{p}", h=host, p=port)

    def set_tap(self, tap: WireTap | None) -> None:
        """Hand every SIP message received (after parsing) and every one
        sent to ``tap(incoming, data, transport, listener, host, port)``
        alone, instead of whatever taps there were; None removes them all.
        CRLF keep-alives and STUN are not SIP messages and are not shown."""
        self.taps = [] if tap is None else [tap]
        self._retap()

    def add_tap(self, tap: WireTap) -> None:
        """One more tap beside the others (the flight recorder and the HEP
        export each have theirs); each is called in the order added, and
        one that raises costs the others nothing."""
        self.taps.append(tap)
        self._retap()

    def remove_tap(self, tap: WireTap) -> None:
        if tap in self.taps:
            self.taps.remove(tap)
        self._retap()

    def _retap(self) -> None:
        taps = tuple(self.taps)
        if not taps:
            self.tap = None
        elif len(taps) == 1:
            self.tap = taps[0]
        else:
            tapped = self.tapped

            def fan_out(incoming: bool, data: bytes, transport: str, listener: Listener,
                        host: str, port: int) -> None:
                for tap in taps:
                    tapped(tap, incoming, data, transport, listener, host, port)

            self.tap = fan_out

    def connect(self, host: str, port: int, listener: Listener, name: str = "") -> SIPStreamProtocol:
        proto = SIPStreamProtocol(self, listener)
        proto.peer = (host, port)
        proto.outbound = True
        self.count(proto, None)
        self.connections[(host, port)] = proto
        factory: Any = OutboundFactory(proto)
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
        if self.siblings is not None and not conn.outbound:
            self.siblings.have(conn, *conn.peer)

    def connection_down(self, conn: SIPStreamProtocol) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
            if self.siblings is not None and not conn.outbound:
                self.siblings.gone(conn)
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
        self.tcp_write_queue_max = proxy.tcp_write_queue_max
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
