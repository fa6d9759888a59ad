"""The public handle of a running sipsuite, for your own Twisted services
(docs/embedding.md).

A user service (``[services] load`` in the config, or your own code beside
an embedded proxy) is given a :class:`Handle`.  What it offers is the whole
public surface, versioned by :data:`API_VERSION`: a change that breaks a
caller raises the version; additions do not.

- ``config``: the running :class:`~sipsuite.config.Config` (read it at use:
  ``sipsuite-ctl cfg set`` replaces it whole);
- ``events``: ``handle.events.subscribe("call.ended", fn)`` (sipsuite.eventbus);
- ``bindings`` and ``users``: the location and subscriber stores;
- ``send_request``: a SIP request from the proxy's own UAC, and its final answer;
- ``relay_sessions()``: the relay sessions: the in-process relay's
  (``twistd sipsuite``) and those the proxy holds on relays elsewhere;
- ``stats()``: what ``sipsuite-ctl stats`` shows.

Every method that touches a store returns a Deferred (Redis may be behind
it) and may fail with ``StoreUnavailable``.  Nothing here blocks the reactor.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer

from sipsuite.eventbus import EVENTS, Event, EventBus, Subscription
from sipsuite.proxy.media.manager import MediaManager
from sipsuite.proxy.registrar.bindings import Binding, StoreUnavailable
from sipsuite.proxy.registrar.location import Subscriber
from sipsuite.proxy.services import EVENTS as EVENTS_KEY
from sipsuite.proxy.services import LOCATION, MEDIA, SUBSCRIBERS

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.rtprelay.service import RelayService
    from sipsuite.sip.message import Response

__all__ = ["API_VERSION", "EVENTS", "Bindings", "Event", "EventBus", "Handle", "StoreUnavailable",
           "Subscription", "Users", "service_factory"]

#: The version of this interface.  1: the first.
API_VERSION = 1

F = TypeVar("F", bound=Callable[..., Any])


def service_factory(name: str | None = None, schema: type | None = None) -> Callable[[F], F]:
    """Declare a factory's section name (``[services.NAME]``, default: its
    module's last name) and the dataclass its section is checked against
    (unknown keys refused by name; without a schema the section must be
    empty)::

        @dataclass(frozen=True)
        class WebhookConfig:
            url: str
            retries: int = 5

        @service_factory("webhook", WebhookConfig)
        def make_service(handle: Handle, config: WebhookConfig) -> IService: ...
    """
    def mark(fn: F) -> F:
        if name is not None:
            fn.service_name = name  # type: ignore[attr-defined]
        if schema is not None:
            if not dataclasses.is_dataclass(schema):
                raise TypeError(f"schema: expected a dataclass, got {schema!r}")
            fn.service_schema = schema  # type: ignore[attr-defined]
        return fn
    return mark


class Bindings:
    """The location store: registered contacts by AOR (``user`` or
    ``user@domain``, as ``sipsuite-ctl ul`` takes them)."""

    def __init__(self, core: ProxyCore) -> None:
        self._core = core

    def _store(self) -> Any:
        return self._core.modules.require(LOCATION)

    def lookup(self, aor: str) -> defer.Deferred[list[dict[str, Any]]]:
        """The current bindings of ``aor`` (static ones too), highest q first:
        dicts with contact, expires (seconds left, None: permanent), q,
        received, user_agent."""
        async def run() -> list[dict[str, Any]]:
            now = self._core.wall()
            return [{"contact": b.contact, "expires": b.remaining(now), "q": b.q,
                     "received": b.received, "user_agent": b.user_agent}
                    for b in await self._store().lookup(aor)]
        return defer.ensureDeferred(run())

    def add(self, aor: str, contact: str, expires: int | None = 3600,
            q: float = 1.0) -> defer.Deferred[bool]:
        """Add or replace (same contact) a binding; fires with True when it replaced one."""
        def change(bindings: list[Binding], now: float) -> bool:
            new = Binding(contact, expires=None if expires is None else now + expires, q=q,
                          updated=now)
            for i, b in enumerate(bindings):
                if b.contact == contact:
                    bindings[i] = new
                    return True
            bindings.append(new)
            return False
        return defer.ensureDeferred(self._store().store.update(aor, change))

    def remove(self, aor: str, contact: str | None = None) -> defer.Deferred[int]:
        """Remove one contact, or every binding of ``aor``; fires with how many went."""
        return defer.ensureDeferred(self._store().remove(aor, contact))


class Users:
    """The subscriber store (digest credentials): ``sipsuite-ctl user``."""

    def __init__(self, core: ProxyCore) -> None:
        self._core = core

    def _store(self) -> Any:
        return self._core.modules.require(SUBSCRIBERS)

    def exists(self, user: str) -> defer.Deferred[bool]:
        async def run() -> bool:
            return await self._store().get(user) is not None
        return defer.ensureDeferred(run())

    def add(self, user: str, password: str) -> defer.Deferred[bool]:
        """Add ``user`` for ``[auth] realm``; False when it exists already."""
        sub = Subscriber.from_password(user, self._core.config.auth.realm, password)
        return defer.ensureDeferred(self._store().add(sub))

    def remove(self, user: str) -> defer.Deferred[bool]:
        return defer.ensureDeferred(self._store().remove(user))

    def list(self) -> defer.Deferred[list[str]]:
        async def run() -> list[str]:
            return [s.user for s in await self._store().list()]
        return defer.ensureDeferred(run())


class Handle:
    """What a user service may use of the running suite (see the module's text)."""

    api_version = API_VERSION

    def __init__(self, core: ProxyCore, relay: RelayService | None = None,
                 registry: RpcRegistry | None = None) -> None:
        self._core = core
        self._relay = relay
        self._registry = registry
        self.bindings = Bindings(core)
        self.users = Users(core)

    @property
    def config(self) -> Config:
        return self._core.config

    @property
    def events(self) -> EventBus:
        return self._core.modules.require(EVENTS_KEY).bus

    @property
    def reactor(self) -> Any:
        return self._core.clock

    def send_request(self, method: str, uri: str, *, headers: Sequence[tuple[str, str]] = (),
                     from_uri: str | None = None,
                     timeout: float | None = None) -> defer.Deferred[Response | None]:
        """Send ``method`` to ``uri`` (resolved by RFC 3263, as a branch
        would be) as a client transaction of the proxy's own UAC; fires
        with the final answer (``.status``, ``.reason``, ``.headers``), or
        None: no answer in time, no target, a transport error."""
        async def run() -> Response | None:
            from sipsuite.sip.uri import URI

            try:
                targets = await self._core.resolve(URI.parse(uri))
            except Exception:  # noqa: BLE001 - a bad URI or a failed lookup: no answer
                return None
            if not targets:
                return None
            return await self._core.uac.request(method, uri, targets[0], headers=headers,
                                                from_uri=from_uri, timeout=timeout)
        return defer.ensureDeferred(run())

    def relay_sessions(self) -> list[dict[str, Any]]:
        """The relay sessions: the in-process relay's (``twistd sipsuite``),
        with tags and legs, then those the proxy's media module holds on
        relays in other processes (call_id, from_tag, relay, created)."""
        out: list[dict[str, Any]] = []
        relay = self._relay
        if relay is not None:
            for s in relay.table:
                out.append({
                    "call_id": s.call_id, "from_tag": s.from_tag, "to_tag": s.to_tag,
                    "created": s.created,
                    "legs": [{"port": leg.port, "latched": _addr(leg.latched),
                              "packets": leg.stats.packets} for leg in (s.caller, s.callee)],
                })
        media = self._core.modules.get(MEDIA)
        if isinstance(media, MediaManager):
            out += media.sessions.sessions()
        return out

    def stats(self) -> defer.Deferred[dict[str, Any]]:
        """What ``sipsuite-ctl stats`` shows."""
        from sipsuite.ops.stats import collect_stats

        return defer.ensureDeferred(collect_stats(self._core, self._registry))


def _addr(addr: Any) -> str | None:
    return None if addr is None else f"{addr[0]}:{addr[1]}"


def check_section(schema: type | None, raw: dict[str, Any], where: str) -> Any:
    """A [services.NAME] table checked against the factory's dataclass:
    the instance, or ValueError naming the key (``where`` prefixes it)."""
    if schema is None:
        if raw:
            key = next(iter(raw))
            raise ValueError(f"{where}.{key}: unknown key; the service declares no settings")
        return None
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in raw:
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "expected one of " + ", ".join(fields)
            raise ValueError(f"{where}.{key}: unknown key; {hint}")
    hints = typing.get_type_hints(schema)
    values = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}.{name}: required, not set")
            continue
        value = raw[name]
        validator = f.metadata.get("validator")
        if validator is not None:
            from sipsuite.config.values import Invalid

            try:
                value = validator(value)
            except Invalid as e:
                raise ValueError(f"{where}.{name}: expected {e.expected}, got {e.got!r}") from None
        elif not _fits(value, hints.get(name, Any)):
            raise ValueError(f"{where}.{name}: expected {_show_type(hints.get(name))},"
                             f" got {value!r}")
        values[name] = value
    return schema(**values)


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, Sequence, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args \
            else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _show_type(hint: Any) -> str:
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}
    if hint in names:
        return names[hint]
    return str(hint).replace("typing.", "")
