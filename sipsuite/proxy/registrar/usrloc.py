"""The ``location`` module (issue 13; Kamailio's usrloc): the bindings of
each user, registered ones in a store (memory, or Redis when the ``redis``
module is set up) and ``[location.static]`` ones beside it.

It provides LOCATION: ``lookup`` gives a user's static bindings then the
registered ones, highest q first (``ctx.lookup``); ``store`` is the store of
registered bindings the registrar writes and the ``ul.*`` RPCs show.  Static
entries live beside the store, never in it: they are config, and must not be
written to a Redis that other nodes share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from twisted.internet.defer import Deferred

from sipsuite.proxy.registrar.bindings import Binding, StoreUnavailable, current
from sipsuite.proxy.registrar.location import MemoryLocationStore, StaticLocationStore
from sipsuite.proxy.services import LOCATION, REDIS

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.registrar.location import LocationStore

__all__ = ["SPEC", "Location", "LocationSpec"]

T = TypeVar("T")


def _static(config: Config, clock: Callable[[], float]) -> StaticLocationStore | None:
    entries = config.location_static
    return StaticLocationStore(entries, clock) if entries else None


class Location:
    """The location module, provided as LOCATION: the store of registered
    bindings (``store``) and the static bindings of the config, looked up
    together (see the module's docstring)."""

    name: ClassVar[str] = "location"

    def __init__(self, core: CoreAPI, store: LocationStore,
                 static: StaticLocationStore | None) -> None:
        self.core = core
        self.store = store
        self.static = static

    async def lookup(self, user: str) -> list[Binding]:
        """The user's bindings: static ones from the config, then registered
        ones, highest q first. Raises StoreUnavailable."""
        found = await self.store.lookup(user)
        static = self.static
        if static is not None:
            fixed = await static.lookup(user)
            if fixed:
                return current(fixed + found, self.core.wall())
        return found

    async def remove(self, aor: str, contact: str | None = None) -> int:
        return await self.store.remove(aor, contact)

    # The store's other calls, for code written when ``core.location`` was
    # the store itself (the NAT keep-alives, user routing classes).
    async def update(self, aor: str, change: Callable[[list[Binding], float], T]) -> T:
        return await self.store.update(aor, change)

    async def aors(self) -> list[str]:
        return await self.store.aors()

    async def nat_aors(self) -> list[str]:
        return await self.store.nat_aors()

    # -- the module's life --------------------------------------------------------
    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        if new.location_static != old.location_static:
            self.static = _static(new, self.core.wall)

    def stats(self) -> Deferred[Mapping[str, object]]:
        return Deferred.fromCoroutine(self._stats())

    async def _stats(self) -> Mapping[str, object]:
        """``registrations``: AORs and bindings in the store, None for a store
        that cannot count them."""
        counts = getattr(self.store, "counts", None)
        if counts is None:
            figures: dict[str, Any] = {"aors": None, "bindings": None}
        else:
            try:
                aors, bindings = await counts()
            except StoreUnavailable as exc:
                figures = {"aors": None, "bindings": None, "error": f"store unavailable: {exc}"}
            else:
                figures = {"aors": aors, "bindings": bindings}
        return {"registrations": figures}

    def stop(self) -> None:
        pass


class LocationSpec:
    """Always set up.  ``LocationSpec(store)`` uses ``store`` instead of the
    one the config names (tests; an embedding application)."""

    name = "location"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def __init__(self, store: LocationStore | None = None) -> None:
        self.store = store

    def enabled(self, config: Config) -> bool:
        return True

    def setup(self, core: CoreAPI, config: Config) -> Location:
        store = self.store if self.store is not None else _store(core, config)
        location = Location(core, store, _static(config, core.wall))
        core.modules.provide(LOCATION, location)
        return location


def _store(core: CoreAPI, config: Config) -> LocationStore:
    conn = core.modules.get(REDIS)
    if conn is None:
        return MemoryLocationStore(core.wall)
    from sipsuite.proxy.registrar.redis.location import RedisLocationStore

    return RedisLocationStore(conn, core.wall, prefix=config.redis.prefix)


SPEC = LocationSpec()
