"""The module registry: sets feature modules up in
order, finds their services, switches them at run time and fans out
start, stats and stop.

A module is set up with a *scoped* core: the core itself, except that its
``hooks`` record the module as their owner, so a module switched off at
run time leaves no hook behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sipsuite.log import get_logger
from sipsuite.proxy.core.hooks import HookPoints, ScopedHooks
from sipsuite.startup import StartupError

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, Module, ModuleSpec, ServiceKey

__all__ = ["ModuleRegistry", "ScopedCore"]

log = get_logger("sipsuite.proxy.core")

T = TypeVar("T")


class ScopedCore:
    """The core as one module sees it (its hook registrations are its own)."""

    def __init__(self, core: Any, points: HookPoints, owner: str, rank: float) -> None:
        self._core = core
        self.hooks = ScopedHooks(points, owner, rank)

    @property
    def config(self) -> Any:
        # Read at every use, per packet by request_in modules: a property,
        # since the __getattr__ fallback below first fails a normal lookup
        # and costs ten times as much.
        return self._core.config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


class _Entry:
    __slots__ = ("name", "module", "rank", "spec")

    def __init__(self, name: str, module: Module, rank: float, spec: ModuleSpec | None) -> None:
        self.name = name
        self.module = module
        self.rank = rank
        self.spec = spec


class ModuleRegistry:
    """The modules of one core, in set-up order."""

    def __init__(self, core: CoreAPI, points: HookPoints) -> None:
        self.core = core
        self.points = points
        self._specs: list[ModuleSpec] = []
        self._entries: list[_Entry] = []
        self._services: dict[str, tuple[str, object]] = {}  # key name -> (owner, impl)
        self._setting_up: str | None = None
        self._extra = 0
        self.started = False

    # -- set-up ----------------------------------------------------------------------
    def setup_all(self, specs: Iterable[ModuleSpec], config: Config) -> None:
        """Set up, in list order, the modules ``config`` enables."""
        self._specs = list(specs)
        for rank, spec in enumerate(self._specs):
            if spec.enabled(config):
                self._setup(spec, rank, config)

    def _setup(self, spec: ModuleSpec, rank: float, config: Config) -> Module:
        for key in spec.requires:
            if key.name not in self._services:
                raise StartupError(f"module {spec.name} needs the {key.name} service,"
                                   " which no module set up before it provides")
        scoped = ScopedCore(self.core, self.points, spec.name, rank)
        self._setting_up = spec.name
        try:
            module = spec.setup(scoped, config)
        except BaseException:
            self._forget(spec.name)
            raise
        finally:
            self._setting_up = None
        self._insert(_Entry(spec.name, module, rank, spec))
        return module

    def add(self, module: Module, name: str | None = None) -> None:
        """A module built by hand (tests, the suite's wiring), after the others."""
        self._extra += 1
        self._insert(_Entry(name or module.name, module, len(self._specs) + self._extra, None))

    def _insert(self, entry: _Entry) -> None:
        entries = self._entries
        at = len(entries)
        for i, other in enumerate(entries):
            if other.rank > entry.rank:
                at = i
                break
        entries.insert(at, entry)

    def _forget(self, name: str) -> None:
        self.points.remove_owner(name)
        for key, (owner, _) in list(self._services.items()):
            if owner == name:
                del self._services[key]

    # -- services --------------------------------------------------------------------
    def provide(self, key: ServiceKey[T], impl: T) -> None:
        self._services[key.name] = (self._setting_up or "core", impl)

    def get(self, key: ServiceKey[T]) -> T | None:
        found = self._services.get(key.name)
        return None if found is None else found[1]  # type: ignore[return-value]

    def require(self, key: ServiceKey[T]) -> T:
        found = self._services.get(key.name)
        if found is None:
            raise LookupError(f"no module provides the {key.name} service")
        return found[1]  # type: ignore[return-value]

    def by_name(self, name: str) -> Module | None:
        for entry in self._entries:
            if entry.name == name:
                return entry.module
        return None

    def names(self) -> list[str]:
        return [entry.name for entry in self._entries]

    # -- run time --------------------------------------------------------------------
    def reconfigure(self, old: Config, new: Config) -> None:
        """Apply a new config: run-time switches that flipped set their module
        up (and start it) or tear it down, then every module's reconfigure.

        A module switched off gets ``reconfigure(old, new)`` (so it can tell
        a switch-off from a shutdown) before its ``stop()``."""
        for rank, spec in enumerate(self._specs):
            if not spec.runtime_switch:
                continue
            present = self.by_name(spec.name) is not None
            wanted = spec.enabled(new)
            if wanted and not present:
                module = self._setup(spec, rank, new)
                if self.started:
                    module.start()
                log.info("module {n} set up", n=spec.name)
            elif present and not wanted:
                self._teardown(spec.name, old, new)
                log.info("module {n} stopped", n=spec.name)
        for entry in list(self._entries):
            entry.module.reconfigure(old, new)

    def _teardown(self, name: str, old: Config, new: Config) -> None:
        entry = next(e for e in self._entries if e.name == name)
        self._entries.remove(entry)
        self._forget(name)
        entry.module.reconfigure(old, new)
        self._stop_one(entry)

    # -- fan-out -----------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        for entry in list(self._entries):
            entry.module.start()

    def stats(self) -> dict[str, Mapping[str, object] | Any]:
        return {entry.name: entry.module.stats() for entry in self._entries}

    def stop(self) -> list[Any]:
        """Stop every module, last set up first; one that fails is logged and
        the others still stop.  Returns the Deferreds to wait for."""
        self.started = False
        waits: list[Any] = []
        for entry in reversed(self._entries):
            result = self._stop_one(entry)
            if result is not None:
                waits.append(result)
        return waits

    @staticmethod
    def _stop_one(entry: _Entry) -> Any:
        try:
            return entry.module.stop()
        except Exception:  # noqa: BLE001 - the other modules must still stop
            log.failure("module {n} failed to stop", n=entry.name)
            return None
