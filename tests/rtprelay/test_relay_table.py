"""SessionTable: RTPProxy's U/L/D/I semantics, lookups, drain, expiry, port map."""

from __future__ import annotations

import random
import struct

import pytest

from sipsuite.rtprelay.ports import PortAllocator, PortsExhausted
from sipsuite.rtprelay.session import DROP_BLEED
from sipsuite.rtprelay.table import (
    EXTERNAL,
    INTERNAL,
    Draining,
    SessionTable,
    bridge_interfaces,
)

A = ("192.0.2.10", 4000)  # caller's SDP
B = ("198.51.100.20", 5000)  # callee's SDP


def rtp(seq: int = 1, ssrc: int = 0xA1A1) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160


def table(low: int = 30000, high: int = 30999, **kw: float) -> SessionTable:
    return SessionTable(PortAllocator(low, high, random.Random(1)), **kw)  # type: ignore[arg-type]


def test_u_then_l() -> None:
    t = table()
    s, callee_leg = t.update("c", "ft", None, A, 0.0)
    assert callee_leg is s.callee
    assert s.caller.signalled == A and s.caller.port is None
    assert callee_leg.port is not None and callee_leg.port % 2 == 0
    assert not s.complete
    found = t.lookup("c", "ft", "tt", B, 0.1)
    assert found is not None
    s2, caller_leg = found
    assert s2 is s and caller_leg is s.caller
    assert s.callee.signalled == B
    assert caller_leg.port is not None and caller_leg.port != callee_leg.port
    assert s.complete and s.to_tag == "tt"
    assert len(t) == 1 and t.ports.used_count == 2


def test_u_retransmission_is_idempotent() -> None:
    t = table()
    s, leg = t.update("c", "ft", None, A, 0.0)
    port = leg.port
    free = t.ports.free_count
    s2, leg2 = t.update("c", "ft", None, A, 0.5)
    assert (s2, leg2, leg2.port) == (s, leg, port)
    assert t.ports.free_count == free
    assert t.sessions_created == 1 and len(t) == 1


def test_l_retransmission_is_idempotent() -> None:
    t = table()
    t.update("c", "ft", None, A, 0.0)
    first = t.lookup("c", "ft", "tt", B, 0.1)
    again = t.lookup("c", "ft", "tt", B, 0.2)
    assert first is not None and again is not None
    assert first[1].port == again[1].port
    assert t.ports.used_count == 2


def test_l_without_a_session_finds_nothing() -> None:
    t = table()
    assert t.lookup("c", "ft", "tt", B, 0.0) is None
    assert len(t) == 0 and t.ports.used_count == 0


def test_reinvite_from_the_caller_keeps_the_ports() -> None:
    t = table()
    s, callee_leg = t.update("c", "ft", None, A, 0.0)
    t.lookup("c", "ft", "tt", B, 0.1)
    moved = ("192.0.2.99", 4100)
    _, leg = t.update("c", "ft", "tt", moved, 30.0)
    assert leg is callee_leg
    assert s.caller.signalled == moved


def test_reinvite_from_the_callee_is_found_with_swapped_tags() -> None:
    t = table()
    s, callee_leg = t.update("c", "ft", None, A, 0.0)
    found = t.lookup("c", "ft", "tt", B, 0.1)
    assert found is not None
    caller_leg = found[1]
    # The callee's re-INVITE: From is the callee (tt), To the caller (ft).
    moved = ("198.51.100.21", 5100)
    s2, leg = t.update("c", "tt", "ft", moved, 30.0)
    assert s2 is s
    assert leg is caller_leg  # its offer goes to the caller: the caller's port
    assert s.callee.signalled == moved
    # The caller's answer to it (From/To of the request: tt, ft).
    answer = ("192.0.2.11", 4200)
    found = t.lookup("c", "tt", "ft", answer, 30.1)
    assert found is not None and found[1] is callee_leg
    assert s.caller.signalled == answer
    assert t.sessions_created == 1


def test_find_reports_direction() -> None:
    t = table()
    s, _ = t.update("c", "ft", None, A, 0.0)
    assert t.find("c", "ft") == (s, 0)
    assert t.find("c", "ft", "tt") == (s, 0)
    assert t.find("c", "tt", "ft") == (s, 1)
    assert t.find("c", "tt") is None
    assert t.find("other", "ft") is None


def test_media_numbers_make_separate_sessions() -> None:
    t = table()
    audio, _ = t.update("c", "ft;1", None, A, 0.0)
    video, _ = t.update("c", "ft;2", None, ("192.0.2.10", 4002), 0.0)
    assert audio is not video and len(t) == 2
    # Reversed lookup: the media number rides on the from-tag and must match.
    assert t.find("c", "tt;2", "ft") == (video, 1)
    assert t.find("c", "tt;1", "ft") == (audio, 1)
    assert t.find("c", "tt", "ft") is None
    assert t.find("c", "tt;2", "ft;2") == (video, 1)


def test_d_releases_ports() -> None:
    t = table()
    s, callee_leg = t.update("c", "ft", None, A, 0.0)
    found = t.lookup("c", "ft", "tt", B, 0.1)
    assert found is not None
    ports = (callee_leg.port, found[1].port)
    assert t.delete("c", "ft") == 1
    assert len(t) == 0
    assert t.ports.used_count == 0 and t.ports.free_count == t.ports.capacity
    for p in ports:
        assert p is not None
        assert p not in t.ports
        assert t.leg_for_port(p) is None
    assert t.delete("c", "ft") == 0


def test_d_from_the_callee_side() -> None:
    t = table()
    t.update("c", "ft", None, A, 0.0)
    t.lookup("c", "ft", "tt", B, 0.1)
    # BYE from the callee: From tt, To ft.
    assert t.delete("c", "tt", "ft") == 1
    assert len(t) == 0 and t.ports.used_count == 0


def test_d_with_a_bare_tag_removes_every_media_number() -> None:
    t = table()
    t.update("c", "ft;1", None, A, 0.0)
    t.update("c", "ft;2", None, A, 0.0)
    t.update("other", "ft", None, A, 0.0)
    assert t.delete("c", "ft") == 2
    assert len(t) == 1 and t.sessions_deleted == 2


def test_d_of_one_media_number() -> None:
    t = table()
    t.update("c", "ft;1", None, A, 0.0)
    t.update("c", "ft;2", None, A, 0.0)
    assert t.delete("c", "ft;2") == 1
    assert t.find("c", "ft;1") is not None and t.find("c", "ft;2") is None


def test_d_does_not_match_a_longer_tag() -> None:
    t = table()
    t.update("c", "ft12", None, A, 0.0)
    assert t.delete("c", "ft1") == 0
    assert len(t) == 1


def test_drain_refuses_new_sessions_only() -> None:
    t = table()
    s, _ = t.update("c", "ft", None, A, 0.0)
    t.draining = True
    assert not t.drained
    with pytest.raises(Draining):
        t.update("new", "x", None, A, 0.1)
    assert len(t) == 1 and t.ports.used_count == 1
    # The existing call goes on: its answer, re-INVITEs and media.
    assert t.lookup("c", "ft", "tt", B, 0.2) is not None
    assert t.update("c", "ft", "tt", A, 0.3)[0] is s
    assert s.on_packet(s.caller, rtp(), A, 0.4) == B
    t.delete("c", "ft")
    assert t.drained


def test_ports_exhausted_creates_nothing() -> None:
    t = table(40000, 40003)  # two pairs: one call
    s, _ = t.update("c1", "ft", None, A, 0.0)
    t.update("c2", "ft", None, A, 0.0)
    with pytest.raises(PortsExhausted):
        t.update("c3", "ft", None, A, 0.0)
    assert len(t) == 2 and t.sessions_created == 2
    assert t.find("c3", "ft") is None
    # An answer that needs a port fails too, and leaves the session as it was.
    with pytest.raises(PortsExhausted):
        t.lookup("c1", "ft", "tt", B, 0.1)
    assert s.callee.signalled is None and s.caller.port is None


def test_leg_for_port() -> None:
    t = table()
    s, callee_leg = t.update("c", "ft", None, A, 0.0)
    found = t.lookup("c", "ft", "tt", B, 0.1)
    assert found is not None
    caller_leg = found[1]
    assert callee_leg.port is not None and caller_leg.port is not None
    assert t.leg_for_port(callee_leg.port) == (s, callee_leg, False)
    assert t.leg_for_port(callee_leg.port + 1) == (s, callee_leg, True)
    assert t.leg_for_port(caller_leg.port + 1) == (s, caller_leg, True)
    assert caller_leg.rtcp_port == caller_leg.port + 1
    assert t.leg_for_port(29000) is None


def test_new_port_replaces_the_pair() -> None:
    t = table()
    s, leg = t.update("c", "ft", None, A, 0.0)
    old = leg.port
    assert old is not None
    _, leg2 = t.update("c", "ft", None, A, 1.0, new_port=True)
    assert leg2 is leg and leg.port != old
    assert old not in t.ports and t.leg_for_port(old) is None
    assert leg.port is not None and t.leg_for_port(leg.port) == (s, leg, False)
    assert t.ports.used_count == 1


def test_expire_removes_idle_sessions_and_releases_ports() -> None:
    t = table(timeout=60.0, hold_timeout=600.0)
    idle, _ = t.update("idle", "ft", None, A, 0.0)
    busy, _ = t.update("busy", "ft", None, A, 0.0)
    held, _ = t.update("held", "ft", None, A, 0.0, on_hold=True)
    t.lookup("busy", "ft", "tt", B, 0.0)
    busy.on_packet(busy.caller, rtp(), A, 50.0)
    assert t.expire(59.0) == []
    assert t.expire(60.0) == [idle]
    assert t.expire(111.0) == [busy]
    assert len(t) == 1 and t.ports.used_count == 1
    assert t.expire(600.0) == [held]
    assert t.ports.used_count == 0
    assert t.sessions_expired == 3


def test_stats_totals_survive_removal() -> None:
    t = table()
    s, _ = t.update("c", "ft", None, A, 0.0)
    t.lookup("c", "ft", "tt", B, 0.0)
    for i in range(4):
        s.on_packet(s.caller, rtp(seq=i + 1), A, 1.0)
    s.on_packet(s.callee, rtp(ssrc=2), B, 1.0)
    s.on_packet(s.callee, rtp(ssrc=0xBAD), ("233.252.0.1", 9), 1.0)
    s2, _ = t.update("c2", "ft", None, A, 0.0)
    st = t.stats()
    assert (st.sessions_created, st.sessions_active) == (2, 2)
    assert (st.packets_relayed, st.packets_dropped) == (5, 1)
    assert st.bytes_relayed == 5 * 172
    assert st.drops == {DROP_BLEED: 1}
    assert st.ports_free == t.ports.free_count
    t.delete("c", "ft")
    t.expire(1000.0)
    st = t.stats()
    assert (st.sessions_created, st.sessions_active) == (2, 0)
    assert (st.sessions_deleted, st.sessions_expired) == (1, 1)
    assert (st.packets_relayed, st.packets_dropped, st.bytes_relayed) == (5, 1, 5 * 172)
    assert st.drops == {DROP_BLEED: 1}


def test_signalled_ipv6_hosts_are_normalised() -> None:
    t = table()
    s, _ = t.update("c", "ft", None, ("2001:DB8:0:0::1", 4000), 0.0)
    assert s.caller.signalled == ("2001:db8::1", 4000)


def test_port_zero_is_not_an_address() -> None:
    t = table()
    s, _ = t.update("c", "ft", None, A, 0.0)
    t.update("c", "ft", None, ("192.0.2.10", 0), 1.0)
    assert s.caller.signalled == A


def test_bridge_interfaces() -> None:
    assert bridge_interfaces("") == (None, None)
    assert bridge_interfaces("I") == (INTERNAL, None)
    assert bridge_interfaces("ie") == (INTERNAL, EXTERNAL)
    assert bridge_interfaces("EI") == (EXTERNAL, INTERNAL)
    with pytest.raises(ValueError):
        bridge_interfaces("IEI")
    with pytest.raises(ValueError):
        bridge_interfaces("IX")


def test_interfaces_are_carried_to_the_legs() -> None:
    t = table()
    # An offer from the LAN to the Internet: caller internal, callee external.
    s, leg = t.update("c", "ft", None, A, 0.0, interfaces=bridge_interfaces("IE"))
    assert (s.caller.interface, s.callee.interface) == (INTERNAL, EXTERNAL)
    found = t.lookup("c", "ft", "tt", B, 0.1)
    assert found is not None and found[1].interface == INTERNAL
    # Bound sockets stay where they are.
    t.update("c", "ft", "tt", A, 1.0, interfaces=bridge_interfaces("EI"))
    assert (s.caller.interface, s.callee.interface) == (INTERNAL, EXTERNAL)
