"""Session: where packets go, what is learnt from them, what is dropped, when it ends.

A call through the table: the caller offered 192.0.2.10:4000 (U at t=0), the
callee answered 198.51.100.20:5000 (L at t=0); learning window 3 s.  Packets
from the caller arrive on the caller leg's port, from the callee on the
callee leg's.
"""

from __future__ import annotations

import random
import struct

from sipsuite.rtprelay.ports import PortAllocator
from sipsuite.rtprelay.session import (
    DROP_BLEED,
    DROP_LEARNING_CLOSED,
    DROP_NO_DESTINATION,
    DROP_NOT_LATCHED_INVALID,
    DROP_NOT_RTP,
    Session,
)
from sipsuite.rtprelay.table import SessionTable

CALLER_SDP = ("192.0.2.10", 4000)
CALLEE_SDP = ("198.51.100.20", 5000)
CALLER_NAT = ("203.0.113.5", 31000)
CALLEE_NAT = ("203.0.113.77", 42000)
ATTACKER = ("233.252.0.66", 6666)
STUN = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\0" * 12


def rtp(seq: int = 1, ssrc: int = 0xA1A1, payload: bytes = b"\xff" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + payload


def rtcp(ssrc: int = 0xA1A1) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def call(
    now: float = 0.0, *, answer: bool = True, **kw: float
) -> tuple[SessionTable, Session]:
    ports = PortAllocator(30000, 30999, random.Random(1))
    table = SessionTable(ports, **kw)  # type: ignore[arg-type]
    session, _ = table.update("call-1", "ftag", None, CALLER_SDP, now)
    if answer:
        table.lookup("call-1", "ftag", "ttag", CALLEE_SDP, now)
    return table, session


# -- forwarding -------------------------------------------------------------


def test_packets_go_to_the_other_party() -> None:
    _, s = call()
    assert s.on_packet(s.caller, rtp(), CALLER_SDP, 0.1) == CALLEE_SDP
    assert s.on_packet(s.callee, rtp(ssrc=7), CALLEE_SDP, 0.1) == CALLER_SDP


def test_rtcp_goes_to_the_other_partys_rtcp_port() -> None:
    _, s = call()
    assert s.on_packet(s.caller, rtcp(), ("192.0.2.10", 4001), 0.1, rtcp=True) == (
        "198.51.100.20",
        5001,
    )


def test_early_media_before_the_answer_reaches_the_caller() -> None:
    _, s = call(answer=False)
    assert s.caller.port is None and s.callee.port is not None
    # The callee sends to the port in the offer before its answer comes back.
    assert s.on_packet(s.callee, rtp(ssrc=9), CALLEE_NAT, 0.5) == CALLER_SDP
    assert s.callee.latched == CALLEE_NAT


def test_no_destination_is_dropped_and_counted() -> None:
    table = SessionTable(PortAllocator(30000, 30999, random.Random(1)))
    s, _ = table.update("call-1", "ftag", None, None, 0.0)  # no usable caller address
    assert s.on_packet(s.callee, rtp(), CALLEE_NAT, 0.1) is None
    assert s.callee.stats.drops == {DROP_NO_DESTINATION: 1}
    assert s.callee.latched == CALLEE_NAT  # the sender was still learnt


# -- latching ---------------------------------------------------------------


def test_learns_the_real_source_within_the_window() -> None:
    _, s = call()
    assert s.on_packet(s.caller, rtp(), CALLER_NAT, 1.0) == CALLEE_SDP
    assert s.caller.latched == CALLER_NAT
    assert s.caller.ssrc == 0xA1A1
    # Media to the caller now goes to where it really is, not to its SDP.
    assert s.on_packet(s.callee, rtp(ssrc=5), CALLEE_SDP, 1.1) == CALLER_NAT


def test_does_not_learn_from_non_rtp() -> None:
    _, s = call()
    assert s.on_packet(s.caller, b"hello", CALLER_NAT, 1.0) is None
    assert s.on_packet(s.caller, STUN, CALLER_NAT, 1.0) is None
    assert s.caller.latched is None
    assert s.caller.stats.drops == {DROP_NOT_RTP: 2}


def test_does_not_learn_from_ssrc_zero() -> None:
    _, s = call()
    assert s.on_packet(s.caller, rtp(ssrc=0), CALLER_NAT, 1.0) is None
    assert s.caller.latched is None
    assert s.caller.stats.drops == {DROP_NOT_LATCHED_INVALID: 1}


def test_does_not_learn_after_the_window() -> None:
    _, s = call(learn_window=3.0)
    assert s.on_packet(s.caller, rtp(), CALLER_NAT, 3.5) is None
    assert s.caller.latched is None
    assert s.caller.stats.drops == {DROP_LEARNING_CLOSED: 1}


def test_signalled_address_is_trusted_any_time_before_a_latch() -> None:
    _, s = call()
    # Not RTP, but from where the SDP said: relayed, nothing learnt.
    assert s.on_packet(s.caller, STUN, CALLER_SDP, 10.0) == CALLEE_SDP
    assert s.caller.latched is None
    # Valid RTP from there, window closed: relayed and latched.
    assert s.on_packet(s.caller, rtp(), CALLER_SDP, 10.1) == CALLEE_SDP
    assert s.caller.latched == CALLER_SDP


def test_bleed_is_dropped_and_counted() -> None:
    _, s = call()
    s.on_packet(s.caller, rtp(seq=1), CALLER_NAT, 1.0)
    # Same round (window still open) and after it: another source is bleed.
    assert s.on_packet(s.caller, rtp(seq=1, ssrc=0xBAD), ATTACKER, 1.5) is None
    assert s.on_packet(s.caller, rtp(seq=2, ssrc=0xBAD), ATTACKER, 9.0) is None
    assert s.on_packet(s.caller, b"junk", ATTACKER, 9.0) is None
    assert s.caller.latched == CALLER_NAT
    assert s.caller.stats.drops == {DROP_BLEED: 3}
    # The real caller is unaffected.
    assert s.on_packet(s.caller, rtp(seq=2), CALLER_NAT, 9.1) == CALLEE_SDP


def test_latched_source_may_send_non_rtp() -> None:
    _, s = call()
    s.on_packet(s.caller, rtp(), CALLER_NAT, 1.0)
    assert s.on_packet(s.caller, STUN, CALLER_NAT, 20.0) == CALLEE_SDP


def test_relatch_on_same_ssrc_with_contiguous_seq() -> None:
    _, s = call()
    for seq in range(100, 110):
        s.on_packet(s.caller, rtp(seq=seq), CALLER_NAT, 1.0 + seq / 1000)
    moved = ("203.0.113.5", 31002)  # NAT rebinding, long after the window
    assert s.on_packet(s.caller, rtp(seq=112), moved, 30.0) == CALLEE_SDP
    assert s.caller.latched == moved
    assert s.on_packet(s.callee, rtp(ssrc=5), CALLEE_SDP, 30.1) == moved
    # A late packet through the old mapping does not continue the stream.
    assert s.on_packet(s.caller, rtp(seq=111), CALLER_NAT, 30.2) is None
    assert s.caller.latched == moved


def test_relatch_across_sequence_wraparound() -> None:
    _, s = call()
    s.on_packet(s.caller, rtp(seq=65534), CALLER_NAT, 1.0)
    s.on_packet(s.caller, rtp(seq=65535), CALLER_NAT, 1.02)
    assert s.on_packet(s.caller, rtp(seq=1), ("203.0.113.9", 1000), 30.0) == CALLEE_SDP


def test_no_relatch_on_other_ssrc_or_seq_jump() -> None:
    _, s = call(max_seq_gap=100)
    s.on_packet(s.caller, rtp(seq=1000), CALLER_NAT, 1.0)
    assert s.on_packet(s.caller, rtp(seq=1001, ssrc=0xBAD), ATTACKER, 30.0) is None
    assert s.on_packet(s.caller, rtp(seq=1101), ATTACKER, 30.0) is None  # +101
    assert s.on_packet(s.caller, rtp(seq=1000), ATTACKER, 30.0) is None  # replayed
    assert s.on_packet(s.caller, rtp(seq=990), ATTACKER, 30.0) is None  # behind
    assert s.caller.latched == CALLER_NAT
    assert s.caller.stats.drops == {DROP_BLEED: 4}
    assert s.on_packet(s.caller, rtp(seq=1100), ATTACKER, 30.0) == CALLEE_SDP  # +100


def test_new_signalling_reopens_the_window() -> None:
    table, s = call()
    s.on_packet(s.caller, rtp(seq=1), CALLER_NAT, 1.0)
    elsewhere = ("203.0.113.200", 50000)
    assert s.on_packet(s.caller, rtp(seq=5, ssrc=0xB0B), elsewhere, 20.0) is None
    # re-INVITE from the caller (moved to another network), same SDP address.
    table.update("call-1", "ftag", "ttag", CALLER_SDP, 20.0)
    assert s.on_packet(s.caller, rtp(seq=6, ssrc=0xB0B), elsewhere, 20.5) == CALLEE_SDP
    assert s.caller.latched == elsewhere
    # One learning per round: the old source is bleed now, window open or not.
    assert s.on_packet(s.caller, rtp(seq=2), CALLER_NAT, 20.6) is None
    assert s.on_packet(s.caller, rtp(seq=9, ssrc=0xC0C), ATTACKER, 21.0) is None
    assert s.caller.latched == elsewhere


def test_signalled_address_corrects_a_guess_within_the_window() -> None:
    table, s = call()
    s.on_packet(s.caller, rtp(seq=1, ssrc=0xBAD), ATTACKER, 0.5)  # first in: a guess
    assert s.caller.latched == ATTACKER
    assert s.on_packet(s.caller, rtp(seq=1), CALLER_SDP, 0.6) == CALLEE_SDP
    assert s.caller.latched == CALLER_SDP
    # The SDP address is final for this round.
    assert s.on_packet(s.caller, rtp(seq=2, ssrc=0xBAD), ATTACKER, 0.7) is None


def test_asymmetric_never_learns() -> None:
    table = SessionTable(PortAllocator(30000, 30999, random.Random(1)))
    s, _ = table.update("call-1", "ftag", None, CALLER_SDP, 0.0, asymmetric=True)
    table.lookup("call-1", "ftag", "ttag", CALLEE_SDP, 0.0)
    assert s.caller.asymmetric
    # Sends from another port of its host: accepted, nothing learnt.
    assert s.on_packet(s.caller, rtp(), ("192.0.2.10", 4444), 0.5) == CALLEE_SDP
    assert s.caller.latched is None
    # Media to it always goes to the signalled address.
    assert s.on_packet(s.callee, rtp(ssrc=3), CALLEE_SDP, 0.6) == CALLER_SDP
    assert s.on_packet(s.callee, rtcp(3), ("198.51.100.20", 5001), 0.6, rtcp=True) == (
        "192.0.2.10",
        4001,
    )
    # Another host is bleed, even valid RTP within the window.
    assert s.on_packet(s.caller, rtp(), CALLER_NAT, 0.7) is None
    assert s.caller.stats.drops == {DROP_BLEED: 1}
    assert s.caller.latched is None


def test_switching_asymmetric_forgets_the_latch() -> None:
    table, s = call()
    s.on_packet(s.caller, rtp(), CALLER_NAT, 1.0)
    table.update("call-1", "ftag", "ttag", CALLER_SDP, 5.0, asymmetric=True)
    assert s.caller.latched is None
    assert s.on_packet(s.callee, rtp(ssrc=3), CALLEE_SDP, 5.1) == CALLER_SDP


# -- RTCP -------------------------------------------------------------------


def test_rtcp_defaults_to_latched_rtp_plus_one() -> None:
    _, s = call()
    s.on_packet(s.caller, rtp(), CALLER_NAT, 1.0)
    assert s.on_packet(s.callee, rtcp(5), ("198.51.100.20", 5001), 1.1, rtcp=True) == (
        "203.0.113.5",
        31001,
    )


def test_rtcp_latches_separately() -> None:
    _, s = call()
    s.on_packet(s.caller, rtp(), CALLER_NAT, 1.0)
    odd_nat_port = ("203.0.113.5", 31377)  # the NAT did not keep RTP + 1
    assert s.on_packet(s.caller, rtcp(), odd_nat_port, 1.2, rtcp=True) == ("198.51.100.20", 5001)
    assert s.caller.rtcp_latched == odd_nat_port
    assert s.caller.latched == CALLER_NAT  # RTP latch untouched
    assert s.on_packet(s.callee, rtcp(5), ("198.51.100.20", 5001), 1.3, rtcp=True) == odd_nat_port


def test_rtcp_bleed_and_validity() -> None:
    _, s = call()
    assert s.on_packet(s.caller, rtp(), CALLER_NAT, 1.0) is not None
    assert s.on_packet(s.caller, b"\x80\xc9junk", ATTACKER, 1.1, rtcp=True) is None
    assert s.caller.stats.drops == {DROP_NOT_RTP: 1}
    assert s.on_packet(s.caller, rtcp(), ("203.0.113.5", 31001), 1.2, rtcp=True) is not None
    assert s.on_packet(s.caller, rtcp(0xBAD), ATTACKER, 1.3, rtcp=True) is None
    assert s.on_packet(s.caller, rtcp(0xBAD), ATTACKER, 9.0, rtcp=True) is None
    assert s.caller.stats.drops == {DROP_NOT_RTP: 1, DROP_BLEED: 2}


def test_rtcp_follows_rtp_when_the_peer_moves() -> None:
    _, s = call()
    s.on_packet(s.caller, rtp(seq=1), CALLER_NAT, 1.0)
    s.on_packet(s.caller, rtcp(), ("203.0.113.5", 31001), 1.1, rtcp=True)
    moved = ("198.18.0.1", 7000)
    assert s.on_packet(s.caller, rtp(seq=2), moved, 40.0) is not None  # SSRC continuity
    # RTCP from the new host with the same SSRC takes over; before it does,
    # nothing else can.
    assert s.on_packet(s.caller, rtcp(0xBAD), ("198.18.0.99", 7001), 40.1, rtcp=True) is None
    assert s.on_packet(s.caller, rtcp(), ("198.18.0.1", 7001), 40.2, rtcp=True) is not None
    assert s.caller.rtcp_latched == ("198.18.0.1", 7001)


# -- stats ------------------------------------------------------------------


def test_stats_per_direction() -> None:
    _, s = call()
    for i in range(5):
        s.on_packet(s.caller, rtp(seq=i + 1, payload=b"x" * 100), CALLER_SDP, 1.0)
    for i in range(3):
        s.on_packet(s.callee, rtp(seq=i + 1, ssrc=2, payload=b"y" * 50), CALLEE_SDP, 1.0)
    s.on_packet(s.callee, rtcp(2), ("198.51.100.20", 5001), 1.0, rtcp=True)
    s.on_packet(s.callee, rtp(ssrc=0xBAD), ATTACKER, 1.0)
    assert (s.caller.stats.packets, s.caller.stats.bytes) == (5, 5 * 112)
    assert (s.callee.stats.packets, s.callee.stats.bytes) == (3, 3 * 62)
    assert (s.callee.stats.rtcp_packets, s.callee.stats.rtcp_bytes) == (1, 8)
    assert s.caller.stats.dropped == 0
    assert s.callee.stats.drops == {DROP_BLEED: 1}
    assert s.packets_relayed == 9
    assert s.bytes_relayed == 5 * 112 + 3 * 62 + 8
    assert s.packets_dropped == 1
    assert s.caller.last_packet == 1.0


# -- timeouts ---------------------------------------------------------------


def test_expires_without_packets() -> None:
    _, s = call(now=100.0)
    assert not s.expired(159.0, 60.0, 3600.0)
    assert s.expired(160.0, 60.0, 3600.0)


def test_packets_either_way_keep_it_alive() -> None:
    _, s = call()
    s.on_packet(s.callee, rtp(ssrc=3), CALLEE_SDP, 50.0)  # one-way media is enough
    assert not s.expired(100.0, 60.0, 3600.0)
    assert s.expired(110.0, 60.0, 3600.0)


def test_signalling_keeps_it_alive() -> None:
    table, s = call()
    table.update("call-1", "ftag", "ttag", CALLER_SDP, 50.0)
    assert not s.expired(100.0, 60.0, 3600.0)


def test_bleed_does_not_keep_it_alive() -> None:
    _, s = call()
    s.on_packet(s.caller, rtp(), CALLER_SDP, 1.0)
    for t in range(10, 70, 5):
        s.on_packet(s.caller, rtp(ssrc=0xBAD), ATTACKER, float(t))
    assert s.expired(61.0, 60.0, 3600.0)


def test_hold_uses_the_hold_timeout() -> None:
    table, s = call()
    table.update("call-1", "ftag", "ttag", CALLER_SDP, 10.0, on_hold=True)
    assert s.on_hold
    assert not s.expired(500.0, 60.0, 3600.0)
    assert s.expired(3610.0, 60.0, 3600.0)
    # Resumed: back to the normal timeout.
    table.update("call-1", "ftag", "ttag", CALLER_SDP, 3000.0)
    assert not s.on_hold
    assert s.expired(3060.0, 60.0, 3600.0)


def test_null_address_means_hold_and_keeps_the_old_address() -> None:
    table, s = call()
    table.update("call-1", "ftag", "ttag", ("0.0.0.0", 4000), 10.0)
    assert s.caller.on_hold and s.on_hold
    assert s.caller.signalled == CALLER_SDP
    table.lookup("call-1", "ftag", "ttag", ("::", 5000), 10.0)
    assert s.callee.on_hold and s.callee.signalled == CALLEE_SDP


def test_never_learns_an_unrepliable_source_port() -> None:
    _, s = call()
    assert s.on_packet(s.caller, rtp(), ("203.0.113.5", 0), 1.0) is None
    assert s.on_packet(s.caller, rtcp(), ("203.0.113.5", 0), 1.0, rtcp=True) is None
    assert s.caller.latched is None and s.caller.rtcp_latched is None
    assert s.caller.stats.drops == {DROP_NOT_LATCHED_INVALID: 2}


def test_signalling_in_the_same_tick_as_a_latch_still_starts_a_new_round() -> None:
    table, s = call()
    s.on_packet(s.caller, rtp(), CALLER_NAT, 1.0)
    table.update("call-1", "ftag", "ttag", CALLER_SDP, 1.0)  # same `now` as the latch
    elsewhere = ("203.0.113.200", 50000)
    assert s.on_packet(s.caller, rtp(seq=9, ssrc=0xB0B), elsewhere, 1.0) == CALLEE_SDP
    assert s.caller.latched == elsewhere
