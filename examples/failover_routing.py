"""An example routing class: what a Kamailio user would write as
``route[...]``, ``branch_route[...]``, ``onreply_route[...]`` and
``failure_route[...]`` blocks, here as methods of a DefaultRouting subclass.

Name it in the config to use it::

    [proxy]
    routing = "examples.failover_routing:FailoverRouting"

- calls to ``gw`` go to the primary gateway; when it answers 5xx or does
  not answer (408), failure_route sends the call on to the backup;
- ``slow`` shows an async hook that waits (for a Deferred) before relaying;
- every branch carries an ``X-Branch`` header, every reply is counted.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task

from sipsuite.proxy import DefaultRouting, RequestContext


class FailoverRouting(DefaultRouting):
    # Gateways by user: primary first; the test config fills these in.
    gateways: dict[str, list[str]] = {}

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self.replies = 0
        static = core.config.location_static
        self.gateways = {"gw": static.get("gw-primary", []) + static.get("gw-backup", [])}

    async def request_route(self, ctx: RequestContext) -> None:
        user = ctx.request.uri.user
        if user == "gw" and not ctx.in_dialog:
            ctx.record_route()
            ctx.vars["gateways"] = list(self.gateways["gw"][1:])
            ctx.relay(self.gateways["gw"][:1])
            return
        if user == "slow" and not ctx.in_dialog:
            # Any Deferred may be awaited: a database or HTTP lookup, say.
            await task.deferLater(reactor, 0.2, lambda: None)
            ctx.reply(480, "Temporarily Unavailable")
            return
        await super().request_route(ctx)

    def branch_route(self, ctx: RequestContext, branch: Any) -> None:
        branch.request.add_header("X-Branch", str(branch.uri), top=False)

    def reply_route(self, ctx: RequestContext, branch: Any, response: Any) -> None:
        self.replies += 1

    def failure_route(self, ctx: RequestContext, response: Any) -> None:
        left = ctx.vars.get("gateways")
        # 408 and 5xx are this gateway's trouble; a 6xx (busy or declined
        # everywhere) is the callee's answer and goes to the caller.
        if left and (500 <= response.status < 600 or response.status == 408):
            ctx.vars["gateways"] = left[1:]
            ctx.relay(left[:1])
