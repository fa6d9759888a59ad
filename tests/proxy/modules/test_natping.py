"""The natping module on its own: set up by its SPEC on a FakeCore, its
OPTIONS through a FakeUAC the test answers, its CRLF pings through a
FakeNet, its loop on the FakeCore's task.Clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from fakecore import FakeConnection, FakeCore
from proxykit import request

from sipsuite.config import load_config
from sipsuite.proxy.modules.natping import SPEC, NatPing
from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.registrar.location import Binding, MemoryLocationStore
from sipsuite.proxy.services import LOCATION, NATPING, REGISTRAR
from sipsuite.sip.message import make_response
from sipsuite.sip.parser import parse_datagram
from sipsuite.startup import StartupError

START = 1_800_000_000.0
UDP = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
TCP = Listener("tcp", "127.0.0.1", 5060, "127.0.0.1")


def make(tmp_path: Path, natsipping: bool = False, interval: float = 10.0,
         timeout: float = 25.0) -> FakeCore:
    path = tmp_path / "natping.toml"
    path.write_text(f"[features]\nnatsipping = {'true' if natsipping else 'false'}\n"
                    f"[nat]\nkeepalive_interval = {interval}\nkeepalive_timeout = {timeout}\n")
    core = FakeCore(load_config(str(path)), start=START)
    core.net.listeners += [UDP, TCP]
    core.location = MemoryLocationStore(core.wall)  # type: ignore[attr-defined]
    core.modules.provide(LOCATION, core.location)  # type: ignore[attr-defined]
    return core


async def register(core: FakeCore, aor: str, received: str, listener: Listener = UDP) -> Binding:
    b = Binding(f"sip:{aor}@10.0.0.5:5060", START + 3600, received=received,
                socket=repr(listener), nat=True, updated=START)
    await core.location.update(aor, lambda bs, now: bs.append(b))  # type: ignore[attr-defined]
    return b


def ok() -> Any:
    return make_response(parse_datagram(request("OPTIONS", "sip:x@127.0.0.1")), 200, "OK")


def test_spec_follows_keepalive_interval_and_subscribes(tmp_path: Path) -> None:
    core = make(tmp_path)
    assert SPEC.runtime_switch and SPEC.enabled(core.config)
    off = dataclasses.replace(core.config,
                              nat=dataclasses.replace(core.config.nat, keepalive_interval=0.0))
    assert not SPEC.enabled(off)
    # Set up after the registrar, which it needs (and tells it of NAT'ed bindings).
    with pytest.raises(StartupError, match="natping needs the registrar service"):
        core.modules.setup_all([SPEC], core.config)
    core2 = make(tmp_path)
    subscribed: list[Any] = []
    core2.modules.provide(REGISTRAR, SimpleNamespace(on_nat_binding=subscribed.append))  # type: ignore[arg-type]
    core2.modules.setup_all([SPEC], core2.config)
    assert isinstance(core2.modules.get(NATPING), NatPing)
    assert subscribed == [core2.modules.get(NATPING).track]  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_options_go_through_the_uac_once_each_and_answers_keep_the_binding(
        tmp_path: Path) -> None:
    core = make(tmp_path, natsipping=True)
    await register(core, "alice", "udp:127.0.0.7:40000")
    ping = NatPing(core)  # type: ignore[arg-type]
    ping.start()
    core.clock.advance(10.0)
    (sent,) = core.uac.requests
    assert (sent.method, sent.uri, sent.target) == (
        "OPTIONS", "sip:alice@10.0.0.5:5060", Target("udp", "127.0.0.7", 40000))
    assert sent.options == {"listener": UDP, "from_uri": "sip:keepalive@127.0.0.1:5060",
                            "timeout": 10.0, "retransmit": False, "connect": False}
    assert core.net.sent == []
    sent.result.callback(ok())
    core.clock.advance(10.0)
    core.uac.requests[1].result.callback(None)  # no answer this time
    core.clock.advance(10.0)
    core.clock.advance(10.0)  # 30 s since the last answer > keepalive_timeout 25
    assert len(core.uac.requests) == 3, "a binding past the timeout is not pinged again"
    assert await core.location.lookup("alice") == []  # type: ignore[attr-defined]
    assert (ping.sent, ping.removed) == (3, 1)
    ping.stop()


@pytest_twisted.ensureDeferred
async def test_keepalive_timeout_read_at_use(tmp_path: Path) -> None:
    core = make(tmp_path, natsipping=True)
    core.modules.provide(LOCATION, core.location)  # type: ignore[attr-defined]
    await register(core, "alice", "udp:127.0.0.7:40000")
    ping = NatPing(core)  # type: ignore[arg-type]
    ping.start()
    core.clock.advance(10.0)
    core.config = dataclasses.replace(
        core.config, nat=dataclasses.replace(core.config.nat, keepalive_timeout=100.0))
    for _ in range(5):
        core.clock.advance(10.0)
    assert len(core.uac.requests) == 6 and ping.removed == 0
    ping.stop()


@pytest_twisted.ensureDeferred
async def test_crlf_pings_udp_and_over_an_aliased_connection(tmp_path: Path) -> None:
    core = make(tmp_path)
    await register(core, "alice", "udp:127.0.0.7:40000")
    await register(core, "bob", "tcp:127.0.0.8:41000", TCP)
    await register(core, "carol", "tcp:127.0.0.9:42000", TCP)  # no connection: nothing
    conn = FakeConnection(TCP)
    core.net.alias(conn, "127.0.0.8", 41000)
    ping = NatPing(core)  # type: ignore[arg-type]
    await ping.round()
    assert [(d, t, h, p) for d, t, h, p, _ in core.net.sent] == [
        (b"\r\n\r\n", "udp", "127.0.0.7", 40000)]
    assert conn.sent == [b"\r\n\r\n"]
    assert core.uac.requests == [] and ping.tracked == {"alice", "bob", "carol"}


@pytest_twisted.ensureDeferred
async def test_a_connection_another_worker_holds_is_left_to_that_worker(tmp_path: Path) -> None:
    """Worker processes: a TCP binding whose connection a sibling holds is
    pinged by that sibling only, and never removed here for want of answers
    only the sibling hears; one whose connection nobody holds still goes."""
    core = make(tmp_path, natsipping=True)
    await register(core, "bob", "tcp:127.0.0.8:41000", TCP)
    await register(core, "carol", "tcp:127.0.0.9:42000", TCP)
    core.net.siblings[("tcp", "127.0.0.8", 41000)] = repr(TCP)
    ping = NatPing(core)  # type: ignore[arg-type]
    for _ in range(4):  # 30 s past the last REGISTER: over keepalive_timeout (25 s)
        core.clock.advance(10.0)
        await ping.round()
    assert [b.contact for b in await core.location.lookup("bob")] == ["sip:bob@10.0.0.5:5060"]  # type: ignore[attr-defined]
    assert await core.location.lookup("carol") == []  # type: ignore[attr-defined]
    assert core.uac.requests == [] and ping.removed == 1


def test_reconfigure_restarts_the_loop_on_a_new_interval(tmp_path: Path) -> None:
    core = make(tmp_path)
    ping = NatPing(core)  # type: ignore[arg-type]
    ping.start()
    assert ping.loop is not None and ping.loop.interval == 10.0
    old = core.config
    core.config = dataclasses.replace(old, nat=dataclasses.replace(old.nat, keepalive_interval=5.0))
    ping.reconfigure(old, core.config)
    assert ping.loop is not None and ping.loop.running and ping.loop.interval == 5.0
    ping.stop()
    assert ping.loop is None
    # Not running and not listening: a new interval does not start it.
    idle = NatPing(core)  # type: ignore[arg-type]
    core.net.listeners.clear()
    idle.reconfigure(core.config, old)
    assert idle.loop is None


def test_track_feeds_rounds_and_stops_with_the_module(tmp_path: Path) -> None:
    ping = NatPing(make(tmp_path))  # type: ignore[arg-type]
    ping.track("alice")
    assert ping.tracked is None  # the first round reads the store's NAT index
    ping.tracked = set()
    ping.track("alice")
    assert ping.tracked == {"alice"}
    ping.stop()
    ping.track("bob")
    assert ping.tracked is None
