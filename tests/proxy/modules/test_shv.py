"""self.shv, Kamailio's $shv (issue 14): in memory without Redis; with a real
redis-server one hash under the prefix that two connections (two workers,
two nodes) share, ints staying ints and strings strings, incr atomic across
them; Redis down is StoreUnavailable; the shv.get / shv.set RPCs and the
sipsuite-ctl value parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import redisproc
from proxykit import ProxyKit
from twisted.internet import defer

from sipsuite.ops.ctl.cli import shv_value
from sipsuite.ops.ctl.output import show_shv
from sipsuite.ops.errors import INVALID_PARAMS, NO_SUCH_ENTRY, RpcError
from sipsuite.ops.server import RpcRegistry
from sipsuite.proxy import Routing, StoreUnavailable
from sipsuite.proxy.modules.shv import MemoryShv, RedisShv, register_shv_methods
from sipsuite.proxy.registrar.redis.client import RedisConnection
from sipsuite.proxy.services import SHV

DB = 10


@pytest_twisted.ensureDeferred
async def test_in_memory_ints_stay_ints_and_strings_strings() -> None:
    shv = MemoryShv()
    assert await shv.get("calls") is None and await shv.get("calls", 0) == 0
    assert await shv.incr("calls") == 1
    assert await shv.incr("calls", 5) == 6
    await shv.set("mode", "night")
    await shv.set("n", "42")
    assert (await shv.get("mode"), await shv.get("n"), await shv.get("calls")) == ("night", "42", 6)
    assert await shv.items() == {"calls": 6, "mode": "night", "n": "42"}
    with pytest.raises(TypeError):
        await shv.incr("n")  # a string, even of digits
    for bad in (True, 1.5, None, [1]):
        with pytest.raises(TypeError):
            await shv.set("x", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await shv.set("", 1)
    assert await shv.delete("mode") and not await shv.delete("mode")


@pytest_twisted.async_yield_fixture
async def two(redis_server: redisproc.RedisServer, reactor: Any) -> AsyncIterator[tuple[RedisShv, RedisShv]]:
    """Two processes' view of the same Redis: each its own connection."""
    redis_server.call("FLUSHDB", db=DB)
    conns = [RedisConnection(redis_server.url(DB), 2.0, reactor) for _ in range(2)]
    for conn in conns:
        await conn.start()
    try:
        yield RedisShv(conns[0], "pfx:"), RedisShv(conns[1], "pfx:")
    finally:
        for conn in conns:
            await conn.stop()


@pytest_twisted.ensureDeferred
async def test_redis_values_are_shared_and_keep_their_type(
        two: tuple[RedisShv, RedisShv], redis_server: redisproc.RedisServer) -> None:
    a, b = two
    assert await b.get("mode") is None
    await a.set("mode", "night")
    await a.set("zip", "0123")    # a numeric string stays a string (no convertNumbers)
    await a.set("digits", "42")
    await a.set("limit", -7)
    await a.set("text", "ünïcode")
    assert await b.get("mode") == "night"
    assert (await b.get("zip"), await b.get("digits"), await b.get("limit")) == ("0123", "42", -7)
    assert await b.get("text") == "ünïcode"
    assert await b.items() == {"mode": "night", "zip": "0123", "digits": "42", "limit": -7,
                               "text": "ünïcode"}
    # One hash under the prefix; an int as its decimal text (so HINCRBY works on it).
    assert redis_server.call("KEYS", "*", db=DB) == [b"pfx:shv"]
    assert redis_server.call("HGET", "pfx:shv", "limit", db=DB) == b"-7"
    assert redis_server.call("HGET", "pfx:shv", "digits", db=DB) == b"s42"
    assert await b.delete("mode") and await a.get("mode") is None


@pytest_twisted.ensureDeferred
async def test_incr_is_atomic_across_connections(two: tuple[RedisShv, RedisShv]) -> None:
    a, b = two
    # 2 x 50 increments in flight at once, interleaved on two connections.
    results = await defer.gatherResults(
        [defer.ensureDeferred(shv.incr("calls")) for _ in range(50) for shv in (a, b)])
    assert sorted(results) == list(range(1, 101))
    assert await a.get("calls") == 100 and await b.incr("calls", -10) == 90
    await a.set("mode", "day")
    with pytest.raises(TypeError):
        await b.incr("mode")
    assert await a.get("mode") == "day"  # untouched


@pytest_twisted.ensureDeferred
async def test_redis_down_is_store_unavailable(reactor: Any) -> None:
    conn = RedisConnection(f"redis://127.0.0.1:{redisproc.free_port()}/4", 0.25, reactor, max_delay=0.1)
    await conn.start()  # does not wait for Redis
    shv = RedisShv(conn, "sipsuite:")
    try:
        for call in (shv.get("x"), shv.set("x", 1), shv.incr("x")):
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await conn.stop()


@pytest_twisted.ensureDeferred
async def test_routing_reaches_it_as_self_shv_and_the_operator_through_the_rpcs(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    routing = Routing(kit.core)
    assert routing.shv is kit.core.modules.get(SHV)
    assert isinstance(routing.shv, MemoryShv)  # no [redis] url
    registry = RpcRegistry()
    register_shv_methods(registry, kit.core)

    assert await registry.call("shv.set", {"name": "gw", "value": "10.0.0.1"}) == {"gw": "10.0.0.1"}
    assert await routing.shv.get("gw") == "10.0.0.1"
    await routing.shv.incr("calls")
    assert await registry.call("shv.get", {"name": "calls"}) == {"calls": 1}
    assert await registry.call("shv.get") == {"gw": "10.0.0.1", "calls": 1}
    # kamcmd's typed form: shv.set name int 5
    assert await registry.call("shv.set", ["n", "5", "int"]) == {"n": 5}
    assert await registry.call("shv.set", ["s", 5, "str"]) == {"s": "5"}
    with pytest.raises(RpcError) as err:
        await registry.call("shv.get", {"name": "nope"})
    assert err.value.code == NO_SUCH_ENTRY
    for params in (["x", True], ["x", 1.5], ["x", "abc", "int"], ["x", 1, "float"], ["", 1]):
        with pytest.raises(RpcError) as err:
            await registry.call("shv.set", params)
        assert err.value.code == INVALID_PARAMS, params


def test_ctl_reads_digits_as_an_int_and_quotes_as_a_string() -> None:
    assert shv_value("42") == 42 and shv_value("-3") == -3
    assert shv_value('"42"') == "42" and shv_value("night") == "night" and shv_value("1.5") == "1.5"
    args = argparse.Namespace()
    assert show_shv({"n": 42, "s": "42"}, args) == 'n = 42\ns = "42"'
    assert show_shv({}, args) == "no shared variables"
