"""Relay ports on real sockets: binding, the packet loop, closing.

The sans-IO table (table.py) decides which port pair a call party gets and
where each packet goes; this module owns the sockets behind those ports.
:class:`MediaPorts` is the table's PortAllocator, so a port pair is bound the
moment the table allocates it and closed the moment the table releases it
(D, timeout, X, a new port for a leg, shutdown): sockets cannot outlive their
sessions, nor sessions run without sockets.

A pair the allocator draws may be held by another program: it is kept out of
the pool for a while (:data:`HOLD_TIME`) and the next pair is tried, so the
control command still gets a port, or E71/E72 when none binds.

The packet path is plain sockets under the reactor (``addReader``), not
``listenUDP``: one recvfrom, one ``Session.on_packet`` and one sendto per
packet, no per-packet Twisted machinery, and a socket that closes at once
(a udp.Port closes on the next reactor turn, and its port could not be
handed out again before then).  Packets are sent from the *other* leg's
socket: the port that party sends to, which is what symmetric RTP (RFC 4961)
and NATs in front of phones expect to see.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from sipsuite.log import get_logger
from sipsuite.rtprelay.kernel import KernelPlane
from sipsuite.rtprelay.ports import PortAllocator, PortsExhausted
from sipsuite.rtprelay.session import DROP_NO_DESTINATION, Leg, Session

__all__ = [
    "HOLD_TIME",
    "MediaPorts",
    "MediaSocket",
    "PortPair",
    "check_media_address",
    "is_wildcard",
]

log = get_logger("sipsuite.rtprelay.media")

#: How long a port pair that failed to bind (another program has it) stays out
#: of the pool before it is tried again.
HOLD_TIME = 60.0
#: Pairs tried for one allocation before the command is answered "no ports":
#: a range mostly held by others should fail the call, not stall the reactor.
MAX_BIND_TRIES = 16
#: Datagrams read per wake-up of one socket, so that one busy call cannot
#: starve the others (and the control sockets) of the reactor.
READS_PER_WAKEUP = 32
#: Larger than any UDP payload over IPv4 or IPv6 without jumbograms.
MAX_DATAGRAM = 65535


def is_wildcard(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _bind(address: str, port: int) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    try:
        if ":" in address:
            # IPv6 only: v4-mapped sources ("::ffff:192.0.2.1") would never
            # equal the addresses the signalling gave.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setblocking(False)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def check_media_address(address: str) -> None:
    """Raise OSError if nothing can be bound on ``address`` (not one of this
    host's addresses): a start-up check, so a typo fails at once and not as
    'no ports' on every call."""
    _bind(address, 0).close()


class _Counters:
    """Packet-path events that belong to no session."""

    __slots__ = ("send_errors", "receive_errors", "received")

    def __init__(self) -> None:
        self.send_errors = 0
        self.receive_errors = 0
        # Datagrams the relay process read: with the kernel data plane on,
        # what did not go the kernel's way.
        self.received = 0


@implementer(IReadDescriptor)
class MediaSocket:
    """One bound relay port (RTP or RTCP) of one leg, read by the reactor."""

    __slots__ = (
        "sock", "address", "port", "rtcp", "session", "leg", "peer", "clock", "counters",
        "kernel", "_fileno", "_v6", "_reading", "_reactor",
    )

    def __init__(self, sock: socket.socket, address: str, port: int, rtcp: bool,
                 reactor: Any, clock: Callable[[], float], counters: _Counters,
                 kernel: KernelPlane | None = None) -> None:
        self.sock = sock
        self.address = address
        self.port = port
        self.rtcp = rtcp
        self.session: Session | None = None
        self.leg: Leg | None = None
        # The other leg's socket of the same kind: what this socket's packets
        # are sent from.  None until that leg has a port.
        self.peer: MediaSocket | None = None
        self.clock = clock
        self.counters = counters
        self.kernel = kernel
        self._fileno = sock.fileno()
        self._v6 = sock.family == socket.AF_INET6
        self._reading = False
        self._reactor = reactor

    def __repr__(self) -> str:
        kind = "rtcp" if self.rtcp else "rtp"
        return f"<MediaSocket {kind} {self.address}:{self.port}>"

    # IReadDescriptor / ILoggingContext
    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "rtp-relay"

    def connectionLost(self, reason: Failure) -> None:
        # The reactor gives up on us (it is shutting down): just close.
        self.close()

    def start(self, session: Session, leg: Leg) -> None:
        self.session = session
        self.leg = leg
        if not self._reading and self._fileno >= 0:
            self._reactor.addReader(self)
            self._reading = True

    def close(self) -> None:
        if self._reading:
            self._reactor.removeReader(self)
            self._reading = False
        if self._fileno >= 0:
            self.sock.close()
            self._fileno = -1
        self.peer = None
        self.session = None

    def doRead(self) -> None:
        """The hot path: every relayed packet of the leg comes through here."""
        session = self.session
        leg = self.leg
        if session is None or leg is None:
            return
        recvfrom = self.sock.recvfrom
        rtcp = self.rtcp
        v6 = self._v6
        on_packet = session.on_packet
        kernel = self.kernel
        now = self.clock()  # one clock read per wake-up: the packets arrived together
        read = 0
        try:
            for _ in range(READS_PER_WAKEUP):
                try:
                    data, src = recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    return
                except InterruptedError:
                    continue
                except OSError:
                    # An ICMP error queued on the socket, or the socket is gone:
                    # nothing to relay either way.
                    self.counters.receive_errors += 1
                    if self._fileno < 0:
                        return
                    continue
                read += 1
                if v6:
                    src = src[:2]  # (host, port, flowinfo, scope_id) -> (host, port)
                if kernel is not None:
                    if not rtcp:
                        kernel.before_packet(leg, data, src)
                    dest = on_packet(leg, data, src, now, rtcp)
                    # A latch learnt or moved: the kernel's flows follow it.
                    kernel.packet_seen(session)
                else:
                    dest = on_packet(leg, data, src, now, rtcp)
                if dest is None:
                    continue
                peer = self.peer
                if peer is None:
                    self._unsendable(leg, data)
                    continue
                try:
                    peer.sock.sendto(data, dest)
                except OSError:
                    # Socket buffer full (EAGAIN), unreachable network...: UDP may
                    # lose a packet; counted, never raised into the reactor.
                    self.counters.send_errors += 1
        finally:
            self.counters.received += read

    def _unsendable(self, leg: Leg, data: bytes) -> None:
        """on_packet counted the packet as relayed, but the other party has no
        relay port yet (early media before the answer): it is a drop."""
        stats = leg.stats
        if self.rtcp:
            stats.rtcp_packets -= 1
            stats.rtcp_bytes -= len(data)
        else:
            stats.packets -= 1
            stats.bytes -= len(data)
        stats.drop(DROP_NO_DESTINATION)


class PortPair:
    """The RTP socket (even port) and RTCP socket (port + 1) of one leg."""

    __slots__ = ("port", "address", "rtp", "rtcp", "session", "leg")

    def __init__(self, port: int, address: str, rtp: MediaSocket, rtcp: MediaSocket) -> None:
        self.port = port
        self.address = address
        self.rtp = rtp
        self.rtcp = rtcp
        self.session: Session | None = None
        self.leg: Leg | None = None

    def start(self, session: Session, leg: Leg) -> None:
        self.session = session
        self.leg = leg
        self.rtp.start(session, leg)
        self.rtcp.start(session, leg)

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()
        self.session = self.leg = None


class MediaPorts(PortAllocator):
    """The table's port allocator, binding each pair it hands out.

    Set :attr:`bind_address` before a table call that may allocate: the pair
    is bound there (the control server picks it from the leg's interface).
    """

    def __init__(
        self,
        low: int,
        high: int,
        reactor: Any,
        clock: Callable[[], float],
        *,
        address: str = "0.0.0.0",
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(low, high, rng)
        self.reactor = reactor
        self.clock = clock
        self.bind_address = address
        self.counters = _Counters()
        self.pairs: dict[int, PortPair] = {}
        # Pairs another program holds: still "used" in the allocator, so not
        # handed out, until the time here passes.
        self.held: dict[int, float] = {}
        self.bind_failures = 0
        # The kernel data plane, when the relay uses one (service.py sets it).
        self.kernel: KernelPlane | None = None

    def allocate(self) -> int:
        tries = 0
        while True:
            port = super().allocate()  # PortsExhausted when the pool is empty
            try:
                self._open(port, self.bind_address)
                return port
            except OSError as exc:
                self.bind_failures += 1
                self.held[port] = self.clock() + HOLD_TIME
                if exc.errno != errno.EADDRINUSE:
                    log.warn("cannot bind relay port {a}:{p}: {e}", a=self.bind_address, p=port,
                             e=exc.strerror or exc)
            tries += 1
            if tries >= MAX_BIND_TRIES:
                raise PortsExhausted(f"{tries} port pairs in a row would not bind")

    def _open(self, port: int, address: str) -> None:
        rtp_sock = _bind(address, port)
        try:
            rtcp_sock = _bind(address, port + 1)
        except BaseException:
            rtp_sock.close()
            raise
        self.pairs[port] = PortPair(
            port, address,
            MediaSocket(rtp_sock, address, port, False, self.reactor, self.clock, self.counters,
                        self.kernel),
            MediaSocket(rtcp_sock, address, port + 1, True, self.reactor, self.clock,
                        self.counters, self.kernel),
        )

    def release(self, port: int) -> None:
        pair = self.pairs.pop(port, None)
        if pair is not None:
            if self.kernel is not None:
                # Before the sockets close: the flows' last counts go to the leg.
                self.kernel.release(port, pair.session)
            pair.close()
        super().release(port)

    def release_held(self, now: float) -> int:
        """Put held pairs whose time is up back into the pool; how many."""
        due = [port for port, until in self.held.items() if until <= now]
        for port in due:
            del self.held[port]
            super().release(port)
        return len(due)

    @property
    def held_count(self) -> int:
        return len(self.held)

    def start(self, session: Session) -> None:
        """After a U/L: read the legs' new sockets and point each leg's
        sockets at the other's, so packets leave from the right port."""
        caller = self.pairs.get(session.caller.port) if session.caller.port else None
        callee = self.pairs.get(session.callee.port) if session.callee.port else None
        for pair, leg in ((caller, session.caller), (callee, session.callee)):
            if pair is not None and pair.leg is not leg:
                pair.start(session, leg)
        if caller is not None:
            caller.rtp.peer = callee.rtp if callee is not None else None
            caller.rtcp.peer = callee.rtcp if callee is not None else None
        if callee is not None:
            callee.rtp.peer = caller.rtp if caller is not None else None
            callee.rtcp.peer = caller.rtcp if caller is not None else None
        if self.kernel is not None:
            # A U/L may have moved a port or forgotten a latch.
            self.kernel.sync(session)

    def address_of(self, leg: Leg) -> str | None:
        """The address the leg's pair is bound on, None without a port."""
        pair = self.pairs.get(leg.port) if leg.port is not None else None
        return None if pair is None else pair.address

    def close(self) -> None:
        """Close every socket (shutdown); the table is discarded with it."""
        for pair in list(self.pairs.values()):
            pair.close()
        self.pairs.clear()
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
