"""The subscriber store in Redis: ``RedisSubscriberStore``, with the
node-local cache of cache.py in front of it. The key layout, and the
connection it shares with the location store, are keys.py and client.py."""

from __future__ import annotations

import builtins
import time
from typing import Any

from twisted.internet import defer

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.location import Subscriber
from sipsuite.proxy.registrar.redis.cache import MISSING, SubscriberCache
from sipsuite.proxy.registrar.redis.client import RedisConnection
from sipsuite.proxy.registrar.redis.keys import (
    DEFAULT_PREFIX,
    key_name,
    name_of_key,
    to_bytes,
    to_str,
)

#: Subscriber records a node keeps (``[redis] subscriber_cache``).
DEFAULT_CACHE_SIZE = 100_000
#: Records read per round trip when the cache loads the whole table.
LOAD_CHUNK = 500

log = get_logger("sipsuite.proxy.redissubscribers")

# KEYS: subscriber hash, index. ARGV: user, then field, value pairs.
_ADD_SUBSCRIBER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

_REPLACE_SUBSCRIBER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: subscriber hash, index. ARGV: user.
_REMOVE_SUBSCRIBER = """
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return n
"""


class RedisSubscriberStore:
    """The ``SubscriberStore`` of every proxy node, in Redis."""

    def __init__(self, conn: RedisConnection, prefix: str = DEFAULT_PREFIX,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.conn = conn
        self._prefix = to_bytes(prefix) + b"sub:"
        self._index = self._prefix + b"index"
        # Node-local copy of the records read or written here, kept right by
        # Redis's invalidation messages (cache.py); 0 entries: no cache.
        self.cache: SubscriberCache | None = None
        if cache_size > 0:
            self.cache = SubscriberCache(conn, self._prefix, cache_size)
            self.cache.refresh = self._refresh
            self.cache.load = self._start_load
            conn.attach(self.cache)

    def _key(self, user: str) -> bytes:
        return self._prefix + key_name(user)

    @staticmethod
    def _fields(sub: Subscriber) -> list[bytes | str]:
        fields: list[bytes | str] = ["realm", to_bytes(sub.realm)]
        for alg, ha1 in sub.ha1.items():
            fields += [b"ha1:" + to_bytes(alg), to_bytes(ha1)]
        return fields

    @staticmethod
    def _decode(user: str, reply: list[bytes]) -> Subscriber | None:
        if not reply:
            return None
        fields = {to_str(k): to_str(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}
        ha1 = {k[4:]: v for k, v in fields.items() if k.startswith("ha1:")}
        return Subscriber(user, fields.get("realm", ""), ha1)

    async def get(self, user: str) -> Subscriber | None:
        cache = self.cache
        if cache is None:
            return await self.conn.bounded(self._get(user))
        key = self._key(user)
        proto = cache.tracked()
        if proto is not None:
            found = cache.entries.get(key, MISSING)
            if found is not MISSING:
                cache.hits += 1
                return found
            cache.misses += 1
        stamp = cache.stamp()
        sub = await self.conn.bounded(self._get(user))
        if proto is not None:
            cache.keep(proto, stamp, key, sub)
        return sub

    def _refresh(self, key: bytes, tries: int = 3) -> None:
        """Read ``key`` again for the cache (its change was just reported).
        Read again if it changed once more meanwhile, a few times at most."""
        cache = self.cache
        proto = cache.tracked() if cache is not None else None
        if cache is None or proto is None:
            return
        user = name_of_key(key[len(self._prefix):])
        stamp = cache.stamp()

        def got(sub: Subscriber | None) -> None:
            if not cache.keep(proto, stamp, key, sub) and tries > 1 and cache.stamp()[0] == stamp[0]:
                self._refresh(key, tries - 1)

        self.conn.bounded(self._get(user)).addCallbacks(got, lambda _: None)

    def _start_load(self) -> None:
        d = defer.Deferred.fromCoroutine(self._load())
        d.addErrback(lambda f: log.warn("subscriber cache: loading the table failed ({e});"
                                        " records are kept as they are read",
                                        e=f.getErrorMessage()))

    async def _load(self) -> None:
        """Read every subscriber into the cache, LOAD_CHUNK records per step
        (SSCAN, then their HGETALLs pipelined): no reply is large enough to
        keep the reactor busy or outlast the timeout, which would drop the
        connection every request uses. Given up when the cache is reset."""
        cache = self.cache
        proto = cache.tracked() if cache is not None else None
        if cache is None or proto is None:
            return
        epoch = cache.stamp()[0]
        started = time.monotonic()
        total = int(await self.conn.call("SCARD", self._index))
        if total > cache.max_entries:
            log.info("subscriber cache: {n} subscribers, more than [redis] subscriber_cache"
                     " ({m}): kept as they are read", n=total, m=cache.max_entries)
            return
        cursor: bytes = b"0"
        loaded = 0
        while True:
            if cache.stamp()[0] != epoch:
                return  # reset (a connection dropped): the next live cache loads again
            stamp = cache.stamp()
            cursor, members = await self.conn.call("SSCAN", self._index, cursor, "COUNT", LOAD_CHUNK)
            users = [to_str(u) for u in members]
            replies = await self.conn.bounded(self._hgetall(users))
            for user, reply in zip(users, replies, strict=True):
                cache.keep(proto, stamp, self._key(user), self._decode(user, reply))
            loaded += len(users)
            if cursor in (b"0", "0"):
                break
        log.info("subscriber cache: {n} subscribers loaded in {t:.1f} s", n=loaded,
                 t=time.monotonic() - started)

    async def _hgetall(self, users: list[str]) -> list[Any]:
        return await self.conn.each("HGETALL", [self._key(u) for u in users])

    async def _get(self, user: str) -> Subscriber | None:
        return self._decode(user, await self.conn.command("HGETALL", self._key(user)))

    async def add(self, sub: Subscriber) -> bool:
        return await self.conn.bounded(self._write(_ADD_SUBSCRIBER, sub))

    async def replace(self, sub: Subscriber) -> bool:
        return await self.conn.bounded(self._write(_REPLACE_SUBSCRIBER, sub))

    async def _write(self, script: str, sub: Subscriber) -> bool:
        keys = [self._key(sub.user), self._index]
        return await self._cached_write(keys, sub, self.conn.eval(
            script, keys, [to_bytes(sub.user), *self._fields(sub)]))

    async def _cached_write(self, keys: list[bytes], value: Subscriber | None,
                            write: defer.Deferred[Any]) -> bool:
        """``write``'s outcome; a successful one is kept as the key's entry
        (until Redis reports the write back, which reads it again)."""
        cache = self.cache
        if cache is None:
            return bool(await write)
        proto = cache.tracked()
        # Stamped now: the command is already queued on the connection, and
        # no reply to anything can arrive before this function yields.
        stamp = cache.writing(keys[0])
        done = bool(await write)
        if proto is not None and not (done and cache.keep(proto, stamp, keys[0], value)):
            # Refused (add of a user who exists: the entry dropped above was
            # right after all), or changed since, maybe only by this write's
            # own report, which overtook its reply: read what Redis holds.
            self._refresh(keys[0])
        return done

    async def remove(self, user: str) -> bool:
        return await self.conn.bounded(self._remove(user))

    async def _remove(self, user: str) -> bool:
        keys = [self._key(user), self._index]
        return await self._cached_write(keys, None, self.conn.eval(_REMOVE_SUBSCRIBER, keys, [to_bytes(user)]))

    async def list(self) -> list[Subscriber]:
        return await self.conn.bounded(self._list())

    async def _list(self) -> builtins.list[Subscriber]:  # (`list` is the method above)
        users = sorted(to_str(u) for u in await self.conn.command("SMEMBERS", self._index))
        replies = await self._hgetall(users)
        subs = (self._decode(u, r) for u, r in zip(users, replies, strict=True))
        # A user removed between SMEMBERS and HGETALL is simply not listed.
        return [s for s in subs if s is not None]
