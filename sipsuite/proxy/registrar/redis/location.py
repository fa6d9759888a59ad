"""Location and subscriber stores in Redis, shared by every proxy node.

:class:`RedisLocationStore` and :class:`~sipsuite.proxy.registrar.redis.subscribers.RedisSubscriberStore`
(in its own module) implement the
``LocationStore`` and ``SubscriberStore`` protocols of
:mod:`sipsuite.proxy.registrar.location` with the same behaviour as the in-memory
stores (``tests/proxy/registrar/test_stores.py`` runs one suite against both). Both use
one :class:`RedisConnection`: a lazy, reconnecting txredisapi connection, so
the proxy starts while Redis is down and carries on when it comes back.

Every store call is bounded by the connection's ``timeout``: past it, or when
Redis is down or answers with an error, the call raises
:class:`~sipsuite.proxy.registrar.location.StoreUnavailable` and never a txredisapi or
Twisted connection error.

Key layout (``PREFIX`` is the ``prefix`` argument, ``"sipsuite:"`` by
default; AORs and users are written UTF-8, lone surrogates from ``%FF``-style
escapes byte for byte; a name that is "index" or starts with ':' gets one more
':' in front, so no AOR or user is ever an index key)::

    PREFIX loc:<aor>     string: JSON list of Binding.to_dict(), highest q
                         first, expired bindings pruned at each write. Expires
                         (PXAT) at the latest expiry of its bindings, never if
                         one is permanent; deleted when no binding is left.
                         Readers still drop bindings that expired inside a live
                         key (location.current).
    PREFIX loc:index     sorted set: every AOR, scored by its key's expiry in
                         epoch milliseconds (+inf: permanent). aors() runs
                         ZREMRANGEBYSCORE -inf now (drops expired AORs), then
                         ZRANGEBYSCORE (now +inf: never KEYS or SCAN.
    PREFIX loc::nat      sorted set: the AORs holding a binding registered
                         from behind NAT, scored like the index, so NAT
                         keep-alives after a restart read only those AORs.
                         (No AOR has this key: see the escape below.)
    PREFIX sub:<user>    hash: "realm" -> realm, "ha1:<ALGORITHM>" -> hex HA1
                         for each digest algorithm ("ha1:MD5", "ha1:SHA-256").
    PREFIX sub:index     set: every user that has a PREFIX sub:<user> hash.

Writes that touch two keys run as one Lua script, so another node never sees
one without the other. An AOR is changed by optimistic concurrency: run the
caller's ``change`` on the bindings the key is believed to hold (what this
node last read or wrote there; nothing for an AOR it has not seen), then a
script writes the result only if the key still holds exactly that, and
otherwise answers with what it does hold, on which ``change`` runs again
(after a short random pause from the second retry on, at most MAX_ATTEMPTS
times). A REGISTER thus costs one round trip when this node saw the AOR last
or the AOR is new, two otherwise. Two nodes taking REGISTERs for one AOR at once thus never lose a
binding; one node's own updates of an AOR are queued, so only nodes race. This needs a single Redis (or a primary with replicas),
not Redis Cluster: the index and the AOR keys are in different hash slots.

Expiry uses both clocks: the store's ``clock`` decides which bindings are
current, Redis's own clock deletes keys at PXAT. They must agree (both wall
clock epoch seconds); a test clock must start at ``time.time()``.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import txredisapi
from twisted.internet import defer, task
from twisted.internet import error as neterror
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.location import Binding, StoreUnavailable, current
from sipsuite.proxy.registrar.redis.connection import LeanRedisProtocol
from sipsuite.sip.uri import URI

T = TypeVar("T")

log = get_logger("sipsuite.proxy.redisstore")

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "sipsuite:"

# How often update() re-reads an AOR another node changed meanwhile before giving
# up. Updates from this node are queued per AOR, so only other nodes compete.
MAX_ATTEMPTS = 20
# The pause after a lost race: random, up to BACKOFF_FIRST, doubling up to BACKOFF_MAX.
BACKOFF_FIRST = 0.001
BACKOFF_MAX = 0.05
# AORs read per round trip by the preload.
PRELOAD_CHUNK = 500
# AOR values remembered for the next update's first try (see RedisLocationStore).
KNOWN_MAX = 100_000
#: counts() reads every AOR to count bindings only up to this many AORs.
COUNT_LIMIT = 10_000


# ---------------------------------------------------------------------------
# Where Redis is.


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = None


_URL = re.compile(
    r"redis://"
    r"(?::(?P<password>[^@/]*)@)?"
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+))"
    r"(?::(?P<port>\d{1,5}))?"
    r"(?:/(?P<db>\d{1,2}))?/?"  # "/", "/3" and "/3/" as the config validator allows
)


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[:PASSWORD@]HOST[:PORT][/DB]``, what ``[redis] url`` accepts.

    The password is taken as written (no percent-decoding), like the config
    validator; IPv6 hosts go in brackets. Raises ValueError naming the URL."""
    match = _URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise ValueError(f"bad Redis URL {url!r}: expected redis://[:PASSWORD@]HOST[:PORT][/DB]")
    port = int(match["port"]) if match["port"] else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"bad Redis URL {url!r}: port {port} is not 1-65535")
    return RedisAddress(
        host=match["ipv6"] or match["host"],
        port=port,
        db=int(match["db"]) if match["db"] else 0,
        password=match["password"] or None,  # redis://:@host means no password too
    )


# ---------------------------------------------------------------------------
# The connection both stores share.


class _Factory(txredisapi.RedisFactory):
    """txredisapi's factory, minus giving up for good.

    txredisapi stops reconnecting when AUTH or SELECT fails on a new
    connection, which a Redis that is merely slow (the reply timeout), still
    loading or getting its password changed causes too. We keep retrying with
    the factory's backoff; store calls raise StoreUnavailable meanwhile."""

    protocol = LeanRedisProtocol
    #: Called each time a connection is ready for commands (RedisConnection.when_ready).
    on_ready: Sequence[Callable[[], None]] = ()

    def stopTrying(self) -> defer.Deferred[Any]:
        # Called only from connectionMade on an AUTH/SELECT failure (we never use
        # quit() or shutdown()); the connection is dropped and retried with backoff.
        return defer.succeed(None)

    #: Redis is out of reach: said once (warn) when it goes, once (info)
    #: when it is back; the retries in between log at debug level only.
    down = False

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            if self.down:
                self.down = False
                log.info("Redis {host}: connected again", host=self.uuid)
            for hook in self.on_ready:
                hook()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        if not self.disconnectCalled:  # not our own stop()
            self._went_down("connection lost")

    def connectionError(self, why: str) -> None:
        # txredisapi errbacks a Deferred nobody holds with a lazy connection,
        # which would only turn up as "Unhandled error in Deferred".
        self._went_down(why)

    def _went_down(self, why: str) -> None:
        if self.down:
            log.debug("Redis {host}: {why}; retrying", host=self.uuid, why=why)
            return
        self.down = True
        log.warn("Redis {host}: {why}; location and subscriber calls fail until it is back,"
                 " retrying", host=self.uuid, why=why)


def _unavailable(failure: Failure) -> Failure:
    """Turn a Redis or connection error into StoreUnavailable; pass others on."""
    if failure.check(
        txredisapi.RedisError,
        neterror.ConnectError,
        neterror.ConnectionLost,
        neterror.ConnectionDone,
    ):
        raise StoreUnavailable(f"Redis: {failure.getErrorMessage()}")
    return failure


class RedisConnection:
    """One lazy, reconnecting connection to Redis, shared by the stores.

    ``start()`` returns at once, whether Redis is up or not; the connection is
    made (and remade, with exponential backoff up to ``max_delay`` seconds)
    in the background. ``timeout`` bounds every store call; the reply timeout
    of each command is the same, and a connection whose reply is that late is
    dropped and remade, so a hung Redis does not keep a dead connection."""

    def __init__(
        self,
        url: str,
        timeout: float = 1.0,
        reactor: IReactorTime | None = None,
        *,
        max_delay: float = 10.0,
        connect_timeout: float | None = None,
    ) -> None:
        self.address = parse_redis_url(url)
        if not timeout > 0:
            raise ValueError(f"Redis timeout must be above 0 seconds, got {timeout!r}")
        if not max_delay > 0:
            raise ValueError(f"Redis max_delay must be above 0 seconds, got {max_delay!r}")
        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = installed  # type: ignore[assignment]
        self.timeout = timeout
        self.reactor = reactor
        self.max_delay = max_delay
        # A connection attempt may take longer than one call may wait: the call
        # fails at its timeout, the attempt goes on for the next calls.
        self.connect_timeout = connect_timeout if connect_timeout is not None else max(timeout, 3.0)
        self._factory: _Factory | None = None
        self._companions: list[Any] = []
        self._on_ready: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        a = self.address
        return f"<RedisConnection {a.host}:{a.port}/{a.db} {'up' if self.connected else 'down'}>"

    @property
    def connected(self) -> bool:
        """Whether a usable connection is open now."""
        return self._factory is not None and self._factory.size > 0

    def start(self) -> defer.Deferred[None]:
        """Start connecting; fires at once (Redis may well be down)."""
        if self._factory is None:
            a = self.address
            factory = _Factory(
                f"{a.host}:{a.port}",
                a.db or None,  # db 0 needs no SELECT
                1,  # one connection: commands are pipelined on it
                isLazy=True,
                handler=txredisapi.ConnectionHandler,
                charset=None,  # bytes in and out: keys may hold any user part
                password=a.password,
                replyTimeout=self.timeout,
                convertNumbers=False,  # "0123" stays a string
            )
            factory.on_ready = self._on_ready
            factory.reconnect = True
            factory.maxDelay = self.max_delay
            factory.initialDelay = min(factory.initialDelay, self.max_delay)
            factory.startConnecting(
                HostnameEndpoint(self.reactor, a.host, a.port, timeout=self.connect_timeout)
            )
            self._factory = factory
            for companion in self._companions:
                companion.start()
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        """Stop reconnecting and close the connection; fires once it is closed."""
        factory, self._factory = self._factory, None
        if factory is None:
            return defer.succeed(None)
        d: defer.Deferred[Any] = factory.disconnect()
        d.addErrback(lambda f: log.warn("closing Redis connection: {e}", e=f.getErrorMessage()))
        waits = [d, *(companion.stop() for companion in self._companions)]
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def _drop_connections(self) -> None:
        """A reply later than the timeout: the server hangs or the link is
        dead. Drop the connection (its waiting commands fail at once) and let
        the factory make a new one with its backoff."""
        factory = self._factory
        if factory is None:
            return
        for conn in list(factory.pool):
            transport = conn.transport
            if transport is not None:
                transport.abortConnection()

    def current(self) -> Any:
        """The connected protocol commands go to now, or None."""
        factory = self._factory
        if factory is None:
            return None
        for conn in factory.pool:
            if conn.connected:
                return conn
        return None

    def when_ready(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` each time a connection is ready for commands."""
        self._on_ready.append(hook)

    def attach(self, companion: Any) -> None:
        """Start and stop ``companion`` (``start()``, ``stop() -> Deferred``)
        with this connection: the subscriber cache's invalidation listener."""
        self._companions.append(companion)
        if self._factory is not None:
            companion.start()

    def _target(self) -> Any:
        """The connected protocol when there is one, else the handler (which
        waits for the connection). Going to the protocol straight skips the
        handler's pool machinery: an inlineCallbacks generator and a queue
        round per command, which cost more than the command itself."""
        factory = self._factory
        assert factory is not None
        return self.current() or factory.handler

    def command(self, *args: bytes | str | int) -> defer.Deferred[Any]:
        """One Redis command: its reply (bulk strings as bytes), or a failure
        with StoreUnavailable. Not bounded by itself: see :meth:`bounded`."""
        if self._factory is None:
            return defer.fail(StoreUnavailable("Redis connection not started"))
        try:
            d = self._target().execute_command(*args)
        except Exception as e:  # noqa: BLE001 - the protocol raises when the connection just went
            return defer.fail(StoreUnavailable(f"Redis: {e}"))
        return d.addErrback(_unavailable)

    async def each(self, command: str, keys: list[bytes]) -> list[Any]:
        """``command KEY`` for every key, pipelined: one round trip; the
        first failure raises."""
        pending = [self.command(command, key) for key in keys]
        try:
            return list(await defer.gatherResults(pending, consumeErrors=True))
        except defer.FirstError as e:
            e.subFailure.raiseException()
            raise  # not reached

    def call(self, *args: bytes | str | int) -> defer.Deferred[Any]:
        """One command, bounded (see :meth:`bounded`)."""
        return self.bounded(_wait(self.command(*args)))

    def eval(self, script: str, keys: list[bytes], args: list[bytes | str]) -> defer.Deferred[Any]:
        """Run a Lua script (EVALSHA, falling back to EVAL the first time)."""
        if self._factory is None:
            return defer.fail(StoreUnavailable("Redis connection not started"))
        try:
            d = self._target().eval(script, keys, args)
        except Exception as e:  # noqa: BLE001
            return defer.fail(StoreUnavailable(f"Redis: {e}"))
        return d.addErrback(_unavailable)

    def bounded(self, coro: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
        """Run ``coro`` (which awaits Deferreds from this connection) within
        ``timeout``: past it, the Deferred it awaits is cancelled and the
        result is StoreUnavailable. Exceptions of its own pass through."""
        d = defer.Deferred.fromCoroutine(coro)
        d.addTimeout(self.timeout, self.reactor)

        def timed_out(failure: Failure) -> Failure | NoReturn:
            if failure.check(defer.TimeoutError):
                self._drop_connections()
                raise StoreUnavailable(f"Redis did not answer within {self.timeout:g} s")
            return failure

        return d.addErrback(timed_out)


# ---------------------------------------------------------------------------
# Encoding.


def _b(text: str) -> bytes:
    # surrogateescape: an AOR unescaped from "%FF" holds a lone surrogate, which
    # goes to Redis as the original byte (and comes back as the same str).
    return text.encode("utf-8", "surrogateescape")


def _s(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")


def _name(name: str) -> bytes:
    """The key suffix of an AOR or user: itself, but a ':' before "index" and
    before a name starting with ':', so that no name is the index's key and
    still no two names share a key."""
    return b":" + _b(name) if name == "index" or name.startswith(":") else _b(name)


def _unname(suffix: bytes) -> str:
    """The AOR or user whose key suffix ``suffix`` is (``_name`` undone)."""
    name = _s(suffix)
    return name[1:] if name.startswith(":") else name


async def _wait(d: defer.Deferred[T]) -> T:
    return await d


def _decode_bindings(raw: bytes | None, aor: str) -> list[Binding]:
    if raw is None:
        return []
    try:
        return [Binding.from_dict(item) for item in json.loads(raw)]
    except (ValueError, TypeError, AttributeError) as e:
        # Not ours (someone wrote the key by hand): treat the AOR as empty, so
        # the next REGISTER overwrites it instead of failing forever.
        log.warn("AOR {aor}: unreadable bindings in Redis ignored: {e}", aor=aor, e=e)
        return []


def _encode_bindings(bindings: list[Binding]) -> tuple[bytes, str, str]:
    """(JSON value, PXAT in ms or "" for none, index score) for a live list."""
    if not bindings:
        return b"", "", ""
    value = json.dumps([b.to_dict() for b in bindings], separators=(",", ":")).encode()
    ends = [b.expires for b in bindings]
    if any(e is None for e in ends):
        return value, "", "+inf"
    last = max(e for e in ends if e is not None)
    if not math.isfinite(last):
        return value, "", "+inf"
    # PXAT rounded up, so Redis never deletes the key before its last binding
    # expires; the score keeps the exact expiry, as current() compares it.
    return value, str(math.ceil(last * 1000)), repr(last * 1000)


def _ms(now: float) -> str:
    return repr(now * 1000)


# ---------------------------------------------------------------------------
# Lua scripts: each runs atomically, so the key and its index never disagree.

# KEYS: AOR key, index, NAT index. ARGV: value expected ("" = none), new
# value ("" = delete), PXAT ms ("" = permanent), index score, AOR, "1" if a
# binding is NAT'ed else "". Returns {1} if written, else {0, what the key
# holds}: the caller applies its change to that and tries again, without a
# GET of its own.
_SET_AOR = """
local held = redis.call('GET', KEYS[1])
if held == false then held = '' end
if held ~= ARGV[1] then return {0, held} end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[5])
  redis.call('ZREM', KEYS[3], ARGV[5])
  return {1}
end
local score = ARGV[4]
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
  score = '+inf'
else
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
end
redis.call('ZADD', KEYS[2], score, ARGV[5])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], score, ARGV[5])
else
  redis.call('ZREM', KEYS[3], ARGV[5])
end
return {1}
"""

# KEYS: index. ARGV: now in ms. Drops the AORs expired by now, lists the others.
_LIVE_AORS = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
"""

# KEYS: index. ARGV: now in ms, AOR key prefix, the most AORs to read.
# {live AORs, their current bindings}: ZCOUNT, then (only up to the limit,
# since it reads every AOR) a GET per AOR; -1 bindings past the limit.
_COUNT_AORS = """
local aors = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
if aors > tonumber(ARGV[3]) then return {aors, -1} end
local now = tonumber(ARGV[1]) / 1000
local n = 0
for _, aor in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  local name = aor
  if aor == 'index' or string.sub(aor, 1, 1) == ':' then name = ':' .. aor end
  local raw = redis.call('GET', ARGV[2] .. name)
  if raw then
    for _, b in ipairs(cjson.decode(raw)) do
      if b.expires == nil or b.expires == cjson.null or b.expires > now then n = n + 1 end
    end
  end
end
return {aors, n}
"""

# ---------------------------------------------------------------------------
# The stores.


class RedisLocationStore:
    """The ``LocationStore`` of every proxy node, in Redis."""

    def __init__(
        self,
        conn: RedisConnection,
        clock: Callable[[], float] = time.time,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.conn = conn
        self.clock = clock
        self._prefix = _b(prefix) + b"loc:"
        self._index = self._prefix + b"index"
        self._nat_index = self._prefix + b":nat"  # no AOR has this key: see _name
        # This node's updates of one AOR run one after another: racing against
        # ourselves would only burn retries (see update()).
        self._locks: dict[str, defer.DeferredLock] = {}
        # The value each AOR held when this node last read or wrote it: an
        # update first assumes it still does (nothing: the AOR is new), which
        # saves a GET per REGISTER; the script says so when it does not.
        self._known: dict[str, bytes] = {}
        self._preloaded = False
        conn.when_ready(self._start_preload)

    def _key(self, aor: str) -> bytes:
        return self._prefix + _name(aor)

    def _start_preload(self) -> None:
        """Once per process, at the first connection: what every AOR holds, as
        update()'s first guess (Kamailio's usrloc preload). Without it a node
        that just started pays a second round trip for each phone's first
        REGISTER, when a restart brings every phone at once."""
        if self._preloaded:
            return
        self._preloaded = True
        d = defer.Deferred.fromCoroutine(self._preload())
        d.addErrback(lambda f: log.warn("location preload failed ({e}): AORs are learnt"
                                        " as they are used", e=f.getErrorMessage()))

    async def _preload(self) -> None:
        # In steps of PRELOAD_CHUNK AORs: one large reply would keep the
        # reactor busy and could outlast the timeout, which drops the
        # connection every request uses.
        since = "(" + _ms(self.clock())
        total = int(await self.conn.call("ZCOUNT", self._index, since, "+inf"))
        if total > KNOWN_MAX:
            return
        offset = 0
        while offset < total:
            members = await self.conn.call(
                "ZRANGEBYSCORE", self._index, since, "+inf", "LIMIT", offset, PRELOAD_CHUNK)
            if not members:
                break
            offset += len(members)
            chunk = [_s(m) for m in members]
            raws = await self.conn.bounded(self.conn.each("GET", [self._key(a) for a in chunk]))
            for aor, raw in zip(chunk, raws, strict=True):
                # Only a guess: an update already done here knows better.
                if raw is not None and aor not in self._known:
                    self._remember(aor, raw)

    async def lookup(self, aor: str) -> list[Binding]:
        return await self.conn.bounded(self._lookup(aor))

    async def _lookup(self, aor: str) -> list[Binding]:
        raw = await self.conn.command("GET", self._key(aor))
        self._remember(aor, raw or b"")
        return current(_decode_bindings(raw, aor), self.clock())

    def _remember(self, aor: str, raw: bytes) -> None:
        known = self._known
        if len(known) >= KNOWN_MAX and aor not in known:
            # Bounded: forgetting costs one retry of the next update, no more.
            known.clear()
        known[aor] = raw

    async def update(self, aor: str, change: Callable[[list[Binding], float], T]) -> T:
        return await self.conn.bounded(self._update_queued(aor, change))

    async def _update_queued(self, aor: str, change: Callable[[list[Binding], float], T]) -> T:
        lock = self._locks.get(aor)
        if lock is None:
            lock = self._locks[aor] = defer.DeferredLock()
        await lock.acquire()  # cancelled (timeout) while waiting: never acquired
        try:
            return await self._update(aor, change)
        finally:
            lock.release()  # hands it to the next waiter, if any
            if not lock.locked and self._locks.get(aor) is lock:
                del self._locks[aor]

    async def _update(self, aor: str, change: Callable[[list[Binding], float], T]) -> T:
        key = self._key(aor)
        raw = self._known.get(aor, b"")
        confirmed = False  # raw came from Redis during this update
        for attempt in range(MAX_ATTEMPTS):
            if attempt > 1:
                # Lost a race twice. Retrying at once would keep losing to a
                # node that works through a queue of updates to this AOR in
                # lockstep with us; a random, growing pause lets each win in turn.
                pause = random.uniform(0, min(BACKOFF_FIRST * 2 ** (attempt - 2), BACKOFF_MAX))
                await task.deferLater(self.conn.reactor, pause)
            now = self.clock()
            work = current(_decode_bindings(raw or None, aor), now)
            result = change(work, now)  # raises: nothing written
            value, pxat, score = _encode_bindings(current(work, now))
            if confirmed and value == raw:
                return result  # nothing to change: what Redis holds is what would be written
            nat = "1" if any(b.nat for b in work) else ""
            reply = await self.conn.eval(
                _SET_AOR, [key, self._index, self._nat_index], [raw, value, pxat, score, _b(aor), nat]
            )
            if reply and int(reply[0]) == 1:
                self._remember(aor, value)
                return result
            raw = reply[1] if len(reply) > 1 and reply[1] else b""
            if isinstance(raw, str):
                raw = _b(raw)
            self._remember(aor, raw)
            confirmed = True
        raise StoreUnavailable(f"AOR {aor!r} kept changing under us ({MAX_ATTEMPTS} tries)")

    async def remove(self, aor: str, contact: str | None = None) -> int:
        target = None if contact is None else URI.parse(contact)

        def drop(bindings: list[Binding], now: float) -> int:
            before = len(bindings)
            if target is None:
                bindings.clear()
            else:
                bindings[:] = [b for b in bindings if not b.uri.equivalent(target)]
            return before - len(bindings)

        return await self.update(aor, drop)

    async def aors(self) -> list[str]:
        return await self.conn.bounded(self._live(self._index))

    async def nat_aors(self) -> list[str]:
        # The index scores an AOR by its last binding's expiry, so an AOR whose
        # NAT'ed binding expired before its others is still listed until its
        # next write: callers look at the bindings anyway.
        return await self.conn.bounded(self._live(self._nat_index))

    async def _live(self, index: bytes) -> list[str]:
        members = await self.conn.eval(_LIVE_AORS, [index], [_ms(self.clock())])
        return sorted(_s(m) for m in members)

    async def counts(self, limit: int = COUNT_LIMIT) -> tuple[int, int | None]:
        """(AORs, bindings) now current. AORs come from the index (ZCOUNT:
        never KEYS or SCAN); bindings need every AOR read, so past ``limit``
        AORs they are not counted (None)."""
        return await self.conn.bounded(self._counts(limit))

    async def _counts(self, limit: int) -> tuple[int, int | None]:
        reply = await self.conn.eval(_COUNT_AORS, [self._index],
                                     [_ms(self.clock()), self._prefix, str(limit)])
        aors, bindings = int(reply[0]), int(reply[1])
        return aors, (None if bindings < 0 else bindings)
