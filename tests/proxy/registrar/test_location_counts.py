"""``counts()`` of the location stores (``stats`` / ``/metrics`` registrations):
the same numbers from the in-memory store and from a real Redis, where AORs
come from the index (ZCOUNT) and bindings are counted only up to a limit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import redisproc

from sipsuite.proxy.registrar.location import Binding, MemoryLocationStore
from sipsuite.proxy.registrar.redis.client import RedisConnection
from sipsuite.proxy.registrar.redis.location import RedisLocationStore


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time())) + 0.25  # Redis expires by its own (real) clock

    def __call__(self) -> float:
        return self.now


@pytest_twisted.async_yield_fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, reactor: Any) -> AsyncIterator[tuple[Any, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryLocationStore(clock), clock
        return
    server: redisproc.RedisServer = request.getfixturevalue("redis_server")
    server.call("FLUSHDB", db=14)
    conn = RedisConnection(server.url(14), 2.0, reactor)
    await conn.start()
    try:
        yield RedisLocationStore(conn, clock), clock
    finally:
        await conn.stop()


def put(*bindings: Binding) -> Any:
    def change(current: list[Binding], now: float) -> None:
        current.extend(Binding.from_dict(b.to_dict()) for b in bindings)
    return change


@pytest_twisted.ensureDeferred
async def test_counts_aors_and_current_bindings(store: tuple[Any, Clock]) -> None:
    loc, clock = store
    assert await loc.counts() == (0, 0)
    now = clock.now
    await loc.update("alice", put(Binding("sip:a@h1", now + 10), Binding("sip:a@h2", now + 100)))
    await loc.update("bob", put(Binding("sip:b@h1", None)))
    # names that get an escaped key in Redis count like any other
    await loc.update("index", put(Binding("sip:i@h1", now + 100)))
    await loc.update(":odd", put(Binding("sip:o@h1", now + 100)))
    assert await loc.counts() == (4, 5)
    clock.now = now + 50  # alice's first binding expired inside a live AOR
    assert await loc.counts() == (4, 4)
    await loc.remove("bob")
    assert await loc.counts() == (3, 3)


@pytest_twisted.ensureDeferred
async def test_redis_bindings_are_not_counted_past_the_limit(
    redis_server: redisproc.RedisServer, reactor: Any,
) -> None:
    redis_server.call("FLUSHDB", db=13)
    conn = RedisConnection(redis_server.url(13), 2.0, reactor)
    await conn.start()
    try:
        clock = Clock()
        loc = RedisLocationStore(conn, clock)
        for user in ("a", "b", "c"):
            await loc.update(user, put(Binding(f"sip:{user}@h", clock.now + 100)))
        assert await loc.counts(limit=3) == (3, 3)
        assert await loc.counts(limit=2) == (3, None)
    finally:
        await conn.stop()
