"""The relay's sessions, as RTPProxy's control commands see them.

``SessionTable.update`` is RTPProxy's U (an offer), ``lookup`` its L (an
answer), ``delete`` its D, ``stats`` its I and ``expire`` its session TTL.
The semantics follow sippy/rtpproxy: commands/rpcpv1_ul.c
(rtpp_command_ul_handle), rtpp_command.c (find_stream; ``sidx = NOT(i)`` for
L) and rtpp_session.c (rtpp_session_ematch, compare_session_tags):

- U with (call-id, from-tag[, to-tag]) and the offerer's address: the first
  one creates the session and allocates the port of the *other* party's leg
  (stream[0]); the reply port goes in the SDP offer that party receives.
  The offerer's address goes on its own leg (stream[1]).
- L with the same tags and the answerer's address: allocates the offerer's
  leg port (stream[1]), which goes in the SDP answer sent back to it.
- Tags match forwards (from-tag is the session's) or reversed (to-tag is,
  for requests from the callee); U and L then swap roles.  A retransmitted
  U finds its session and answers the same port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sipsuite.rtprelay.ports import PortAllocator
from sipsuite.rtprelay.session import (
    DEFAULT_LEARN_WINDOW,
    DEFAULT_MAX_SEQ_GAP,
    Addr,
    Leg,
    Session,
)

__all__ = [
    "DEFAULT_MAX_SESSIONS_PER_CALL",
    "EXTERNAL",
    "INTERNAL",
    "Draining",
    "TooManySessions",
    "SessionTable",
    "TableStats",
    "bridge_interfaces",
]

# RTPProxy's default session TTL is 60 s; a call on hold may legitimately send
# nothing at all (RFC 3264 inactive), so it gets much longer.
DEFAULT_TIMEOUT = 60.0
DEFAULT_HOLD_TIMEOUT = 3600.0
# Sessions (streams: "tag;N") one Call-ID may hold.  RTPProxy has no such
# bound, so one controller's call with thousands of m= lines (Kamailio sends
# a U for each) could take every port; 32 streams take 128 ports.
DEFAULT_MAX_SESSIONS_PER_CALL = 32

INTERNAL = "internal"
EXTERNAL = "external"
_BRIDGE_LETTERS = {"i": INTERNAL, "I": INTERNAL, "e": EXTERNAL, "E": EXTERNAL}


class Draining(Exception):
    """The relay is draining: existing sessions go on, new ones are refused."""


class TooManySessions(Exception):
    """The call already holds ``max_sessions_per_call`` sessions."""


def bridge_interfaces(modifiers: str) -> tuple[str | None, str | None]:
    """The I/E letters of a U/L command as (address leg, port leg) interfaces.

    RTPProxy (rtpp_command_ul_opts_parse) fills lia[1] from the first letter
    and lia[0] from the second: lia[1] is the stream of the party whose address
    the command carries, lia[0] the one whose port it returns.  So "IE" on an
    offer from the LAN: caller on the internal side, callee on the external.
    """
    if len(modifiers) > 2:
        raise ValueError(f"at most two of I/E, got {modifiers!r}")
    names: list[str | None] = [None, None]
    for i, letter in enumerate(modifiers):
        try:
            names[i] = _BRIDGE_LETTERS[letter]
        except KeyError:
            raise ValueError(f"bridge modifier {letter!r} is neither I nor E") from None
    return names[0], names[1]


def _normalise(addr: Addr) -> Addr:
    host, port = addr
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return host, int(port)


def _is_null_host(host: str) -> bool:
    """c=0.0.0.0: hold the RFC 2543 way (RFC 3264 section 8.4 still allows it)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _compare_tags(session_tag: str, tag: str) -> int:
    """RTPProxy's compare_session_tags: 1 exact, 2 ``tag;N``, 0 no match."""
    if session_tag == tag:
        return 1
    if session_tag.startswith(tag) and session_tag[len(tag) : len(tag) + 1] == ";":
        return 2
    return 0


@dataclass(frozen=True)
class TableStats:
    """Totals across sessions, live and gone: what RTPProxy's I command tells."""

    sessions_created: int
    sessions_active: int
    sessions_deleted: int
    sessions_expired: int
    packets_relayed: int
    bytes_relayed: int
    packets_dropped: int
    drops: dict[str, int] = field(default_factory=dict)
    ports_free: int = 0


class SessionTable:
    """Sessions by call-id and tags, and by relay port for the packet path.

    ``update`` and ``lookup`` return ``(session, leg)``: the leg whose
    ``port`` (and ``interface``) go into the SDP being forwarded.
    """

    def __init__(
        self,
        ports: PortAllocator,
        *,
        learn_window: float = DEFAULT_LEARN_WINDOW,
        max_seq_gap: int = DEFAULT_MAX_SEQ_GAP,
        timeout: float = DEFAULT_TIMEOUT,
        hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
        max_sessions_per_call: int = DEFAULT_MAX_SESSIONS_PER_CALL,
    ) -> None:
        self.ports = ports
        self.max_sessions_per_call = max_sessions_per_call
        self.sessions_refused = 0  # new sessions refused by max_sessions_per_call
        self.learn_window = learn_window
        self.max_seq_gap = max_seq_gap
        self.timeout = timeout
        self.hold_timeout = hold_timeout
        self.draining = False
        self._by_call: dict[str, list[Session]] = {}
        self._by_port: dict[int, tuple[Session, Leg]] = {}
        self._count = 0
        self.sessions_created = 0
        self.sessions_deleted = 0
        self.sessions_expired = 0
        # Counters of sessions already removed, so that totals survive them.
        self._gone_packets = 0
        self._gone_bytes = 0
        self._gone_drops: dict[str, int] = {}
        # observer(what, session, why): "created" / "ended" ("deleted",
        # "timeout"); the suite's relay events (sipsuite/relayevents.py).
        self.observer: Callable[[str, Session, str], None] | None = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Session]:
        for sessions in self._by_call.values():
            yield from sessions

    @property
    def drained(self) -> bool:
        """Draining and nothing left: the relay may stop."""
        return self.draining and self._count == 0

    def find(
        self, call_id: str, from_tag: str, to_tag: str | None = None
    ) -> tuple[Session, int] | None:
        """The session and 0 if from_tag is its from-tag, 1 if to_tag is (reversed).

        The reversed match is how an in-dialog request from the callee (its
        From tag is the session's To tag) finds the session: RTPProxy's
        find_stream / rtpp_session_ematch, including its rule that a ";N"
        media number must then match the one on the command's from-tag.
        """
        for session in self._by_call.get(call_id, ()):
            if session.from_tag == from_tag:
                return session, 0
            if to_tag is None:
                continue
            match = _compare_tags(session.from_tag, to_tag)
            if match == 1:
                return session, 1
            if match == 2 and ";" in from_tag:
                if session.from_tag.rsplit(";", 1)[1] == from_tag.rsplit(";", 1)[1]:
                    return session, 1
        return None

    def leg_for_port(self, port: int) -> tuple[Session, Leg, bool] | None:
        """(session, leg, is_rtcp) for a packet received on relay ``port``."""
        rtcp = bool(port & 1)
        found = self._by_port.get(port - 1 if rtcp else port)
        if found is None:
            return None
        return found[0], found[1], rtcp

    def update(
        self,
        call_id: str,
        from_tag: str,
        to_tag: str | None,
        addr: Addr | None,
        now: float,
        *,
        asymmetric: bool = False,
        on_hold: bool = False,
        interfaces: tuple[str | None, str | None] = (None, None),
        new_port: bool = False,
    ) -> tuple[Session, Leg]:
        """U: an offer from the party ``from_tag`` names, whose media is at ``addr``.

        Creates the session if no tag matches (raises Draining in drain mode,
        TooManySessions when the call holds max_sessions_per_call already,
        PortsExhausted when no pair is free, creating nothing either way).
        Returns the other party's leg: its port goes in the SDP sent to it.
        A retransmitted U finds the same session and returns the same port.
        (rpcpv1_ul.c: sidx = find_stream(); the port is stream[sidx]'s, the
        address goes to stream[NOT(sidx)].)
        """
        found = self.find(call_id, from_tag, to_tag)
        if found is None:
            if self.draining:
                raise Draining("draining: no new sessions")
            if len(self._by_call.get(call_id, ())) >= self.max_sessions_per_call:
                self.sessions_refused += 1
                raise TooManySessions(
                    f"call holds {self.max_sessions_per_call} sessions already")
            session = Session(
                call_id, from_tag, now, learn_window=self.learn_window, max_seq_gap=self.max_seq_gap
            )
            session.to_tag = to_tag
            # The offerer is the caller, whatever the direction of later commands.
            self._signal(
                session, session.caller, session.callee, addr, now,
                asymmetric, on_hold, interfaces, new_port,
            )  # fmt: skip
            self._by_call.setdefault(call_id, []).append(session)
            self._count += 1
            self.sessions_created += 1
            if self.observer is not None:
                self.observer("created", session, "")
            return session, session.callee
        session, idx = found
        if idx == 0:
            addr_leg, port_leg = session.caller, session.callee
        else:
            addr_leg, port_leg = session.callee, session.caller
        self._signal(
            session, addr_leg, port_leg, addr, now, asymmetric, on_hold, interfaces, new_port
        )
        return session, port_leg

    def lookup(
        self,
        call_id: str,
        from_tag: str,
        to_tag: str | None,
        addr: Addr | None,
        now: float,
        *,
        asymmetric: bool = False,
        on_hold: bool = False,
        interfaces: tuple[str | None, str | None] = (None, None),
        new_port: bool = False,
    ) -> tuple[Session, Leg] | None:
        """L: the answer to an offer, from the party ``to_tag`` names (in a
        reply, From and To stay those of the request).  None if no session.

        Returns the offerer's leg, whose port goes in the SDP answer sent to it;
        the answerer's address is ``addr``.  (RTPProxy: sidx = NOT(find_stream()).)
        """
        found = self.find(call_id, from_tag, to_tag)
        if found is None:
            return None
        session, idx = found
        if idx == 0:
            addr_leg, port_leg = session.callee, session.caller
            if to_tag is not None and session.to_tag is None:
                session.to_tag = to_tag
        else:
            addr_leg, port_leg = session.caller, session.callee
            if session.to_tag is None:
                session.to_tag = from_tag
        self._signal(
            session, addr_leg, port_leg, addr, now, asymmetric, on_hold, interfaces, new_port
        )
        return session, port_leg

    def _signal(
        self,
        session: Session,
        addr_leg: Leg,
        port_leg: Leg,
        addr: Addr | None,
        now: float,
        asymmetric: bool,
        on_hold: bool,
        interfaces: tuple[str | None, str | None],
        new_port: bool,
    ) -> None:
        # Ports first: if the pool is exhausted the command fails having
        # changed nothing.
        old_port = port_leg.port
        if old_port is None or new_port:
            port = self.ports.allocate()
            if interfaces[1] is not None:
                port_leg.interface = interfaces[1]
            if old_port is not None:
                self._by_port.pop(old_port, None)
                self.ports.release(old_port)
            port_leg.port = port
            self._by_port[port] = (session, port_leg)
        # A leg's interface is where its socket is bound: fixed once it has a port.
        if interfaces[0] is not None and addr_leg.port is None:
            addr_leg.interface = interfaces[0]
        if addr is not None and _is_null_host(addr[0]):
            # Hold with c=0.0.0.0: keep the old address, as RTPProxy does
            # (reg_onhold without prefill_addr); media to it is harmless.
            addr_leg.on_hold = True
        else:
            addr_leg.on_hold = on_hold
            # No address, or port 0 (a disabled stream): nothing to send to
            # there, so the previous address, if any, stays.
            if addr is not None and 0 < addr[1] <= 65535:
                addr_leg.signalled = _normalise(addr)
        if asymmetric != addr_leg.asymmetric:
            # Either way the old latch no longer applies: asymmetric legs
            # never learn, and a leg leaving that mode learns afresh.
            addr_leg.asymmetric = asymmetric
            addr_leg.forget_latch()
        session.signalling(now)

    def delete(self, call_id: str, from_tag: str, to_tag: str | None = None) -> int:
        """D: remove the sessions the tags name (all ";N" media of a bare tag);
        returns how many, 0 when none (RTPProxy answers that as an error)."""
        sessions = self._by_call.get(call_id)
        if not sessions:
            return 0
        doomed = [
            s
            for s in sessions
            if _compare_tags(s.from_tag, from_tag)
            or (to_tag is not None and _compare_tags(s.from_tag, to_tag))
        ]
        for session in doomed:
            self._remove(session, "deleted")
        self.sessions_deleted += len(doomed)
        return len(doomed)

    def expire(self, now: float) -> list[Session]:
        """Remove and return the sessions idle past their timeout."""
        gone = [s for s in self if s.expired(now, self.timeout, self.hold_timeout)]
        for session in gone:
            self._remove(session, "timeout")
        self.sessions_expired += len(gone)
        return gone

    def _remove(self, session: Session, why: str = "") -> None:
        for leg in session.legs:
            if leg.port is not None:
                self._by_port.pop(leg.port, None)
                self.ports.release(leg.port)
                leg.port = None
            stats = leg.stats
            self._gone_packets += stats.packets + stats.rtcp_packets
            self._gone_bytes += stats.bytes + stats.rtcp_bytes
            for cause, n in stats.drops.items():
                self._gone_drops[cause] = self._gone_drops.get(cause, 0) + n
        sessions = self._by_call[session.call_id]
        sessions.remove(session)
        if not sessions:
            del self._by_call[session.call_id]
        self._count -= 1
        if self.observer is not None:
            self.observer("ended", session, why)

    def stats(self) -> TableStats:
        """Totals across all sessions ever (I command); O(active sessions)."""
        packets = self._gone_packets
        nbytes = self._gone_bytes
        drops = dict(self._gone_drops)
        for session in self:
            for leg in session.legs:
                s = leg.stats
                packets += s.packets + s.rtcp_packets
                nbytes += s.bytes + s.rtcp_bytes
                for cause, n in s.drops.items():
                    drops[cause] = drops.get(cause, 0) + n
        return TableStats(
            sessions_created=self.sessions_created,
            sessions_active=self._count,
            sessions_deleted=self.sessions_deleted,
            sessions_expired=self.sessions_expired,
            packets_relayed=packets,
            bytes_relayed=nbytes,
            packets_dropped=sum(drops.values()),
            drops=drops,
            ports_free=self.ports.free_count,
        )
