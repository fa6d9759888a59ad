"""The node-local subscriber cache (sipsuite/proxy/registrar/redis/cache.py) against a
real redis-server: what one node keeps is dropped as soon as anybody else
changes the record, and nothing kept is used once the report channel or the
command connection has dropped."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
import redisproc
from twisted.internet import defer
from twisted.internet.task import deferLater

from sipsuite.proxy.registrar.location import Subscriber
from sipsuite.proxy.registrar.redis.cache import SubscriberCache
from sipsuite.proxy.registrar.redis.client import RedisConnection
from sipsuite.proxy.registrar.redis.subscribers import RedisSubscriberStore

REALM = "sipsuite.test"
DB = 7


def sub(user: str, password: str) -> Subscriber:
    return Subscriber.from_password(user, REALM, password)


async def pause(reactor: Any, seconds: float = 0.02) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(what: Callable[[], bool], reactor: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not what():
        assert time.monotonic() < deadline, "condition not met in time"
        await pause(reactor)


def md5(user: str, password: str) -> str:
    return sub(user, password).ha1["MD5"]


class Node:
    """One proxy node's subscriber store: its own connections to Redis."""

    def __init__(self, url: str, reactor: Any, cache_size: int = 1000,
                 heartbeat: float | None = None) -> None:
        self.conn = RedisConnection(url, 1.0, reactor, max_delay=0.2)
        self.store = RedisSubscriberStore(self.conn, cache_size=cache_size)
        if heartbeat is not None:
            self.cache.heartbeat = heartbeat
        self.reactor = reactor

    @property
    def cache(self) -> SubscriberCache:
        assert self.store.cache is not None
        return self.store.cache

    async def start(self) -> Node:
        await self.conn.start()
        await self.live()
        return self

    async def live(self) -> None:
        """Until reads are cached: a read asks for tracking, which takes a round trip."""
        async def tracked() -> bool:
            await self.store.get("nobody")
            return self.cache.live

        deadline = time.monotonic() + 5.0
        while not await tracked():
            assert time.monotonic() < deadline, "subscriber cache never went live"
            await pause(self.reactor)

    async def ha1(self, user: str) -> str | None:
        found = await self.store.get(user)
        return None if found is None else found.ha1["MD5"]

    def held(self, user: str) -> str | None:
        """The MD5 HA1 the cache holds for ``user`` ("-" for none held)."""
        found = self.cache.entries.get(self.store._key(user), "-")
        return found if found in ("-", None) else found.ha1["MD5"]  # type: ignore[union-attr]

    async def add_held(self, user: str, password: str) -> None:
        """Add ``user`` through this node and see the record served from memory."""
        assert await self.store.add(sub(user, password))
        await until(lambda: self.held(user) == md5(user, password), self.reactor)
        assert await self.hit(user) == md5(user, password)

    async def hit(self, user: str) -> str | None:
        """A read that must come from the cache (no Redis round trip)."""
        hits = self.cache.hits
        value = await self.ha1(user)
        assert self.cache.hits == hits + 1, f"{user!r} was read from Redis, not the cache"
        return value


@pytest.fixture
def url(redis_server: redisproc.RedisServer) -> str:
    redis_server.call("FLUSHDB", db=DB)
    return redis_server.url(DB)


@pytest_twisted.ensureDeferred
async def test_reads_and_own_writes_are_served_from_the_cache(url: str, reactor: Any) -> None:
    a = await Node(url, reactor).start()
    try:
        # Kept as written, or read again when Redis's report of the write
        # overtook its reply.
        assert await a.store.add(sub("alice", "pw1"))
        await until(lambda: a.held("alice") == md5("alice", "pw1"), reactor)
        assert await a.hit("alice") == md5("alice", "pw1")
        assert await a.store.replace(sub("alice", "pw2"))
        await until(lambda: a.held("alice") == md5("alice", "pw2"), reactor)
        assert await a.hit("alice") == md5("alice", "pw2")
        # Redis reports this node's own write back too: the entry is read
        # again, not lost.
        await pause(reactor, 0.2)
        assert await a.hit("alice") == md5("alice", "pw2")
        assert await a.store.remove("alice")
        await until(lambda: a.held("alice") is None, reactor)
        assert await a.hit("alice") is None
        # A refused write (the user exists) leaves the record served from memory.
        assert await a.store.add(sub("bob", "pw"))
        await until(lambda: a.held("bob") == md5("bob", "pw"), reactor)
        assert not await a.store.add(sub("bob", "other"))
        await until(lambda: a.held("bob") == md5("bob", "pw"), reactor)
        assert await a.hit("bob") == md5("bob", "pw")
        # A user read once from Redis is kept, unknown ones too (scanners).
        assert await a.ha1("carol") is None
        assert await a.hit("carol") is None
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_another_nodes_change_reaches_the_cache(url: str, reactor: Any) -> None:
    a = await Node(url, reactor).start()
    b = await Node(url, reactor).start()
    try:
        await a.store.add(sub("alice", "old"))
        assert await b.ha1("alice") == sub("alice", "old").ha1["MD5"]
        assert await b.hit("alice") == sub("alice", "old").ha1["MD5"]
        assert await b.ha1("bob") is None  # kept as "no such user"

        await a.store.replace(sub("alice", "new"))
        await a.store.add(sub("bob", "pw"))
        # Reported, dropped, and read again: B serves the new record from memory.
        await until(lambda: b.held("alice") == md5("alice", "new"), reactor)
        assert await b.hit("alice") == md5("alice", "new")
        await until(lambda: b.held("bob") == md5("bob", "pw"), reactor)
        assert await b.hit("bob") == md5("bob", "pw")

        await a.store.remove("alice")
        await until(lambda: b.held("alice") is None, reactor)
        assert await b.hit("alice") is None
        await until(lambda: a.held("alice") is None, reactor)
        assert await a.hit("alice") is None
    finally:
        await a.conn.stop()
        await b.conn.stop()


@pytest_twisted.ensureDeferred
async def test_edits_made_outside_sipsuite_reach_the_cache(
    url: str, redis_server: redisproc.RedisServer, reactor: Any
) -> None:
    a = await Node(url, reactor).start()
    try:
        await a.add_held("alice", "old")
        key = a.store._key("alice")
        redis_server.call("HSET", key, "ha1:MD5", "0" * 32, db=DB)  # redis-cli, a script
        await until(lambda: a.held("alice") == "0" * 32, reactor)
        assert await a.hit("alice") == "0" * 32

        redis_server.call("FLUSHDB", db=DB)
        await until(lambda: not a.cache.entries, reactor)
        assert await a.ha1("alice") is None
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_nothing_kept_is_used_after_the_report_channel_drops(
    url: str, redis_server: redisproc.RedisServer, reactor: Any
) -> None:
    a = await Node(url, reactor).start()
    try:
        await a.add_held("alice", "old")
        # Redis drops the subscriber connection (e.g. its output buffer limit):
        # from then on it reports nothing to this node.
        assert redis_server.call("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await until(lambda: not a.cache.live, reactor)
        key = a.store._key("alice")
        redis_server.call("HSET", key, "ha1:MD5", "1" * 32, db=DB)  # not reported
        assert await a.ha1("alice") == "1" * 32
        # The channel comes back by itself, and the cache with it.
        await a.live()
        assert await a.ha1("alice") == "1" * 32
        assert await a.hit("alice") == "1" * 32
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_a_report_channel_gone_silent_is_dropped(
    url: str, redis_server: redisproc.RedisServer, reactor: Any
) -> None:
    a = await Node(url, reactor, heartbeat=0.1).start()
    try:
        await a.add_held("alice", "old")
        # Cut without a FIN (a firewall's idle timeout): from here nothing
        # this side sends reaches Redis, so its PINGs go unanswered.
        listener = a.cache._listener
        assert listener is not None
        listener.transport.write = lambda data: None  # type: ignore[method-assign]
        await until(lambda: not a.cache.live, reactor, within=1.0)
        assert not a.cache.entries
        redis_server.call("HSET", a.store._key("alice"), "ha1:MD5", "4" * 32, db=DB)
        assert await a.ha1("alice") == "4" * 32
        await a.live()  # a new channel, and the cache with it
        await until(lambda: a.held("alice") == "4" * 32, reactor)
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_nothing_kept_is_used_after_the_command_connection_drops(
    url: str, redis_server: redisproc.RedisServer, reactor: Any
) -> None:
    a = await Node(url, reactor).start()
    try:
        await a.add_held("alice", "old")
        # Tracking belongs to the connection: a new one is tracked only once
        # asked again, and what the old one kept may have changed meanwhile.
        old = a.conn.current()
        assert redis_server.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
        redis_server.call("HSET", a.store._key("alice"), "ha1:MD5", "2" * 32, db=DB)
        await until(lambda: a.conn.current() not in (None, old), reactor)
        assert await a.ha1("alice") == "2" * 32
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_a_read_overtaken_by_a_change_is_not_kept(url: str, reactor: Any) -> None:
    a = await Node(url, reactor).start()
    try:
        await a.store.add(sub("alice", "old"))
        a.cache.entries.clear()
        # The reply to this read and the report of a change come on two
        # connections, in either order: a change reported while the read is
        # out means the reply may be older than the change.
        reading = defer.ensureDeferred(a.store.get("alice"))
        a.cache.invalidate([a.store._key("alice")])
        await reading
        assert a.store._key("alice") not in a.cache.entries
        # Without a change in between, the read is kept.
        await a.store.get("alice")
        assert a.store._key("alice") in a.cache.entries
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_without_client_tracking_every_read_goes_to_redis(
    make_redis_server: Callable[..., redisproc.RedisServer], reactor: Any
) -> None:
    # Redis before 6, or CLIENT renamed away by the operator.
    server = make_redis_server(extra_args=["--rename-command", "CLIENT", ""])
    a = Node(server.url(DB), reactor)
    await a.conn.start()
    try:
        assert await a.store.add(sub("alice", "pw"))
        for _ in range(5):
            assert await a.ha1("alice") == sub("alice", "pw").ha1["MD5"]
            await pause(reactor, 0.05)
        assert not a.cache.live and a.cache.hits == 0 and not a.cache.entries
        server.call("HSET", a.store._key("alice"), "ha1:MD5", "3" * 32, db=DB)
        assert await a.ha1("alice") == "3" * 32
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_the_cache_is_bounded(url: str, reactor: Any) -> None:
    a = Node(url, reactor, cache_size=10)
    await a.start()
    try:
        for i in range(25):
            await a.store.get(f"user{i}")
            assert len(a.cache.entries) <= 10
    finally:
        await a.conn.stop()


@pytest_twisted.ensureDeferred
async def test_size_zero_is_no_cache(url: str, reactor: Any) -> None:
    conn = RedisConnection(url, 1.0, reactor)
    store = RedisSubscriberStore(conn, cache_size=0)
    await conn.start()
    try:
        assert store.cache is None
        await store.add(sub("alice", "pw"))
        assert (await store.get("alice")) == sub("alice", "pw")
    finally:
        await conn.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_that_goes_live_reads_the_whole_table_in(url: str, reactor: Any) -> None:
    a = await Node(url, reactor).start()
    try:
        for i in range(1200):  # more than one load chunk
            await a.store.add(sub(f"user{i}", f"pw{i}"))
    finally:
        await a.conn.stop()
    # Started later, like a node after a restart: every record is in memory
    # before anybody asks for it.
    b = Node(url, reactor, cache_size=5000)
    await b.conn.start()
    try:
        await until(lambda: len(b.cache.entries) == 1200, reactor)
        assert await b.hit("user0") == md5("user0", "pw0")
        assert await b.hit("user1199") == md5("user1199", "pw1199")
        assert b.cache.misses == 0
    finally:
        await b.conn.stop()


@pytest_twisted.ensureDeferred
async def test_a_table_larger_than_the_cache_is_not_read_in(url: str, reactor: Any) -> None:
    a = await Node(url, reactor).start()
    try:
        for i in range(20):
            await a.store.add(sub(f"user{i}", f"pw{i}"))
    finally:
        await a.conn.stop()
    b = Node(url, reactor, cache_size=10)
    await b.start()
    try:
        await pause(reactor, 0.3)
        assert await b.ha1("user3") == md5("user3", "pw3")  # read, then kept
        assert await b.hit("user3") == md5("user3", "pw3")
        assert b.cache.misses >= 1 and len(b.cache.entries) <= 10
    finally:
        await b.conn.stop()
