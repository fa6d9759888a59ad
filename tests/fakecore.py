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


class FakeNet:
    """The transport as a module sees it (api.Network): listeners and
    connections the test puts in, aliases and the STUN switch recorded."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.connections: dict[tuple[str, int], Any] = {}
        self.aliases: list[tuple[Any, str, int]] = []
        self.stun: Callable[[], bool] | None = None

    def listener_named(self, name: str) -> Any:
        return next((li for li in self.listeners if repr(li) == name), None)

    def connection_to(self, host: str, port: int) -> Any:
        return self.connections.get((host, port))

    def alias(self, conn: Any, host: str, port: int) -> None:
        self.aliases.append((conn, host, port))

    def set_stun(self, enabled: Callable[[], bool]) -> None:
        self.stun = enabled


class FakeCore:
    def __init__(self, config: Any, start: float = 1_800_000_000.0) -> None:
        self.config = config
        self.clock = task.Clock()
        self.clock.advance(start)
        self.stats = FakeCounters()
        self.hooks = HookPoints()
        self.modules = ModuleRegistry(self, self.hooks)  # type: ignore[arg-type]
        self.identity = self
        self.transactions = self
        self.net = FakeNet()
        # (host, port) pairs is_myself() says are ours (a None port: any).
        self.myself: set[tuple[str, int | None]] = set()
        # What a RequestContext on this core answered or relayed to.
        self.replies: list[tuple[int, str | None, list[tuple[str, str]]]] = []
        self.relays: list[list[Any]] = []

    def wall(self) -> float:
        return self.clock.seconds()

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Any:
        return self.clock.callLater(delay, fn, *args)

    def is_myself(self, host: str, port: int | None) -> bool:
        return (host, port) in self.myself or (host, None) in self.myself

    def is_local_domain(self, host: str) -> bool:
        return False

    def is_trusted(self, host: str) -> bool:
        return False

    def counts(self) -> tuple[int, int]:
        return 0, 0

    def in_flight(self) -> int:
        return 0

    def response_out(self, tx: Any, resp: Any) -> None:
        for _, hook in self.hooks.response_out:
            hook(tx, resp)

    def request_received(self, ctx: Any) -> None:
        for _, hook in self.hooks.request_received:
            hook(ctx)
            if ctx.handled:
                return

    # -- what RequestContext calls on its core --------------------------------
    def reply(self, ctx: Any, status: int, reason: str | None,
              headers: list[tuple[str, str]]) -> None:
        self.replies.append((status, reason, headers))

    def relay(self, ctx: Any, targets: list[Any]) -> None:
        self.relays.append(targets)
