"""Media through the relay on real sockets: forwarding both ways, RTCP,
latching, RTP Bleed, asymmetric legs, timeouts, new ports, delete-all.

Caller and callee are UDP sockets of the test sending RTP v2 packets; the
relay runs in the test reactor with a clock the test moves where time matters.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from relaynet import (
    Call,
    FakeClock,
    control_addr,
    open_pair,
    open_peer,
    relay_config,
    rtcp_rr,
    rtp,
    running_relay,
    settle,
)

from sipsuite.rtprelay.session import DROP_BLEED, DROP_LEARNING_CLOSED

RELAY = "127.0.0.1"


async def exchange(call: Call, count: int = 3, start: int = 1) -> None:
    """Caller and callee each send `count` RTP packets; each gets the other's."""
    for seq in range(start, start + count):
        call.caller.send(rtp(seq, ssrc=0xCA11E7), (RELAY, call.port_for_caller))
        call.callee.send(rtp(seq, ssrc=0xCA11EE), (RELAY, call.port_for_callee))
    for seq in range(start, start + count):
        data, src = await call.callee.recv()
        assert data == rtp(seq, ssrc=0xCA11E7)
        # Symmetric RTP: from the port the callee sends to.
        assert src == (RELAY, call.port_for_callee)
        data, src = await call.caller.recv()
        assert data == rtp(seq, ssrc=0xCA11EE)
        assert src == (RELAY, call.port_for_caller)


@pytest_twisted.ensureDeferred
async def test_rtp_both_ways_and_counters(reactor: Any) -> None:
    async with running_relay(reactor, relay_config(), clock=FakeClock()) as relay:
        call = Call(reactor, relay)
        try:
            await call.setup()
            await exchange(call, count=5)
            session = next(iter(relay.table))
            assert session.caller.latched == call.caller.addr
            assert session.callee.latched == call.callee.addr
            assert (session.caller.stats.packets, session.callee.stats.packets) == (5, 5)
            assert session.caller.stats.bytes == 5 * len(rtp())
            q = await call.control.command(control_addr(relay), "q Q call-1 ftag;1 ttag;1")
            assert q == "q 60 5 5 10 0"
            stats = relay.stats_view()
            assert stats["packets_relayed"] == 10 and stats["packets_dropped"] == 0
            view = relay.sessions_view()
            assert view[0]["caller"]["latched"] == f"127.0.0.1:{call.caller.addr[1]}"
            assert view[0]["callee"]["port"] == call.port_for_callee
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_rtcp_on_port_plus_one(reactor: Any) -> None:
    async with running_relay(reactor, relay_config()) as relay:
        call = Call(reactor, relay)
        caller_rtp, caller_rtcp = open_pair(reactor)
        callee_rtp, callee_rtcp = open_pair(reactor)
        call.peers += [caller_rtp, caller_rtcp, callee_rtp, callee_rtcp]
        try:
            offer = await call.offer(caller_rtp.addr)
            answer = await call.answer(callee_rtp.addr)
            to_callee, to_caller = int(offer.split()[1]), int(answer.split()[1])
            caller_rtcp.send(rtcp_rr(0xCA11E7), (RELAY, to_caller + 1))
            data, src = await callee_rtcp.recv()
            assert data == rtcp_rr(0xCA11E7) and src == (RELAY, to_callee + 1)
            callee_rtcp.send(rtcp_rr(0xCA11EE), (RELAY, to_callee + 1))
            data, src = await caller_rtcp.recv()
            assert data == rtcp_rr(0xCA11EE) and src == (RELAY, to_caller + 1)
            session = next(iter(relay.table))
            assert session.caller.stats.rtcp_packets == 1
            assert session.callee.stats.rtcp_packets == 1
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_latching_follows_the_real_source(reactor: Any) -> None:
    """A phone behind NAT: its SDP names one address, its packets come from
    another.  Within the window its first RTP teaches the relay where it is."""
    async with running_relay(reactor, relay_config()) as relay:
        call = Call(reactor, relay)
        natted = open_peer(reactor)  # the caller's NAT mapping
        call.peers.append(natted)
        try:
            await call.setup()  # the SDP says call.caller's address
            natted.send(rtp(1, ssrc=0xAAAA), (RELAY, call.port_for_caller))
            data, _ = await call.callee.recv()
            assert data == rtp(1, ssrc=0xAAAA)
            call.callee.send(rtp(1, ssrc=0xBBBB), (RELAY, call.port_for_callee))
            data, src = await natted.recv()
            assert data == rtp(1, ssrc=0xBBBB) and src == (RELAY, call.port_for_caller)
            await settle(reactor)
            assert call.caller.drain() == []  # the SDP's address gets nothing now
            session = next(iter(relay.table))
            assert session.caller.latched == natted.addr
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_no_learning_after_the_window(reactor: Any) -> None:
    clock = FakeClock()
    async with running_relay(reactor, relay_config(learn_window=3.0), clock=clock) as relay:
        call = Call(reactor, relay)
        natted = open_peer(reactor)
        call.peers.append(natted)
        try:
            await call.setup()
            clock.advance(3.5)
            natted.send(rtp(1, ssrc=0xAAAA), (RELAY, call.port_for_caller))
            await settle(reactor)
            assert call.callee.drain() == []
            session = next(iter(relay.table))
            assert session.caller.stats.drops == {DROP_LEARNING_CLOSED: 1}
            assert session.caller.latched is None
            # New signalling (a re-INVITE) opens the window again.
            await call.offer(natted.addr)
            natted.send(rtp(2, ssrc=0xAAAA), (RELAY, call.port_for_caller))
            data, _ = await call.callee.recv()
            assert data == rtp(2, ssrc=0xAAAA)
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_rtp_bleed_spray_gets_nothing_and_is_counted(reactor: Any) -> None:
    """RTP Bleed: a third party on another address sprays RTP and RTCP at
    every relay port of a running call, inside the learning window and after."""
    clock = FakeClock()
    async with running_relay(reactor, relay_config(), clock=clock) as relay:
        call = Call(reactor, relay)
        attacker = open_peer(reactor, "127.0.0.2")
        call.peers.append(attacker)
        try:
            await call.setup()
            await exchange(call, count=2)  # both latched: the call is up
            ports = [call.port_for_caller, call.port_for_caller + 1,
                     call.port_for_callee, call.port_for_callee + 1]
            sprayed = 0
            for _round in range(2):
                for seq in range(10):
                    for port in ports:
                        attacker.send(rtp(seq, ssrc=0xBAD), (RELAY, port))
                        attacker.send(rtcp_rr(0xBAD), (RELAY, port))
                        sprayed += 2
                await settle(reactor)
                clock.advance(5.0)  # the second round after the window
            # The call goes on, untouched.
            await exchange(call, count=2, start=3)
            await settle(reactor)
            assert attacker.drain() == []
            leaked = [d for d, _ in call.caller.drain() + call.callee.drain()
                      if b"\x00\x00\x0b\xad" in d]
            assert leaked == []
            session = next(iter(relay.table))
            drops = session.packets_dropped
            assert drops == sprayed
            bleed = (session.caller.stats.drops.get(DROP_BLEED, 0)
                     + session.callee.stats.drops.get(DROP_BLEED, 0))
            # Every RTP packet at an RTP port is bleed; the rest were dropped
            # as what they are (RTP at an RTCP port is not RTCP, and so on).
            assert bleed >= 2 * 10 * 2
            assert session.caller.latched == call.caller.addr
            assert session.callee.latched == call.callee.addr
            assert relay.stats_view()["drops"][DROP_BLEED] == bleed
            assert relay.stats_view()["packets_dropped"] == sprayed
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_asymmetric_leg_is_sent_to_its_sdp_address(reactor: Any) -> None:
    async with running_relay(reactor, relay_config()) as relay:
        call = Call(reactor, relay)
        other_port = open_peer(reactor)  # the phone sends from another port
        call.peers.append(other_port)
        try:
            offer = await call.offer(modifiers="A")
            call.port_for_callee = int(offer.split()[1])
            call.port_for_caller = int((await call.answer()).split()[1])
            other_port.send(rtp(1), (RELAY, call.port_for_caller))
            data, _ = await call.callee.recv()
            assert data == rtp(1)
            call.callee.send(rtp(1, ssrc=7), (RELAY, call.port_for_callee))
            data, _ = await call.caller.recv()  # its SDP address, never learnt
            assert data == rtp(1, ssrc=7)
            await settle(reactor)
            assert other_port.drain() == []
        finally:
            call.close()


def _port_is_free(port: int) -> bool:
    for p in (port, port + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((RELAY, p))
            except OSError:
                return False
    return True


@pytest_twisted.ensureDeferred
async def test_media_timeout_ends_the_session_and_frees_ports(reactor: Any) -> None:
    clock = FakeClock()
    config = relay_config(media_timeout=60.0, hold_timeout=600.0)
    async with running_relay(reactor, config, clock=clock) as relay:
        call = Call(reactor, relay)
        try:
            await call.setup()
            await exchange(call, count=1)
            ports = [call.port_for_caller, call.port_for_callee]
            assert not any(_port_is_free(p) for p in ports)
            clock.advance(30)
            await exchange(call, count=1, start=2)  # media keeps it alive
            clock.advance(59)
            relay.tick()
            assert len(relay.table) == 1
            clock.advance(2)  # 61 s without packets
            relay.tick()
            assert len(relay.table) == 0 and relay.table.sessions_expired == 1
            assert all(_port_is_free(p) for p in ports)
            assert relay.media.free_count == relay.media.capacity
            addr = control_addr(relay)
            assert await call.control.command(addr, "q Q call-1 ftag;1") == "q E50"
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_hold_gets_the_hold_timeout(reactor: Any) -> None:
    clock = FakeClock()
    config = relay_config(media_timeout=60.0, hold_timeout=600.0)
    async with running_relay(reactor, config, clock=clock) as relay:
        call = Call(reactor, relay)
        try:
            await call.setup()
            await call.offer(("0.0.0.0", call.caller.addr[1]))  # re-INVITE: hold
            clock.advance(120)
            relay.tick()
            assert len(relay.table) == 1
            q = await call.control.command(control_addr(relay), "q Q call-1 ftag;1")
            assert q == "q 480 0 0 0 0"
            clock.advance(481)
            relay.tick()
            assert len(relay.table) == 0
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_new_port_closes_the_old_one(reactor: Any) -> None:
    async with running_relay(reactor, relay_config()) as relay:
        call = Call(reactor, relay)
        try:
            await call.setup()
            old = call.port_for_callee
            reply = await call.offer(modifiers="N")
            new = int(reply.split()[1])
            assert new != old and _port_is_free(old)
            call.port_for_callee = new
            await exchange(call, count=1)
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_delete_all_closes_every_port(reactor: Any) -> None:
    async with running_relay(reactor, relay_config()) as relay:
        calls = [Call(reactor, relay, call_id=f"call-{i}") for i in range(3)]
        try:
            for call in calls:
                await call.setup()
            ports = [p for c in calls for p in (c.port_for_caller, c.port_for_callee)]
            assert len(relay.media.pairs) == 6
            assert await calls[0].control.command(control_addr(relay), "x X") == "x 0"
            assert len(relay.table) == 0 and relay.media.pairs == {}
            assert all(_port_is_free(p) for p in ports)
        finally:
            for call in calls:
                call.close()


@pytest_twisted.ensureDeferred
async def test_early_media_before_the_answer_is_a_drop(reactor: Any) -> None:
    """Between U and L the caller has no relay port: the callee's early
    packets cannot be sent from the right port and are dropped, counted."""
    async with running_relay(reactor, relay_config()) as relay:
        call = Call(reactor, relay)
        try:
            call.port_for_callee = int((await call.offer()).split()[1])
            call.callee.send(rtp(1), (RELAY, call.port_for_callee))
            await settle(reactor)
            session = next(iter(relay.table))
            assert session.callee.stats.packets == 0
            assert session.callee.stats.dropped == 1
            assert call.caller.drain() == []
        finally:
            call.close()


def test_rtcp_is_learnt_only_from_the_latched_rtp_host() -> None:
    """Sans-IO: a party whose RTP is latched but who has sent no RTCP yet
    (phones start RTCP seconds later) cannot have its RTCP latch taken by
    another host, even inside the learning window; its own host can."""
    import random

    from sipsuite.rtprelay.ports import PortAllocator
    from sipsuite.rtprelay.table import SessionTable

    table = SessionTable(PortAllocator(30000, 30099, random.Random(1)))
    session, _ = table.update("c", "f", None, ("192.0.2.10", 4000), 0.0)
    table.lookup("c", "f", "t", ("198.51.100.20", 5000), 0.0)
    assert session.on_packet(session.caller, rtp(1), ("203.0.113.5", 31000), 0.5) is not None
    attacker = ("233.252.0.66", 6667)
    assert session.on_packet(session.caller, rtcp_rr(0xBAD), attacker, 0.6, rtcp=True) is None
    assert session.caller.stats.drops == {DROP_BLEED: 1}
    assert session.caller.rtcp_latched is None
    nat_rtcp = ("203.0.113.5", 31377)  # the NAT did not keep RTP port + 1
    assert session.on_packet(session.caller, rtcp_rr(), nat_rtcp, 0.7, rtcp=True) is not None
    assert session.caller.rtcp_latched == nat_rtcp
