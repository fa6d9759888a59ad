"""The connection every Redis store shares: where Redis is (``redis://`` URLs) and
one lazy, reconnecting txredisapi connection with a bounded wait per call, so
the proxy starts while Redis is down and carries on when it comes back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import txredisapi
from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.location import StoreUnavailable
from sipsuite.proxy.registrar.redis.connection import LeanRedisProtocol

log = get_logger("sipsuite.proxy.redisstore")

T = TypeVar("T")


async def _wait(d: defer.Deferred[T]) -> T:
    return await d


DEFAULT_PORT = 6379


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

            reactor = installed
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
