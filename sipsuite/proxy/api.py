"""What a module may use of the proxy core (docs/architecture.md, "The proxy inside").

A feature module (accounting, antiflood, auth, ...) is handed a :class:`CoreAPI`
in its ``setup(core, config)``, registers its hooks through ``core.hooks`` and
finds other modules' services through ``core.modules``; it never reaches into
the core's tables, transport or routing.  :class:`ProxyCore` implements this
Protocol, so does the tests' ``FakeCore``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from sipsuite.config import Config
    from sipsuite.proxy.core.context import Branch
    from sipsuite.proxy.net.listener import Listener, Source
    from sipsuite.proxy.net.resolver import Target
    from sipsuite.proxy.routing.base import RequestContext
    from sipsuite.sip.message import Request, Response

__all__ = [
    "CallState", "Connection", "CoreFigures", "CoreAPI", "Counters", "Hooks", "Identity", "LocalUAC", "Module",
    "ModuleSpec", "Network", "Registry", "ServerTxView", "ServiceKey", "Timer",
    "TransactionView", "UAC_BRANCH",
]

T = TypeVar("T")


class Timer(Protocol):
    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class Identity(Protocol):
    """Who "we" are (the core's RequestChecks)."""

    def is_myself(self, host: str, port: int | None) -> bool: ...
    def is_local_domain(self, host: str) -> bool: ...
    def is_trusted(self, host: str) -> bool: ...
    def is_own_address(self, host: str) -> bool: ...   # a listener's address, never a domain


class Connection(Protocol):
    """A TCP/TLS connection, as a module may use it (send on a flow, alias it)."""

    closed: bool
    listener: Listener

    def send(self, data: bytes) -> bool: ...


class Network(Protocol):
    """What a module may do with the transport layer: no tables handed out."""

    @property
    def listeners(self) -> Sequence[Listener]: ...
    def listener_named(self, name: str) -> Listener | None: ...
    def pick_listener(self, transport: str, host: str, prefer: Listener | None,
                      peer: str | None = None) -> Listener | None: ...
    def send(self, data: bytes, transport: str, host: str, port: int, listener: Listener,
             name: str = "", connect: bool = True) -> bool: ...
    def connection_to(self, host: str, port: int) -> Any: ...   # Connection | None; aliases too
    def alias(self, conn: Any, host: str, port: int) -> None: ...
    # Worker processes: another worker's connection to host:port (its
    # listener's name), which send() reaches through that worker; else None.
    def sibling_holds(self, transport: str, host: str, port: int) -> str | None: ...
    def set_stun(self, enabled: Callable[[], bool]) -> None: ...  # RFC 5626 8 answers
    # Every SIP message in (parsed) and out: tap(incoming, data, transport,
    # listener, remote host, remote port); None removes it.  add_tap/remove_tap:
    # one of several (the flight recorder, the HEP export).
    def set_tap(self, tap: Callable[[bool, bytes, str, Listener, str, int], None] | None) -> None: ...
    def add_tap(self, tap: Callable[[bool, bytes, str, Listener, str, int], None]) -> None: ...
    def remove_tap(self, tap: Callable[[bool, bytes, str, Listener, str, int], None]) -> None: ...


#: Via branch prefix of the requests the local UAC sends (keep-alives,
#: probes); begins with the core's BRANCH_TAG, so a late answer is known as ours.
UAC_BRANCH = "z9hG4bKspsu"


class LocalUAC(Protocol):
    """Requests the proxy sends on its own (keep-alives, probes), run as
    client transactions of the core (proxy/core/uac.py)."""

    def request(self, method: str, uri: str, target: Target, *,
                listener: Listener | None = None,       # None: pick_listener(target)
                from_uri: str | None = None,            # None: sip:sipsuite@SENT-BY
                headers: Sequence[tuple[str, str]] = (),
                timeout: float | None = None,           # give up sooner than timer F
                retransmit: bool = True,                # UDP: T1 doubling to T2 (17.1.2.2)
                connect: bool = True,                   # False: existing connection only
                rport: bool = False) -> Deferred[Response | None]: ...
    # Fires with the first final answer, or None: timeout, timer F, transport
    # error, no listener.  Never errbacks.


class TransactionView(Protocol):
    def counts(self) -> tuple[int, int]: ...   # (server, client)
    def in_flight(self) -> int: ...


class Counters(Protocol):
    """The core's named counters ("drop.flood", "accounting.records")."""

    def count(self, name: str, n: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class CoreFigures:
    """A snapshot of the core's own counters (the ``stats`` RPC, /metrics)."""

    requests: int
    requests_by_method: Mapping[str, int]
    responses: int
    replies_by_class: Mapping[str, int]  # "1xx".."6xx": answers sent upstream
    retransmissions: int
    transactions: tuple[int, int]  # (server, client)
    drops: Mapping[str, int]  # by cause; the transport's as "transport.<cause>"
    uptime: float  # seconds, on the core's clock


class CallState:
    """Per-transaction state shared by the core, the script and the modules.

    Created with the server transaction (so response_out sees it on the 100
    Trying, before routing starts).  Each module keeps its own typed state in
    it (``call.get(AccState)``), made on first use and gone with the
    transaction, so no module needs a table of its own keyed by transaction.
    """

    __slots__ = ("record_route", "rr_params", "upstream_fix", "_ext")

    def __init__(self) -> None:
        self.record_route = False
        self.rr_params: list[str] = []
        # Called with each answer of this transaction just before it goes
        # upstream, local ones included (the uac module gives the caller
        # its own From and To back); one per call, None for most.
        self.upstream_fix: Callable[[Response], None] | None = None
        self._ext: dict[type, object] = {}

    def get(self, cls: type[T]) -> T:
        """The state of type ``cls``, made with ``cls()`` on first use."""
        obj = self._ext.get(cls)
        if obj is None:
            obj = self._ext[cls] = cls()
        return obj  # type: ignore[return-value]

    def peek(self, cls: type[T]) -> T | None:
        return self._ext.get(cls)  # type: ignore[return-value]

    def put(self, obj: object) -> None:
        self._ext[type(obj)] = obj


class ServerTxView(Protocol):
    """What response_out sees of a server transaction."""

    @property
    def request(self) -> Request: ...
    @property
    def source(self) -> Source: ...
    @property
    def call(self) -> CallState: ...


RequestInHook = Callable[["Request", "Source"], bool]
RequestReceivedHook = Callable[["RequestContext"], None]
BranchOutHook = Callable[["RequestContext", "Branch"], None]
ResponseInHook = Callable[["RequestContext", "Branch", "Response"], None]
ResponseOutHook = Callable[[ServerTxView, "Response"], None]
# (ctx, action, detail): what the routing did (ctx.reply, relay, drop,
# record_route, lookup, auth_check...) and what a module noted (ctx.note).
RoutingActionHook = Callable[["RequestContext", str, str], None]


class Hooks(Protocol):
    """Hook registration.  Hooks run in module set-up order; one
    that raises costs a warning line and the core goes on (fail-open)."""

    def on_request_in(self, fn: RequestInHook) -> None: ...
    def on_request_received(self, fn: RequestReceivedHook) -> None: ...
    def on_branch_out(self, fn: BranchOutHook) -> None: ...
    def on_response_in(self, fn: ResponseInHook) -> None: ...
    def on_response_out(self, fn: ResponseOutHook) -> None: ...
    def on_routing_action(self, fn: RoutingActionHook) -> None: ...


class ServiceKey(Generic[T]):
    """A typed name for a service a module offers (``AUTH: ServiceKey[AuthService]``):
    mypy refuses a Protocol class as a ``type[T]`` argument, a typed key does not."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ServiceKey({self.name!r})"


class Module(Protocol):
    name: ClassVar[str]

    def start(self) -> None: ...
    def reconfigure(self, old: Config, new: Config) -> None: ...
    def stats(self) -> Mapping[str, object] | Deferred[Mapping[str, object]]: ...
    def stop(self) -> Deferred[None] | None: ...


class Registry(Protocol):
    """What a module sees of the module registry."""

    def provide(self, key: ServiceKey[T], impl: T) -> None: ...
    def get(self, key: ServiceKey[T]) -> T | None: ...
    def require(self, key: ServiceKey[T]) -> T: ...
    def by_name(self, name: str) -> Module | None: ...


class CoreAPI(Protocol):
    @property
    def config(self) -> Config: ...
    # The current config, replaced whole by cfg set: read it at use.

    @property
    def clock(self) -> IReactorTime: ...

    def wall(self) -> float: ...

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Timer: ...

    @property
    def identity(self) -> Identity: ...
    @property
    def net(self) -> Network: ...
    def resolve(self, uri: Any) -> Deferred[list[Target]]: ...
    # RFC 3263 for a URI: the same path the core's branches take.
    @property
    def transactions(self) -> TransactionView: ...
    @property
    def uac(self) -> LocalUAC: ...
    @property
    def stats(self) -> Counters: ...
    @property
    def hooks(self) -> Hooks: ...
    @property
    def modules(self) -> Registry: ...


class ModuleSpec(Protocol):
    """What a feature module exports as ``SPEC``."""

    name: str
    requires: tuple[ServiceKey[Any], ...]
    runtime_switch: bool  # enabled() may change with cfg set

    def enabled(self, config: Config) -> bool: ...
    def setup(self, core: CoreAPI, config: Config) -> Module: ...
