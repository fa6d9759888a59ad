"""RelayClient against small fake relays on real loopback sockets.

The fakes are protocol peers, not mocks of the client: they parse what
arrives with the shared codec and answer scripted replies, standing in for
sipsuite's relay (and rtpproxy) so these tests do not depend on it.
Timings are scaled down (0.3 s timeouts) to keep the file fast.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, task
from twisted.internet.defer import Deferred, gatherResults

from sipsuite.proxy.media.client import (
    DEFAULT_CONTROL_PORT,
    RelayAddress,
    RelayClient,
    RelayError,
    RelaySpec,
    RelayUnavailable,
    parse_relay_uri,
)
from sipsuite.rtpproxy import controller as rc
from sipsuite.rtpproxy import protocol as rp

TIMEOUT = 0.3
RETRANSMIT = 0.05

Answer = Callable[[rp.Command], "str | None"]


def default_answer(media: str) -> Answer:
    def answer(cmd: rp.Command) -> str | None:
        return {
            "V": rp.BASE_VERSION, "VF": "1", "U": f"35000 {media}", "L": f"35002 {media}",
            "D": "0", "Q": "55 10 20 30 0",
        }.get(cmd.verb, "E0")
    return answer


class FakeRelay(protocol.DatagramProtocol):
    """Answers what the codec parses; ``script`` overrides replies per verb
    (a body, or None to stay silent); ``drop`` loses that many datagrams."""

    def __init__(self, reactor: Any, media: str = "192.0.2.1") -> None:
        self.reactor = reactor
        self.answer = default_answer(media)
        self.script: dict[str, str | None] = {}
        self.received: list[tuple[bytes, rp.Command]] = []
        self.silent = False
        self.drop = 0
        self.duplicate = False
        self.delay = 0.0
        self.answer_from: Any = None  # another port to answer from (a forger)
        self.port: Any = None

    @property
    def uri(self) -> str:
        host = self.port.getHost()
        return f"udp:[{host.host}]:{host.port}" if ":" in host.host else \
            f"udp:{host.host}:{host.port}"

    def verbs(self) -> list[str]:
        return [cmd.verb for _data, cmd in self.received]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            cmd = rp.parse_command(datagram)
        except rp.ProtocolError as e:  # as a relay does: answer the E-code
            self.transport.write(e.reply(), addr)
            return
        self.received.append((datagram, cmd))
        if self.silent:
            return
        if self.drop:
            self.drop -= 1
            return
        body = self.script[cmd.verb] if cmd.verb in self.script else self.answer(cmd)
        if body is None:
            return
        out = rp.format_reply(cmd.cookie, body)
        sender = self.answer_from or self.transport
        if self.delay:
            self.reactor.callLater(self.delay, sender.write, out, addr)
            return
        sender.write(out, addr)
        if self.duplicate:
            sender.write(out, addr)


class FakeStreamRelay(protocol.Protocol):
    """A unix-socket relay: one command per connection, no cookies."""

    def dataReceived(self, data: bytes) -> None:
        factory: FakeStreamFactory = self.factory  # type: ignore[assignment]
        cmd = rp.parse_command(data, datagram=False)
        factory.received.append((data, cmd))
        body = factory.script.get(cmd.verb) or default_answer("192.0.2.9")(cmd) or "E0"
        assert self.transport is not None
        # Left open on purpose: the client closes after reading its reply.
        self.transport.write(rp.format_reply("", body))


class FakeStreamFactory(protocol.ServerFactory):
    protocol = FakeStreamRelay

    def __init__(self) -> None:
        self.received: list[tuple[bytes, rp.Command]] = []
        self.script: dict[str, str] = {}


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def wait_for(reactor: Any, condition: Callable[[], bool], limit: float = 3.0) -> None:
    """Poll instead of sleeping a fixed time, so a slow machine is not a failure."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await sleep(reactor, 0.02)


class Harness:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.ports: list[Any] = []
        self.clients: list[RelayClient] = []

    def relay(self, media: str = "192.0.2.1", host: str = "127.0.0.1") -> FakeRelay:
        fake = FakeRelay(self.reactor, media)
        fake.port = self.reactor.listenUDP(0, fake, interface=host)
        self.ports.append(fake.port)
        return fake

    def client(self, *relays: RelaySpec, start: bool = False, **kwargs: Any) -> RelayClient:
        options: dict[str, Any] = {
            "command_timeout": TIMEOUT, "retransmit_interval": RETRANSMIT,
            "disable_time": 60.0, "ping_interval": 0, "reactor": self.reactor,
        }
        options.update(kwargs)
        client = RelayClient(list(relays), **options)
        self.clients.append(client)
        if start:
            client.startService()
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.stopService()
        for port in self.ports:
            await port.stopListening()


@pytest_twisted.async_yield_fixture
async def harness(reactor: Any) -> AsyncIterator[Harness]:
    h = Harness(reactor)
    yield h
    await h.close()


def call_led_by(client: RelayClient, uri: str, prefix: str = "call") -> str:
    """A Call-ID whose first choice is ``uri`` (selection hashes the Call-ID)."""
    for i in range(1000):
        call_id = f"{prefix}-{i}@example.com"
        if client.candidates(call_id)[0] == uri:
            return call_id
    raise AssertionError(f"no Call-ID picks {uri}")


def status_of(client: RelayClient, uri: str) -> dict[str, Any]:
    return next(s for s in client.status() if s["uri"] == uri)


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(("uri", "expected"), [
    ("udp:127.0.0.1:7722", RelayAddress("udp", "127.0.0.1", 7722)),
    ("udp:10.0.0.5", RelayAddress("udp", "10.0.0.5", DEFAULT_CONTROL_PORT)),
    ("udp:[::1]:7722", RelayAddress("udp", "::1", 7722)),
    ("udp:[2001:DB8::5]", RelayAddress("udp", "2001:db8::5", DEFAULT_CONTROL_PORT)),
    ("udp6:[::1]:7722", RelayAddress("udp", "::1", 7722)),
    ("UDP:127.0.0.1:1", RelayAddress("udp", "127.0.0.1", 1)),
    ("unix:/run/sipsuite/relay.sock", RelayAddress("unix", path="/run/sipsuite/relay.sock")),
])
def test_parse_relay_uri(uri: str, expected: RelayAddress) -> None:
    assert parse_relay_uri(uri) == expected


@pytest.mark.parametrize("uri", [
    "", "udp:", "127.0.0.1:7722", "tcp:127.0.0.1:7722", "udp:relay.example.com:7722",
    "udp:::1:7722", "udp:[::1:7722", "udp:[::1]7722", "udp:127.0.0.1:0", "udp:127.0.0.1:65536",
    "udp:127.0.0.1:x", "udp:[127.0.0.1]:7722", "udp6:127.0.0.1:7722", "unix:",
])
def test_parse_relay_uri_rejects(uri: str) -> None:
    with pytest.raises(ValueError, match="relay"):
        parse_relay_uri(uri)


def test_constructor_rejects_bad_settings() -> None:
    a = RelaySpec("udp:127.0.0.1:7722")
    with pytest.raises(ValueError, match="at least one"):
        RelayClient([])
    with pytest.raises(ValueError, match="named twice"):
        RelayClient([a, RelaySpec("udp:127.0.0.1:7722", 2)])
    with pytest.raises(ValueError, match="weight"):
        RelayClient([RelaySpec("udp:127.0.0.1:7722", -1)])
    with pytest.raises(ValueError, match="command_timeout"):
        RelayClient([a], command_timeout=0)
    with pytest.raises(ValueError, match="not an IP"):
        RelayClient([RelaySpec("udp:relay.example.com:7722")])


# -- commands ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_offer_answer_delete_round_trip(harness: Harness) -> None:
    fake = harness.relay(media="192.0.2.1")
    client = harness.client(RelaySpec(fake.uri))
    mods = rc.build_modifiers(asymmetric=False)
    assert await client.offer("c1@example.com", "ftag", None, "10.0.0.1", 4000,
                              modifiers=mods) == ("192.0.2.1", 35000)
    assert await client.answer("c1@example.com", "ftag", "ttag", "10.0.0.2", 5000) == (
        "192.0.2.1", 35002)
    assert client.relay_of("c1@example.com") == fake.uri
    assert await client.delete("c1@example.com", "ftag", "ttag") is True
    assert client.relay_of("c1@example.com") is None

    (_, u), (_, lookup), (_, d) = fake.received
    assert (u.verb, u.modifiers, u.call_id, u.remote, u.from_tag, u.to_tag) == (
        "U", "S", "c1@example.com", ("10.0.0.1", 4000), "ftag;1", None)
    assert (lookup.verb, lookup.remote, lookup.from_tag, lookup.to_tag) == (
        "L", ("10.0.0.2", 5000), "ftag;1", "ttag;1")
    # D names the tags without a media number: every stream of the call goes.
    assert (d.verb, d.call_id, d.from_tag, d.to_tag) == ("D", "c1@example.com", "ftag", "ttag")
    s = status_of(client, fake.uri)
    assert (s["up"], s["sent"], s["timeouts"], s["errors"], s["calls"]) == (True, 3, 0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_reply_without_address_means_the_relay_host(harness: Harness) -> None:
    fake = harness.relay()
    fake.script["U"] = "35010"
    client = harness.client(RelaySpec(fake.uri))
    assert await client.offer("c2", "f", None, "10.0.0.1", 4000) == ("127.0.0.1", 35010)


@pytest_twisted.ensureDeferred
async def test_media_index_and_query(harness: Harness) -> None:
    fake = harness.relay()
    client = harness.client(RelaySpec(fake.uri))
    await client.offer("c3", "f", None, "10.0.0.1", 4002, media_index=2)
    assert fake.received[-1][1].from_tag == "f;2"
    stats = await client.query("c3", "f", "t")
    assert stats == {"ttl": 55, "npkts_ina": 10, "npkts_ino": 20, "nrelayed": 30, "ndropped": 0}
    q = fake.received[-1][1]
    assert (q.verb, q.from_tag, q.to_tag) == ("Q", "f;1", "t;1")
    fake.script["Q"] = "ttl=40 rtpa_nlost=3"
    assert await client.query("c3", "f", "t", stats=["ttl", "rtpa_nlost"]) == {
        "ttl": 40, "rtpa_nlost": 3}
    assert fake.received[-1][1].stats == ("ttl", "rtpa_nlost")


@pytest_twisted.ensureDeferred
async def test_cookies_are_unique_pid_prefixed(harness: Harness) -> None:
    fake = harness.relay()
    client = harness.client(RelaySpec(fake.uri))
    await gatherResults([client.offer(f"c{i}", "f", None, "10.0.0.1", 4000) for i in range(5)])
    assert await client.version(fake.uri) == rp.BASE_VERSION
    cookies = [cmd.cookie for _data, cmd in fake.received]
    assert len(set(cookies)) == 6
    assert all(c.startswith(f"{os.getpid()}_") for c in cookies)


@pytest_twisted.ensureDeferred
async def test_retransmits_same_bytes_until_answered(harness: Harness) -> None:
    fake = harness.relay()
    fake.drop = 2
    client = harness.client(RelaySpec(fake.uri))
    assert await client.offer("c4", "f", None, "10.0.0.1", 4000) == ("192.0.2.1", 35000)
    datagrams = [data for data, _cmd in fake.received]
    assert len(datagrams) == 3
    assert datagrams[0] == datagrams[1] == datagrams[2]  # same cookie, same bytes
    s = status_of(client, fake.uri)
    assert (s["up"], s["sent"], s["retransmits"], s["timeouts"]) == (True, 1, 2, 0)


@pytest_twisted.ensureDeferred
async def test_late_and_duplicate_replies_are_ignored(harness: Harness, reactor: Any) -> None:
    fake = harness.relay()
    fake.duplicate = True
    client = harness.client(RelaySpec(fake.uri), disable_time=0.01)
    await client.offer("c5", "f", None, "10.0.0.1", 4000)
    await sleep(reactor, 0.05)
    assert client.stray_replies == 1
    fake.duplicate = False
    fake.delay = TIMEOUT + 0.1  # the answer comes after the client gave up
    with pytest.raises(RelayUnavailable):
        await client.offer("c6", "f", None, "10.0.0.1", 4000)
    await wait_for(reactor, lambda: client.stray_replies >= 2)


@pytest_twisted.ensureDeferred
async def test_reply_from_another_address_is_not_taken(harness: Harness) -> None:
    fake = harness.relay()
    forger = harness.relay()
    fake.answer_from = forger.transport  # right cookie, wrong source port
    client = harness.client(RelaySpec(fake.uri))
    with pytest.raises(RelayUnavailable):
        await client.offer("c7", "f", None, "10.0.0.1", 4000)
    assert client.stray_replies >= 1


@pytest_twisted.ensureDeferred
async def test_error_reply_raises_relay_error(harness: Harness) -> None:
    fake = harness.relay()
    fake.script["U"] = "E31"
    client = harness.client(RelaySpec(fake.uri))
    with pytest.raises(RelayError) as info:
        await client.offer("c8", "f", None, "10.0.0.1", 4000)
    assert info.value.code == 31
    assert client.relay_of("c8") is None
    s = status_of(client, fake.uri)
    assert (s["up"], s["errors"], s["last_error"]) == (True, 1, "E31 to U")


@pytest_twisted.ensureDeferred
async def test_lookup_port_zero_and_unknown_delete(harness: Harness) -> None:
    fake = harness.relay()
    fake.script.update(L="0", D="E50")
    client = harness.client(RelaySpec(fake.uri))
    with pytest.raises(RelayError) as info:
        await client.answer("c9", "f", "t", "10.0.0.2", 5000)
    assert info.value.code == rp.ErrorCode.SESUNKN
    assert await client.delete("c9", "f") is False


# -- timeouts, failover, stickiness ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_timeout_marks_relay_down_then_fail_fast(harness: Harness) -> None:
    fake = harness.relay()
    fake.silent = True
    client = harness.client(RelaySpec(fake.uri))
    started = time.monotonic()
    with pytest.raises(RelayUnavailable):
        await client.offer("c10", "f", None, "10.0.0.1", 4000)
    assert time.monotonic() - started >= TIMEOUT - 0.01
    sent = len(fake.received)
    # The first send plus retransmissions every 50 ms within 300 ms (fewer if
    # the reactor ran late: the deadline does not move).
    assert 2 <= sent <= 7
    assert len({data for data, _cmd in fake.received}) == 1
    s = status_of(client, fake.uri)
    assert (s["up"], s["timeouts"]) == (False, 1)
    assert "no reply" in s["last_error"] and 59 < s["down_for"] <= 60

    # Nothing up: the next command fails at once and sends nothing.
    started = time.monotonic()
    with pytest.raises(RelayUnavailable, match="no relay is up"):
        await client.offer("c11", "f", None, "10.0.0.1", 4000)
    assert time.monotonic() - started < TIMEOUT / 3
    assert len(fake.received) == sent


@pytest_twisted.ensureDeferred
async def test_new_call_fails_over_and_then_sticks(harness: Harness) -> None:
    a, b = harness.relay(media="192.0.2.1"), harness.relay(media="192.0.2.2")
    client = harness.client(RelaySpec(a.uri), RelaySpec(b.uri))
    call = call_led_by(client, a.uri)
    a.silent = True
    assert await client.offer(call, "f", None, "10.0.0.1", 4000) == ("192.0.2.2", 35000)
    assert client.relay_of(call) == b.uri
    assert status_of(client, a.uri)["up"] is False

    # A is back; the call's later commands still go to B, where its media is,
    # though a new call with this Call-ID would start on A.
    a.silent = False
    assert await client.check(a.uri) is True
    assert client.candidates(call)[0] == a.uri
    a.received.clear()
    assert await client.answer(call, "f", "t", "10.0.0.2", 5000) == ("192.0.2.2", 35002)
    await client.query(call, "f", "t")
    assert await client.delete(call, "f", "t") is True
    assert [v for v in b.verbs() if v != "V"] == ["U", "L", "Q", "D"]
    assert a.verbs() == []


@pytest_twisted.ensureDeferred
async def test_call_fails_when_its_relay_is_down(harness: Harness) -> None:
    a, b = harness.relay(media="192.0.2.1"), harness.relay(media="192.0.2.2")
    client = harness.client(RelaySpec(a.uri), RelaySpec(b.uri))
    call = call_led_by(client, b.uri)
    await client.offer(call, "f", None, "10.0.0.1", 4000)
    b.silent = True
    with pytest.raises(RelayUnavailable):
        await client.answer(call, "f", "t", "10.0.0.2", 5000)
    assert status_of(client, b.uri)["up"] is False
    # Its relay is down: fail at once, never move the call to A.
    with pytest.raises(RelayUnavailable, match="is down"):
        await client.delete(call, "f", "t")
    assert a.received == []
    # New calls still go to A.
    other = call_led_by(client, a.uri, "other")
    assert await client.offer(other, "f", None, "10.0.0.1", 4000) == ("192.0.2.1", 35000)


@pytest_twisted.ensureDeferred
async def test_new_call_moves_on_when_relay_is_full(harness: Harness) -> None:
    a, b = harness.relay(media="192.0.2.1"), harness.relay(media="192.0.2.2")
    a.script["U"] = "E72"  # no free port pair
    client = harness.client(RelaySpec(a.uri), RelaySpec(b.uri))
    call = call_led_by(client, a.uri)
    assert await client.offer(call, "f", None, "10.0.0.1", 4000) == ("192.0.2.2", 35000)
    assert status_of(client, a.uri)["up"] is True  # it answered: full, not gone


@pytest_twisted.ensureDeferred
async def test_weights_share_new_calls(harness: Harness) -> None:
    a, b = harness.relay(media="192.0.2.1"), harness.relay(media="192.0.2.2")
    idle = harness.relay(media="192.0.2.3")
    client = harness.client(RelaySpec(a.uri, 3), RelaySpec(b.uri, 1), RelaySpec(idle.uri, 0))
    n = 400
    results = await gatherResults(
        [client.offer(f"w{i}@example.com", "f", None, "10.0.0.1", 4000) for i in range(n)])
    on_a = sum(1 for addr, _port in results if addr == "192.0.2.1")
    assert 0.67 * n < on_a < 0.83 * n  # 3:1 expected 0.75
    assert idle.received == []  # weight 0: no new calls
    assert status_of(client, a.uri)["calls"] + status_of(client, b.uri)["calls"] == n


@pytest_twisted.ensureDeferred
async def test_call_map_is_bounded_and_forgets_idle_calls(harness: Harness, reactor: Any) -> None:
    fake = harness.relay()
    client = harness.client(RelaySpec(fake.uri), max_calls=2, call_idle_time=0.1)
    for call in ("m1", "m2", "m3"):
        await client.offer(call, "f", None, "10.0.0.1", 4000)
    assert [client.relay_of(c) for c in ("m1", "m2", "m3")] == [None, fake.uri, fake.uri]
    # Kamailio's ";branch" suffix names the same call.
    assert client.relay_of("m3;z9hG4bK1") == fake.uri
    await sleep(reactor, 0.15)
    client._purge_idle()  # what each ping round does
    assert client.relay_of("m2") is None and status_of(client, fake.uri)["calls"] == 0


# -- health checks -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_down_relay_is_checked_after_disable_time(harness: Harness, reactor: Any) -> None:
    fake = harness.relay()
    client = harness.client(RelaySpec(fake.uri), disable_time=0.5, ping_interval=5.0, start=True)
    await wait_for(reactor, lambda: len(fake.received) == 2)
    assert fake.verbs() == ["V", "VF"]  # start-up check
    assert fake.received[1][1].capability == "20050322"
    fake.silent = True
    with pytest.raises(RelayUnavailable):
        await client.offer("h1", "f", None, "10.0.0.1", 4000)
    assert status_of(client, fake.uri)["up"] is False
    fake.silent = False
    fake.received.clear()
    await sleep(reactor, 0.3)
    assert fake.received == []  # left alone while disabled
    await wait_for(reactor, lambda: status_of(client, fake.uri)["up"])
    assert fake.verbs() == ["V", "VF"]
    assert await client.offer("h2", "f", None, "10.0.0.1", 4000) == ("192.0.2.1", 35000)


@pytest_twisted.ensureDeferred
async def test_periodic_ping_takes_out_a_silent_relay(harness: Harness, reactor: Any) -> None:
    a, b = harness.relay(), harness.relay()
    client = harness.client(RelaySpec(a.uri), RelaySpec(b.uri), ping_interval=0.1, start=True)
    await wait_for(reactor, lambda: "VF" in a.verbs())
    a.silent = True
    await wait_for(reactor, lambda: not status_of(client, a.uri)["up"])
    await wait_for(reactor, lambda: b.verbs().count("V") >= 3)
    assert status_of(client, b.uri)["up"] is True
    assert b.verbs().count("V") >= 3 and b.verbs().count("VF") == 1


@pytest_twisted.ensureDeferred
async def test_wrong_version_or_capability_is_down(harness: Harness) -> None:
    old, nocap = harness.relay(), harness.relay()
    old.script["V"] = "20030101"
    nocap.script["VF"] = "0"
    client = harness.client(RelaySpec(old.uri), RelaySpec(nocap.uri))
    assert await client.check(old.uri) is False
    assert await client.check(nocap.uri) is False
    old_s, nocap_s = client.status()
    assert (old_s["up"], nocap_s["up"]) == (False, False)
    assert "V answered" in old_s["last_error"] and "VF 20050322" in nocap_s["last_error"]
    with pytest.raises(RelayUnavailable):
        await client.offer("v1", "f", None, "10.0.0.1", 4000)


# -- other transports, shutdown ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unix_socket_relay_round_trip(harness: Harness, reactor: Any,
                                            tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sock")
    factory = FakeStreamFactory()
    harness.ports.append(reactor.listenUNIX(path, factory))
    client = harness.client(RelaySpec(f"unix:{path}"))
    assert await client.check(f"unix:{path}") is True
    # The stream reply names an address here; without one there is no host to use.
    assert await client.offer("u1", "f", None, "10.0.0.1", 4000) == ("192.0.2.9", 35000)
    factory.script["L"] = "35002"
    assert await client.answer("u1", "f", "t", "10.0.0.2", 5000) == (None, 35002)
    assert await client.delete("u1", "f", "t") is True
    sent = [data for data, _cmd in factory.received]
    assert [cmd.verb for _data, cmd in factory.received] == ["V", "VF", "U", "L", "D"]
    assert sent[2].startswith(b"U ") and sent[4] == b"D u1 f t"  # no cookie on streams


@pytest_twisted.ensureDeferred
async def test_unix_socket_relay_absent_is_down(harness: Harness, tmp_path: Path) -> None:
    uri = f"unix:{tmp_path / 'nobody.sock'}"
    client = harness.client(RelaySpec(uri))
    with pytest.raises(RelayUnavailable):
        await client.offer("u2", "f", None, "10.0.0.1", 4000)
    s = status_of(client, uri)
    assert s["up"] is False and "cannot connect" in s["last_error"]


@pytest_twisted.ensureDeferred
async def test_ipv6_relay_round_trip(harness: Harness) -> None:
    v4 = harness.relay(media="192.0.2.1")
    v6 = harness.relay(media="2001:db8::7", host="::1")
    v6.script["L"] = "35004"
    client = harness.client(RelaySpec(v6.uri), RelaySpec(v4.uri, 0))
    assert v6.uri.startswith("udp:[::1]:")
    assert await client.offer("v6", "f", None, "2001:db8::1", 4000,
                              modifiers="6") == ("2001:db8::7", 35000)
    assert await client.answer("v6", "f", "t", "2001:db8::2", 5000,
                               modifiers="6") == ("::1", 35004)
    assert await client.version(v4.uri) == rp.BASE_VERSION  # the IPv4 socket too


@pytest_twisted.ensureDeferred
async def test_stop_fails_commands_in_flight(harness: Harness) -> None:
    fake = harness.relay()
    fake.silent = True
    client = harness.client(RelaySpec(fake.uri))
    pending = client.offer("s1", "f", None, "10.0.0.1", 4000)
    await client.stopService()
    with pytest.raises(RelayUnavailable, match="stopped"):
        await pending
    assert status_of(client, fake.uri)["up"] is True  # stopping is not the relay's fault
    with pytest.raises(RelayUnavailable, match="stopped"):
        await client.offer("s2", "f", None, "10.0.0.1", 4000)
