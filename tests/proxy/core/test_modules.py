"""The module registry against fake modules: set-up order and switches,
services, run-time switching, fan-out and stop in reverse."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from sipsuite.proxy.api import ServiceKey
from sipsuite.proxy.core.hooks import HookPoints
from sipsuite.proxy.core.modules import ModuleRegistry
from sipsuite.startup import StartupError

GREET: ServiceKey[str] = ServiceKey("greet")


def cfg(**flags: bool) -> Any:
    return SimpleNamespace(features=SimpleNamespace(**flags))


class FakeModule:
    name: ClassVar[str] = "fake"

    def __init__(self, name: str, journal: list[str], fail_stop: bool = False) -> None:
        self.label = name
        self.journal = journal
        self.fail_stop = fail_stop

    def start(self) -> None:
        self.journal.append(f"start {self.label}")

    def reconfigure(self, old: Any, new: Any) -> None:
        self.journal.append(f"reconfigure {self.label}")

    def stats(self) -> dict[str, object]:
        return {"label": self.label}

    def stop(self) -> None:
        self.journal.append(f"stop {self.label}")
        if self.fail_stop:
            raise RuntimeError("boom")


class FakeSpec:
    def __init__(self, name: str, journal: list[str], *, requires: tuple = (),
                 provides: ServiceKey[str] | None = None, runtime_switch: bool = True,
                 fail_stop: bool = False) -> None:
        self.name = name
        self.requires = requires
        self.provides = provides
        self.runtime_switch = runtime_switch
        self.journal = journal
        self.fail_stop = fail_stop

    def enabled(self, config: Any) -> bool:
        return bool(getattr(config.features, self.name, False))

    def setup(self, core: Any, config: Any) -> FakeModule:
        self.journal.append(f"setup {self.name}")
        core.hooks.on_response_out(lambda tx, resp: self.journal.append(f"hook {self.name}"))
        if self.provides is not None:
            core.modules.provide(self.provides, f"from {self.name}")
        return FakeModule(self.name, self.journal, self.fail_stop)


def make(journal: list[str], *specs: FakeSpec, **flags: bool) -> tuple[ModuleRegistry, HookPoints]:
    points = HookPoints()
    core = SimpleNamespace(hooks=points)
    registry = ModuleRegistry(core, points)  # type: ignore[arg-type]
    core.modules = registry
    registry.setup_all(specs, cfg(**flags))
    return registry, points


def run_hooks(points: HookPoints) -> None:
    for _, fn in points.response_out:
        fn(None, None)


def test_setup_in_order_only_enabled() -> None:
    j: list[str] = []
    reg, points = make(j, FakeSpec("a", j), FakeSpec("b", j), FakeSpec("c", j), a=True, c=True)
    assert reg.names() == ["a", "c"]
    assert reg.by_name("b") is None
    assert j == ["setup a", "setup c"]
    run_hooks(points)
    assert j[-2:] == ["hook a", "hook c"]


def test_services_and_requires() -> None:
    j: list[str] = []
    reg, _ = make(j, FakeSpec("a", j, provides=GREET), FakeSpec("b", j, requires=(GREET,)),
                  a=True, b=True)
    assert reg.get(GREET) == "from a"
    assert reg.require(GREET) == "from a"
    with pytest.raises(StartupError, match="b needs the greet service"):
        make(j, FakeSpec("a", j, provides=GREET), FakeSpec("b", j, requires=(GREET,)), b=True)
    with pytest.raises(LookupError):
        make(j)[0].require(GREET)


def test_runtime_switch_sets_up_and_tears_down() -> None:
    j: list[str] = []
    specs = (FakeSpec("a", j), FakeSpec("b", j, provides=GREET), FakeSpec("c", j))
    reg, points = make(j, *specs, a=True, c=True)
    reg.start()
    j.clear()
    reg.reconfigure(cfg(a=True, c=True), cfg(a=True, b=True, c=True))
    assert j == ["setup b", "start b", "reconfigure a", "reconfigure b", "reconfigure c"]
    assert reg.names() == ["a", "b", "c"]  # set-up order, not switch order
    assert reg.get(GREET) == "from b"
    j.clear()
    run_hooks(points)
    assert j == ["hook a", "hook b", "hook c"]
    j.clear()
    reg.reconfigure(cfg(a=True, b=True, c=True), cfg(a=True, c=True))
    # The module switched off hears of the new config before it stops.
    assert j == ["reconfigure b", "stop b", "reconfigure a", "reconfigure c"]
    assert reg.by_name("b") is None and reg.get(GREET) is None
    j.clear()
    run_hooks(points)
    assert j == ["hook a", "hook c"]


def test_startup_only_spec_is_not_switched() -> None:
    j: list[str] = []
    reg, _ = make(j, FakeSpec("a", j, runtime_switch=False))
    reg.reconfigure(cfg(), cfg(a=True))
    assert reg.names() == []


def test_stop_in_reverse_and_a_failure_does_not_stop_the_rest() -> None:
    j: list[str] = []
    reg, _ = make(j, FakeSpec("a", j), FakeSpec("b", j, fail_stop=True), FakeSpec("c", j),
                  a=True, b=True, c=True)
    j.clear()
    assert reg.stop() == []
    assert j == ["stop c", "stop b", "stop a"]


def test_add_and_stats_fan_out() -> None:
    j: list[str] = []
    reg, _ = make(j, FakeSpec("a", j), a=True)
    reg.add(FakeModule("extra", j), name="extra")
    assert reg.names() == ["a", "extra"]
    assert reg.stats() == {"a": {"label": "a"}, "extra": {"label": "extra"}}
    reg.start()
    assert j[-2:] == ["start a", "start extra"]
