"""An example routing class: calls to numbers with a prefix, or to a
gateway domain, go to a dispatcher set (Kamailio's ds_select_dst /
ds_next_dst in route[DISPATCH] and failure_route[RTF_DISPATCH]).

    [proxy]
    routing = "examples.dispatcher_routing:DispatcherRouting"

    [dispatcher]
    list_file = "/etc/sipsuite/dispatcher.list"   # 1 sip:192.0.2.10:5060 ...
    probe_interval = 10.0

Everything else is the default routing. Subclass it to change ``prefix``,
``domain``, ``setid`` or ``algorithm``.

The dispatcher module provides the DISPATCHER service when ``[dispatcher]``
names destinations (``self.core.modules.get(DISPATCHER)`` is None
otherwise); it counts the calls of algorithm 10 from the answers itself,
and only the end of a call (BYE) comes from here.
"""

from __future__ import annotations

from typing import Any

from sipsuite.proxy import DISPATCHER, NAT, DefaultRouting, RequestContext


class DispatcherRouting(DefaultRouting):
    # Request-URI users starting with this (E.164 numbers) go to the set...
    prefix = "+"
    # ...and so does any request for this domain ("" = none).
    domain = "pstn.sipsuite.test"
    setid = 1
    # Kamailio's number or its name: 0 hash-callid, 1 hash-from, 2 hash-to,
    # 3 hash-ruri, 4 round-robin, 8 priority, 9 weight, 10 least-calls.
    algorithm: int | str = "round-robin"

    def to_gateways(self, ctx: RequestContext) -> bool:
        uri = ctx.request.uri
        if ctx.in_dialog or ctx.method in ("REGISTER", "ACK", "CANCEL"):
            return False
        return bool((uri.user and uri.user.startswith(self.prefix))
                    or (self.domain and uri.host.lower() == self.domain))

    async def request_route(self, ctx: RequestContext) -> None:
        ds = self.core.modules.get(DISPATCHER)
        if ds is None:
            await super().request_route(ctx)
            return
        if ctx.method == "BYE":
            ds.call_ended(ctx.request.call_id)  # the active-call count of algorithm 10
        if not self.to_gateways(ctx):
            await super().request_route(ctx)
            return
        # The default script's steps first: NAT detection, authentication
        # ([features] auth: a caller of ours must authenticate, trusted
        # networks need not), no pre-loaded Route.
        req = ctx.request
        ctx.debug = self.config.features.debug
        nat = self.core.modules.get(NAT)  # None unless [features] nat
        if nat is not None:
            nat.detect(ctx)  # and the Contact's alias, our Record-Route's ;nat=yes
        if not await self.authenticate(ctx, False):
            return
        if not (self.pstn_allowed(ctx) or ctx.source_trusted()):
            # Gateways cost money: only our own users (authenticated when
            # auth is on) and trusted networks, as route[PSTN] allows.
            ctx.trace("dispatcher: caller not ours and not trusted -> 403")
            ctx.reply(403, "Not Allowed")
            return
        if req.has_header("route"):
            req.remove_header("route")
        ctx.record_route()
        await self.media_offer(ctx)
        if not ds.relay(ctx, self.setid, self.algorithm):
            ctx.trace("dispatcher: set {setid} has no usable destination -> 503", setid=self.setid)
            await self._media_delete(ctx)  # the offer made above goes nowhere
            ctx.reply(503, "No Gateway Available")
            return
        attempt = ds.attempt(ctx)
        d = attempt.current if attempt is not None else None
        ctx.trace("dispatcher: set {setid} ({alg}) -> {dest}", setid=self.setid,
                  alg=self.algorithm, dest=d.uri if d is not None else "-")

    def failure_route(self, ctx: RequestContext, response: Any) -> Any:
        ds = self.core.modules.get(DISPATCHER)
        # Timeout, 408, 5xx, 6xx: the next gateway of the set; when none is
        # left the best answer goes upstream.
        if ds is not None and ds.attempt(ctx) is not None and ds.next(ctx, response):
            return None
        return super().failure_route(ctx, response)
