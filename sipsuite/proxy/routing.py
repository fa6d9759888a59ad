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

import inspect
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.proxy.features import FeatureRoutes
from sipsuite.proxy.location import Binding, StoreUnavailable
from sipsuite.proxy.nat import add_contact_alias, handle_ruri_alias, parse_sdp, signalling_nat
from sipsuite.proxy.resolver import Target
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

    __slots__ = ("core", "request", "source", "proxy_ctx", "loose_routed", "handled", "vars",
                 "tx_key", "debug")

    def __init__(self, core: ProxyCore, request: Request, source: Any, loose_routed: bool) -> None:
        self.core = core
        self.request = request
        self.source = source
        # A Route header naming this proxy was removed (Kamailio's loose_route()).
        self.loose_routed = loose_routed
        self.proxy_ctx: ProxyContext | None = None
        self.handled = False
        self.vars: dict[str, Any] = {}
        # The server transaction's key, once known: saves computing it again
        # for every reply and relay (it parses the top Via).
        self.tx_key: tuple | None = None
        # [features] debug as it was when routing began: log every step.
        self.debug = False

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

    async def lookup(self, user: str) -> list[Binding]:
        """The user's bindings: static ones from the config, then registered
        ones, highest q first. Raises StoreUnavailable when the store (Redis)
        cannot answer in time."""
        return await self.core.lookup(user)

    # -- actions ---------------------------------------------------------------
    async def register(self) -> None:
        """Store the REGISTER's bindings and answer it (Kamailio's save("location"))."""
        self.handled = True
        await self.core.registrar.register(self)

    async def auth_check(self, user: str, *, proxy: bool) -> bool:
        """Kamailio's auth_check: True when the request has valid digest
        credentials for ``user``; otherwise it has been answered (401/407
        challenge or 403) and the hook should return."""
        ok = await self.core.auth.check(self, user, proxy=proxy)
        if not ok:
            self.handled = True
        return ok

    def consume_credentials(self, *, proxy: bool) -> None:
        self.core.auth.consume(self, proxy=proxy)

    def reply(self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the request from here (Kamailio's sl_send_reply / t_reply)."""
        self.handled = True
        self.core.reply(self, status, reason, headers or [])

    def relay(self, targets: list[URI | str | Destination] | None = None) -> None:
        """Forward to every target in parallel (one branch each); ``None``
        forwards to the Request-URI (or the pre-loaded Route)."""
        self.handled = True
        out: list[URI | Destination] = []
        for target in targets or [self.request.uri]:
            out.append(URI.parse(target) if isinstance(target, str) else target)
        self.core.relay(self, out)

    def record_route(self) -> None:
        self.vars["record_route"] = True

    def drop(self) -> None:
        """Neither answer nor forward (Kamailio's ``drop`` / ``exit``)."""
        self.handled = True


class Destination:
    """A branch target with more than a Request-URI: a route set to put in
    front (a registered Path) and a fixed next hop (Kamailio's ``$du``: the
    address a NAT'ed phone registered from)."""

    __slots__ = ("uri", "route", "dst")

    def __init__(self, uri: URI, route: list[str] | None = None, dst: Target | None = None) -> None:
        self.uri = uri
        self.route = route or []
        self.dst = dst

    @classmethod
    def of(cls, binding: Binding) -> Destination:
        """Where a request for ``binding`` goes: through its Path if it has
        one (the edge proxy there knows the way), else to the address it
        registered from when it is behind NAT, else to its Contact."""
        dst = None
        if binding.nat and not binding.path and binding.received:
            dst = parse_address(binding.received)
        return cls(binding.uri, list(binding.path), dst)

    def __repr__(self) -> str:
        return f"<Destination {self.uri} route={self.route} dst={self.dst}>"


def parse_address(text: str) -> Target | None:
    """'udp:192.0.2.1:5060' / 'tcp:[2001:db8::1]:5060' -> Target."""
    transport, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or transport not in ("udp", "tcp", "tls"):
        return None
    return Target(transport, host.strip("[]"), int(port))


class Routing:
    """Base class: hooks that do nothing. Subclass ``DefaultRouting``
    rather than this unless you want to start from scratch."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core

    @property
    def config(self) -> Any:
        """The core's current config: ``cfg set`` replaces it at run time,
        so never keep a copy of it or of a section."""
        return self.core.config

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
        (serial forking, gateway failover), ``ctx.reply`` replaces the answer.
        It runs for a CANCELed request too (``ctx.proxy_ctx.cancelled``, the
        answer a 487), to release what the call held: relay() starts no
        branch then, and a reply() should not be made."""


class DefaultRouting(FeatureRoutes, Routing):
    """The shape of the default kamailio.cfg: keep-alives, in-dialog
    routing, authentication (``[features] auth``), the registrar, and the
    location lookup with parallel (or serial) forking; the optional blocks
    (pstn, voicemail, block3xx, block401407, debug) come from FeatureRoutes."""

    async def request_route(self, ctx: RequestContext) -> None:
        req = ctx.request
        method = req.method
        uri = req.uri
        ctx.debug = debug = self.config.features.debug

        # Keep-alive pings to the proxy itself (kamailio.cfg: OPTIONS to
        # myself without a user part gets 200 Keepalive).
        if method == "OPTIONS" and not uri.user and uri.scheme in ("sip", "sips") and ctx.is_myself(uri):
            if debug:
                self.trace(ctx, "keepalive: OPTIONS to myself -> 200 Keepalive")
            ctx.reply(200, "Keepalive")
            return

        media = self.core.media
        if self.config.features.nat:
            # kamailio.cfg's route[NATDETECT]: remembered for the media
            # decision and the Record-Route's nat marker; the Contact of a
            # NAT'ed caller gets its real address as an alias.
            ctx.vars["nat"] = nat = signalling_nat(req, ctx.source)
            if nat and method != "REGISTER":
                add_contact_alias(req, ctx.source)
            if debug:
                self.trace(ctx, f"natdetect: from {ctx.source.host}:{ctx.source.port} "
                                + ("behind NAT" if nat else "not behind NAT"))

        if ctx.in_dialog:
            if media is not None and method in ("BYE", "INVITE", "UPDATE", "ACK", "PRACK") and (
                    ctx.loose_routed or req.routes):
                await self.media_in_dialog(ctx)
            self.within_dialog(ctx)
            return

        local_ruri = uri.scheme in ("sip", "sips") and ctx.is_local_domain(uri)
        if not await self.authenticate(ctx, local_ruri):
            return

        # Initial requests: drop pre-loaded Route headers (kamailio.cfg's
        # remove_hf("Route")). Honouring them would let anyone relay through
        # us to any host by naming a local user in the Request-URI.
        if req.has_header("route"):
            if debug:
                self.trace(ctx, "initial request: pre-loaded Route removed")
            req.remove_header("route")

        if method == "REGISTER" and local_ruri:
            if debug:
                self.trace(ctx, "registrar: REGISTER for our domain -> save")
            await ctx.register()
            return

        if self.config.proxy.record_route and method in DIALOG_CREATING:
            ctx.record_route()

        if not local_ruri:
            # Callers authenticated above (or trusted) may call out.
            if ctx.source_trusted() or ctx.vars.get("authenticated"):
                if debug:
                    self.trace(ctx, f"sipout: {uri.host} is not ours -> relay")
                await self.media_offer(ctx)
                ctx.relay()
            else:
                if debug:
                    self.trace(ctx, f"sipout: {uri.host} is not ours -> 403 Not relaying")
                ctx.reply(403, "Not relaying")
            return

        if not uri.user:
            if debug:
                self.trace(ctx, "no user in the Request-URI -> 484")
            ctx.reply(484, "Address Incomplete")
            return
        user = uri.user_unescaped
        if await self.route_pstn(ctx, user):
            return
        await self.location(ctx, user)

    async def authenticate(self, ctx: RequestContext, local_ruri: bool) -> bool:
        """kamailio.cfg's route[AUTH]; False when the request was answered."""
        features = self.config.features
        if not features.auth:
            if ctx.debug:
                self.trace(ctx, "auth: off")
            return True
        req = ctx.request
        if req.method == "REGISTER":
            to = req.to.uri
            if not await ctx.auth_check(to.user_unescaped if to.user else "", proxy=False):
                if ctx.debug:
                    self.trace(ctx, "auth: REGISTER without valid credentials -> 401 or 403")
                return False
            if ctx.debug:
                self.trace(ctx, f"auth: REGISTER authenticated as {to.user_unescaped!r}")
            ctx.vars["authenticated"] = True
            return True
        if req.method in ("ACK", "CANCEL"):
            # Neither can be challenged (RFC 3261 22.1): they ride on the
            # INVITE's authentication.
            return True
        if features.ipauth and ctx.source_trusted():
            # WITH_IPAUTH: allow_source_address() skips authentication.
            if ctx.debug:
                self.trace(ctx, f"auth: {ctx.source.host} is trusted (ipauth) -> not challenged")
            ctx.vars["ipauth"] = True
            return True
        from_uri = req.from_.uri
        from_local = from_uri.scheme in ("sip", "sips") and ctx.is_local_domain(from_uri)
        if from_local:
            user = from_uri.user_unescaped if from_uri.user else ""
            if not await ctx.auth_check(user, proxy=True):
                if ctx.debug:
                    self.trace(ctx, f"auth: from our user {user!r} without valid credentials"
                                    " -> 407 or 403")
                return False
            ctx.consume_credentials(proxy=True)
            if ctx.debug:
                self.trace(ctx, f"auth: authenticated as {user!r}")
            ctx.vars["authenticated"] = True
        elif not local_ruri:
            if ctx.debug:
                self.trace(ctx, "auth: foreign caller to a foreign domain -> 403 Not relaying")
            ctx.reply(403, "Not relaying")
            return False
        elif ctx.debug:
            self.trace(ctx, "auth: foreign caller to our domain -> not challenged")
        return True

    async def location(self, ctx: RequestContext, user: str) -> None:
        """kamailio.cfg's route[LOCATION]: fork to the user's bindings; a
        user with none gets voicemail ([features] voicemail) or 404."""
        ctx.vars["oexten"] = user  # the dialled user, for voicemail
        try:
            bindings = await ctx.lookup(user)
        except StoreUnavailable as e:
            log.warn("lookup of {u} failed: location store unavailable: {e}", u=user, e=e)
            if ctx.debug:
                self.trace(ctx, f"location: {user!r}: store unavailable -> 503")
            ctx.reply(503, "Location Store Unavailable",
                      [("Retry-After", str(self.config.registrar.retry_after))])
            return
        # Each with where it is reached; outbound bindings whose flow failed drop out.
        reached = await self.core.flows.destinations(user, bindings)
        if not reached:
            if ctx.debug:
                self.trace(ctx, f"location: {user!r}: no bindings")
            if await self.route_voicemail(ctx):
                return
            if ctx.debug:
                self.trace(ctx, f"location: {user!r}: not found -> 404")
            ctx.reply(404, "Not Found")
            return
        ctx.vars["location"] = True
        if self.config.registrar.serial_forking:
            groups: list[list[tuple[Binding, Destination]]] = []
            for pair in reached:  # highest q first
                if groups and groups[-1][0][0].q == pair[0].q:
                    groups[-1].append(pair)
                else:
                    groups.append([pair])
            ctx.vars["serial"] = groups[1:]
            reached = groups[0]
        if ctx.debug:
            self.trace(ctx, f"location: {user!r}: {len(reached)} binding(s) -> relay to "
                            + ", ".join(str(d.uri) for _, d in reached))
        await self.media_offer(ctx)
        ctx.relay([d for _, d in reached])

    # -- media (kamailio.cfg's WITH_NAT + rtpproxy_manage) -------------------------

    async def media_offer(self, ctx: RequestContext) -> None:
        """Anchor an initial INVITE's media on a relay when [features] nat
        says so (sipsuite.proxy.media); a relay that fails leaves it as is."""
        media = self.core.media
        if media is None:
            return
        if not await media.offer(ctx):
            media.late_offer(ctx)
            return
        pctx = ctx.proxy_ctx
        if pctx is not None and pctx.cancelled:
            # CANCELed while the relay answered: nothing will be forwarded.
            await self._media_delete(ctx)

    async def media_in_dialog(self, ctx: RequestContext) -> None:
        """BYE ends the relay session; a re-INVITE / UPDATE with SDP of a
        relayed call (or one that needs it now) gets a new offer."""
        media = self.core.media
        assert media is not None
        req = ctx.request
        if req.method == "BYE":
            if media.mode == "always" or media.is_relayed(req.call_id):
                await media.delete(req.call_id, req.from_tag, req.to_tag)
            return
        if req.method in ("ACK", "PRACK"):
            # The answer to a late offer (the offer came in the 2xx).
            await media.answer_in_request(ctx)
            return
        await media.offer(ctx)

    def reply_route(self, ctx: RequestContext, branch: Branch, response: Response) -> Any:
        # A plain function that returns a coroutine only when there is relay
        # work: every other answer skips the driver altogether.
        if self.core.media is None:
            return None
        if ctx.vars.get("late_offer") and response.status < 300:
            # The 2xx carries the offer (and so does each retransmission of
            # it: the same U again, which the relay answers the same way).
            if response.status >= 200 and response.body:
                return self._media_offer_reply(ctx, response)
            return None
        if not ctx.vars.get("media"):
            return None
        if 100 < response.status < 300 and response.body and parse_sdp(response) is not None:
            return self._media_answer(ctx, response)
        # A failure ends the relay session in failure_route, which runs once
        # every branch has ended (CANCELed calls too), and knows whether the
        # call goes on to new branches (serial forking, voicemail, failover).
        return None

    async def _media_offer_reply(self, ctx: RequestContext, response: Response) -> None:
        media = self.core.media
        if media is not None:
            await media.offer_in_reply(ctx, response)

    async def _media_answer(self, ctx: RequestContext, response: Response) -> None:
        media = self.core.media
        if media is not None:
            await media.answer(ctx, response)

    async def _media_delete(self, ctx: RequestContext) -> None:
        media = self.core.media
        if media is None or ctx.vars.get("media_deleted"):
            return
        ctx.vars["media_deleted"] = True
        await media.delete(ctx.request.call_id, ctx.request.from_tag)

    def failure_route(self, ctx: RequestContext, response: Response) -> Any:
        pctx = ctx.proxy_ctx
        before = len(pctx.branches) if pctx is not None else 0
        if pctx is None or not pctx.cancelled:
            self.manage_failure(ctx, response)
        if not ctx.vars.get("media") or ctx.vars.get("media_deleted"):
            return None
        if pctx is not None and len(pctx.branches) > before:
            return None  # serial forking goes on with the same relay session
        return self._media_delete(ctx)

    def manage_failure(self, ctx: RequestContext, response: Response) -> None:
        """kamailio.cfg's failure_route[MANAGE_FAILURE]: serial forking goes
        on first; the answer that ends the search may then be blocked
        (block3xx, block401407) or send the call to voicemail (486, 408);
        else an unreachable user gets 480."""
        if self.serial_next(ctx, response):
            return
        if self.block_failure(ctx, response) or self.voicemail_failure(ctx, response):
            return
        self.location_failure(ctx, response)
        if ctx.debug:
            pctx = ctx.proxy_ctx
            if pctx is None or not pctx.final_sent:
                self.trace(ctx, f"failure route: {response.status} {response.reason} -> upstream")

    def serial_next(self, ctx: RequestContext, response: Response) -> bool:
        """Serial forking: the next q-value group of bindings; True when
        there was one."""
        if not ctx.vars.get("location"):
            return False
        groups = ctx.vars.get("serial")
        if groups and response.status < 600:
            group = groups.pop(0)
            if ctx.debug:
                self.trace(ctx, f"failure route: {response.status} -> next serial group: "
                                + ", ".join(str(d.uri) for _, d in group))
            ctx.relay([d for _, d in group])
            return True
        return False

    def location_failure(self, ctx: RequestContext, response: Response) -> None:
        """The 480 of an unreachable user."""
        if not ctx.vars.get("location"):
            return
        pctx = ctx.proxy_ctx
        if pctx is not None and pctx.cancelled:
            return
        if pctx is not None and pctx.best_local and not any(b.provisional for b in pctx.branches):
            # No binding answered at all, not even 100 (timeouts, refused
            # connections, unresolvable hosts): the user is registered but
            # not reachable now (RFC 3261 21.4.18). A phone that rang and
            # was not picked up keeps its 408.
            if ctx.debug:
                self.trace(ctx, f"failure route: {response.status}, no binding answered -> 480")
            ctx.reply(480, "Temporarily Unavailable")

    def within_dialog(self, ctx: RequestContext) -> None:
        req = ctx.request
        if ctx.loose_routed or req.routes:
            if self.config.features.nat and not req.routes:
                # kamailio.cfg's route[DLGURI]: a Request-URI with an alias
                # (a NAT'ed party's Contact) goes to the address it names.
                dst = handle_ruri_alias(req)
                if dst is not None:
                    if ctx.debug:
                        self.trace(ctx, f"within dialog: alias in the Request-URI -> relay to {dst}")
                    ctx.relay([Destination(req.uri, dst=dst)])
                    return
            if ctx.debug:
                self.trace(ctx, "within dialog: loose-routed -> relay")
            ctx.relay()
            return
        if req.method == "ACK":
            # An ACK with no route and no transaction is for nobody here.
            if ctx.debug:
                self.trace(ctx, "within dialog: ACK without route or transaction -> drop")
            ctx.drop()
            return
        if ctx.debug:
            self.trace(ctx, "within dialog: not routed to us -> 404 Not here")
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
