"""The ``subscribers`` module (issue 13; Kamailio's subscriber table): the
users who may authenticate, in memory or in Redis when the ``redis`` module
is set up.  Always set up, auth on or off: the ``user.*`` RPCs manage it
either way.  It provides SUBSCRIBERS, the store itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.proxy.registrar.location import MemorySubscriberStore
from sipsuite.proxy.services import REDIS, SUBSCRIBERS

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.registrar.location import SubscriberStore

__all__ = ["SPEC", "Subscribers", "SubscribersSpec"]


class Subscribers:
    """The subscribers module: holds the store it provides as SUBSCRIBERS
    and reports its cache's figures in ``stats``."""

    name: ClassVar[str] = "subscribers"

    def __init__(self, store: SubscriberStore) -> None:
        self.store = store

    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # [redis] subscriber_cache is start-up only

    def stats(self) -> Mapping[str, object]:
        """``subscriber_cache``: the Redis store's node-local cache
        (redis/cache.py), None without one."""
        cache = getattr(self.store, "cache", None)
        if cache is None:
            return {"subscriber_cache": None}
        return {"subscriber_cache": {"live": cache.live, "entries": len(cache.entries),
                                     "hits": cache.hits, "misses": cache.misses}}

    def stop(self) -> None:
        pass


class SubscribersSpec:
    """Always set up.  ``SubscribersSpec(store)`` uses ``store`` instead of
    the one the config names (tests; an embedding application)."""

    name = "subscribers"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def __init__(self, store: SubscriberStore | None = None) -> None:
        self.store = store

    def enabled(self, config: Config) -> bool:
        return True

    def setup(self, core: CoreAPI, config: Config) -> Subscribers:
        store = self.store if self.store is not None else _store(core, config)
        core.modules.provide(SUBSCRIBERS, store)
        return Subscribers(store)


def _store(core: CoreAPI, config: Config) -> SubscriberStore:
    conn = core.modules.get(REDIS)
    if conn is None:
        return MemorySubscriberStore()
    from sipsuite.proxy.registrar.redis.subscribers import RedisSubscriberStore

    cfg = config.redis
    return RedisSubscriberStore(conn, prefix=cfg.prefix, cache_size=cfg.subscriber_cache)


SPEC = SubscribersSpec()
