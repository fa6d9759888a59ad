"""The pieces of `rtp-relay --workers N` that need no worker process: the
port slices, adding up the workers' I/G answers, the Call-ID hash, and the
UDP control socket with a handler whose reply comes later (a worker's):
a retransmission meanwhile does not reach the handler a second time."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from relaynet import open_peer, settle
from twisted.internet import defer
from twisted.internet.task import Clock

from sipsuite.rtpproxy import protocol as rp
from sipsuite.rtprelay.control import ControlDatagramProtocol, ReplyCache
from sipsuite.rtprelay.router import (
    START_WAIT,
    WorkerRouter,
    combine_replies,
    strip_cookie,
    worker_of,
)
from sipsuite.rtprelay.workers import split_ports
from sipsuite.startup import StartupError


def test_split_ports_gives_each_worker_whole_pairs() -> None:
    slices = split_ports(20001, 20040, 3)  # pairs 20002..20038: 19 of them
    assert slices == [(20002, 20013), (20014, 20025), (20026, 20039)]
    pairs = [p for low, high in slices for p in range(low, high, 2)]
    assert pairs == list(range(20002, 20040, 2))
    assert split_ports(20000, 20039, 1) == [(20000, 20039)]
    with pytest.raises(StartupError, match="relay.workers = 3: relay.ports 20000-20003"):
        split_ports(20000, 20003, 3)


def test_call_id_hash_is_stable_and_spreads() -> None:
    assert worker_of("abc@host", 4) == worker_of("abc@host", 4)
    counts = [0, 0]
    for n in range(2000):
        counts[worker_of(f"{n:08x}-call@10.0.0.1", 2)] += 1
    assert min(counts) > 900, counts


def test_worker_answers_add_up() -> None:
    info = rp.parse_command(b"c1 Il", datagram=True)
    answers = [
        "sessions created: 3\nactive sessions: 2\nactive streams: 4\npackets received: 10\n"
        "packets transmitted: 9\naverage load: 0.200000\n",
        "sessions created: 1\nactive sessions: 1\nactive streams: 2\npackets received: 5\n"
        "packets transmitted: 5\naverage load: 0.400000\n",
    ]
    assert combine_replies(info, answers) == rp.format_info("c1", 4, 3, 6, 15, 14, 0.3)
    g = rp.parse_command(b"c2 Gv nsess_created npkts_relayed", datagram=True)
    assert combine_replies(g, ["nsess_created=3 npkts_relayed=9\n",
                               "nsess_created=1 npkts_relayed=5\n"]) == \
        b"c2 nsess_created=4 npkts_relayed=14\n"
    plain = rp.parse_command(b"c3 G", datagram=True)
    assert combine_replies(plain, ["1 2 3 4 5 6\n", "1 1 1 1 1 1\n"]) == b"c3 2 3 4 5 6 7\n"
    assert combine_replies(plain, ["E3\n", "E3\n"]) == b"c3 E3\n"
    x = rp.parse_command(b"c4 X", datagram=True)
    assert combine_replies(x, ["0\n", "0\n"]) == b"c4 0\n"


def test_strip_cookie() -> None:
    assert strip_cookie(b"abc U call 1.2.3.4 5 f", "abc") == b"U call 1.2.3.4 5 f"
    assert strip_cookie(b"U call 1.2.3.4 5 f", "") == b"U call 1.2.3.4 5 f"


class LaterHandler:
    """Answers each command when the test says so, as a worker would."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, defer.Deferred[bytes]]] = []

    def handle(self, data: bytes, *, datagram: bool = True) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.calls.append((data, d))
        return d


@pytest_twisted.ensureDeferred
async def test_retransmission_while_a_worker_answers_is_not_forwarded_again(
        reactor: Any) -> None:
    handler = LaterHandler()
    cache = ReplyCache()
    port = reactor.listenUDP(0, ControlDatagramProtocol(handler, cache), interface="127.0.0.1")
    client = open_peer(reactor)
    addr = ("127.0.0.1", port.getHost().port)
    try:
        command = b"k1 U call 127.0.0.1 4000 f;1"
        client.send(command, addr)
        await settle(reactor)
        client.send(command, addr)  # Kamailio's retry, before the reply
        await settle(reactor)
        assert [c for c, _ in handler.calls] == [command]
        assert cache.hits == 1
        handler.calls[0][1].callback(b"k1 20000 127.0.0.1\n")
        data, source = await client.recv()
        assert (data, source) == (b"k1 20000 127.0.0.1\n", addr)
        # Later retransmissions: the cached reply, still no second call.
        assert await client.command(addr, command) == "k1 20000 127.0.0.1"
        assert len(handler.calls) == 1 and cache.hits == 2
        # Another cookie is another command.
        client.send(b"k2 U call 127.0.0.1 4000 f;1", addr)
        await settle(reactor)
        assert len(handler.calls) == 2
        handler.calls[1][1].callback(b"k2 20000 127.0.0.1\n")
        assert (await client.recv())[0] == b"k2 20000 127.0.0.1\n"
    finally:
        client.port_obj.stopListening()
        port.stopListening()


def test_commands_wait_for_every_worker_at_start_then_no_longer() -> None:
    """At start a command waits until every worker is up (a V answered
    means ready), at most START_WAIT; afterwards nothing waits, and a
    worker that is not connected counts as down (U: E81, L: port 0)."""
    clock = Clock()
    router = WorkerRouter(2, clock)
    router.start()
    early = router.handle(b"a V")
    assert isinstance(early, defer.Deferred) and not early.called
    router.all_up()
    assert early.result == b"a 20040107\n"
    # Up, but no worker connected (both down): answered at once.
    assert _now(router.handle(b"b U c1 127.0.0.1 4000 f")) == b"b E81\n"
    assert _now(router.handle(b"c L c1 127.0.0.1 4000 f t")) == b"c 0\n"
    assert _now(router.handle(b"d D c1 f")) == b"d E50\n"
    router.draining = True
    assert _now(router.handle(b"e U c2 127.0.0.1 4000 f")) == b"e E99\n"

    late = WorkerRouter(2, clock)
    late.start()
    waiting = late.handle(b"f V")
    assert isinstance(waiting, defer.Deferred) and not waiting.called
    clock.advance(START_WAIT + 0.1)  # a worker never came up: handled anyway
    assert waiting.result == b"f 20040107\n"
    assert late.handle(b"g V") == b"g 20040107\n"


def _now(answer: bytes | defer.Deferred[bytes]) -> bytes:
    assert isinstance(answer, defer.Deferred) and answer.called
    result = answer.result
    assert isinstance(result, bytes)
    return result
