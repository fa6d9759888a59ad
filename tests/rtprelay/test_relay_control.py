"""The relay's control server on real sockets: UDP (IPv4, IPv6) and unix.

Each test runs a RelayService in the test reactor on loopback ports picked at
run time and talks RTPProxy's protocol to it as Kamailio would.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest_twisted
from relaynet import (
    Call,
    FakeClock,
    control_addr,
    open_peer,
    port_range,
    relay_config,
    running_relay,
    settle,
    unix_command,
)

from sipsuite.rtprelay.control import SUPPORTED_CAPABILITIES, ReplyCache


@pytest_twisted.ensureDeferred
async def test_version_and_capabilities(reactor: Any) -> None:
    async with running_relay(reactor, relay_config()) as relay:
        client = open_peer(reactor)
        addr = control_addr(relay)
        try:
            assert await client.command(addr, "c1 V") == "c1 20040107"
            for date in ("20040107", "20050322", "20071116", "20081102"):
                assert await client.command(addr, f"c2_{date} VF {date}") == f"c2_{date} 1"
            # Notifications (and anything unknown) are not supported: 0, not an error.
            assert await client.command(addr, "c3 VF 20081224") == "c3 0"
            assert await client.command(addr, "c4 VF 19990101") == "c4 0"
            assert "20081224" not in SUPPORTED_CAPABILITIES
        finally:
            client.port_obj.stopListening()


@pytest_twisted.ensureDeferred
async def test_offer_answer_query_delete(reactor: Any) -> None:
    low, high = port_range()
    async with running_relay(reactor, relay_config(ports=(low, high)), clock=FakeClock()) as relay:
        call = Call(reactor, relay)
        addr = control_addr(relay)
        try:
            offer = await call.offer()
            cookie, port, address = offer.split()
            assert address == "127.0.0.1"
            assert low <= int(port) < high and int(port) % 2 == 0
            answer = (await call.answer()).split()
            assert answer[2] == "127.0.0.1" and int(answer[1]) != int(port)
            assert len(relay.table) == 1
            # Q: ttl, packets in on the selected stream, the other, relayed, dropped.
            q = await call.control.command(addr, "q1 Q call-1 ftag;1 ttag;1")
            assert q == "q1 60 0 0 0 0"
            qv = await call.control.command(addr, "q2 Qv call-1 ftag;1 ttag;1 ttl nrelayed")
            assert qv == "q2 ttl=60 nrelayed=0"
            # The reversed tags (a re-INVITE from the callee) find it too.
            assert (await call.control.command(addr, "q3 Q call-1 ttag;1 ftag;1")).startswith("q3 60")
            info = await call.control.command(addr, "i1 I")
            assert "sessions created: 1" in info and "active sessions: 1" in info
            assert "active streams: 2" in info
            assert await call.control.command(addr, "d1 D call-1 ftag ttag") == "d1 0"
            assert len(relay.table) == 0 and relay.media.pairs == {}
            assert await call.control.command(addr, "d2 D call-1 ftag ttag") == "d2 E50"
            assert await call.control.command(addr, "q4 Q call-1 ftag;1") == "q4 E50"
            # L for a session that does not exist: port 0, Kamailio's "failed".
            assert (await call.answer()).endswith(" 0")
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_retransmitted_command_is_answered_from_the_cache(reactor: Any) -> None:
    async with running_relay(reactor, relay_config()) as relay:
        client = open_peer(reactor)
        addr = control_addr(relay)
        try:
            u = "k_1 U call-r 127.0.0.1 4000 ft;1"
            first = await client.command(addr, u)
            again = await client.command(addr, u)
            assert again == first
            assert relay.table.sessions_created == 1 and len(relay.table) == 1
            assert relay.cache.hits == 1
            assert await client.command(addr, "k_2 D call-r ft") == "k_2 0"
            # The offer retransmitted after the delete (a late duplicate) must
            # not bring the session back.
            assert await client.command(addr, u) == first
            assert len(relay.table) == 0 and relay.table.sessions_created == 1
            # A retransmitted D answers what the first did, not E50.
            assert await client.command(addr, "k_2 D call-r ft") == "k_2 0"
            # The same cookie from another client is another command.
            other = open_peer(reactor)
            try:
                await other.command(addr, u)
                assert len(relay.table) == 1 and relay.table.sessions_created == 2
            finally:
                other.port_obj.stopListening()
        finally:
            client.port_obj.stopListening()


def test_reply_cache_bounds() -> None:
    cache = ReplyCache(ttl=30.0, size=3)
    src = ("127.0.0.1", 5000)
    for i in range(5):
        cache.put(f"c{i}", src, b"V", b"reply", now=float(i))
    assert len(cache) == 3
    assert cache.get("c0", src, b"V", now=5.0) is None  # evicted: over the bound
    assert cache.get("c4", src, b"V", now=5.0) == b"reply"
    assert cache.get("c4", src, b"X", now=5.0) is None  # another command, same cookie
    assert cache.get("c4", src, b"V", now=34.0) is None  # too old
    cache.put("c9", src, b"V", b"r", now=100.0)
    assert len(cache) == 1  # the expired ones went


@pytest_twisted.ensureDeferred
async def test_reply_leaves_from_the_address_the_command_reached(reactor: Any) -> None:
    # 127.0.0.2 is a loopback address like any other on Linux: the relay must
    # answer from it, not from 127.0.0.1 the kernel would pick by default.
    config = relay_config(control=["udp:127.0.0.2:0", "udp:127.0.0.1:0"])
    async with running_relay(reactor, config) as relay:
        client = open_peer(reactor)
        try:
            for index in (0, 1):
                addr = control_addr(relay, index)
                client.send(b"s1 V", addr)
                reply, source = await client.recv()
                assert reply == b"s1 20040107\n"
                assert source == addr
        finally:
            client.port_obj.stopListening()


@pytest_twisted.ensureDeferred
async def test_ipv6_control_and_media(reactor: Any) -> None:
    config = relay_config(control=["udp:[::1]:0"], addresses=["::1"])
    async with running_relay(reactor, config) as relay:
        client = open_peer(reactor, "::1")
        caller = open_peer(reactor, "::1")
        callee = open_peer(reactor, "::1")
        addr = control_addr(relay)
        try:
            client.send(b"v6 V", addr)
            reply, source = await client.recv()
            assert reply == b"v6 20040107\n" and source == addr
            offer = await client.command(addr, f"a U6 c6 ::1 {caller.addr[1]} f;1")
            cookie, port_b, address, six = offer.split()
            assert (address, six) == ("::1", "6")
            answer = await client.command(addr, f"b L6 c6 ::1 {callee.addr[1]} f;1 t;1")
            port_a = int(answer.split()[1])
            caller.send(b"x" * 20, ("::1", port_a))
            data, src = await callee.recv()
            assert data == b"x" * 20 and src == ("::1", int(port_b))
            # An IPv4 party cannot be relayed from an IPv6-only relay: E36.
            assert await client.command(addr, "c U c4 127.0.0.1 4000 f;1") == "c E36"
        finally:
            for peer in (client, caller, callee):
                peer.port_obj.stopListening()


@pytest_twisted.ensureDeferred
async def test_unix_socket_commands(reactor: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sock")
    config = relay_config(control=[f"unix:{path}"])
    async with running_relay(reactor, config, clock=FakeClock()) as relay:
        # No cookie on a stream socket, one reply, then the relay closes.
        assert await unix_command(reactor, path, "V") == "20040107\n"
        assert await unix_command(reactor, path, "VF 20081102") == "1\n"
        offer = await unix_command(reactor, path, "USZ20c8,0 callu 127.0.0.1 4000 f;1")
        port = int(offer.split()[0])
        assert offer == f"{port} 127.0.0.1\n"
        assert len(relay.table) == 1
        answer = await unix_command(reactor, path, "L callu 127.0.0.1 5000 f;1 t;1")
        assert int(answer.split()[0]) not in (0, port)
        assert (await unix_command(reactor, path, "Q callu f;1 t;1")).startswith("60 ")
        assert await unix_command(reactor, path, "X") == "0\n"
        assert len(relay.table) == 0
        assert await unix_command(reactor, path, "bogus") == "E0\n"
        assert await unix_command(reactor, path, "U only") == "E1\n"
    assert not Path(path).exists()  # the socket file goes with the relay


@pytest_twisted.ensureDeferred
async def test_stale_unix_socket_is_replaced(reactor: Any, tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a killed relay leaves
    async with running_relay(reactor, relay_config(control=[f"unix:{path}"])):
        assert await unix_command(reactor, path, "V") == "20040107\n"


@pytest_twisted.ensureDeferred
async def test_errors_answer_e_codes(reactor: Any) -> None:
    async with running_relay(reactor, relay_config()) as relay:
        client = open_peer(reactor)
        addr = control_addr(relay)
        try:
            cases = {
                "e1 Y": "e1 E0",  # unknown verb
                "e2 U call": "e2 E1",  # too few arguments
                "e3 Vx": "e3 E2",  # V takes no modifiers
                "e4 UI c 127.0.0.1 4000 f;1": "e4 E12",  # not bridging
                "e5 UE c 127.0.0.1 4000 f;1": "e5 E11",
                "e6 U c 127.0.0.1 4000 f;1 t;1 udp:127.0.0.1:9999": "e6 E75",  # notify socket
                "e7 Uq c 127.0.0.1 4000 f;1": "e7 E35",  # unknown modifier
                "e8 U c 127.0.0.300 4000 f;1": "e8 E37",  # bad address
                "e9 U6 c ::1 4000 f;1": "e9 E36",  # IPv6 party, IPv4 relay
                "e10 UL10.9.9.9 c 127.0.0.1 4000 f;1": "e10 E31",  # not our address
                "e11 Q c f;1 t;1 bogus": "e11 E62",
                "e12 D nosuch f": "e12 E50",
                "e13 P c prompt session f;1": "e13 E50",
                "e14 G nosuch": "e14 E68",
                "e15 U c 127.0.0.1 4000 f;1 && R c f": "e15 E3",
            }
            for command, expected in cases.items():
                assert await client.command(addr, command) == expected, command
            assert len(relay.table) == 0
            assert (await client.command(addr, "g1 G nsess_created")) == "g1 0"
            # Playback and recording of a live session: the failures rtpproxy reports.
            await client.command(addr, "u1 U c 127.0.0.1 4000 f;1")
            assert await client.command(addr, "p1 P c prompt session f;1") == "p1 E60"
            assert await client.command(addr, "r1 R c f;1") == "r1 E65"
            assert await client.command(addr, "s1 S c f;1") == "s1 0"
        finally:
            client.port_obj.stopListening()


@pytest_twisted.ensureDeferred
async def test_garbage_never_stops_the_server(reactor: Any) -> None:
    rng = random.Random(4)
    async with running_relay(reactor, relay_config()) as relay:
        client = open_peer(reactor)
        addr = control_addr(relay)
        try:
            samples = [b"", b" ", b"\x00", b"c \x00 V", b"c U \xff\xfe 1 2 3", b"&& && &&",
                       b"c Q a b c d e f g h i j k l m n o p q r s t u v"]
            samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
                        for _ in range(150)]
            samples += [b"c " + rng.choice([b"U", b"L", b"D", b"Q", b"I", b"G", b"VF"])
                        + bytes(rng.choice(b"aAsSiIeE6wWzZcC0123456789,.[]:lLrRn ")
                                for _ in range(rng.randrange(30))) for _ in range(150)]
            replies = []
            for start in range(0, len(samples), 40):
                # In batches: a burst of hundreds overflows loopback socket buffers.
                for data in samples[start:start + 40]:
                    client.send(data, addr)
                await settle(reactor, 0.05)
                replies += client.drain()
            # Every command with a first token got one reply (an empty datagram
            # or one of blanks has none to echo, and rtpproxy answers those too).
            assert len(replies) == len(samples)
            assert await client.command(addr, "ok V") == "ok 20040107"
        finally:
            client.port_obj.stopListening()


@pytest_twisted.ensureDeferred
async def test_port_exhaustion_answers_e72_and_recovers(reactor: Any) -> None:
    low = port_range()[0]
    # Four ports: two pairs, one call's worth.
    async with running_relay(reactor, relay_config(ports=(low, low + 3))) as relay:
        call = Call(reactor, relay)
        addr = control_addr(relay)
        try:
            await call.setup()
            assert relay.media.free_count == 0
            assert await call.control.command(addr, "x1 U call-2 127.0.0.1 4000 f2;1") == "x1 E72"
            # A new port for an existing leg with none free: E71.
            new_port = await call.control.command(
                addr, f"x2 UN call-1 127.0.0.1 {call.caller.addr[1]} ftag;1")
            assert new_port == "x2 E71"
            assert await call.control.command(addr, "x3 V") == "x3 20040107"
            assert await call.control.command(addr, "x4 D call-1 ftag") == "x4 0"
            reply = await call.control.command(addr, "x5 U call-2 127.0.0.1 4000 f2;1")
            assert int(reply.split()[1]) in (low + (low & 1), low + (low & 1) + 2)
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_port_held_by_another_program_is_skipped(reactor: Any) -> None:
    import socket

    low = port_range()[0]
    holders = []
    # Another program holds the RTCP port of the first pair: that pair cannot
    # be used, the other one is.
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", low + 1))
    holders.append(holder)
    clock = FakeClock()
    try:
        async with running_relay(reactor, relay_config(ports=(low, low + 3)),
                                 clock=clock) as relay:
            client = open_peer(reactor)
            addr = control_addr(relay)
            try:
                assert await client.command(addr, "h1 U a 127.0.0.1 4000 f;1") == \
                    f"h1 {low + 2} 127.0.0.1"
                # Both pairs out: one in use, one held.
                assert await client.command(addr, "h2 U b 127.0.0.1 4000 f;1") == "h2 E72"
                assert relay.media.held_count == 1
                holder.close()
                clock.advance(61)
                relay.tick()  # the held pair is tried again after a while
                assert relay.media.held_count == 0
                # (session a expired in that tick too: no media for 61 s)
                reply = await client.command(addr, "h3 U b 127.0.0.1 4000 f;1")
                assert int(reply.split()[1]) in (low, low + 2)
            finally:
                client.port_obj.stopListening()
    finally:
        for s in holders:
            s.close()


@pytest_twisted.ensureDeferred
async def test_bridging_internal_and_external(reactor: Any) -> None:
    config = relay_config(addresses=["127.0.0.1", "127.0.0.2"])
    async with running_relay(reactor, config) as relay:
        call = Call(reactor, relay)
        try:
            # Offer from the internal side to the external one: the callee is
            # handed the external address, the caller (at L) the internal one.
            offer = (await call.offer(modifiers="IE")).split()
            assert offer[2] == "127.0.0.2"
            answer = (await call.answer(modifiers="EI")).split()
            assert answer[2] == "127.0.0.1"
            pairs = relay.media.pairs
            assert pairs[int(offer[1])].address == "127.0.0.2"
            assert pairs[int(answer[1])].address == "127.0.0.1"
            call.caller.send(b"hello", ("127.0.0.1", int(answer[1])))
            data, src = await call.callee.recv()
            assert data == b"hello" and src == ("127.0.0.2", int(offer[1]))
            # L<addr> picks the interface by its address.
            client = call.control
            reply = await client.command(control_addr(relay), "l1 UL127.0.0.2 c2 127.0.0.1 9 f;1")
            assert reply.split()[2] == "127.0.0.2"
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_silent_unix_client_is_cut_off(reactor: Any, tmp_path: Path,
                                             monkeypatch: Any) -> None:
    from relaynet import UnixClient
    from twisted.internet import protocol

    from sipsuite.rtprelay import control

    monkeypatch.setattr(control, "STREAM_IDLE_TIMEOUT", 0.1)
    path = str(tmp_path / "idle.sock")
    async with running_relay(reactor, relay_config(control=[f"unix:{path}"])):
        client = UnixClient(b"")
        client.connectionMade = lambda: None  # type: ignore[method-assign]  # says nothing
        factory = protocol.ClientFactory()
        factory.protocol = lambda: client  # type: ignore[assignment]
        reactor.connectUNIX(path, factory)
        client.done.addTimeout(5, reactor)
        assert await client.done == b""  # closed by the relay, not by the timeout
