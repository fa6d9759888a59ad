"""DefaultRouting: the default kamailio.cfg's request_route and its blocks, as a Routing.

Users subclass it and name their class in ``[proxy] routing``; its default,
``sipsuite.proxy.routing:DefaultRouting``, is this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipsuite.log import get_logger
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.registrar.bindings import Binding, StoreUnavailable
from sipsuite.proxy.routing.base import DIALOG_CREATING, Destination, RequestContext, Routing
from sipsuite.proxy.routing.features import FeatureRoutes, RouteState
from sipsuite.proxy.services import FLOWS, LOCATION, MEDIA, NAT, REGISTRAR
from sipsuite.sip.message import Response

if TYPE_CHECKING:
    from sipsuite.proxy.core.context import Branch


log = get_logger("sipsuite.proxy.routing")


class _Uris:
    """The branch targets of a trace line, joined only when the line is
    formatted (never while ``[features] debug`` is off)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[Binding, Destination]]) -> None:
        self.pairs = pairs

    def __str__(self) -> str:
        return ", ".join(str(d.uri) for _, d in self.pairs)


class DefaultRouting(FeatureRoutes, Routing):
    """The shape of the default kamailio.cfg: keep-alives, in-dialog
    routing, authentication (``[features] auth``), the registrar, and the
    location lookup with parallel (or serial) forking; the optional blocks
    (pstn, voicemail, block3xx, block401407, debug) come from FeatureRoutes.

    The features that are modules are reached through ``self.core.modules``
    (NAT, MEDIA, LOCATION, FLOWS, REGISTRAR): one that is not set up is the
    ``#!ifdef WITH_X`` left off.  ``[features] auth, ipauth, pstn, voicemail,
    block3xx, block401407, debug`` are this script's own switches.  What it
    keeps of a request is its RouteState in ``ctx.call``."""

    async def request_route(self, ctx: RequestContext) -> None:
        req = ctx.request
        method = req.method
        uri = req.uri
        ctx.debug = self.config.features.debug

        # Keep-alive pings to the proxy itself (kamailio.cfg: OPTIONS to
        # myself without a user part gets 200 Keepalive).
        if method == "OPTIONS" and not uri.user and uri.scheme in ("sip", "sips") and ctx.is_myself(uri):
            ctx.trace("keepalive: OPTIONS to myself -> 200 Keepalive")
            ctx.reply(200, "Keepalive")
            return

        nat_service = self.core.modules.get(NAT)
        if nat_service is not None:
            # kamailio.cfg's route[NATDETECT]: remembered for the media
            # decision and the Record-Route's nat marker; the Contact of a
            # NAT'ed caller gets its real address as an alias.
            nat = nat_service.detect(ctx)
            ctx.trace("natdetect: from {host}:{port} {nat}", host=ctx.source.host,
                      port=ctx.source.port, nat="behind NAT" if nat else "not behind NAT")

        if ctx.in_dialog:
            if method in ("BYE", "INVITE", "UPDATE", "ACK", "PRACK") and (
                    ctx.loose_routed or req.routes) and self.core.modules.get(MEDIA) is not None:
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
            ctx.trace("initial request: pre-loaded Route removed")
            req.remove_header("route")

        if method == "REGISTER" and local_ruri:
            if self.core.modules.get(REGISTRAR) is None:
                # No registrar set up (kamailio.cfg without the registrar
                # module): REGISTER is a method this server does not do.
                ctx.trace("registrar: REGISTER for our domain, no registrar -> 501")
                ctx.reply(501, "Not Implemented")
                return
            ctx.trace("registrar: REGISTER for our domain -> save")
            await ctx.register()
            return

        if self.config.proxy.record_route and method in DIALOG_CREATING:
            ctx.record_route()

        if not local_ruri:
            # Callers authenticated above (or trusted) may call out.
            state = ctx.call.peek(RouteState)
            if ctx.source_trusted() or (state is not None and state.authenticated):
                ctx.trace("sipout: {host} is not ours -> relay", host=uri.host)
                await self.media_offer(ctx)
                ctx.relay()
            else:
                ctx.trace("sipout: {host} is not ours -> 403 Not relaying", host=uri.host)
                ctx.reply(403, "Not relaying")
            return

        if not uri.user:
            ctx.trace("no user in the Request-URI -> 484")
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
            ctx.trace("auth: off")
            return True
        req = ctx.request
        if req.method == "REGISTER":
            to = req.to.uri
            if not await ctx.auth_check(to.user_unescaped if to.user else "", proxy=False):
                ctx.trace("auth: REGISTER without valid credentials -> 401 or 403")
                return False
            ctx.trace("auth: REGISTER authenticated as {user!r}", user=to.user_unescaped)
            self._authenticated(ctx)
            return True
        if req.method in ("ACK", "CANCEL"):
            # Neither can be challenged (RFC 3261 22.1): they ride on the
            # INVITE's authentication.
            return True
        if features.ipauth and ctx.source_trusted():
            # WITH_IPAUTH: allow_source_address() skips authentication.
            ctx.trace("auth: {host} is trusted (ipauth) -> not challenged", host=ctx.source.host)
            ctx.call.get(RouteState).ipauth = True
            return True
        from_uri = req.from_.uri
        from_local = from_uri.scheme in ("sip", "sips") and ctx.is_local_domain(from_uri)
        if from_local:
            user = from_uri.user_unescaped if from_uri.user else ""
            if not await ctx.auth_check(user, proxy=True):
                ctx.trace("auth: from our user {user!r} without valid credentials -> 407 or 403",
                          user=user)
                return False
            ctx.consume_credentials(proxy=True)
            ctx.trace("auth: authenticated as {user!r}", user=user)
            self._authenticated(ctx)
        elif not local_ruri:
            ctx.trace("auth: foreign caller to a foreign domain -> 403 Not relaying")
            ctx.reply(403, "Not relaying")
            return False
        else:
            ctx.trace("auth: foreign caller to our domain -> not challenged")
        return True

    @staticmethod
    def _authenticated(ctx: RequestContext) -> None:
        ctx.call.get(RouteState).authenticated = True
        ctx.vars["authenticated"] = True  # deprecated (one release): RouteState.authenticated

    async def location(self, ctx: RequestContext, user: str) -> None:
        """kamailio.cfg's route[LOCATION]: fork to the user's bindings; a
        user with none gets voicemail ([features] voicemail) or 404."""
        state = ctx.call.get(RouteState)
        state.dialled = user  # for voicemail
        ctx.vars["oexten"] = user  # deprecated (one release): RouteState.dialled
        if self.core.modules.get(LOCATION) is None:
            bindings: list[Binding] = []  # no location module: nobody is registered here
        else:
            try:
                bindings = await ctx.lookup(user)
            except StoreUnavailable as e:
                log.warn("lookup of {u} failed: location store unavailable: {e}", u=user, e=e)
                ctx.trace("location: {user!r}: store unavailable -> 503", user=user)
                ctx.reply(503, "Location Store Unavailable",
                          [("Retry-After", str(self.config.registrar.retry_after))])
                return
        # Each with where it is reached; outbound bindings whose flow failed drop out.
        flows = self.core.modules.get(FLOWS)
        reached = (await flows.destinations(user, bindings) if flows is not None
                   else [(b, Destination.of(b)) for b in bindings])
        if not reached:
            ctx.trace("location: {user!r}: no bindings", user=user)
            if await self.route_voicemail(ctx):
                return
            ctx.trace("location: {user!r}: not found -> 404", user=user)
            ctx.reply(404, "Not Found")
            return
        state.located = True
        # Serial forking's later groups too: they are relayed from failure_route.
        state.nat_branches = {str(d.uri) for b, d in reached if b.nat and isinstance(d.dst, Target)}
        ctx.vars["location"] = True  # deprecated (one release): RouteState.located
        if self.config.registrar.serial_forking:
            groups: list[list[tuple[Binding, Destination]]] = []
            for pair in reached:  # highest q first
                if groups and groups[-1][0][0].q == pair[0].q:
                    groups[-1].append(pair)
                else:
                    groups.append([pair])
            state.serial = groups[1:]
            reached = groups[0]
        ctx.trace("location: {user!r}: {n} binding(s) -> relay to {targets}", user=user,
                  n=len(reached), targets=_Uris(reached))
        await self.media_offer(ctx)
        ctx.relay([d for _, d in reached])

    # -- media (kamailio.cfg's WITH_NAT + rtpproxy_manage) -------------------------

    async def media_offer(self, ctx: RequestContext) -> None:
        """Anchor an initial INVITE's media on a relay when [features] nat
        says so (the media module); a relay that fails leaves it as is."""
        media = self.core.modules.get(MEDIA)
        if media is None or not await media.offer(ctx):
            return
        rsp = ctx.response
        if rsp is not None and rsp.cancelled:
            # CANCELed while the relay answered: nothing will be forwarded.
            await self._media_delete(ctx)

    async def media_in_dialog(self, ctx: RequestContext) -> None:
        """BYE ends the relay session; a re-INVITE / UPDATE with SDP of a
        relayed call (or one that needs it now) gets a new offer, an ACK or
        PRACK the answer to a late offer."""
        media = self.core.modules.get(MEDIA)
        if media is not None:
            await media.in_dialog(ctx)

    def reply_route(self, ctx: RequestContext, branch: Branch, response: Response) -> Any:
        # A plain function that returns a coroutine only when there is relay
        # work: every other answer skips the driver altogether.  A failure
        # ends the relay session in failure_route, which runs once every
        # branch has ended (CANCELed calls too), and knows whether the call
        # goes on to new branches (serial forking, voicemail, failover).
        if 100 < response.status < 300 and branch.targets:
            state = ctx.call.peek(RouteState)
            nat_service = self.core.modules.get(NAT)
            if state is not None and nat_service is not None and str(branch.uri) in state.nat_branches:
                sent_to = branch.targets[min(branch.target_index, len(branch.targets) - 1)]
                nat_service.reply_alias(response, sent_to)
        media = self.core.modules.get(MEDIA)
        if media is None:
            return None
        return media.on_reply(ctx, response)

    async def _media_delete(self, ctx: RequestContext) -> None:
        media = self.core.modules.get(MEDIA)
        if media is not None:
            await media.end_call(ctx)  # once per call: a second one does nothing

    def failure_route(self, ctx: RequestContext, response: Response) -> Any:
        rsp = ctx.response
        before = len(rsp.branches) if rsp is not None else 0
        if rsp is None or not rsp.cancelled:
            self.manage_failure(ctx, response)
        media = self.core.modules.get(MEDIA)
        if media is None or not media.relayed(ctx):
            return None
        if rsp is not None and len(rsp.branches) > before:
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
        rsp = ctx.response
        if rsp is None or not rsp.final_sent:
            ctx.trace("failure route: {status} {reason} -> upstream", status=response.status,
                      reason=response.reason)

    def serial_next(self, ctx: RequestContext, response: Response) -> bool:
        """Serial forking: the next q-value group of bindings; True when
        there was one."""
        state = ctx.call.peek(RouteState)
        if state is None or not state.located:
            return False
        groups = state.serial
        if groups and response.status < 600:
            group = groups.pop(0)
            ctx.trace("failure route: {status} -> next serial group: {targets}",
                      status=response.status, targets=_Uris(group))
            ctx.relay([d for _, d in group])
            return True
        return False

    def location_failure(self, ctx: RequestContext, response: Response) -> None:
        """The 480 of an unreachable user."""
        state = ctx.call.peek(RouteState)
        if state is None or not state.located:
            return
        rsp = ctx.response
        if rsp is not None and rsp.cancelled:
            return
        if rsp is not None and rsp.best_local and not any(b.provisional for b in rsp.branches):
            # No binding answered at all, not even 100 (timeouts, refused
            # connections, unresolvable hosts): the user is registered but
            # not reachable now (RFC 3261 21.4.18). A phone that rang and
            # was not picked up keeps its 408.
            ctx.trace("failure route: {status}, no binding answered -> 480",
                      status=response.status)
            ctx.reply(480, "Temporarily Unavailable")

    def within_dialog(self, ctx: RequestContext) -> None:
        req = ctx.request
        if ctx.loose_routed or req.routes:
            nat_service = self.core.modules.get(NAT)
            if nat_service is not None and not req.routes:
                # kamailio.cfg's route[DLGURI]: a Request-URI with an alias
                # (a NAT'ed party's Contact) goes to the address it names.
                dst = nat_service.dialog_target(req)
                if dst is not None:
                    ctx.trace("within dialog: alias in the Request-URI -> relay to {dst}", dst=dst)
                    ctx.relay([Destination(req.uri, dst=dst)])
                    return
            ctx.trace("within dialog: loose-routed -> relay")
            ctx.relay()
            return
        if req.method == "ACK":
            # An ACK with no route and no transaction is for nobody here.
            ctx.trace("within dialog: ACK without route or transaction -> drop")
            ctx.drop()
            return
        ctx.trace("within dialog: not routed to us -> 404 Not here")
        ctx.reply(404, "Not here")
