"""The nonce-count replay check of worker processes in Redis
(registrar/redis/noncecount.py, issue 15), against a real redis-server:
two workers (two connections) share it, so a replay sent to the other
worker is refused as one to the same process is; the key lives as long as
the nonce and under ``[redis] prefix``. The auth module uses it only with
``[proxy] workers > 1``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import redisproc
from fakecore import FakeCore
from proxykit import request

from sipsuite.config import load_config
from sipsuite.proxy.modules import auth
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.registrar import subscribers, usrloc
from sipsuite.proxy.registrar.location import StoreUnavailable, Subscriber
from sipsuite.proxy.registrar.redis import module as redis
from sipsuite.proxy.registrar.redis.client import RedisConnection
from sipsuite.proxy.registrar.redis.noncecount import RedisNonceCounter
from sipsuite.proxy.routing.base import RequestContext
from sipsuite.proxy.services import AUTH, REDIS, SUBSCRIBERS
from sipsuite.sip import digest
from sipsuite.sip.parser import parse_datagram

DB = 14
LISTENER = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")


@pytest_twisted.async_yield_fixture
async def workers(redis_server: redisproc.RedisServer,
                  reactor: Any) -> AsyncIterator[tuple[RedisNonceCounter, RedisNonceCounter]]:
    redis_server.call("FLUSHDB", db=DB)
    conns = [RedisConnection(redis_server.url(DB), 2.0, reactor) for _ in range(2)]
    for conn in conns:
        await conn.start()
    try:
        yield RedisNonceCounter(conns[0], "pfx:"), RedisNonceCounter(conns[1], "pfx:")
    finally:
        for conn in conns:
            await conn.stop()


@pytest_twisted.ensureDeferred
async def test_a_replay_to_the_other_worker_is_refused(
        workers: tuple[RedisNonceCounter, RedisNonceCounter],
        redis_server: redisproc.RedisServer) -> None:
    a, b = workers
    now = time.time()
    expires = now + 30
    assert await a.accept("nonce1", "00000001", expires, now)
    assert not await b.accept("nonce1", "00000001", expires, now)  # the replay, elsewhere
    assert not await a.accept("nonce1", "00000001", expires, now)  # and here
    assert await b.accept("nonce1", "00000002", expires, now)  # counting on
    assert not await a.accept("nonce1", "00000002", expires, now)
    assert not await a.accept("nonce1", "00000001", expires, now)  # going back
    assert await a.accept("nonce2", "00000001", expires, now)  # another nonce, its own count
    # One key per nonce, under the prefix, living as long as the nonce.
    assert sorted(redis_server.call("KEYS", "*", db=DB)) == [b"pfx:nc:nonce1", b"pfx:nc:nonce2"]
    assert redis_server.call("GET", "pfx:nc:nonce1", db=DB) == b"2"
    assert 29_000 < redis_server.call("PTTL", "pfx:nc:nonce1", db=DB) <= 30_000


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("nc", ["00000000", "1", "0000000g", "+0000001", " 0000001", "000000001"])
async def test_a_malformed_or_zero_nonce_count_is_refused_without_storing(
        workers: tuple[RedisNonceCounter, RedisNonceCounter],
        redis_server: redisproc.RedisServer, nc: str) -> None:
    now = time.time()
    assert not await workers[0].accept("n", nc, now + 30, now)
    assert not await workers[0].accept("n", "00000001", now, now)  # stale: nothing to key it by
    assert redis_server.call("KEYS", "*", db=DB) == []


@pytest_twisted.ensureDeferred
async def test_redis_down_is_store_unavailable(reactor: Any) -> None:
    conn = RedisConnection(f"redis://127.0.0.1:{redisproc.free_port()}/4", 0.25, reactor,
                           max_delay=0.1)
    await conn.start()  # does not wait for Redis
    try:
        with pytest.raises(StoreUnavailable):
            await RedisNonceCounter(conn).accept("n", "00000001", time.time() + 30, time.time())
    finally:
        await conn.stop()


# --- the auth module ---------------------------------------------------------------


def _worker(tmp_path: Path, url: str, workers: int, reactor: Any = None) -> FakeCore:
    """One worker's modules (redis, usrloc, subscribers, auth) on a FakeCore
    (on the real reactor when given: the Redis connection needs one)."""
    path = tmp_path / f"w{workers}.toml"
    path.write_text(f'[proxy]\ndomains = ["sipsuite.test"]\nworkers = {workers}\n'
                    '[management]\nlisten = ""\n'
                    f'[redis]\nurl = "{url}"\nprefix = "w:"\n'
                    '[auth]\nrealm = "sipsuite.test"\nalgorithms = ["MD5"]\nsecret = "shared"\n')
    core = FakeCore(load_config(str(path)))
    if reactor is not None:
        core.clock = reactor
    core.modules.setup_all([redis.SPEC, usrloc.SPEC, subscribers.SPEC, auth.SPEC], core.config)
    return core


def _register(core: FakeCore, creds: str = "") -> RequestContext:
    data = request("REGISTER", "sip:sipsuite.test")
    if creds:
        data = data.replace(b"Content-Length", f"Authorization: {creds}\r\nContent-Length".encode())
    return RequestContext(core, parse_datagram(data),  # type: ignore[arg-type]
                          Source("udp", "127.0.0.2", 5070, LISTENER), False)


def test_one_worker_keeps_the_check_in_memory(tmp_path: Path, redis_server: redisproc.RedisServer) -> None:
    one: Any = _worker(tmp_path, redis_server.url(DB), 1).modules.require(AUTH)
    two: Any = _worker(tmp_path, redis_server.url(DB), 2).modules.require(AUTH)
    assert one.shared_counter is None and isinstance(two.shared_counter, RedisNonceCounter)


@pytest_twisted.ensureDeferred
async def test_a_replayed_register_to_the_other_worker_is_challenged(
        tmp_path: Path, redis_server: redisproc.RedisServer, reactor: Any) -> None:
    redis_server.call("FLUSHDB", db=DB)
    a, b = (_worker(tmp_path, redis_server.url(DB), 2, reactor) for _ in range(2))
    for core in (a, b):
        await core.modules.require(REDIS).start()
    try:
        await a.modules.require(SUBSCRIBERS).add(
            Subscriber.from_password("alice", "sipsuite.test", "secret"))
        ctx = _register(a)
        assert await ctx.auth_check("alice", proxy=False) is False
        nonce = digest.parse_challenge(a.replies[-1][2][0][1])["nonce"]
        creds = digest.authorization("alice", "secret", "sipsuite.test", nonce,
                                     "REGISTER", "sip:sipsuite.test")
        assert await _register(a, creds).auth_check("alice", proxy=False) is True
        # The same Authorization to the other worker: a replay, challenged
        # (401, not stale) as the same worker does.
        assert await _register(b, creds).auth_check("alice", proxy=False) is False
        status, _, headers = b.replies[-1]
        assert status == 401 and "stale" not in headers[0][1].lower()
        assert await _register(a, creds).auth_check("alice", proxy=False) is False
        # The phone counting on (nc=2) is welcome on either.
        again = digest.authorization("alice", "secret", "sipsuite.test", nonce,
                                     "REGISTER", "sip:sipsuite.test", nc=2)
        assert await _register(b, again).auth_check("alice", proxy=False) is True
    finally:
        for core in (a, b):
            await core.modules.require(REDIS).stop()
