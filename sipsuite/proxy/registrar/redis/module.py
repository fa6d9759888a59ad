"""The ``redis`` module (issue 13): the one Redis connection that the
location and subscriber stores share, when ``[redis] url`` (or ``--redis``)
names a server.

Set up first and so stopped last (the registry stops modules in reverse):
the stores built on the connection are done with it by then.  It connects in
the background at start: the proxy serves everything that needs no Redis
while Redis is down, and reconnects by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.log import get_logger
from sipsuite.proxy.services import REDIS

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.registrar.redis.client import RedisConnection

log = get_logger("sipsuite.proxy.redisstore")

__all__ = ["SPEC", "Redis", "RedisSpec"]


class Redis:
    name: ClassVar[str] = "redis"

    def __init__(self, core: CoreAPI, conn: RedisConnection) -> None:
        self.core = core
        self.conn = conn

    def start(self) -> None:
        self.conn.start()
        log.info("location and subscribers in Redis at {u}", u=self.core.config.redis.url)

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # [redis] is start-up only (liveops.RUNTIME_KEYS)

    def stats(self) -> Mapping[str, object]:
        return {}

    def stop(self) -> Deferred[None]:
        return self.conn.stop()


class RedisSpec:
    """Set up when ``[redis] url`` names a server."""

    name = "redis"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return bool(config.redis.url)

    def setup(self, core: CoreAPI, config: Config) -> Redis:
        # Imported here: a proxy without Redis never loads the client.
        from sipsuite.proxy.registrar.redis.client import RedisConnection

        cfg = config.redis
        conn = RedisConnection(cfg.url, cfg.timeout, core.clock)
        core.modules.provide(REDIS, conn)
        return Redis(core, conn)


SPEC = RedisSpec()
