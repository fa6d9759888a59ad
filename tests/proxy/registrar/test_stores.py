"""One behavioural suite for the location and subscriber stores.

Every test taking ``stores`` runs against the in-memory stores and against
the Redis ones (a real redis-server from ``tests/redisproc.py``, each test on
a DB of its own, flushed first); both must behave the same. The tests at the
end are Redis-only: two proxy nodes updating one AOR at once, the expiry
index, persistence across proxy and Redis restarts, and Redis being down,
hung or back.

Time is a FakeClock the tests advance. It starts at the real time, because
Redis expires keys by its own clock (PXAT): a clock near 0 would have every
key deleted at once.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
import redisproc
from twisted.internet import defer
from twisted.internet.task import deferLater

from sipsuite.proxy.registrar.location import (
    Binding,
    LocationStore,
    MemoryLocationStore,
    MemorySubscriberStore,
    StoreUnavailable,
    Subscriber,
    SubscriberStore,
)
from sipsuite.proxy.registrar.redis.client import RedisAddress, RedisConnection, parse_redis_url
from sipsuite.proxy.registrar.redis.location import RedisLocationStore
from sipsuite.proxy.registrar.redis.subscribers import RedisSubscriberStore


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time())) + 0.25  # a fraction, to catch rounding

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    name: str
    server: redisproc.RedisServer | None = None
    db: int = 0


@dataclass
class Stores:
    location: LocationStore
    subscribers: SubscriberStore
    backend: Backend


_dbs = itertools.cycle(range(1, 16))  # DB 0 is left alone


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Backend("memory")
    server: redisproc.RedisServer = request.getfixturevalue("redis_server")
    db = next(_dbs)
    server.call("FLUSHDB", db=db)
    return Backend("redis", server, db)


@pytest_twisted.async_yield_fixture
async def stores(backend: Backend, clock: FakeClock, reactor: Any) -> AsyncIterator[Stores]:
    if backend.server is None:
        yield Stores(MemoryLocationStore(clock), MemorySubscriberStore(), backend)
        return
    conn = RedisConnection(backend.server.url(backend.db), 2.0, reactor)
    await conn.start()
    try:
        yield Stores(RedisLocationStore(conn, clock), RedisSubscriberStore(conn), backend)
    finally:
        await conn.stop()


def add(*bindings: Binding) -> Callable[[list[Binding], float], int]:
    """A change adding ``bindings`` (copies); returns how many there are then."""

    def change(current: list[Binding], now: float) -> int:
        current.extend(Binding.from_dict(b.to_dict()) for b in bindings)
        return len(current)

    return change


def contacts(bindings: list[Binding]) -> list[str]:
    return [b.contact for b in bindings]


# ---------------------------------------------------------------------------
# LocationStore, both backends.


@pytest_twisted.ensureDeferred
async def test_lookup_of_unknown_aor_is_empty(stores: Stores) -> None:
    assert await stores.location.lookup("alice") == []
    assert await stores.location.aors() == []


@pytest_twisted.ensureDeferred
async def test_update_stores_bindings_and_returns_the_change_result(
    stores: Stores, clock: FakeClock
) -> None:
    seen: list[tuple[list[str], float]] = []

    def change(current: list[Binding], now: float) -> str:
        seen.append((contacts(current), now))
        current.append(Binding(f"sip:alice@10.0.0.{len(current) + 1}", expires=now + 60))
        return f"now {len(current)}"

    assert await stores.location.update("alice", change) == "now 1"
    clock.advance(1)
    assert await stores.location.update("alice", change) == "now 2"
    # change gets the stored bindings and the store's clock
    assert seen == [([], clock.now - 1), (["sip:alice@10.0.0.1"], clock.now)]
    assert contacts(await stores.location.lookup("alice")) == [
        "sip:alice@10.0.0.1",
        "sip:alice@10.0.0.2",
    ]
    assert await stores.location.lookup("bob") == []
    assert await stores.location.aors() == ["alice"]


@pytest_twisted.ensureDeferred
async def test_lookup_orders_by_q_highest_first_stable_otherwise(
    stores: Stores, clock: FakeClock
) -> None:
    end = clock.now + 60
    await stores.location.update(
        "alice",
        add(
            Binding("sip:a@h1", end, q=0.5),
            Binding("sip:a@h2", end, q=1.0),
            Binding("sip:a@h3", end, q=0.8),
            Binding("sip:a@h4", end, q=0.5),
            Binding("sip:a@h5", end, q=1.0),
        ),
    )
    expected = ["sip:a@h2", "sip:a@h5", "sip:a@h3", "sip:a@h1", "sip:a@h4"]
    assert contacts(await stores.location.lookup("alice")) == expected
    # change gets them in that order too
    assert await stores.location.update("alice", lambda bs, now: contacts(bs)) == expected


@pytest_twisted.ensureDeferred
async def test_expired_bindings_are_never_returned(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    await loc.update(
        "alice", add(Binding("sip:a@short", clock.now + 10), Binding("sip:a@long", clock.now + 20))
    )
    clock.advance(9.5)
    assert contacts(await loc.lookup("alice")) == ["sip:a@short", "sip:a@long"]
    clock.advance(0.5)  # expires == now: expired
    assert contacts(await loc.lookup("alice")) == ["sip:a@long"]
    assert await loc.aors() == ["alice"]
    # change never sees an expired binding either
    assert await loc.update("alice", lambda bs, now: contacts(bs)) == ["sip:a@long"]
    clock.advance(10)
    assert await loc.lookup("alice") == []
    assert await loc.update("alice", lambda bs, now: contacts(bs)) == []
    assert await loc.aors() == []


@pytest_twisted.ensureDeferred
async def test_bindings_a_change_expires_are_dropped(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    await loc.update("alice", add(Binding("sip:a@h1", clock.now + 60), Binding("sip:a@h2", None)))

    def expire_all(bindings: list[Binding], now: float) -> None:
        for b in bindings:
            b.expires = now  # what a REGISTER with expires=0 does

    await loc.update("alice", expire_all)
    assert await loc.lookup("alice") == []
    assert await loc.aors() == []


@pytest_twisted.ensureDeferred
async def test_change_that_raises_stores_nothing(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    await loc.update("alice", add(Binding("sip:a@h1", clock.now + 60, q=0.5)))

    def broken(bindings: list[Binding], now: float) -> None:
        bindings[0].q = 1.0  # edits in place, then fails half-way
        bindings.append(Binding("sip:a@h2", now + 60))
        raise LookupError("max contacts")

    with pytest.raises(LookupError, match="max contacts"):  # as raised, not wrapped
        await loc.update("alice", broken)
    assert [(b.contact, b.q) for b in await loc.lookup("alice")] == [("sip:a@h1", 0.5)]

    with pytest.raises(LookupError):
        await loc.update("bob", broken)
    assert await loc.lookup("bob") == []
    assert await loc.aors() == ["alice"]


@pytest_twisted.ensureDeferred
async def test_remove_one_contact_compares_uris(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    end = clock.now + 60
    await loc.update(
        "alice",
        add(
            Binding("sip:a@h;transport=udp", end),
            Binding("sip:a@h;transport=tcp", end),
            Binding("sip:b@h", end),
        ),
    )
    assert await loc.remove("alice", "sip:a@H;transport=UDP") == 1  # RFC 3261 19.1.4
    assert contacts(await loc.lookup("alice")) == ["sip:a@h;transport=tcp", "sip:b@h"]
    assert await loc.remove("alice", "sip:a@h") == 0  # transport must match when one has it
    assert await loc.remove("alice", "sip:nobody@h") == 0
    assert await loc.remove("bob", "sip:b@h") == 0  # other AOR untouched
    assert await loc.remove("alice", "sip:%62@h") == 1  # escapes decoded: b
    assert contacts(await loc.lookup("alice")) == ["sip:a@h;transport=tcp"]
    assert await loc.remove("alice", "sip:a@h;transport=tcp") == 1
    assert await loc.lookup("alice") == []
    assert await loc.aors() == []


@pytest_twisted.ensureDeferred
async def test_remove_all_bindings_of_an_aor(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    await loc.update("alice", add(Binding("sip:a@h1", clock.now + 60), Binding("sip:a@h2", None)))
    await loc.update("bob", add(Binding("sip:b@h1", clock.now + 60)))
    assert await loc.remove("alice") == 2
    assert await loc.lookup("alice") == []
    assert await loc.aors() == ["bob"]
    assert await loc.remove("alice") == 0
    assert await loc.remove("nobody") == 0


@pytest_twisted.ensureDeferred
async def test_aors_lists_only_aors_with_current_bindings(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    await loc.update("carol", add(Binding("sip:c@h", None)))
    await loc.update("alice", add(Binding("sip:a@h", clock.now + 10)))
    await loc.update("bob", add(Binding("sip:b@h1", clock.now + 5), Binding("sip:b@h2", clock.now + 30)))
    assert await loc.aors() == ["alice", "bob", "carol"]
    clock.advance(10)
    # bob's first binding expired too: the AOR stays for its second one...
    assert await loc.aors() == ["bob", "carol"]
    clock.advance(20)
    # ...until that one expires as well.
    assert await loc.aors() == ["carol"]
    await loc.update("alice", add(Binding("sip:a@h", clock.now + 10)))
    assert await loc.aors() == ["alice", "carol"]


@pytest_twisted.ensureDeferred
async def test_nat_aors_lists_aors_with_a_current_natted_binding(
    stores: Stores, clock: FakeClock
) -> None:
    loc = stores.location
    await loc.update("alice", add(Binding("sip:a@10.0.0.1", clock.now + 10, nat=True)))
    await loc.update("bob", add(Binding("sip:b@h", clock.now + 60)))
    await loc.update("carol", add(Binding("sip:c@h", clock.now + 60),
                                  Binding("sip:c@10.0.0.3", None, nat=True)))
    assert await loc.nat_aors() == ["alice", "carol"]
    # carol's NAT'ed binding goes: she leaves the list, her other binding stays.
    assert await loc.remove("carol", "sip:c@10.0.0.3") == 1
    assert await loc.nat_aors() == ["alice"]
    assert contacts(await loc.lookup("carol")) == ["sip:c@h"]
    # bob registers from behind NAT too; alice's binding expires.
    await loc.update("bob", add(Binding("sip:b@10.0.0.2", clock.now + 60, nat=True)))
    clock.advance(10)
    assert await loc.nat_aors() == ["bob"]
    await loc.remove("bob")
    assert await loc.nat_aors() == []


@pytest_twisted.ensureDeferred
async def test_permanent_bindings_never_expire(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    await loc.update("alice", add(Binding("sip:a@h1", None), Binding("sip:a@h2", clock.now + 10)))
    clock.advance(10 * 365 * 86400)
    [b] = await loc.lookup("alice")
    assert (b.contact, b.expires, b.remaining(clock.now)) == ("sip:a@h1", None, None)
    assert await loc.aors() == ["alice"]


@pytest_twisted.ensureDeferred
async def test_bindings_keep_every_field(stores: Stores, clock: FakeClock) -> None:
    full = Binding(
        contact="<sip:alice@192.168.1.20:5070;transport=tcp;ob>",
        expires=clock.now + 3600.125,
        q=0.7,
        call_id="a84b4c76e66710@pc33.atlanta.example.com",
        cseq=314159,
        path=["<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr;ob>"],
        received="udp:203.0.113.7:40123",
        socket="udp:198.51.100.1:5060",
        instance='"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"',
        reg_id=2,
        user_agent="Zoiper \u00fc \u2603",
        nat=True,
        updated=clock.now - 0.5,
        flow="<sip:c3Rvcm@198.51.100.1:5060;transport=tcp;lr;ob>",
        outbound=True,
    )
    plain = Binding("sip:alice@h")
    await stores.location.update("alice", add(full, plain))
    got = await stores.location.lookup("alice")
    assert got == [plain, full]  # q 1.0 before 0.7
    assert [type(v) for v in got[1].to_dict().values()] == [
        type(v) for v in full.to_dict().values()
    ]


@pytest_twisted.ensureDeferred
async def test_aors_with_unusual_characters_are_kept_apart(stores: Stores, clock: FakeClock) -> None:
    loc = stores.location
    aors = [
        "\x00",
        "%00",
        "a%00b",
        "\udcff",  # what "%FF" unescapes to (surrogateescape)
        "%ff",
        "\u00fcnic\u00f6de \u2603",
        "with space",
        "*",
        "",
        "index",  # the index keys' own names
        ":index",
        "loc:index",
        "nat",
        ":nat",
        "::nat",
        "::x",
        ":x",
        "x",
        "0123",  # a number as text stays text
    ]
    for i, aor in enumerate(aors):
        await loc.update(aor, add(Binding(f"sip:u{i}@h", clock.now + 60, nat=i % 2 == 0)))
    assert await loc.aors() == sorted(aors)
    assert await loc.nat_aors() == sorted(aors[::2])
    for i, aor in enumerate(aors):
        assert contacts(await loc.lookup(aor)) == [f"sip:u{i}@h"], repr(aor)
    for aor in aors:
        assert await loc.remove(aor) == 1, repr(aor)
    assert await loc.aors() == []


# ---------------------------------------------------------------------------
# SubscriberStore, both backends.


def alice(realm: str = "example.com", password: str = "secret") -> Subscriber:
    return Subscriber.from_password("alice", realm, password)


@pytest_twisted.ensureDeferred
async def test_subscriber_add_get_and_duplicate_add(stores: Stores) -> None:
    subs = stores.subscribers
    assert await subs.get("alice") is None
    assert await subs.add(alice()) is True
    assert await subs.get("alice") == alice()
    assert set(alice().ha1) == {"MD5", "SHA-256"}
    assert await subs.add(alice(password="other")) is False  # nothing changed
    assert await subs.get("alice") == alice()
    assert await subs.list() == [alice()]


@pytest_twisted.ensureDeferred
async def test_subscriber_replace(stores: Stores) -> None:
    subs = stores.subscribers
    assert await subs.replace(alice()) is False  # no such user: nothing added
    assert await subs.get("alice") is None
    assert await subs.list() == []
    await subs.add(alice())
    md5_only = Subscriber("alice", "other.example", {"MD5": alice("other.example").ha1["MD5"]})
    assert await subs.replace(md5_only) is True
    assert await subs.get("alice") == md5_only  # the SHA-256 HA1 is gone, not kept
    assert await subs.list() == [md5_only]


@pytest_twisted.ensureDeferred
async def test_subscriber_remove_and_list(stores: Stores) -> None:
    subs = stores.subscribers
    users = ["zoe", "alice", "index", ":index", "\x00", "%00", "\u00fcser", "\udcff", "0123"]
    for user in users:
        assert await subs.add(Subscriber.from_password(user, "example.com", user)) is True
    assert [s.user for s in await subs.list()] == sorted(users)
    for user in users:
        assert await subs.get(user) == Subscriber.from_password(user, "example.com", user)
    assert await subs.remove("alice") is True
    assert await subs.remove("alice") is False
    assert await subs.remove("nobody") is False
    assert await subs.get("alice") is None
    assert [s.user for s in await subs.list()] == sorted(set(users) - {"alice"})
    empty = Subscriber("empty", "", {})
    assert await subs.add(empty) is True
    assert await subs.get("empty") == empty


# ---------------------------------------------------------------------------
# Redis only.


def test_redis_url_parsing() -> None:
    assert parse_redis_url("redis://127.0.0.1") == RedisAddress("127.0.0.1", 6379, 0, None)
    assert parse_redis_url("redis://:s3cr:t@redis.example:7000/3") == RedisAddress(
        "redis.example", 7000, 3, "s3cr:t"
    )
    assert parse_redis_url("redis://[::1]:6380/") == RedisAddress("::1", 6380, 0, None)
    assert parse_redis_url("redis://:@h/15/").password is None
    assert parse_redis_url("redis://h/15/").db == 15
    for bad in [
        "",
        "127.0.0.1:6379",
        "http://127.0.0.1:6379",
        "redis://",
        "redis://h:0",
        "redis://h:65536",
        "redis://h:port",
        "redis://h/x",
        "redis://h/123",
        "redis://user:pw@h",
        "redis://h?db=1",
        "redis://h h",
        "redis://h//",
    ]:
        with pytest.raises(ValueError, match="Redis URL"):
            parse_redis_url(bad)
    with pytest.raises(ValueError, match="timeout"):
        RedisConnection("redis://h", 0)


@pytest.fixture
def redis_db(redis_server: redisproc.RedisServer) -> int:
    db = next(_dbs)
    redis_server.call("FLUSHDB", db=db)
    return db


async def started(url: str, reactor: Any, timeout: float = 2.0, **kwargs: Any) -> RedisConnection:
    conn = RedisConnection(url, timeout, reactor, **kwargs)
    await conn.start()
    return conn


async def eventually(what: Callable[[], Awaitable[Any]], reactor: Any, within: float = 5.0) -> Any:
    """``what()``'s result once it stops raising StoreUnavailable (Redis back)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await what()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_concurrent_updates_from_two_nodes_lose_nothing(
    redis_server: redisproc.RedisServer, redis_db: int, reactor: Any
) -> None:
    url = redis_server.url(redis_db)
    conns = [await started(url, reactor, 5.0), await started(url, reactor, 5.0)]
    nodes = [RedisLocationStore(c) for c in conns]
    calls = 0
    try:
        def register(i: int) -> Callable[[list[Binding], float], int]:
            def change(bindings: list[Binding], now: float) -> int:
                nonlocal calls
                calls += 1
                bindings.append(Binding(f"sip:dev{i}@10.0.0.{i}", now + 3600))
                return i

            return change

        # All at once, alternating nodes: each node's own updates queue, the two
        # nodes race each other, and a loser re-reads and re-applies its change.
        results = await defer.gatherResults(
            [defer.ensureDeferred(nodes[i % 2].update("alice", register(i))) for i in range(50)]
        )
        assert results == list(range(50))
        want = sorted(f"sip:dev{i}@10.0.0.{i}" for i in range(50))
        for node in nodes:
            assert sorted(contacts(await node.lookup("alice"))) == want
        assert calls >= 50

        # And removals racing additions.
        ops = [
            nodes[0].remove("alice", f"sip:dev{i}@10.0.0.{i}") if i % 2 else
            nodes[1].update("alice", register(100 + i))
            for i in range(20)
        ]
        await defer.gatherResults([defer.ensureDeferred(op) for op in ops])
        want = sorted(
            [f"sip:dev{i}@10.0.0.{i}" for i in range(50) if not (i < 20 and i % 2)]
            + [f"sip:dev{100 + i}@10.0.0.{100 + i}" for i in range(0, 20, 2)]
        )
        assert sorted(contacts(await nodes[0].lookup("alice"))) == want
    finally:
        for c in conns:
            await c.stop()


@pytest_twisted.ensureDeferred
async def test_change_runs_again_when_another_node_wrote_meanwhile(
    redis_server: redisproc.RedisServer, redis_db: int, reactor: Any, clock: FakeClock
) -> None:
    conn = await started(redis_server.url(redis_db), reactor)
    other = await started(redis_server.url(redis_db), reactor)
    try:
        mine, theirs = RedisLocationStore(conn, clock), RedisLocationStore(other, clock)
        await mine.update("alice", add(Binding("sip:a@first", clock.now + 60)))
        seen: list[list[str]] = []

        def change(bindings: list[Binding], now: float) -> None:
            seen.append(contacts(bindings))
            if len(seen) == 1:
                # another node writes between our read and our write (a blocking
                # client: it lands before our script runs)
                redis_server.call(
                    "SET", "sipsuite:loc:alice",
                    '[{"contact": "sip:a@theirs", "expires": null}]', db=redis_db,
                )
            bindings.append(Binding("sip:a@mine", now + 60))

        await mine.update("alice", change)
        assert seen == [["sip:a@first"], ["sip:a@theirs"]]
        assert contacts(await theirs.lookup("alice")) == ["sip:a@theirs", "sip:a@mine"]
    finally:
        await conn.stop()
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_expiry_index_and_key_expiry(
    redis_server: redisproc.RedisServer, redis_db: int, reactor: Any, clock: FakeClock
) -> None:
    def call(*args: Any) -> Any:
        return redis_server.call(*args, db=redis_db)

    redis_server.call("CONFIG", "RESETSTAT")
    conn = await started(redis_server.url(redis_db), reactor)
    try:
        loc = RedisLocationStore(conn, clock)
        await loc.update("alice", add(Binding("sip:a@h1", clock.now + 10)))
        await loc.update("bob", add(Binding("sip:b@h1", clock.now + 5), Binding("sip:b@h2", clock.now + 50)))
        await loc.update("carol", add(Binding("sip:c@h", None), Binding("sip:c@h2", clock.now + 5)))
        # The key expires with its last binding (ms, rounded up), the index says when.
        assert call("PEXPIRETIME", "sipsuite:loc:bob") == math.ceil((clock.now + 50) * 1000)
        assert float(call("ZSCORE", "sipsuite:loc:index", "bob")) == (clock.now + 50) * 1000
        assert call("PEXPIRETIME", "sipsuite:loc:carol") == -1  # permanent: no expiry
        assert call("ZSCORE", "sipsuite:loc:index", "carol") == b"inf"

        clock.advance(20)
        assert await loc.aors() == ["bob", "carol"]
        # alice's index entry went with aors(); Redis deletes her key itself
        assert call("ZRANGE", "sipsuite:loc:index", 0, -1) == [b"bob", b"carol"]
        assert call("PEXPIRETIME", "sipsuite:loc:alice") == math.ceil((clock.now - 10) * 1000)

        # bob's expired binding is pruned at the next write
        await loc.update("bob", lambda bs, now: None)
        assert b"sip:b@h1" not in call("GET", "sipsuite:loc:bob")

        assert await loc.remove("carol") == 1
        assert call("EXISTS", "sipsuite:loc:carol") == 0
        assert call("ZRANGE", "sipsuite:loc:index", 0, -1) == [b"bob"]

        # Redis's own clock deletes a key whose bindings all expired.
        real = RedisLocationStore(conn)
        await real.update("dave", add(Binding("sip:d@h", time.time() + 0.1)))
        assert call("EXISTS", "sipsuite:loc:dave") == 1
        await deferLater(reactor, 0.2, lambda: None)
        assert call("EXISTS", "sipsuite:loc:dave") == 0
        assert await real.aors() == ["bob"]
        assert call("ZRANGE", "sipsuite:loc:index", 0, -1) == [b"bob"]

        stats = call("INFO", "commandstats")
        assert b"cmdstat_keys:" not in stats and b"cmdstat_scan:" not in stats
    finally:
        await conn.stop()


@pytest_twisted.ensureDeferred
async def test_data_survives_a_proxy_restart(
    redis_server: redisproc.RedisServer, redis_db: int, reactor: Any, clock: FakeClock
) -> None:
    url = redis_server.url(redis_db)
    binding = Binding("sip:a@h", clock.now + 60, path=["<sip:p;lr>"], reg_id=1, nat=True)
    conn = await started(url, reactor)
    await RedisLocationStore(conn, clock).update("alice", add(binding))
    await RedisSubscriberStore(conn).add(alice())
    await conn.stop()

    conn = await started(url, reactor)  # a new process: nothing but Redis remembers
    try:
        assert await RedisLocationStore(conn, clock).lookup("alice") == [binding]
        assert await RedisLocationStore(conn, clock).aors() == ["alice"]
        assert await RedisSubscriberStore(conn).list() == [alice()]
    finally:
        await conn.stop()


@pytest_twisted.ensureDeferred
async def test_data_survives_a_redis_restart_with_appendonly(
    make_redis_server: Callable[..., redisproc.RedisServer], reactor: Any, clock: FakeClock
) -> None:
    server = make_redis_server(appendonly=True)
    binding = Binding("sip:a@h", clock.now + 60, instance="<urn:uuid:1>")
    conn = await started(server.url(2), reactor, 1.0, max_delay=0.1)
    try:
        loc, subs = RedisLocationStore(conn, clock), RedisSubscriberStore(conn)
        await loc.update("alice", add(binding))
        await loc.update("bob", add(Binding("sip:b@h", None)))
        await subs.add(alice())
        server.stop()
        server.start()  # same port, same directory: replays the append-only file
        # the same store objects, reconnected
        assert await eventually(lambda: loc.lookup("alice"), reactor) == [binding]
        assert await loc.aors() == ["alice", "bob"]
        assert await subs.get("alice") == alice()
    finally:
        await conn.stop()


async def assert_unavailable(
    calls: dict[str, Callable[[], Awaitable[Any]]], timeout: float
) -> None:
    """Each call raises StoreUnavailable, and no later than its timeout."""
    for name, call in calls.items():
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        elapsed = time.monotonic() - start
        assert elapsed < timeout + 0.2, f"{name} took {elapsed:.2f} s"


def every_call(loc: RedisLocationStore, subs: RedisSubscriberStore) -> dict[str, Callable[[], Any]]:
    return {
        "lookup": lambda: loc.lookup("alice"),
        "update": lambda: loc.update("alice", add(Binding("sip:a@h2"))),
        "remove": lambda: loc.remove("alice", "sip:a@h"),
        "remove all": lambda: loc.remove("alice"),
        "aors": loc.aors,
        "get": lambda: subs.get("alice"),
        "add": lambda: subs.add(alice()),
        "replace": lambda: subs.replace(alice()),
        "remove subscriber": lambda: subs.remove("alice"),
        "list": subs.list,
    }


@pytest_twisted.ensureDeferred
async def test_redis_down_raises_store_unavailable_in_time_then_reconnects(
    make_redis_server: Callable[..., redisproc.RedisServer], reactor: Any, clock: FakeClock
) -> None:
    server = make_redis_server()
    timeout = 0.25
    conn = await started(server.url(1), reactor, timeout, max_delay=0.1)
    try:
        loc, subs = RedisLocationStore(conn, clock), RedisSubscriberStore(conn)
        await loc.update("alice", add(Binding("sip:a@h", None)))
        server.kill()
        await assert_unavailable(every_call(loc, subs), timeout)
        server.start()  # same port, empty: it kept nothing
        assert await eventually(loc.aors, reactor) == []
        await loc.update("alice", add(Binding("sip:a@h", None)))
        assert contacts(await loc.lookup("alice")) == ["sip:a@h"]
    finally:
        await conn.stop()


@pytest_twisted.ensureDeferred
async def test_redis_going_away_is_one_warning_and_coming_back_one_info(
    make_redis_server: Callable[..., redisproc.RedisServer], reactor: Any, clock: FakeClock
) -> None:
    """The operator learns that Redis went away when it does, not at the next
    reconnect, and once: the retries (every 0.1 s here) add no more lines."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    events: list[dict[str, Any]] = []

    def keep(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "sipsuite.proxy.redisstore":
            events.append(event)

    def said(level: Any) -> list[str]:
        """The connection's own lines (a preload cut short by the kill may
        add one of its own, which is not about the connection)."""
        return [m for m in (formatEvent(e) for e in events if e["log_level"] == level)
                if m.startswith(f"Redis 127.0.0.1:{server.port}: ")]

    server = make_redis_server()
    globalLogPublisher.addObserver(keep)
    conn = await started(server.url(1), reactor, 0.25, max_delay=0.1)
    try:
        loc = RedisLocationStore(conn, clock)
        await loc.update("alice", add(Binding("sip:a@h", None)))
        assert said(LogLevel.warn) == []
        server.kill()
        await deferLater(reactor, 1.0, lambda: None)  # about ten reconnection attempts
        warnings = said(LogLevel.warn)
        assert len(warnings) == 1 and "connection lost" in warnings[0], warnings
        server.start()
        await eventually(loc.aors, reactor)
        assert [m for m in said(LogLevel.info) if "connected again" in m] == [
            f"Redis 127.0.0.1:{server.port}: connected again"]
        assert len(said(LogLevel.warn)) == 1
        events.clear()
    finally:
        await conn.stop()
        globalLogPublisher.removeObserver(keep)
    assert said(LogLevel.warn) == []  # our own stop is no loss


@pytest_twisted.ensureDeferred
async def test_hung_redis_raises_store_unavailable_in_time(
    make_redis_server: Callable[..., redisproc.RedisServer], reactor: Any, clock: FakeClock
) -> None:
    server = make_redis_server()
    timeout = 0.25
    conn = await started(server.url(3), reactor, timeout, max_delay=0.1)
    try:
        loc, subs = RedisLocationStore(conn, clock), RedisSubscriberStore(conn)
        await loc.update("alice", add(Binding("sip:a@h", None)))
        server.pause()  # accepts connections, answers nothing
        try:
            calls = every_call(loc, subs)
            await assert_unavailable({k: calls[k] for k in ("lookup", "update", "list")}, timeout)
            # Long enough for a reconnection whose SELECT times out too: that must
            # not make the connection give up for good.
            await deferLater(reactor, 4 * timeout, lambda: None)
            await assert_unavailable({"get": calls["get"]}, timeout)
        finally:
            server.resume()
        # What was stored survives. The update that timed out may or may not
        # have been applied: its command had reached the hung server, which
        # runs it when it wakes; no client can know (the caller got
        # StoreUnavailable, and a phone registers again anyway).
        after = contacts(await eventually(lambda: loc.lookup("alice"), reactor))
        assert after in (["sip:a@h"], ["sip:a@h", "sip:a@h2"]), after
    finally:
        await conn.stop()


@pytest_twisted.ensureDeferred
async def test_proxy_starts_while_redis_is_down(
    make_redis_server: Callable[..., redisproc.RedisServer], reactor: Any, clock: FakeClock
) -> None:
    port = redisproc.free_port()
    timeout = 0.25
    conn = RedisConnection(f"redis://127.0.0.1:{port}/4", timeout, reactor, max_delay=0.1)
    start = time.monotonic()
    await conn.start()  # does not wait for Redis
    assert time.monotonic() - start < 0.1
    try:
        loc, subs = RedisLocationStore(conn, clock), RedisSubscriberStore(conn)
        calls = every_call(loc, subs)
        await assert_unavailable({k: calls[k] for k in ("lookup", "update", "get")}, timeout)
        make_redis_server(port=port)
        assert await eventually(lambda: subs.add(alice()), reactor) is True
        assert await subs.get("alice") == alice()
    finally:
        await conn.stop()
    # a stopped connection fails at once
    with pytest.raises(StoreUnavailable):
        await loc.lookup("alice")


@pytest_twisted.ensureDeferred
async def test_update_survives_a_redis_that_lost_its_scripts(
    redis_server: redisproc.RedisServer, redis_db: int, reactor: Any, clock: FakeClock
) -> None:
    """The compare-and-set script goes by its SHA once loaded; a Redis that
    forgot it (a restart without persistence of scripts, SCRIPT FLUSH)
    answers NOSCRIPT, and the update goes on by loading it again instead of
    failing the REGISTER."""
    conn = await started(redis_server.url(redis_db), reactor, 1.0)
    try:
        loc = RedisLocationStore(conn, clock)
        await loc.update("alice", add(Binding("sip:a@h", None)))
        assert await conn.command("SCRIPT", "FLUSH") == "OK"
        await loc.update("alice", add(Binding("sip:a@h2", None)))
        assert contacts(await loc.lookup("alice")) == ["sip:a@h", "sip:a@h2"]
        await loc.update("alice", add(Binding("sip:a@h3", None)))  # by its SHA again
        assert len(await loc.lookup("alice")) == 3
    finally:
        await conn.stop()


def script_runs(server: redisproc.RedisServer) -> int:
    """EVAL and EVALSHA calls the server has run (INFO commandstats)."""
    text = server.call("INFO", "commandstats").decode()
    runs = 0
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("cmdstat_eval", "cmdstat_evalsha"):
            runs += int(rest.split(",")[0].removeprefix("calls="))
    return runs


@pytest_twisted.ensureDeferred
async def test_a_node_started_later_knows_the_stored_aors_at_once(
    redis_server: redisproc.RedisServer, reactor: Any, clock: FakeClock
) -> None:
    db = next(_dbs)
    redis_server.call("FLUSHDB", db=db)
    first = await started(redis_server.url(db), reactor)
    try:
        loc = RedisLocationStore(first, clock)
        for i in range(700):  # more than one preload round trip
            await loc.update(f"u{i}", add(Binding(f"sip:u{i}@h", clock.now + 600)))
    finally:
        await first.stop()
    later = RedisConnection(redis_server.url(db), 2.0, reactor)
    loc = RedisLocationStore(later, clock)
    await later.start()
    try:
        deadline = time.monotonic() + 5
        while len(loc._known) < 700:
            assert time.monotonic() < deadline, f"preloaded {len(loc._known)} of 700"
            await deferLater(reactor, 0.02, lambda: None)
        # update()'s first guess for each AOR is what Redis holds: the first
        # REGISTER of each phone after a restart runs the script once, not twice.
        before = script_runs(redis_server)
        assert await loc.update("u5", add(Binding("sip:u5@h2", clock.now + 600))) == 2
        assert script_runs(redis_server) - before == 1
        assert contacts(await loc.lookup("u5")) == ["sip:u5@h", "sip:u5@h2"]
    finally:
        await later.stop()
