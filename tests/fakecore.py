"""A small CoreAPI for unit tests of feature modules, with no ProxyCore:
a task.Clock, a dict of counters, hooks kept in lists the test calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import task

from sipsuite.proxy.api import CallState
from sipsuite.proxy.core.hooks import HookPoints
from sipsuite.proxy.core.modules import ModuleRegistry


class FakeCounters(dict[str, int]):
    def count(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class FakeTx:
    """A server transaction as response_out sees it."""

    def __init__(self, request: Any, source: Any) -> None:
        self.request = request
        self.source = source
        self.call = CallState()


class FakeCore:
    def __init__(self, config: Any, start: float = 1_800_000_000.0) -> None:
        self.config = config
        self.clock = task.Clock()
        self.clock.advance(start)
        self.stats = FakeCounters()
        self.hooks = HookPoints()
        self.modules = ModuleRegistry(self, self.hooks)  # type: ignore[arg-type]
        self.identity = self
        self.own_addresses: set[str] = set()  # is_own_address: the test adds ours
        self.transactions = self

    def wall(self) -> float:
        return self.clock.seconds()

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Any:
        return self.clock.callLater(delay, fn, *args)

    def is_myself(self, host: str, port: int | None) -> bool:
        return False

    def is_local_domain(self, host: str) -> bool:
        return False

    def is_trusted(self, host: str) -> bool:
        return False

    def is_own_address(self, host: str) -> bool:
        return host.lower() in self.own_addresses

    def request_in(self, req: Any, source: Any) -> bool:
        """Run the request_in hooks as the core does: False = dropped."""
        for _, hook in self.hooks.request_in:
            if hook(req, source) is False:
                return False
        return True

    def counts(self) -> tuple[int, int]:
        return 0, 0

    def in_flight(self) -> int:
        return 0

    def response_out(self, tx: Any, resp: Any) -> None:
        for _, hook in self.hooks.response_out:
            hook(tx, resp)

    def response_in(self, ctx: Any, branch: Any, resp: Any) -> None:
        for _, hook in self.hooks.response_in:
            hook(ctx, branch, resp)
