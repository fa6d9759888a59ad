"""A small CoreAPI for unit tests of feature modules, with no ProxyCore:
a task.Clock, a dict of counters, hooks kept in lists the test calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed

from sipsuite.proxy.api import CallState
from sipsuite.proxy.core.hooks import HookPoints
from sipsuite.proxy.core.modules import ModuleRegistry
from sipsuite.proxy.net.resolver import Target


class FakeCounters(dict[str, int]):
    def count(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class FakeTx:
    """A server transaction as response_out sees it."""

    def __init__(self, request: Any, source: Any) -> None:
        self.request = request
        self.source = source
        self.call = CallState()


@dataclass
class UacRequest:
    """One core.uac.request() a module made; the test fires ``result``."""

    method: str
    uri: str
    target: Any
    options: dict[str, Any]
    result: Deferred[Any] = field(default_factory=Deferred)


class FakeUAC:
    """api.LocalUAC that sends nothing: the test answers by firing
    ``requests[i].result`` with a Response or None."""

    def __init__(self) -> None:
        self.requests: list[UacRequest] = []

    def request(self, method: str, uri: str, target: Any, **options: Any) -> Deferred[Any]:
        req = UacRequest(method, uri, target, options)
        self.requests.append(req)
        return req.result


class FakeConnection:
    def __init__(self, listener: Any = None) -> None:
        self.closed = False
        self.listener = listener
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


class FakeNet:
    """api.Network over lists: what is sent is recorded, connections are a
    dict the test fills; aliases and the STUN switch are recorded."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.sent: list[tuple[bytes, str, str, int, Any]] = []
        self.connections: dict[tuple[str, int], Any] = {}
        self.aliases: list[tuple[Any, str, int]] = []
        self.stun: Callable[[], bool] | None = None
        self.tap: Any = None
        # (transport, host, port) -> listener name: connections "another worker" holds.
        self.siblings: dict[tuple[str, str, int], str] = {}

    def sibling_holds(self, transport: str, host: str, port: int) -> str | None:
        return self.siblings.get((transport, host, port))

    def listener_named(self, name: str) -> Any:
        return next((li for li in self.listeners if repr(li) == name), None)

    def pick_listener(self, transport: str, host: str, prefer: Any, peer: str | None = None) -> Any:
        return next((li for li in self.listeners if li.transport == transport), None)

    def send(self, data: bytes, transport: str, host: str, port: int, listener: Any,
             name: str = "", connect: bool = True) -> bool:
        self.sent.append((data, transport, host, port, listener))
        return True

    def connection_to(self, host: str, port: int) -> Any:
        conn = self.connections.get((host, port))
        return None if conn is None or getattr(conn, "closed", False) else conn

    def alias(self, conn: Any, host: str, port: int) -> None:
        self.aliases.append((conn, host, port))
        self.connections.setdefault((host, port), conn)

    def set_stun(self, enabled: Callable[[], bool]) -> None:
        self.stun = enabled

    def set_tap(self, tap: Any) -> None:
        self.tap = tap

    def add_tap(self, tap: Any) -> None:
        self.tap = tap

    def remove_tap(self, tap: Any) -> None:
        if self.tap == tap:  # a bound method: a new object at each look-up
            self.tap = None


class FakeCore:
    def __init__(self, config: Any, start: float = 1_800_000_000.0) -> None:
        self.config = config
        self.clock = task.Clock()
        self.clock.advance(start)
        self.stats = FakeCounters()
        self.hooks = HookPoints()
        self.modules = ModuleRegistry(self, self.hooks)
        self.identity = self
        self.own_addresses: set[str] = set()  # is_own_address: the test adds ours
        self.transactions = self
        self.uac = FakeUAC()
        self.net = FakeNet()
        self.dns: dict[str, list[Target]] = {}
        # (host, port) pairs is_myself() says are ours (a None port: any).
        self.myself: set[tuple[str, int | None]] = set()
        # What a RequestContext on this core answered or relayed to.
        self.replies: list[tuple[int, str | None, list[tuple[str, str]]]] = []
        self.relays: list[list[Any]] = []

    def wall(self) -> float:
        return self.clock.seconds()

    def resolve(self, uri: Any) -> Deferred[list[Target]]:
        """An IP URI resolves to itself; a name to what ``self.dns`` says."""
        if uri.host in self.dns:
            return succeed(list(self.dns[uri.host]))
        transport = uri.transport or "udp"
        if not uri.host[:1].isdigit() and not uri.host.startswith("["):
            return succeed([])
        return succeed([Target(transport, uri.host.strip("[]"),
                               uri.port or (5061 if transport == "tls" else 5060))])

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Any:
        return self.clock.callLater(delay, fn, *args)

    def is_myself(self, host: str, port: int | None) -> bool:
        return (host, port) in self.myself or (host, None) in self.myself

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
