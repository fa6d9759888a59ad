"""Location and subscriber stores in Redis, shared by every proxy node.

:class:`RedisLocationStore` and :class:`~sipsuite.proxy.registrar.redis.subscribers.RedisSubscriberStore`
(in its own module) implement the
``LocationStore`` and ``SubscriberStore`` protocols of
:mod:`sipsuite.proxy.registrar.location` with the same behaviour as the in-memory
stores (``tests/proxy/registrar/test_stores.py`` runs one suite against both). Both use
one :class:`~sipsuite.proxy.registrar.redis.client.RedisConnection`: a lazy, reconnecting txredisapi connection, so
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
import time
from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer, task

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.location import Binding, StoreUnavailable, current
from sipsuite.proxy.registrar.redis.client import RedisConnection
from sipsuite.proxy.registrar.redis.keys import DEFAULT_PREFIX, key_name, to_bytes, to_str
from sipsuite.sip.uri import URI

T = TypeVar("T")

log = get_logger("sipsuite.proxy.redisstore")

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
# Encoding.


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
        self._prefix = to_bytes(prefix) + b"loc:"
        self._index = self._prefix + b"index"
        self._nat_index = self._prefix + b":nat"  # no AOR has this key: see key_name
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
        return self._prefix + key_name(aor)

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
            chunk = [to_str(m) for m in members]
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
                _SET_AOR, [key, self._index, self._nat_index], [raw, value, pxat, score, to_bytes(aor), nat]
            )
            if reply and int(reply[0]) == 1:
                self._remember(aor, value)
                return result
            raw = reply[1] if len(reply) > 1 and reply[1] else b""
            if isinstance(raw, str):
                raw = to_bytes(raw)
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
        return sorted(to_str(m) for m in members)

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
