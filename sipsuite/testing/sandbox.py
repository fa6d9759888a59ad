"""Dry runs on a running proxy (``sipsuite-ctl route explain``): a sandbox
core built from the live one's config and routing class, whose stores read
the live ones and write to a throwaway overlay, and whose network captures.

What the sandbox shares with the live core, read-only: the registered
bindings and the subscribers (Redis or memory), the nonce key and the
nonce-count table of the auth module (a replayed nc is refused as live, an
accepted one is not written back), the flow-token key, the dispatcher's
destination states and round-robin position (copied), the shared variables
(``self.shv``), the resolver, the wall clock.  What it has of its own,
thrown away after the message: the transactions, the counters, the bindings
a REGISTER stores, the accepted nonce counts, the shv writes, a new
instance of the routing class.  The media relay is not asked (its offers
would create sessions): when the live proxy drives one, the sandbox's
media module answers from sipsuite/testing/media.py (a TEST-NET address),
so the steps show the offers the live proxy would make.  Left out, so that
nothing leaves: a Redis connection of its own, antiflood (a banned source
is reported from the live table instead), NAT keep-alives and accounting.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet import task
from twisted.internet.defer import Deferred

from sipsuite.proxy.build import BUILTIN_MODULES
from sipsuite.proxy.core.proxy import ProxyCore
from sipsuite.proxy.modules import auth
from sipsuite.proxy.modules.dispatcher import dispatcher
from sipsuite.proxy.registrar import outbound
from sipsuite.proxy.registrar.bindings import Binding, current
from sipsuite.proxy.registrar.location import Subscriber
from sipsuite.proxy.registrar.redis.keys import to_bytes
from sipsuite.proxy.registrar.subscribers import SubscribersSpec
from sipsuite.proxy.registrar.usrloc import LocationSpec
from sipsuite.proxy.routing.base import Routing
from sipsuite.proxy.services import LOCATION, MEDIA, SHV, SUBSCRIBERS
from sipsuite.sip.digest import NonceCounter
from sipsuite.testing.kit import OfflineProxy, via_source
from sipsuite.testing.media import OfflineMediaSpec
from sipsuite.testing.network import parse_target
from sipsuite.testing.outcome import Outcome
from sipsuite.testing.recorder import Step
from sipsuite.testing.report import explanation

__all__ = ["OverlayLocationStore", "dry_run"]

T = TypeVar("T")

#: How long a dry run waits for a routing hook that awaits (a Redis lookup).
WAIT = 3.0  # under sipsuite-ctl's default timeout (5 s)


class OverlayLocationStore:
    """Reads the live store; what is written stays here."""

    def __init__(self, live: Any, clock: Callable[[], float]) -> None:
        self.live = live
        self.clock = clock
        self.own: dict[str, list[Binding]] = {}

    async def _held(self, aor: str) -> list[Binding]:
        if aor in self.own:
            return current(self.own[aor], self.clock())
        return [Binding.from_dict(b.to_dict()) for b in await self.live.lookup(aor)]

    async def lookup(self, aor: str) -> list[Binding]:
        return await self._held(aor)

    async def update(self, aor: str, change: Callable[[list[Binding], float], T]) -> T:
        work = await self._held(aor)
        now = self.clock()
        result = change(work, now)
        self.own[aor] = current(work, now)
        return result

    async def remove(self, aor: str, contact: str | None = None) -> int:
        held = await self._held(aor)
        keep = [] if contact is None else [b for b in held if b.contact != contact]
        self.own[aor] = keep
        return len(held) - len(keep)

    async def aors(self) -> list[str]:
        live = set(await self.live.aors())
        return sorted((live | set(self.own)) - {a for a, b in self.own.items() if not b})

    async def nat_aors(self) -> list[str]:
        return list(await self.live.nat_aors())


class ReadOnlySubscribers:
    """The live subscriber store, for reading."""

    def __init__(self, live: Any) -> None:
        self.live = live

    async def get(self, user: str) -> Subscriber | None:
        return await self.live.get(user)

    async def list(self) -> list[Subscriber]:
        return await self.live.list()

    async def add(self, sub: Subscriber) -> bool:
        return False

    async def replace(self, sub: Subscriber) -> bool:
        return False

    async def remove(self, user: str) -> bool:
        return False


class OverlayShv:
    """The live shared variables, for reading; a write stays here (an
    incr counts from the live value)."""

    def __init__(self, live: Any) -> None:
        self.live = live
        self.own: dict[str, Any] = {}
        self.gone: set[str] = set()

    async def get(self, name: str, default: Any = None) -> Any:
        if name in self.own:
            return self.own[name]
        if name in self.gone:
            return default
        return await self.live.get(name, default)

    async def set(self, name: str, value: Any) -> None:
        self.own[name] = value
        self.gone.discard(name)

    async def incr(self, name: str, by: int = 1) -> int:
        value = int(await self.get(name, 0)) + by
        self.own[name] = value
        return value

    async def delete(self, name: str) -> bool:
        had = await self.get(name) is not None
        self.own.pop(name, None)
        self.gone.add(name)
        return had

    async def items(self) -> dict[str, Any]:
        merged = {k: v for k, v in (await self.live.items()).items() if k not in self.gone}
        merged.update(self.own)
        return merged


class _Provide:
    """A module spec that only provides a service (no module of its own)."""

    requires: tuple[Any, ...] = ()
    runtime_switch = False

    def __init__(self, name: str, key: Any, impl: Any) -> None:
        self.name, self.key, self.impl = name, key, impl

    def enabled(self, config: Any) -> bool:
        return True

    def setup(self, core: Any, config: Any) -> Any:
        core.modules.provide(self.key, self.impl)
        return _NoModule(self.name)


class _NoModule:
    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        pass

    def reconfigure(self, old: Any, new: Any) -> None:
        pass

    def stats(self) -> Mapping[str, object]:
        return {}

    def stop(self) -> None:
        pass


class OverlayNonceCounter(NonceCounter):
    """A nonce count the live table has seen is refused as it would be
    there; an accepted one is remembered here only."""

    __slots__ = ("live",)

    def __init__(self, live: NonceCounter) -> None:
        super().__init__()
        self.live = live

    def accept(self, nonce: str, nc: str, expires_at: float, now: float) -> bool:
        seen = self.live._entries.get(nonce)
        if seen is not None and nc.isalnum() and len(nc) == 8:
            try:
                if int(nc, 16) <= seen[0]:
                    return False
            except ValueError:
                return False
        return super().accept(nonce, nc, expires_at, now)


class ReadOnlyRedisNonceCounter:
    """Worker processes keep the nonce counts in Redis: a dry run reads the
    highest accepted (GET) and never raises it."""

    def __init__(self, live: Any) -> None:
        self.conn = live.conn
        self.prefix: bytes = live._prefix

    async def accept(self, nonce: str, nc: str, expires_at: float, now: float) -> bool:
        if len(nc) != 8 or not all(c in "0123456789abcdefABCDEF" for c in nc):
            return False
        count = int(nc, 16)
        if count < 1 or expires_at <= now:
            return False
        seen = await self.conn.call("GET", self.prefix + to_bytes(nonce))
        return seen is None or int(seen) < count


class _Fixed:
    """A module spec that sets up what a function makes."""

    def __init__(self, spec: Any, after: Callable[[Any], None]) -> None:
        self.spec = spec
        self.name = spec.name
        self.requires = spec.requires
        self.runtime_switch = spec.runtime_switch
        self.after = after

    def enabled(self, config: Any) -> bool:
        return bool(self.spec.enabled(config))

    def setup(self, core: Any, config: Any) -> Any:
        module = self.spec.setup(core, config)
        self.after(module)
        return module


def sandbox_modules(live: ProxyCore) -> list[Any]:
    """The module specs of a sandbox of ``live`` (see the module's docstring)."""
    location = live.modules.require(LOCATION)
    subscribers = live.modules.require(SUBSCRIBERS)
    live_auth = live.modules.by_name("auth")
    live_outbound = live.modules.by_name("outbound")
    live_ds = live.modules.by_name("dispatcher")

    def share_auth(module: Any) -> None:
        module.shared_counter = None
        if live_auth is not None:
            module.nonces = live_auth.nonces  # type: ignore[attr-defined]
            module.counter = OverlayNonceCounter(live_auth.counter)  # type: ignore[attr-defined]
            shared = getattr(live_auth, "shared_counter", None)
            if shared is not None:
                module.shared_counter = ReadOnlyRedisNonceCounter(shared)

    def share_tokens(module: Any) -> None:
        if live_outbound is not None:
            module.tokens = live_outbound.tokens  # type: ignore[attr-defined]

    def copy_dispatcher(module: Any) -> None:
        if live_ds is not None:
            module.sets = copy.deepcopy(live_ds.sets)  # type: ignore[attr-defined]
            module.by_uri = {}
            for dests in module.sets.values():
                for d in dests:
                    module.by_uri.setdefault(d.uri, []).append(d)
            module.rr = dict(live_ds.rr)  # type: ignore[attr-defined]

    live_shv = live.modules.get(SHV)
    shv = getattr(live_shv, "inner", live_shv)  # the kit's recording wrapper, if any
    instead: dict[str, Any] = {
        # Left out: they reach the network or count what they see.
        "redis": None, "antiflood": None, "natping": None, "accounting": None,
        # A dry run is no call: the user services' subscribers hear nothing of it.
        "events": None,
        "shv": _Provide("shv", SHV, OverlayShv(shv)) if shv is not None else None,
        "location": LocationSpec(OverlayLocationStore(location.store, live.wall)),
        "subscribers": SubscribersSpec(ReadOnlySubscribers(subscribers)),
        "outbound": _Fixed(outbound.SPEC, share_tokens),
        "auth": _Fixed(auth.SPEC, share_auth),
        "media": OfflineMediaSpec(lambda config: live.modules.get(MEDIA) is not None),
        "dispatcher": _Fixed(dispatcher.SPEC, copy_dispatcher),
    }
    # In the proxy's own order; a module not named above (scanners,
    # registrar, nat, and any added later) is set up as the live proxy has it.
    specs = [instead[spec.name] if spec.name in instead else spec for spec in BUILTIN_MODULES]
    return [spec for spec in specs if spec is not None]


def _core_of(live: ProxyCore) -> type[ProxyCore]:
    """A ProxyCore class whose wall clock is ``live``'s (nonce ages and
    binding expiries are judged as the live proxy judges them) and whose
    routing is a new instance of ``live``'s routing class (the one running,
    reloaded or not; its module is not imported again)."""
    wall = live.wall
    routing_class = type(live.routing)

    class SandboxCore(ProxyCore):
        def wall(self) -> float:
            return wall()

        def make_routing(self) -> Routing:
            return routing_class(self)

    return SandboxCore


class Sandbox(OfflineProxy):
    """An OfflineProxy over a live core's config, stores and routing class."""

    def __init__(self, live: ProxyCore) -> None:  # built by _build, not by OfflineProxy.__init__
        self.live = live
        # A clock of its own that never moves: the sandbox's transactions
        # never retransmit nor time out.  The wall clock is the live one
        # (bindings' expiries, nonce ages).
        self.clock = task.Clock()
        self.clock.advance(live.clock.seconds())
        self._dns = None
        self.core = self._build(live.config, resolver=live.resolver,
                                modules=sandbox_modules(live), core_class=_core_of(live))
        self.setup(None, None)

    def _build(self, config: Any, resolver: Any = None, **options: Any) -> ProxyCore:
        from sipsuite.proxy.build import build_core
        from sipsuite.testing.network import CaptureNet

        core = build_core(config, self.clock, resolver=resolver, transport_class=CaptureNet,
                          **options)
        self._wire(core)
        return core

    def close(self) -> None:
        close = getattr(self.core.routing, "close", None)
        if callable(close):
            close()
        self.core.stop()


def _banned(live: ProxyCore, host: str) -> bool:
    flood = live.modules.by_name("antiflood")
    table = getattr(flood, "table", None)
    if table is None:
        return False
    return any(addr == host for addr, _ in table.banned(live.clock.seconds()))


async def dry_run(live: ProxyCore, message: str, source: str | None, reactor: Any,
                  wire: bool = False) -> Mapping[str, Any]:
    """Route ``message`` from ``source`` (None: its top Via) through a
    sandbox of ``live``; the explanation (report.explanation) of what the
    live proxy would do."""
    source = source or via_source(message)
    host = parse_target(source).host
    box = Sandbox(live)
    try:
        if _banned(live, host):
            return {"decision": "dropped", "sent": [], "avps": {}, "vars": {},
                    "steps": [{"hook": "request_in", "action": "drop",
                               "detail": f"{host} is banned (antiflood)", "where": "", "by": ""}]}
        marks = box.marks()
        box.receive(message, source=source)
        waited = 0.0
        while box.awaiting() and waited < WAIT:
            # A hook awaits a live store (Redis): let the reactor answer it.
            d: Deferred[None] = task.deferLater(reactor, 0.02, lambda: None)
            await d
            waited += 0.02
        outcome: Outcome = box.outcome(marks)
        if box.awaiting():
            outcome.steps.append(Step("request_route", "timeout",
                                      f"still routing after {WAIT:.0f} s"))
        return explanation(outcome, wire)
    finally:
        box.close()
