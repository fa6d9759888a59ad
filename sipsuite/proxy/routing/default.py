"""DefaultRouting: the default kamailio.cfg's request_route and its blocks, as a Routing.

Users subclass it and name their class in ``[proxy] routing``; its default,
``sipsuite.proxy.routing:DefaultRouting``, is this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.bindings import Binding, StoreUnavailable
from sipsuite.proxy.routing.base import DIALOG_CREATING, Destination, RequestContext, Routing
from sipsuite.proxy.routing.features import FeatureRoutes
from sipsuite.proxy.services import FLOWS, MEDIA, NAT
from sipsuite.sip.message import Response

if TYPE_CHECKING:
    from sipsuite.proxy.core.context import Branch


log = get_logger("sipsuite.proxy.routing")


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

        nat_service = self.core.modules.get(NAT)
        if nat_service is not None:
            # kamailio.cfg's route[NATDETECT]: remembered for the media
            # decision and the Record-Route's nat marker; the Contact of a
            # NAT'ed caller gets its real address as an alias.
            nat = nat_service.detect(ctx)
            if debug:
                self.trace(ctx, f"natdetect: from {ctx.source.host}:{ctx.source.port} "
                                + ("behind NAT" if nat else "not behind NAT"))

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
        flows = self.core.modules.get(FLOWS)
        reached = (await flows.destinations(user, bindings) if flows is not None
                   else [(b, Destination.of(b)) for b in bindings])
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
        if ctx.debug:
            rsp = ctx.response
            if rsp is None or not rsp.final_sent:
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
        rsp = ctx.response
        if rsp is not None and rsp.cancelled:
            return
        if rsp is not None and rsp.best_local and not any(b.provisional for b in rsp.branches):
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
            nat_service = self.core.modules.get(NAT)
            if nat_service is not None and not req.routes:
                # kamailio.cfg's route[DLGURI]: a Request-URI with an alias
                # (a NAT'ed party's Contact) goes to the address it names.
                dst = nat_service.dialog_target(req)
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
