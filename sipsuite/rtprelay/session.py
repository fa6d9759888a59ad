"""One relayed call: a Session of two Legs, and the packet path through it.

Sans-IO: no sockets, no reactor; time comes in as ``now`` (seconds,
monotonic) so that the packet path can be unit-tested and fuzzed.  The table
of sessions that the control commands drive is in table.py.

Legs
----
A Leg is one party of the call, as an RTPProxy *stream* is (rtpp_session.c,
commands/rpcpv1_ul.c in sippy/rtpproxy):

- ``port``: the relay port that party sends its RTP to (RTCP: port + 1), and,
  symmetric RTP (RFC 4961), the port the relay sends to it from;
- ``signalled``: the (host, port) its SDP gave;
- ``latched``: its real source once learnt (a NAT's public mapping).

The caller leg's address comes from U (the offer) and its port from L: the
caller learns the relay port from the SDP answer.  The callee leg's port comes
from U (it goes in the offer the callee receives) and its address from L.
A packet that arrives on a leg's port comes from that leg's party and goes to
the *other* leg's party: ``Session.on_packet`` returns where.

Latching (learning a source) and RTP Bleed
------------------------------------------
RTP Bleed (RTPProxy/Asterisk, 2017): a relay that re-learns its peer from
any packet hands the media to whoever sprays its ports.  So, for RTP:

- trusted source: the latched address; before any latch, the signalled one.
  Whatever it sends is relayed as-is (STUN keepalives, ZRTP and DTLS share
  the RTP port and are not RTP).
- a leg learns another source only from a packet that parses as RTP v2 with a
  non-zero SSRC, and only while the learning window (``learn_window`` s after
  the last U/L on the session) is open; the first such packet of a signalling
  round wins, later ones in the same round are bleed.
- the signalled address may replace, within the window, a latch on an address
  that was only guessed: what the SDP says beats what a packet claims.
- any time, a new source may take over when it continues the latched stream:
  same SSRC, sequence number 1..max_seq_gap after the last one seen (a NAT
  rebinding or a roaming phone).  An off-path attacker cannot know either.
- anything else from another source is dropped and counted as 'bleed'.

Every U/L opens the window on both legs, because each both sets one party's
address (its media may move) and hands the other party a relay port in the
SDP it is about to receive (it starts or restarts sending now).

RTCP latches separately, on its own source, by the same rules, except that
once RTP is latched RTCP is learnt only from the RTP host; before an RTCP
source is learnt, and as the trusted source to learn from, it is derived from
RTP: the latched RTP address with port + 1 (as RTPProxy's guess_addr does),
else the signalled one + 1.  RTCP from the latched RTP host carrying the
latched RTP SSRC (or on RTP port + 1) may re-latch any time: RTCP follows RTP
when the peer moves.

Asymmetric legs (the 'A' modifier: phones that send from another port than
they receive on) never learn: they are sent to the signalled address, and
packets are accepted from the signalled host with any port, as RTPProxy does.

Addresses are (host, port) pairs compared as given: the socket layer must
hand in 2-tuples with hosts spelled as ipaddress spells them (signalled IP
hosts are normalised that way here).
"""

from __future__ import annotations

from sipsuite.rtprelay.rtp import rtcp_ssrc, rtp_header

__all__ = [
    "CALLEE",
    "CALLER",
    "DROP_BLEED",
    "DROP_CAUSES",
    "DROP_LEARNING_CLOSED",
    "DROP_NOT_LATCHED_INVALID",
    "DROP_NOT_RTP",
    "DROP_NO_DESTINATION",
    "Addr",
    "DirectionStats",
    "Leg",
    "Session",
]

Addr = tuple[str, int]

DEFAULT_LEARN_WINDOW = 3.0
DEFAULT_MAX_SEQ_GAP = 100

# Drop causes, counted per direction.
DROP_NOT_RTP = "not-rtp"  # not latched, from an untrusted source, not RTP/RTCP
# RTP, but not to be learnt from: SSRC 0, or source port 0.
DROP_NOT_LATCHED_INVALID = "not-latched-yet-invalid"
DROP_LEARNING_CLOSED = "learning-closed"  # valid, but the learning window has closed
DROP_BLEED = "bleed"  # another source than the latched (or asymmetric) one
DROP_NO_DESTINATION = "no-destination"  # the other party has no address yet
DROP_CAUSES = (
    DROP_NOT_RTP,
    DROP_NOT_LATCHED_INVALID,
    DROP_LEARNING_CLOSED,
    DROP_BLEED,
    DROP_NO_DESTINATION,
)

CALLER = "caller"
CALLEE = "callee"


def _plus_one(addr: Addr | None) -> Addr | None:
    # RTCP on RTP port + 1 (RFC 3550 section 11); there is none past 65535.
    if addr is None or addr[1] >= 65535:
        return None
    return addr[0], addr[1] + 1


class DirectionStats:
    """What one party sent through the relay (one direction of the call)."""

    __slots__ = ("packets", "bytes", "rtcp_packets", "rtcp_bytes", "drops")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.rtcp_packets = 0
        self.rtcp_bytes = 0
        self.drops: dict[str, int] = {}

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def drop(self, cause: str) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + 1


class Leg:
    """One party of a call: its relay port, addresses, latch state and stats."""

    __slots__ = (
        "side",
        "port",
        "interface",
        "signalled",
        "asymmetric",
        "on_hold",
        "latched",
        "latched_round",
        "ssrc",
        "seq",
        "rtcp_latched",
        "rtcp_latched_round",
        "round",
        "round_start",
        "learn_until",
        "last_packet",
        "stats",
    )

    def __init__(self, side: str) -> None:
        self.side = side
        self.port: int | None = None
        self.interface: str | None = None
        self.signalled: Addr | None = None
        self.asymmetric = False
        self.on_hold = False
        self.latched: Addr | None = None
        # Signalling rounds (U/L) counted, rather than timestamps compared, so
        # that a latch and a U/L in the same reactor tick are still ordered.
        self.round = 0
        self.latched_round = 0
        # SSRC and sequence number last seen from the latched RTP source: what
        # a moved source must continue to take the latch over.
        self.ssrc: int | None = None
        self.seq = 0
        self.rtcp_latched: Addr | None = None
        self.rtcp_latched_round = 0
        self.round_start = float("-inf")
        self.learn_until = float("-inf")
        self.last_packet: float | None = None
        self.stats = DirectionStats()

    def __repr__(self) -> str:
        return (
            f"<Leg {self.side} port={self.port} signalled={self.signalled}"
            f" latched={self.latched} rtcp_latched={self.rtcp_latched}>"
        )

    @property
    def rtcp_port(self) -> int | None:
        return None if self.port is None else self.port + 1

    def open_learning(self, now: float, window: float) -> None:
        """Signalling happened: a source may be learnt until now + window."""
        self.round += 1
        self.round_start = now
        self.learn_until = now + window

    def learning(self, now: float) -> bool:
        return self.round_start <= now <= self.learn_until

    def rtp_destination(self) -> Addr | None:
        """Where this party's RTP goes."""
        if self.asymmetric:
            return self.signalled
        return self.latched if self.latched is not None else self.signalled

    def expected_rtcp_source(self) -> Addr | None:
        """RTCP's address before one is learnt: RTP's (latched, else signalled) + 1."""
        if self.asymmetric or self.latched is None:
            return _plus_one(self.signalled)
        return _plus_one(self.latched)

    def rtcp_destination(self) -> Addr | None:
        """Where this party's RTCP goes."""
        if self.rtcp_latched is not None and not self.asymmetric:
            return self.rtcp_latched
        return self.expected_rtcp_source()

    def _latch(self, src: Addr, ssrc: int, seq: int) -> None:
        self.latched = src
        self.latched_round = self.round
        self.ssrc = ssrc
        self.seq = seq

    def _latch_rtcp(self, src: Addr) -> None:
        self.rtcp_latched = src
        self.rtcp_latched_round = self.round

    def forget_latch(self) -> None:
        """Drop what was learnt: the next packets latch afresh."""
        self.latched = None
        self.ssrc = None
        self.rtcp_latched = None


class Session:
    """One relayed media stream of a call, keyed by (call-id, from-tag).

    ``from_tag`` may carry RTPProxy's ";N" media number suffix: Kamailio asks
    for one session per m= line that way.
    """

    __slots__ = (
        "call_id",
        "from_tag",
        "to_tag",
        "caller",
        "callee",
        "created",
        "last_activity",
        "learn_window",
        "max_seq_gap",
    )

    def __init__(
        self,
        call_id: str,
        from_tag: str,
        now: float,
        *,
        learn_window: float = DEFAULT_LEARN_WINDOW,
        max_seq_gap: int = DEFAULT_MAX_SEQ_GAP,
    ) -> None:
        self.call_id = call_id
        self.from_tag = from_tag
        self.to_tag: str | None = None
        self.caller = Leg(CALLER)
        self.callee = Leg(CALLEE)
        self.created = now
        self.last_activity = now
        self.learn_window = learn_window
        self.max_seq_gap = max_seq_gap

    def __repr__(self) -> str:
        return f"<Session {self.call_id!r} {self.from_tag!r} {self.caller!r} {self.callee!r}>"

    @property
    def legs(self) -> tuple[Leg, Leg]:
        return self.caller, self.callee

    def other(self, leg: Leg) -> Leg:
        return self.callee if leg is self.caller else self.caller

    @property
    def on_hold(self) -> bool:
        return self.caller.on_hold or self.callee.on_hold

    @property
    def complete(self) -> bool:
        """Both parties have a relay port: offer and answer were both seen."""
        return self.caller.port is not None and self.callee.port is not None

    @property
    def packets_relayed(self) -> int:
        return sum(leg.stats.packets + leg.stats.rtcp_packets for leg in self.legs)

    @property
    def bytes_relayed(self) -> int:
        return sum(leg.stats.bytes + leg.stats.rtcp_bytes for leg in self.legs)

    @property
    def packets_dropped(self) -> int:
        return sum(leg.stats.dropped for leg in self.legs)

    def signalling(self, now: float) -> None:
        """A U or L touched this session: reopen learning on both legs."""
        self.caller.open_learning(now, self.learn_window)
        self.callee.open_learning(now, self.learn_window)
        if now > self.last_activity:
            self.last_activity = now

    def expired(self, now: float, timeout: float, hold_timeout: float) -> bool:
        """No packet either way (nor signalling) for timeout s, hold_timeout on hold.

        Only packets from trusted sources count: bleed sprayed at the ports
        must not keep a dead call's ports allocated.
        """
        limit = hold_timeout if self.on_hold else timeout
        return now - self.last_activity >= limit

    # -- the packet path ----------------------------------------------------

    def on_packet(
        self, leg: Leg, data: bytes, src: Addr, now: float, rtcp: bool = False
    ) -> Addr | None:
        """Where to send a packet that arrived on ``leg``'s port from ``src``.

        ``leg`` is the leg whose port received it (so its party is the sender);
        the answer is the other party's address, or None when it is dropped
        (counted by cause in ``leg.stats``).  The socket layer sends it from
        the other leg's port, which is the port that party sends to.
        """
        stats = leg.stats
        if rtcp:
            cause = self._admit_rtcp(leg, data, src, now)
        else:
            cause = self._admit_rtp(leg, data, src, now)
        if cause is not None:
            stats.drop(cause)
            return None
        leg.last_packet = now
        if now > self.last_activity:
            self.last_activity = now
        other = self.callee if leg is self.caller else self.caller
        dest = other.rtcp_destination() if rtcp else other.rtp_destination()
        if dest is None:
            stats.drop(DROP_NO_DESTINATION)
            return None
        if rtcp:
            stats.rtcp_packets += 1
            stats.rtcp_bytes += len(data)
        else:
            stats.packets += 1
            stats.bytes += len(data)
        return dest

    def _admit_rtp(self, leg: Leg, data: bytes, src: Addr, now: float) -> str | None:
        """None to accept (latching if due), else the drop cause."""
        if leg.asymmetric:
            signalled = leg.signalled
            return None if signalled is not None and src[0] == signalled[0] else DROP_BLEED
        latched = leg.latched
        header = rtp_header(data)
        if latched is not None and src == latched:
            if header is not None and header[4] != 0:
                leg.ssrc = header[4]
                leg.seq = header[2]
            return None
        if latched is None and src == leg.signalled:
            # The SDP said so: trusted before any latch, even if not RTP.
            if header is not None and header[4] != 0:
                leg._latch(src, header[4], header[2])
            return None
        if header is None:
            return DROP_BLEED if latched is not None else DROP_NOT_RTP
        ssrc = header[4]
        if ssrc == 0 or src[1] == 0:
            # Source port 0 cannot be answered: never a destination.
            return DROP_BLEED if latched is not None else DROP_NOT_LATCHED_INVALID
        seq = header[2]
        if latched is None:
            if leg.learning(now):
                leg._latch(src, ssrc, seq)
                return None
            return DROP_LEARNING_CLOSED
        if ssrc == leg.ssrc and 0 < ((seq - leg.seq) & 0xFFFF) <= self.max_seq_gap:
            leg._latch(src, ssrc, seq)
            return None
        if leg.learning(now) and (
            leg.latched_round < leg.round
            or (src == leg.signalled and latched != leg.signalled)
        ):
            leg._latch(src, ssrc, seq)
            return None
        return DROP_BLEED

    def _admit_rtcp(self, leg: Leg, data: bytes, src: Addr, now: float) -> str | None:
        if leg.asymmetric:
            signalled = leg.signalled
            return None if signalled is not None and src[0] == signalled[0] else DROP_BLEED
        latched = leg.rtcp_latched
        if latched is not None and src == latched:
            return None
        expected = leg.expected_rtcp_source()
        if latched is None and src == expected:
            if rtcp_ssrc(data) is not None:
                leg._latch_rtcp(src)
            return None
        ssrc = rtcp_ssrc(data)
        if ssrc is None:
            return DROP_BLEED if latched is not None else DROP_NOT_RTP
        if src[1] == 0:
            return DROP_BLEED if latched is not None else DROP_NOT_LATCHED_INVALID
        rtp = leg.latched
        follows_rtp = (
            rtp is not None and src[0] == rtp[0] and (src[1] == rtp[1] + 1 or ssrc == leg.ssrc)
        )
        # Once the party's RTP source is known, its RTCP is learnt only from
        # that host: phones often start RTCP seconds after RTP, and without
        # this whoever sprays RTCP at the relay early in a call would win the
        # RTCP latch (RTP Bleed for RTCP: the party's reports go to them).
        learning = leg.learning(now)
        may_learn = learning and (rtp is None or src[0] == rtp[0])
        if latched is None:
            if follows_rtp or may_learn:
                leg._latch_rtcp(src)
                return None
            return DROP_BLEED if learning else DROP_LEARNING_CLOSED
        if follows_rtp or (
            may_learn
            and (leg.rtcp_latched_round < leg.round or (src == expected and latched != expected))
        ):
            leg._latch_rtcp(src)
            return None
        return DROP_BLEED
