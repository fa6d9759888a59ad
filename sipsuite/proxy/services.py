"""The services feature modules offer the routing script.

A module provides its service under a key in ``setup()``
(``core.modules.provide(AUTH, self)``); the script asks
``self.modules.get(AUTH)``: ``None`` means the module is not set up, the
twin of a kamailio.cfg ``#!ifdef WITH_AUTH`` that is off.  Each Protocol
names what the script and the other modules use, nothing more; the module
behind it may offer more to its own RPCs and tests.

The keys are declared here, all in one place, so that a module and its users
meet on an interface and never import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sipsuite.proxy.api import ServiceKey

if TYPE_CHECKING:
    from sipsuite.eventbus import EventBus
    from sipsuite.proxy.modules.dispatcher.dispatcher import Attempt
    from sipsuite.proxy.net.listener import Source
    from sipsuite.proxy.net.resolver import Target
    from sipsuite.proxy.registrar.bindings import Binding
    from sipsuite.proxy.registrar.location import LocationStore, SubscriberStore
    from sipsuite.proxy.routing.base import Destination, RequestContext
    from sipsuite.sip.message import Request, Response
    from sipsuite.sip.uri import URI

__all__ = [
    "AUTH", "DISPATCHER", "EVENTS", "FLOWS", "LOCATION", "MEDIA", "NAT", "NATPING", "REDIS",
    "REGISTRAR", "SHV", "SUBSCRIBERS", "UAC", "WORKER_LINK", "AuthService", "EventsService",
    "FlowService", "LoadBalancerService", "LocationService", "MediaService", "NatPingService",
    "NatService", "RegistrarService", "SharedVars", "UacService", "WorkerLinkService",
]


class LocationService(Protocol):
    """usrloc: the bindings of a user, static ones from the config first.
    Every call may raise StoreUnavailable (Redis did not answer in time)."""

    @property
    def store(self) -> LocationStore: ...
    # The registered bindings (memory or Redis), without the static ones:
    # what the registrar writes and the ul.* RPCs show.

    async def lookup(self, user: str) -> list[Binding]: ...
    # Static then registered bindings, highest q first (ctx.lookup).
    async def remove(self, aor: str, contact: str | None = None) -> int: ...
    # One contact (compared as URIs) or, with None, every binding; how many went.
    async def nat_aors(self) -> list[str]: ...
    # The AORs holding a binding registered from behind NAT (keep-alives).


class RegistrarService(Protocol):
    """registrar: save("location") for a REGISTER, answered here."""

    async def save(self, ctx: RequestContext) -> None: ...
    def on_nat_binding(self, fn: Callable[[str], None]) -> None: ...
    # fn(aor) for each REGISTER that stores a binding from behind NAT.


class FlowService(Protocol):
    """outbound (RFC 5626): flow tokens and the way to a registered flow."""

    async def destinations(self, aor: str,
                           bindings: list[Binding]) -> list[tuple[Binding, Destination]]: ...
    # Each binding with where it is reached; outbound bindings whose flow
    # failed are left out (and removed from LOCATION).
    def flow_uri(self, source: Source) -> str: ...
    # The Route URI naming this node and the flow a REGISTER came over.
    def registered(self, source: Source, contacts: list[str]) -> None: ...
    # TCP/TLS aliasing of a registered connection.


class AuthService(Protocol):
    """auth / auth_db: digest challenges and checks (ctx.auth_check,
    ctx.consume_credentials)."""

    async def check(self, ctx: RequestContext, user: str, *, proxy: bool) -> bool: ...
    # True for valid credentials of user; else ctx was answered (401/407, 403, 500).
    def consume(self, ctx: RequestContext, *, proxy: bool) -> None: ...


class NatService(Protocol):
    """nathelper: is the sender behind NAT, and where does a dialog go."""

    def detect(self, ctx: RequestContext) -> bool: ...
    # route[NATDETECT]: True when behind NAT; then the Contact gets its
    # alias and our Record-Route ";nat=yes" (ctx.call.rr_params).
    def behind_nat(self, ctx: RequestContext) -> bool: ...  # what detect() found
    def dialog_target(self, req: Request) -> Target | None: ...  # handle_ruri_alias
    def reply_alias(self, resp: Response, sent_to: Target) -> bool: ...
    # set_contact_alias on a NAT'ed callee's 1xx/2xx: where we reached it.


class NatPingService(Protocol):
    """nathelper's keep-alives: bindings behind NAT, pinged on a period."""

    def track(self, aor: str) -> None: ...
    # The registrar stored a NAT'ed binding of ``aor``: ping it from the
    # next round on (the module finds those of before a restart itself).


class MediaService(Protocol):
    """rtpproxy_manage: media anchored on a relay."""

    @property
    def mode(self) -> str: ...  # [media] relay: "nat" or "always"

    async def offer(self, ctx: RequestContext) -> bool: ...
    # An initial request's offer: True when relayed; an INVITE without SDP
    # that needs the relay becomes a late offer (on_reply relays the 2xx's).
    async def in_dialog(self, ctx: RequestContext) -> None: ...  # BYE/ACK/PRACK/re-INVITE/UPDATE
    def on_reply(self, ctx: RequestContext, resp: Response) -> Coroutine[Any, Any, Any] | None: ...
    # The relay work of a 1xx/2xx as a coroutine, or None (most answers).
    async def end_call(self, ctx: RequestContext) -> None: ...  # D; idempotent
    def relayed(self, ctx: RequestContext) -> bool: ...  # on the relay, not ended yet


class LoadBalancerService(Protocol):
    """dispatcher: destination sets, algorithms, failover (ds_select_dst,
    ds_next_dst).  The module counts calls for algorithm 10 from the answers
    itself; a BYE's end of the call comes from the script."""

    def relay(self, ctx: RequestContext, setid: int, alg: int | str = 4, limit: int = 0,
              rewrite_uri: bool = False) -> bool: ...
    def next(self, ctx: RequestContext, response: Response,
             codes: Collection[int] = ...) -> bool: ...
    def attempt(self, ctx: RequestContext) -> Attempt | None: ...  # .current: tried now
    def call_ended(self, call_id: str) -> None: ...
    def on_reply(self, ctx: RequestContext, response: Response) -> None: ...  # deprecated no-op


class WorkerLinkService(Protocol):
    """A worker process's line to its supervisor (proxy/workerlink.py),
    provided only with ``[proxy] workers > 1``: what modules keep for the
    whole host (antiflood counts, dispatcher states) goes through it."""

    @property
    def index(self) -> int: ...  # this worker's number, 0 to workers - 1
    def send(self, kind: str, **fields: Any) -> None: ...  # to the supervisor
    def on(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None: ...
    # handler(message) for each message of that kind from the supervisor
    def off(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None: ...
    def gauge(self, name: str, read: Callable[[], int] | None) -> None: ...
    # read() sent in each heartbeat as ``name`` (None removes it)


class EventsService(Protocol):
    """events: the bus user services subscribe to (sipsuite.api); modules
    raise their events on it.  ``bus.wants(name)`` is cheap: check it before
    building an event's fields."""

    @property
    def bus(self) -> EventBus: ...
    registrations: bool  # someone wants registration.*: report binding changes
    def bindings_changed(self, aor: str, before: Mapping[str, float | None],
                         after: list[Binding]) -> None: ...


class SharedVars(Protocol):
    """shv: Kamailio's $shv, variables every process of the proxy shares
    (and every node, with Redis): ``Routing.shv``.  Values are int or str;
    every call may raise StoreUnavailable."""

    async def get(self, name: str, default: Any = None) -> Any: ...
    async def set(self, name: str, value: int | str) -> None: ...
    async def incr(self, name: str, by: int = 1) -> int: ...  # atomic; the new value
    async def delete(self, name: str) -> bool: ...
    async def items(self) -> dict[str, int | str]: ...


class UacService(Protocol):
    """uac: uac_replace_from / uac_replace_to with automatic restore
    (ctx.replace_from, ctx.replace_to); ``which`` is "from" or "to"."""

    def replace(self, ctx: RequestContext, which: str, uri: URI | str | None,
                display: str | None) -> None: ...
    # Raises ReplaceError (no [uac] secret, a bad URI or display name).


#: The Redis connection the stores share (redis/client.py's RedisConnection).
REDIS: ServiceKey[Any] = ServiceKey("redis")
LOCATION: ServiceKey[LocationService] = ServiceKey("location")
SUBSCRIBERS: ServiceKey[SubscriberStore] = ServiceKey("subscribers")
REGISTRAR: ServiceKey[RegistrarService] = ServiceKey("registrar")
FLOWS: ServiceKey[FlowService] = ServiceKey("outbound")
AUTH: ServiceKey[AuthService] = ServiceKey("auth")
NAT: ServiceKey[NatService] = ServiceKey("nat")
NATPING: ServiceKey[NatPingService] = ServiceKey("natping")
MEDIA: ServiceKey[MediaService] = ServiceKey("media")
DISPATCHER: ServiceKey[LoadBalancerService] = ServiceKey("dispatcher")
EVENTS: ServiceKey[EventsService] = ServiceKey("events")
SHV: ServiceKey[SharedVars] = ServiceKey("shv")
#: With worker processes only: None in a single process.
WORKER_LINK: ServiceKey[WorkerLinkService] = ServiceKey("worker_link")
UAC: ServiceKey[UacService] = ServiceKey("uac")
