"""Routing: Kamailio's routing blocks as methods of a Python class.

``request_route`` is Kamailio's ``request_route``; ``branch_route``,
``reply_route`` and ``failure_route`` are its ``branch_route[]``,
``onreply_route[]`` and ``failure_route[]``. Any of them may be ``async``
(a location lookup in Redis is awaited). Users subclass ``DefaultRouting``
and name their class in ``[proxy] routing = "package.module:Class"``.

Each hook receives a ``RequestContext`` (``ctx``): the request, where it
came from, and the actions a script takes (``reply``, ``relay``, ``drop``,
``record_route``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.sip.message import Request, Response
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.proxy.context import Branch, ProxyContext
    from sipsuite.proxy.core import ProxyCore

log = get_logger("sipsuite.proxy.routing")

# Methods that create a dialog and so are record-routed by the default
# script (kamailio.cfg record-routes INVITE and SUBSCRIBE; REFER also
# creates an implicit subscription, RFC 3515).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


class RequestContext:
    """What a routing hook sees of one incoming request and can do with it."""

    __slots__ = ("core", "request", "source", "proxy_ctx", "loose_routed", "handled", "vars")

    def __init__(self, core: ProxyCore, request: Request, source: Any, loose_routed: bool) -> None:
        self.core = core
        self.request = request
        self.source = source
        # A Route header naming this proxy was removed (Kamailio's loose_route()).
        self.loose_routed = loose_routed
        self.proxy_ctx: ProxyContext | None = None
        self.handled = False
        self.vars: dict[str, Any] = {}

    # -- facts -----------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.request.method

    @property
    def in_dialog(self) -> bool:
        return self.request.to_tag is not None

    def is_myself(self, uri: URI) -> bool:
        """The URI names this proxy: one of its addresses (and a listening
        port) or one of its configured domains."""
        return self.core.is_myself(uri.host, uri.port)

    def is_local_domain(self, uri: URI) -> bool:
        return self.core.is_local_domain(uri.host)

    def source_trusted(self) -> bool:
        return self.core.is_trusted(self.source.host)

    async def lookup(self, user: str) -> list[Any]:
        return await self.core.location.lookup(user)

    # -- actions ---------------------------------------------------------------
    def reply(self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the request from here (Kamailio's sl_send_reply / t_reply)."""
        self.handled = True
        self.core.reply(self, status, reason, headers or [])

    def relay(self, targets: list[URI | str] | None = None) -> None:
        """Forward to every target in parallel (one branch each); ``None``
        forwards to the Request-URI (or the pre-loaded Route)."""
        self.handled = True
        uris: list[URI] = []
        for target in targets or [self.request.uri]:
            uris.append(URI.parse(target) if isinstance(target, str) else target)
        self.core.relay(self, uris)

    def record_route(self) -> None:
        self.vars["record_route"] = True

    def drop(self) -> None:
        """Neither answer nor forward (Kamailio's ``drop`` / ``exit``)."""
        self.handled = True


class Routing:
    """Base class: hooks that do nothing. Subclass ``DefaultRouting``
    rather than this unless you want to start from scratch."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self.config = core.config

    def request_route(self, ctx: RequestContext) -> Any:
        ctx.reply(500, "No routing")

    def branch_route(self, ctx: RequestContext, branch: Branch) -> Any:
        """Called for each new branch before it is sent; may edit
        ``branch.request`` (headers, Request-URI)."""

    def reply_route(self, ctx: RequestContext, branch: Branch, response: Response) -> Any:
        """Called for every response a branch receives."""

    def failure_route(self, ctx: RequestContext, response: Response) -> Any:
        """Called once every branch has a failure (3xx-6xx) and before the
        best one goes upstream; ``ctx.relay(...)`` here starts new branches
        (serial forking, gateway failover), ``ctx.reply`` replaces the answer."""


class DefaultRouting(Routing):
    """The shape of the default kamailio.cfg, without its optional features."""

    async def request_route(self, ctx: RequestContext) -> None:
        req = ctx.request
        method = req.method
        uri = req.uri

        # Keep-alive pings to the proxy itself (kamailio.cfg: OPTIONS to
        # myself without a user part gets 200 Keepalive).
        if method == "OPTIONS" and not uri.user and uri.scheme in ("sip", "sips") and ctx.is_myself(uri):
            ctx.reply(200, "Keepalive")
            return

        if ctx.in_dialog:
            self.within_dialog(ctx)
            return

        # Initial requests: drop pre-loaded Route headers (kamailio.cfg's
        # remove_hf("Route")). Honouring them would let anyone relay through
        # us to any host by naming a local user in the Request-URI.
        if req.has_header("route"):
            req.remove_header("route")

        if method == "REGISTER":
            # The registrar arrives with its own issue; until then say so
            # rather than pretend the binding was stored.
            ctx.reply(501, "Not Implemented (no registrar)")
            return

        if self.config.proxy.record_route and method in DIALOG_CREATING:
            ctx.record_route()

        if uri.scheme not in ("sip", "sips") or not ctx.is_local_domain(uri):
            if ctx.source_trusted():
                ctx.relay()
            else:
                ctx.reply(403, "Not relaying")
            return

        if not uri.user:
            ctx.reply(484, "Address Incomplete")
            return

        bindings = await ctx.lookup(uri.user_unescaped)
        if not bindings:
            ctx.reply(404, "Not Found")
            return
        ctx.relay([b.contact for b in bindings])

    def within_dialog(self, ctx: RequestContext) -> None:
        req = ctx.request
        if ctx.loose_routed or req.routes:
            ctx.relay()
            return
        if req.method == "ACK":
            # An ACK with no route and no transaction is for nobody here.
            ctx.drop()
            return
        ctx.reply(404, "Not here")


def drive(result: Any, on_done: Any, on_error: Any) -> None:
    """Run what a hook returned: a plain value finishes at once; a coroutine
    runs here until it ends or waits on a Deferred.

    Most routing coroutines never really wait (an in-memory lookup), and
    ``ensureDeferred`` would cost a Deferred and its machinery per request;
    this trampoline only touches Twisted when the hook actually waits, and
    builds no closures, so a finished request leaves no reference cycle for
    the garbage collector.
    """
    if not inspect.iscoroutine(result):
        on_done()
        return
    _Driver(result, on_done, on_error).step(None)


class _Driver:
    __slots__ = ("coro", "on_done", "on_error")

    def __init__(self, coro: Any, on_done: Any, on_error: Any) -> None:
        self.coro = coro
        self.on_done = on_done
        self.on_error = on_error

    def step(self, error: BaseException | None) -> None:
        coro = self.coro
        while True:
            try:
                if error is not None:
                    awaited = coro.throw(error)
                    error = None
                else:
                    awaited = coro.send(None)
            except StopIteration:
                self.finish(None)
                return
            except Exception:  # noqa: BLE001 - reported, never raised into the transport
                self.finish(Failure())
                return
            if not isinstance(awaited, Deferred):
                coro.close()
                self.finish(Failure(TypeError(f"routing hooks may only await Deferreds, not {awaited!r}")))
                return
            if awaited.called and not awaited.paused:
                continue
            awaited.addBoth(self.resume)
            return

    def resume(self, value: Any) -> Any:
        if isinstance(value, Failure):
            # Raised inside the coroutine where it awaited; consumed here so
            # the Deferred does not also report it as unhandled.
            self.step(value.value)
            return None
        # A success is read by the coroutine from the Deferred itself (its
        # __await__ protocol), so hand it back unchanged.
        self.step(None)
        return value

    def finish(self, failure: Failure | None) -> None:
        on_done, on_error = self.on_done, self.on_error
        self.coro = self.on_done = self.on_error = None
        if failure is None:
            on_done()
        else:
            on_error(failure)


def load_routing(spec: str) -> type[Routing]:
    """``package.module:Class`` -> the class; a clear error otherwise."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"routing class must be 'module:Class', got {spec!r}")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Routing):
        raise ValueError(f"{spec!r} is not a subclass of sipsuite.proxy.routing.Routing")
    return cls
