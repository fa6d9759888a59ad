"""Wildcard listeners (``udp:0.0.0.0:5060``, ``tcp:[::]:5060``): which local
address a message reached, and which one an answer or a forwarded request
leaves from.

Kamailio binds every interface address separately; that misses addresses
added after start-up and 127.0.0.2 and its like (local on Linux without being
an interface address). Instead the wildcard UDP socket reads each datagram
with its IP_PKTINFO / IPV6_PKTINFO (the address it was sent to) and sends with
the source address set the same way; a TCP connection's own socket names its
local address.  Where the kernel lacks this (not Linux), the listener
advertises one guessed address as before.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import udp
from twisted.python import log as twisted_log

from sipsuite.hosts import ip_literal
from sipsuite.log import get_logger

if TYPE_CHECKING:
    from sipsuite.proxy.net.listener import Listener

log = get_logger("sipsuite.proxy.transport")

WILDCARDS = ("0.0.0.0", "::")
# Linux's value; Python 3.11's socket module does not export it.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO = sys.platform.startswith("linux") and hasattr(socket.socket, "recvmsg")
_ANCILLARY = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(12) if PKTINFO else 0
_READ_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
_READ_REFUSED = frozenset({errno.ECONNREFUSED})


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def enable_pktinfo(sock: socket.socket) -> None:
    """Ask for the destination address of every datagram (a [::] socket gets
    IPv4 ones as v4-mapped IPV6_PKTINFO too)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def local_address(ancillary: list[tuple[int, int, bytes]]) -> str | None:
    """The local address a datagram reached, from its ancillary data.

    IPv4 gives ipi_spec_dst, not the header's ipi_addr: for a broadcast the
    former is our interface's address, the address an answer must come from."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[4:8])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def source_ancillary(host: str) -> list[tuple[int, int, bytes]]:
    """The control message that makes a datagram leave from ``host`` (no
    interface named: the kernel routes it by destination as usual)."""
    if ":" in host:
        if host.lower().startswith("::ffff:"):
            return []  # an IPv4 peer of a [::] socket: the IPv4 path ignores IPV6_PKTINFO
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                 socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", 0))]
    return [(socket.IPPROTO_IP, IP_PKTINFO,
             struct.pack("=i", 0) + socket.inet_aton(host) + bytes(4))]


class PktinfoPort(udp.Port):
    """A Twisted UDP port that reads with recvmsg() so the protocol learns the
    local address of each datagram: ``datagramReceived(data, addr, local)``."""

    def _bindSocket(self) -> None:
        super()._bindSocket()
        enable_pktinfo(self.socket)

    def doRead(self) -> None:
        read = 0
        while read < self.maxThroughput:
            try:
                data, ancillary, _flags, addr = self.socket.recvmsg(self.maxPacketSize, _ANCILLARY)
            except OSError as exc:
                if exc.errno in _READ_AGAIN or exc.errno in _READ_REFUSED:
                    # Refused: an ICMP error for an earlier send of ours; nothing to read.
                    return
                raise
            read += len(data)
            try:
                self.protocol.datagramReceived(data, addr[:2], local_address(ancillary))
            except BaseException:  # noqa: BLE001 - as Twisted's own Port: log, keep reading
                twisted_log.err()


def listen_pktinfo(reactor: Any, port: int, protocol: Any, interface: str,
                   max_packet: int) -> PktinfoPort:
    """reactor.listenUDP, with the local address of each datagram."""
    p = PktinfoPort(port, protocol, interface, max_packet, reactor)
    p.startListening()
    return p


class RouteSources:
    """The source address the kernel would send to a destination from
    (connect() on a UDP socket picks a route and sends nothing), cached for
    ``ttl`` seconds: a forwarded request to another network leaves from the
    address that network reaches us on, not the one it arrived on."""

    def __init__(self, ttl: float = 30.0, size: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self.cache: dict[str, tuple[str | None, float]] = {}

    def source(self, host: str) -> str | None:
        now = self.clock()
        hit = self.cache.get(host)
        if hit is not None and hit[1] > now:
            return hit[0]
        found = self._ask(host)
        if len(self.cache) >= self.size:
            self.cache.clear()  # destinations beyond the bound: start over, cheap to refill
        self.cache[host] = (found, now + self.ttl)
        return found

    @staticmethod
    def _ask(host: str) -> str | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((host, 9))
                return str(s.getsockname()[0])
        except OSError:
            return None  # no route: the caller keeps its own choice


def is_local(host: str) -> bool:
    """Whether ``host`` is an address of this host: one a socket may bind to
    (127.0.0.2 is, without being an interface's address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


class WildcardListeners:
    """The TransportLayer's wildcard listeners: a child Listener per local
    address they are reached on, and which one a message leaves from."""

    MAX_CHILDREN = 256
    listeners: list[Listener]

    def __init__(self) -> None:
        self.children: dict[Listener, dict[str, Listener]] = {}
        # Told of each local address a wildcard listener is first reached on.
        self.on_local_address: Callable[[str], None] | None = None
        self.routes = RouteSources()

    def local_listener(self, listener: Listener, local: str) -> Listener:
        """``listener`` as reached on the local address ``local``: for a
        wildcard one, its child for that address (made on first use, the
        same object after), else ``listener`` itself."""
        root = listener.root
        if not is_wildcard(root.host):
            return listener
        children = self.children.setdefault(root, {})
        child = children.get(local)
        if child is not None:
            return child
        if len(children) >= self.MAX_CHILDREN or is_wildcard(local):
            # 127.0.0.0/8 alone holds millions of local addresses: past the
            # bound, the listener's one guessed address serves the rest.
            return root
        child = children[local] = root.child(local)
        if self.on_local_address is not None:
            self.on_local_address(local)
        log.info("{l} reached on {a}: advertised there as {s}", l=root, a=local, s=child.sent_by())
        return child

    def all_listeners(self) -> list[Listener]:
        """The configured listeners and the children of the wildcard ones."""
        return [*self.listeners, *(c for kids in self.children.values() for c in kids.values())]

    def listener_named(self, name: str) -> Listener | None:
        """The listener whose repr() is ``name`` ("udp:127.0.0.2:5060", as a
        registration or a flow token recorded it): a configured one, or a
        wildcard's child for one of our addresses (made again after a restart)."""
        for listener in self.all_listeners():
            if repr(listener) == name:
                return listener
        transport, _, rest = name.partition(":")
        text, _, port = rest.rpartition(":")
        host = ip_literal(text)
        if host is None or not port.isdigit():
            return None
        for listener in self.listeners:
            if (is_wildcard(listener.host) and listener.transport == transport
                    and listener.port == int(port) and (":" in host) == (":" in listener.host)
                    and is_local(host)):
                return self.local_listener(listener, host)
        return None

    def outgoing(self, root: Listener, host: str, peer: str | None,
                 arrived: str | None) -> Listener:
        """Which child of the wildcard ``root`` sends to ``host``: the local
        address a request ``arrived`` on if the kernel sends to ``host`` from
        that address, or from the same address as to the request's sender
        ``peer`` (both lie the same way: loopback, one LAN); else the address
        the kernel sends to ``host`` from (the next hop is on another network,
        which may not reach the arrival address at all)."""
        via = self.routes.source(host)
        if arrived is not None and (via is None or via == arrived or (
                peer is not None and self.routes.source(peer) == via)):
            return self.local_listener(root, arrived)
        return root if via is None else self.local_listener(root, via)
