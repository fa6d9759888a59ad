"""The response context of a stateful proxy (RFC 3261 16.7): the branches a
request was forked to, their answers, and the choice of what goes upstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipsuite.proxy.core.hookrun import run_hooks, run_script
from sipsuite.proxy.net.listener import PLACEHOLDER_VIA
from sipsuite.sip.builders import make_cancel
from sipsuite.sip.message import Request, Response, make_response

if TYPE_CHECKING:
    from sipsuite.proxy.core.proxy import ClientTx, ProxyCore, ServerTx
    from sipsuite.proxy.net.resolver import Target
    from sipsuite.proxy.routing.base import RequestContext
    from sipsuite.sip.uri import URI


class Branch:
    """One target of a (possibly forked) request."""

    __slots__ = (
        "response_ctx", "uri", "request", "targets", "target_index", "client",
        "sent", "provisional", "response", "done", "cancel_wanted",
        "cancel_sent",
    )

    def __init__(self, response_ctx: ResponseContext, uri: URI, request: Request) -> None:
        self.response_ctx = response_ctx
        self.uri = uri
        self.request = request  # the request as it leaves, without our Via
        self.targets: list[Target] = []
        self.target_index = 0
        self.client: ClientTx | None = None
        self.sent: Request | None = None  # as sent, with our Via
        self.provisional = False
        self.response: Response | None = None
        self.done = False
        self.cancel_wanted = False
        self.cancel_sent = False

    def __repr__(self) -> str:
        return f"<Branch {self.uri} done={self.done}>"


def _rank(status: int) -> tuple[int, int]:
    """Order for picking the best final answer (RFC 3261 16.7 step 6):
    6xx wins, then the lowest class; within a class the authentication
    challenges and answers the caller can act on come first."""
    cls = status // 100
    if cls == 6:
        return (0, 0)
    prefer = 0 if status in (401, 407, 415, 420, 484) else 1
    return (cls, prefer)


class ResponseContext:
    """Stateful forwarding of one server transaction to its branches: RFC
    3261 16.7's response context.  The script reaches it as ``ctx.response``
    (``request_ctx`` is that RequestContext); the core makes it at the first
    relay() of a transaction (or at a CANCEL that comes before one)."""

    __slots__ = (
        "core", "request_ctx", "server", "branches", "final_sent", "cancelled",
        "best", "best_local", "failure_hook_ran", "pending_routing", "failure_async",
        "reply_queue", "reply_current",
    )

    def __init__(self, core: ProxyCore, ctx: RequestContext, server: ServerTx) -> None:
        self.core = core
        self.request_ctx = ctx
        self.server = server
        self.branches: list[Branch] = []
        self.final_sent = False
        self.cancelled = False
        self.best: Response | None = None
        # The best answer was made here (no route, timeout), not downstream.
        self.best_local = False
        self.failure_hook_ran = 0
        # A failure_route is running (maybe awaiting): don't pick an answer yet.
        self.pending_routing = False  # failure_route is running
        self.failure_async = False  # ... and went on past run_failure_route's return
        # reply_route may be async and the answer waits for it: while one
        # runs, later answers of this transaction queue here so they still
        # go upstream in the order they came (a 180 must not overtake the
        # 183 whose SDP is being rewritten).  None: no hook running.
        self.reply_queue: list[tuple[Branch, Response]] | None = None
        self.reply_current: tuple[Branch, Response] | None = None

    @property
    def request(self) -> Request:
        return self.request_ctx.request

    @property
    def local_tag(self) -> str:
        """The To tag of an answer made here (a branch's timeout, no route),
        the tag the core gives its own answers to this transaction."""
        return self.core.local_tag(self.server.key, self.request)

    @property
    def is_invite(self) -> bool:
        return self.request_ctx.request.method == "INVITE"

    # -- responses from branches -----------------------------------------------
    def on_response(self, branch: Branch, resp: Response) -> None:
        # response_in (Kamailio's TMCB_RESPONSE_IN): every answer a branch
        # receives, as it arrives, before reply_route.
        hooks = self.core.hooks.response_in
        if hooks:
            ctx = self.request_ctx
            run_hooks("response_in", hooks, ctx.request, ctx.source, ctx, branch, resp)
        if self.reply_queue is not None:
            self.reply_queue.append((branch, resp))
            return
        self._reply_route(branch, resp)

    def _reply_route(self, branch: Branch, resp: Response) -> None:
        if branch.done and not (200 <= resp.status < 300 and self.is_invite):
            # Late answers from a branch we gave up on (timer C, CANCEL
            # guard): the caller already has its answer from us.  A late 2xx
            # still goes up (and through reply_route, which may rewrite its
            # SDP like the first one's).
            self._reply_routed()
            return
        self.reply_current = (branch, resp)
        if run_script("reply_route", self.request_ctx, self.core.routing.reply_route, branch,
                      resp, done=self._reply_routed) and self.reply_queue is None:
            # Still awaiting: answers that come meanwhile wait their turn.
            self.reply_queue = []

    def failure_routed(self) -> None:
        """failure_route ended (run_failure_route's ``done``)."""
        self.pending_routing = False
        if self.failure_async:
            self.failure_async = False
            self.check_complete()
        self.core.settle(self)  # the call may have been decided meanwhile

    def _reply_routed(self) -> None:
        current, self.reply_current = self.reply_current, None
        if current is not None:
            branch, resp = current
            if not branch.done:
                self._handle(branch, resp, local=False)
            elif 200 <= resp.status < 300 and self.is_invite:
                self._forward(resp)
        queue = self.reply_queue
        if not queue:
            if queue is not None:
                self.reply_queue = None
                self.core.settle(self)  # an async reply_route held the decision back
            return
        self._reply_route(*queue.pop(0))

    def _handle(self, branch: Branch, resp: Response, local: bool) -> None:
        status = resp.status
        if status < 200:
            branch.provisional = True
            if branch.cancel_wanted and not branch.cancel_sent:
                self.send_cancel(branch)
            if status > 100 and not self.final_sent:
                self._forward(resp)
            return
        branch.done = True
        branch.response = resp
        if status < 300:
            self._forward(resp)
            self.final_sent = True
            self.cancel_pending(reason="SIP;cause=200;text=\"Call completed elsewhere\"")
            return
        if self.best is None or _rank(status) < _rank(self.best.status):
            self.best = resp
            self.best_local = local
        if status >= 600:
            # 6xx ends the search (16.7 step 5): no new branches either.
            self.cancel_pending(reason=None)
        self.check_complete()

    def branch_failed(self, branch: Branch, status: int, reason: str | None = None) -> None:
        """A branch ended without an answer from downstream: timer B/C/F,
        nothing to send to, a transport error. Acts as if the status came
        back (RFC 3261 16.7 step 2 and 16.8)."""
        if branch.done:
            return
        base = branch.sent if branch.sent is not None else branch.request
        resp = make_response(base, status, reason, to_tag=self.local_tag)
        if branch.sent is None:
            # No Via of ours was added, so there is none to pop on the way up;
            # add a placeholder the forwarder removes.
            resp.add_header("Via", PLACEHOLDER_VIA, top=True)
        self._handle(branch, resp, local=True)

    def check_complete(self) -> None:
        if self.final_sent or self.pending_routing:
            return
        if any(not b.done for b in self.branches):
            return
        best = self.best
        if best is None:
            return
        if self.cancelled and best.status == 408:
            best = self._local(487, "Request Terminated")
        if self.failure_hook_ran != len(self.branches):
            # Once per round of branches: new branches started here end in
            # another round, which gets its own failure_route call.  A 6xx
            # ends the search among the branches it raced (16.7 step 5), but
            # failure_route still sees it, as Kamailio's does: a gateway's
            # 603 may be its own trouble, and the dispatcher fails over.  A
            # CANCELed request gets its call too (Kamailio's t_is_canceled()
            # case): relay() starts nothing then, but the routing cleans up
            # what the call held (a relay session) even when no branch ever
            # answered.
            self.failure_hook_ran = len(self.branches)
            if self.core.run_failure_route(self, best):
                return
        if self.final_sent:
            return
        if best.status == 503 and not self.best_local:
            # 16.7 step 6: a 503 from downstream means that server is
            # overloaded, not that we are: don't make the caller back off us.
            best = self._local(500, "Server Error")
        self.final_sent = True
        self._forward(best)

    def _local(self, status: int, reason: str) -> Response:
        resp = make_response(self.request, status, reason, to_tag=self.local_tag)
        resp.add_header("Via", PLACEHOLDER_VIA, top=True)
        return resp

    def _forward(self, resp: Response) -> None:
        # Our own Via is on top of every answer a branch gets (16.7 step 3).
        resp.pop_first_value("via")
        # The parsed list, which the pop kept: no scan of the lines.
        if not resp.vias:
            # A broken UAS answered with only our Via (it built the answer
            # from the CANCEL, say). 16.7 would drop it, leaving the caller
            # without a final answer and this transaction pending forever;
            # the caller's Vias are known, so restore them instead.
            for via in self.request.header_all("via"):
                resp.add_header("Via", via, top=False)
        self.core.send_upstream(self.server, resp)

    # -- cancellation -----------------------------------------------------------
    def cancel(self) -> None:
        """The caller CANCELed (16.10)."""
        self.cancelled = True
        if not self.branches and not self.final_sent:
            # Routing is still deciding (an async lookup): answer now; a
            # relay() that comes later sees cancelled and does nothing.
            self.final_sent = True
            self._forward(self._local(487, "Request Terminated"))
            return
        self.cancel_pending(reason=None)

    def cancel_pending(self, reason: str | None) -> None:
        if not self.is_invite:
            return
        for branch in self.branches:
            if branch.done or branch.cancel_wanted:
                continue
            branch.cancel_wanted = True
            if branch.provisional:
                self.send_cancel(branch, reason)
            else:
                # 9.1: no CANCEL before a provisional answer; it goes out
                # when one arrives, and the guard ends the branch otherwise.
                self.core.arm_cancel_guard(branch)

    def send_cancel(self, branch: Branch, reason: str | None = None) -> None:
        if branch.sent is None or branch.client is None:
            return
        branch.cancel_sent = True
        cancel = make_cancel(branch.sent)
        if reason:
            cancel.add_header("Reason", reason, top=False)
        self.core.send_cancel(branch, cancel)
        self.core.arm_cancel_guard(branch)


#: Deprecated: the class's name before it took RFC 3261 16.7's; kept for
#: routing scripts written against it.
ProxyContext = ResponseContext
