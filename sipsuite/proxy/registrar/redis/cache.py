"""A node-local cache of the subscribers kept in Redis.

Why: every authenticated request needs its user's HA1. Read from Redis each
time, that is one more round trip per REGISTER and per challenged INVITE: a
send, a wake-up for the reply and the Deferred chain around it, a share of
each registration's CPU worth saving (docs/benchmarks.md, REGISTER with
digest authentication). Subscriber records change rarely and are read all
the time, which is what a cache is for.

How it stays right: Redis's server-assisted client-side caching (CLIENT
TRACKING, Redis 6 and later) in broadcast mode. A second connection
subscribes to ``__redis__:invalidate``; the command connection turns
tracking on with ``REDIRECT`` to it, ``BCAST PREFIX <prefix>sub:``. Redis
then reports every change to a subscriber key, whoever makes it: another
proxy node, a provisioning script, redis-cli, FLUSHDB, this node too (its
writes are Lua scripts, which NOLOOP does not cover).

The rules that keep a stale record from being used:

- entries are used only while both connections are up and tracking is on
  for the very command connection in use. When either drops, or the command
  connection is replaced, everything is forgotten: changes made meanwhile
  were not reported;
- a reported change drops the key's entry at once;
- a read is kept only if no change of its key was reported, and no write of
  it sent from here, between sending it and its reply (``stamp``/``keep``):
  the reply and the report come on different connections, in either order;
- a write whose outcome is unknown (timeout) leaves no entry;
- the report channel is PINGed every ``HEARTBEAT`` seconds: one cut without a
  FIN or RST (a firewall's idle timeout) is found within two of them.

A key that was held when its change was reported is read again at once
(one read per change and node, not per request), so a user whose password
changed, or who was just added through this node, stays served from memory.
Each time the cache goes live (start, reconnection) it reads the whole
subscriber table in, when the table fits, as Kamailio loads an htable at
start: a node that just started does not send every phone's first REGISTER
to Redis for its HA1.

Without CLIENT TRACKING (Redis before 6, or the command renamed away) the
cache stays off, said once in the log, and every read goes to Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.redis.connection import encode_command, split_replies

if TYPE_CHECKING:
    from sipsuite.proxy.registrar.location import Subscriber
    from sipsuite.proxy.registrar.redis.client import RedisConnection

log = get_logger("sipsuite.proxy.subcache")

CHANNEL = b"__redis__:invalidate"

#: What ``SubscriberCache.entries.get`` gives for a user it does not hold.
MISSING: Any = object()
#: Seconds between PINGs on the report channel: a silent channel is found
#: dead within two of them.
HEARTBEAT = 2.0
#: Keys whose last change is remembered for reads in flight (see ``_touch``).
TOUCHED_MAX = 10_000


class _Invalidations(protocol.Protocol):
    """The connection Redis sends its invalidation messages to."""

    transport: ITCPTransport  # set by makeConnection before any method here runs

    def __init__(self, cache: SubscriberCache) -> None:
        self.cache = cache
        self.client_id: int | None = None
        self._expect: deque[str] = deque()
        self._buffer = b""
        self._heartbeat: task.LoopingCall | None = None
        self._pong_due = False

    def connectionMade(self) -> None:
        commands = []
        password = self.cache.conn.address.password
        if password is not None:
            commands.append(encode_command(("AUTH", password)))
            self._expect.append("AUTH")
        commands += [encode_command(("CLIENT", "ID")), encode_command(("SUBSCRIBE", CHANNEL))]
        self._expect += ["CLIENT ID", "SUBSCRIBE"]
        self.transport.write(b"".join(commands))

    def dataReceived(self, data: bytes) -> None:
        try:
            replies, self._buffer = split_replies(self._buffer + data if self._buffer else data)
        except (ValueError, txredisapi.InvalidResponse):
            self.transport.loseConnection()
            return
        for reply in replies:
            if not self._reply(reply):
                self.transport.loseConnection()
                return

    def _reply(self, reply: Any) -> bool:
        if self._expect:
            what = self._expect.popleft()
            if isinstance(reply, Exception):
                self.cache.refused(what, reply)
                return False
            if what == "CLIENT ID":
                self.client_id = int(reply)
            elif what == "SUBSCRIBE" and self.client_id is not None:
                self._heartbeat = task.LoopingCall(self._ping)
                self._heartbeat.clock = self.cache.conn.reactor
                self._heartbeat.start(self.cache.heartbeat, now=False)
                self.cache.subscribed(self, self.client_id)
            return True
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self.cache.invalidate(reply[2])
        elif isinstance(reply, list) and reply and reply[0] == b"pong":
            self._pong_due = False
        return True

    def _ping(self) -> None:
        """An idle channel is the normal case (nothing changes), and one cut
        by a firewall without a FIN or RST would look just like it while
        changes go unreported: no answer to a PING within one heartbeat
        drops it, and the cache with it."""
        if self._pong_due:
            log.warn("Redis subscriber cache: no answer on the report channel;"
                     " reconnecting, nothing kept is used meanwhile")
            self.transport.abortConnection()
            return
        self._pong_due = True
        self.transport.write(encode_command(("PING",)))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self.cache.unsubscribed(self)


class _Factory(protocol.Factory):
    def __init__(self, cache: SubscriberCache) -> None:
        self.cache = cache

    def buildProtocol(self, addr: Any) -> _Invalidations:
        return _Invalidations(self.cache)


class SubscriberCache:
    """Subscriber records by Redis key (``None``: known not to exist)."""

    def __init__(self, conn: RedisConnection, key_prefix: bytes, max_entries: int) -> None:
        self.conn = conn
        self.key_prefix = key_prefix
        self.max_entries = max_entries
        self.entries: dict[bytes, Subscriber | None] = {}
        # Change counter, and the count at each key's last change: a read is
        # kept only if its key did not change after it was sent. The epoch
        # moves on at every reset, refusing every read in flight.
        self._seq = 0
        self._touched: dict[bytes, int] = {}
        self._epoch = 0
        #: Reads a key again after a reported change dropped its entry.
        self.refresh: Callable[[bytes], None] | None = None
        #: Reads every record in, once tracking is on (the cache starts empty).
        self.load: Callable[[], None] | None = None
        self.hits = 0
        self.misses = 0
        self._listener: _Invalidations | None = None
        self._client_id: int | None = None
        self._tracked: Any = None  # the command protocol tracking into _client_id
        self._enabling: tuple[Any, int] | None = None
        self._service: ClientService | None = None
        self._said_refused = False
        #: Seconds between PINGs on the report channel (see _Invalidations._ping).
        self.heartbeat = HEARTBEAT
        # Tracking is asked for by whichever of the two connections is up
        # last: here the command connection, in subscribed() the channel.
        conn.when_ready(self.tracked)

    @property
    def live(self) -> bool:
        """Whether entries are being used now."""
        return self._tracked is not None and self._tracked is self.conn.current()

    def start(self) -> None:
        if self._service is not None:
            return
        a = self.conn.address
        endpoint = HostnameEndpoint(self.conn.reactor, a.host, a.port, timeout=self.conn.connect_timeout)
        self._service = ClientService(
            endpoint, _Factory(self), retryPolicy=backoffPolicy(maxDelay=self.conn.max_delay),
            clock=self.conn.reactor,
        )
        self._service.startService()

    def stop(self) -> defer.Deferred[None]:
        service, self._service = self._service, None
        self._reset()
        self._client_id = self._tracked = self._enabling = None
        if service is None:
            return defer.succeed(None)
        return service.stopService()

    # -- the two connections ------------------------------------------------------
    def tracked(self) -> Any:
        """The command connection whose reads may be cached now, else None
        (and, when only tracking is missing, it is asked for)."""
        proto = self.conn.current()
        if proto is None or self._client_id is None:
            return None
        if proto is self._tracked:
            return proto
        self._enable(proto, self._client_id)
        return None

    def _enable(self, proto: Any, client_id: int) -> None:
        if self._enabling is not None and self._enabling[0] is proto and self._enabling[1] == client_id:
            return  # asked already
        self._reset()
        self._tracked = None
        self._enabling = (proto, client_id)
        try:
            # OFF first: tracking may still point at a listener that is gone.
            proto.execute_command("CLIENT", "TRACKING", "OFF").addErrback(lambda _: None)
            d = proto.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id,
                                      "BCAST", "PREFIX", self.key_prefix)
        except Exception:  # noqa: BLE001 - the connection went meanwhile: the next read retries
            self._enabling = None
            return
        d.addCallbacks(self._enabled, self._not_enabled, callbackArgs=(proto, client_id),
                       errbackArgs=(proto, client_id))

    def _enabled(self, _: Any, proto: Any, client_id: int) -> None:
        if self._enabling is not None and self._enabling[0] is proto:
            self._enabling = None
        if self._client_id == client_id and proto is self.conn.current():
            self._reset()
            self._tracked = proto
            if self.load is not None:
                self.load()

    def _not_enabled(self, failure: Failure, proto: Any, client_id: int) -> None:
        if self._enabling is not None and self._enabling[0] is proto:
            self._enabling = None
        if failure.check(txredisapi.ResponseError) and self._client_id == client_id:
            # Refused while the report channel is up: stays off for this
            # connection, asked again only on a new one. (Refused because the
            # channel had just gone, it is asked again once a new one is up.)
            self._enabling = (proto, client_id)
            self.refused("CLIENT TRACKING", failure.value)

    def refused(self, command: str, error: BaseException) -> None:
        if not self._said_refused:
            self._said_refused = True
            log.warn("Redis refused {c} ({e}): subscribers are read from Redis on every request,"
                     " without the node-local cache (it needs Redis 6 or later)", c=command, e=error)

    def subscribed(self, listener: _Invalidations, client_id: int) -> None:
        self._listener = listener
        self._client_id = client_id
        self._tracked = None
        self._reset()
        self.tracked()  # ask for tracking now rather than at the first read

    def unsubscribed(self, listener: _Invalidations) -> None:
        if listener is self._listener:
            self._listener = None
            self._client_id = None
            self._tracked = None
            self._reset()

    # -- entries ------------------------------------------------------------------
    def stamp(self) -> tuple[int, int]:
        """Taken when a read (or write) is sent; ``keep`` compares it."""
        return self._epoch, self._seq

    def _touch(self, key: bytes) -> None:
        self._seq += 1
        touched = self._touched
        if len(touched) >= TOUCHED_MAX and key not in touched:
            # Forgetting which keys changed would let a read in flight be
            # kept; a new epoch refuses every read in flight instead.
            touched.clear()
            self._epoch += 1
        touched[key] = self._seq

    def invalidate(self, keys: list[bytes] | None) -> None:
        """Redis reports ``keys`` changed (``None``: the database was flushed)."""
        if keys is None:
            self._reset()
            return
        entries = self.entries
        for key in keys:
            self._touch(key)
            if key in entries:
                del entries[key]
                if self.refresh is not None:
                    self.refresh(key)

    def writing(self, key: bytes) -> tuple[int, int]:
        """A write of ``key`` was just sent from here: reads of it in flight
        may see either side of it, so none of them is kept. The stamp for
        keeping what the write stored."""
        self._touch(key)
        self.entries.pop(key, None)
        return self.stamp()

    def keep(self, proto: Any, stamp: tuple[int, int], key: bytes, value: Subscriber | None) -> bool:
        """Keep what a read (or this node's write) sent at ``stamp`` over
        ``proto`` found, unless the key changed since; whether it was kept."""
        epoch, seq = stamp
        if proto is not self._tracked or epoch != self._epoch or self._touched.get(key, 0) > seq:
            return False
        entries = self.entries
        if len(entries) >= self.max_entries and key not in entries:
            entries.clear()  # bounded: what goes costs one read each, no more
        entries[key] = value
        return True

    def _reset(self) -> None:
        self.entries.clear()
        self._touched.clear()
        self._epoch += 1
