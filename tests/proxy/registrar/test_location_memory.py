"""The in-memory location store stays bounded by its AORs (issue 19): every
REGISTER pushes an expiry entry, and a refreshed AOR's stale ones are dropped
by a rebuild instead of waiting for their time."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from sipsuite.proxy.registrar.location import EXPIRY_SLACK, Binding, MemoryLocationStore


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    # The memory store never waits: its coroutines finish on the first step.
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the memory store awaited something")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def register(store: MemoryLocationStore, aor: str, expires: float) -> None:
    def change(bindings: list[Binding], now: float) -> None:
        bindings[:] = [Binding(f"sip:{aor}@192.0.2.1", expires=now + expires, updated=now)]
    run(store.update(aor, change))


def test_refreshes_do_not_grow_the_expiry_heap() -> None:
    clock = Clock()
    store = MemoryLocationStore(clock)
    aors = [f"user{i}" for i in range(50)]
    # Each phone refreshes every 30 s an hour's binding: 100 refreshes each,
    # 5,000 pushes, which would all stay until their expiry without a rebuild.
    for _ in range(100):
        for aor in aors:
            register(store, aor, 3600.0)
        clock.now += 30.0
    assert len(store._expiry) <= 2 * len(aors) + EXPIRY_SLACK + 1
    assert run(store.counts()) == (50, 50)
    # Expiry still works from the rebuilt heap: each AOR at its last refresh
    # (30 s ago) + 3600 s.
    clock.now += 3600.0 - 30.0 - 15.0
    assert len(run(store.aors())) == 50
    clock.now += 30.0
    assert run(store.aors()) == []
    assert run(store.counts()) == (0, 0)


def test_rebuild_keeps_the_earliest_expiry_per_aor() -> None:
    clock = Clock()
    store = MemoryLocationStore(clock)
    register(store, "short", 60.0)
    for i in range(EXPIRY_SLACK + 10):
        register(store, f"long{i % 3}", 3600.0)
    assert len(store._expiry) <= 2 * 4 + EXPIRY_SLACK + 1
    clock.now += 61.0
    assert run(store.aors()) == ["long0", "long1", "long2"]
    assert run(store.lookup("short")) == []


def test_permanent_bindings_have_no_expiry_entry() -> None:
    clock = Clock()
    store = MemoryLocationStore(clock)

    def permanent(bindings: list[Binding], now: float) -> None:
        bindings[:] = [Binding("sip:p@192.0.2.1")]

    run(store.update("p", permanent))
    for _ in range(EXPIRY_SLACK + 5):
        register(store, "r", 60.0)
    assert len(store._expiry) <= 2 * 2 + EXPIRY_SLACK + 1
    clock.now += 61.0
    assert run(store.aors()) == ["p"]
