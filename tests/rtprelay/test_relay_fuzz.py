"""Hypothesis: no bytes, source or command sequence makes the relay core raise,
and its bookkeeping (ports, port map, counters) stays consistent."""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sipsuite.rtprelay.ports import PortAllocator, PortsExhausted
from sipsuite.rtprelay.rtp import rtcp_ssrc, rtp_header
from sipsuite.rtprelay.table import Draining, SessionTable

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTS = ["192.0.2.10", "198.51.100.20", "203.0.113.5", "2001:db8::1", "0.0.0.0", "::"]
# Edge ports often: 0 (unrepliable source), 65535 (no RTCP port after it), and
# the signalled ones, so that trusted and latched paths are reached too.
ports = st.sampled_from([0, 1, 4000, 4001, 5000, 5001, 65535]) | st.integers(0, 65535)
addrs = st.tuples(st.sampled_from(HOSTS), ports)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """Mostly near-RTP/RTCP (so the latching paths are reached), some noise."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        head = struct.pack(
            "!BBHII",
            draw(st.integers(0, 255)),
            draw(st.integers(0, 255)),
            draw(st.integers(0, 0xFFFF)),
            draw(st.integers(0, 0xFFFFFFFF)),
            draw(st.sampled_from([0, 1, 0xA1A1, 0xFFFFFFFF])),
        )
        return head + draw(st.binary(max_size=40))
    if kind == 2:
        seq = draw(st.integers(0, 0xFFFF))
        return struct.pack("!BBHII", 0x80, 0, seq, 0, draw(st.sampled_from([0xA1A1, 0xB2B2])))
    pt = draw(st.integers(195, 209))
    words = draw(st.integers(0, 8))
    return struct.pack("!BBHI", 0x80, pt, words, 0xA1A1) + draw(st.binary(max_size=36))


@FAST
@given(st.binary(max_size=200))
def test_header_parsers_never_raise(data: bytes) -> None:
    header = rtp_header(data)
    if header is not None:
        version, pt, seq, ts, ssrc = header
        assert version == 2 and 0 <= pt < 128 and pt not in range(72, 77)
        assert 0 <= seq <= 0xFFFF and 0 <= ts <= 0xFFFFFFFF and 0 <= ssrc <= 0xFFFFFFFF
        assert len(data) >= 12
    ssrc = rtcp_ssrc(data)
    if ssrc is not None:
        assert data[0] >> 6 == 2 and 200 <= data[1] <= 204
    assert rtp_header(memoryview(data)) == header


@FAST
@given(
    st.lists(
        st.tuples(st.booleans(), packets(), addrs, st.floats(0, 5), st.booleans()),
        max_size=40,
    ),
    st.booleans(),
    st.booleans(),
)
def test_arbitrary_packets_never_raise(
    events: list[tuple[bool, bytes, tuple[str, int], float, bool]],
    asymmetric: bool,
    answered: bool,
) -> None:
    table = SessionTable(PortAllocator(30000, 30099, random.Random(0)))
    s, _ = table.update("c", "f", None, ("192.0.2.10", 4000), 0.0, asymmetric=asymmetric)
    if answered:
        table.lookup("c", "f", "t", ("198.51.100.20", 5000), 0.0)
    now = 0.0
    sent = {id(s.caller): 0, id(s.callee): 0}
    for from_caller, data, src, step, rtcp in events:
        now += step
        leg = s.caller if from_caller else s.callee
        dest = s.on_packet(leg, data, src, now, rtcp)
        sent[id(leg)] += 1
        if dest is not None:
            other = s.other(leg)
            assert isinstance(dest, tuple) and len(dest) == 2
            assert 0 < dest[1] <= 65535
            assert dest in {other.latched, other.rtcp_latched, other.signalled,
                            other.expected_rtcp_source()}  # fmt: skip
        if asymmetric:
            assert s.caller.latched is None
    for leg in s.legs:
        stats = leg.stats
        # Every packet is either relayed or dropped with a cause.
        assert stats.packets + stats.rtcp_packets + stats.dropped == sent[id(leg)]


class TableMachine(RuleBasedStateMachine):
    """Random U/L/D/expire/packets against a small port range."""

    def __init__(self) -> None:
        super().__init__()
        self.table = SessionTable(
            PortAllocator(40000, 40011, random.Random(0)), timeout=30.0, hold_timeout=90.0
        )
        self.now = 0.0

    calls = st.sampled_from(["c1", "c2", "c3", "c4"])
    tags = st.sampled_from(["a", "b", "a;1", "a;2", "b;1"])
    maybe_tags = st.none() | tags
    maybe_addrs = st.none() | addrs

    @rule(step=st.floats(0, 20))
    def tick(self, step: float) -> None:
        self.now += step

    @rule(
        call=calls, f=tags, t=maybe_tags, addr=maybe_addrs, asym=st.booleans(),
        hold=st.booleans(), new_port=st.booleans(),
    )  # fmt: skip
    def update(self, call: str, f: str, t: str | None, addr: tuple[str, int] | None,
               asym: bool, hold: bool, new_port: bool) -> None:  # fmt: skip
        try:
            self.table.update(call, f, t, addr, self.now, asymmetric=asym, on_hold=hold,
                              new_port=new_port)  # fmt: skip
        except (PortsExhausted, Draining):
            pass

    @rule(call=calls, f=tags, t=maybe_tags, addr=maybe_addrs)
    def lookup(self, call: str, f: str, t: str | None, addr: tuple[str, int] | None) -> None:
        try:
            self.table.lookup(call, f, t, addr, self.now)
        except PortsExhausted:
            pass

    @rule(call=calls, f=tags, t=maybe_tags)
    def delete(self, call: str, f: str, t: str | None) -> None:
        self.table.delete(call, f, t)

    @rule()
    def expire(self) -> None:
        for session in self.table.expire(self.now):
            assert all(leg.port is None for leg in session.legs)

    @rule(drain=st.booleans())
    def drain(self, drain: bool) -> None:
        self.table.draining = drain

    @rule(port=st.integers(39998, 40013), data=packets(), src=addrs)
    def packet(self, port: int, data: bytes, src: tuple[str, int]) -> None:
        found = self.table.leg_for_port(port)
        if found is not None:
            session, leg, rtcp = found
            session.on_packet(leg, data, src, self.now, rtcp)

    @invariant()
    def ports_match_legs(self) -> None:
        table = self.table
        held = [leg.port for s in table for leg in s.legs if leg.port is not None]
        assert len(held) == len(set(held)) == table.ports.used_count
        assert all(p in table.ports for p in held)
        assert table.ports.free_count + table.ports.used_count == table.ports.capacity
        for p in held:
            found = table.leg_for_port(p)
            assert found is not None and found[1].port == p
        stats = table.stats()
        assert stats.sessions_active == len(table) == len(list(table))
        assert stats.sessions_created == (
            stats.sessions_active + stats.sessions_deleted + stats.sessions_expired
        )


TableMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
test_table_machine = TableMachine.TestCase
