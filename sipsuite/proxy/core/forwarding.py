"""The proxy core's downstream half: branches and what comes back on them.

Forwarding a request (RFC 3261 section 16.6: the copy, its Via, the target's
resolution and the client transaction), CANCEL, and the responses: matched to
their branch or forwarded statelessly (16.7, 16.11), and sent upstream on the
server transaction.  A mixin of :class:`~sipsuite.proxy.core.proxy.ProxyCore`,
which holds the state these methods use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sipsuite.hosts import is_ip, unbracket
from sipsuite.log import get_logger
from sipsuite.proxy.core.checks import BRANCH_TAG
from sipsuite.proxy.core.context import Branch, ResponseContext
from sipsuite.proxy.core.hookrun import run_hooks
from sipsuite.proxy.core.txlayer import _PENDING, ClientTx, ServerTx
from sipsuite.proxy.net.addresses import (
    is_unicast,
    record_route_value,
)
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.net.resolver import Target, named
from sipsuite.proxy.routing.base import RequestContext
from sipsuite.sip.message import REASONS, Request, Response
from sipsuite.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    TxState,
    cancel_target_key,
    client_key,
    new_branch,
)
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sipsuite.proxy.core.hooks import HookPoints
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.proxy.net.resolver import Resolver
    from sipsuite.proxy.net.transport import TransportLayer
    from sipsuite.sip.transaction import TimerSettings

log = get_logger("sipsuite.proxy.core")


class Forwarding:
    """Branches, CANCEL and responses (mixed into ProxyCore)."""

    # What these methods use of ProxyCore and of its other mixins
    # (RequestChecks, TransactionDriver), declared for the type checker.
    clock: IReactorTime
    timers: TimerSettings
    transport: TransportLayer
    resolver: Resolver
    hooks: HookPoints
    server_txs: dict[tuple, ServerTx]
    client_txs: dict[tuple, ClientTx]
    reply_classes: list[int]
    keepalive: Any  # features (modules/): the core does not import their types
    dispatcher: Any
    count: Callable[[str], None]
    call_hook: Callable[..., None]
    is_myself: Callable[[str, int | None], bool]
    _loop_hash: Callable[[Request], str]
    _run: Callable[[Any, list[Any]], None]
    _terminate: Callable[[Any], None]
    _server_answered: Callable[[ServerTx], None]
    _client_answered: Callable[[ClientTx], None]
    _reply_tx: Callable[[ServerTx, Request, int, str | None, list[tuple[str, str]]], None]

    # -- branches -------------------------------------------------------------------
    def _build_forward(self, req: Request, uri: URI, route: list[str] | None = None) -> Request:
        """16.6 steps 1-3, 7: copy, retarget, Max-Forwards, strict routes;
        ``route`` (a registered Path, RFC 3327) goes in front of any Route."""
        out = req.copy()
        if uri is not req.uri:
            out.uri = uri
        if route:
            for value in reversed(route):
                out.add_header("Route", value, top=True)
        mf = req.max_forwards
        out.set_header("Max-Forwards", str(mf - 1 if mf is not None else 70))
        routes = out.routes
        if routes and "lr" not in routes[0].uri.params:
            # 16.6 step 6/7: the next hop is a strict router: it wants its
            # own URI as Request-URI and the real target at the end of Route.
            out.add_header("Route", f"<{out.uri}>", top=False)
            out.uri = routes[0].uri
            out.pop_first_value("route")
        return out

    def _next_hop(self, req: Request) -> URI:
        routes = req.routes
        return routes[0].uri if routes else req.uri

    def _start_branch(self, rsp: ResponseContext, uri: URI, route: list[str] | None = None,
                      dst: Target | URI | None = None) -> None:
        req = self._build_forward(rsp.request, uri, route)
        branch = Branch(rsp, uri, req)
        rsp.branches.append(branch)
        self.call_hook("branch_route", rsp.request_ctx, branch)
        hooks = self.hooks.branch_out
        if hooks:
            ctx = rsp.request_ctx
            run_hooks("branch_out", hooks, ctx.request, ctx.source, ctx, branch)
        self._resolve(branch.request, lambda targets: self._branch_targets(branch, targets), dst)

    def _resolve(self, req: Request, then: Any, dst: Target | URI | None = None) -> None:
        if isinstance(dst, URI):
            # A next hop named by URI (the script's ctx.dst_uri, Kamailio's
            # $du): RFC 3263 for it instead of the Request-URI or Route.
            self._resolve_hop(dst, then)
            return
        if dst is not None:
            # A fixed destination (Kamailio's $du): a NAT'ed phone's source address.
            then([dst])
            return
        self._resolve_hop(self._next_hop(req), then)

    def resolve(self, uri: URI) -> Deferred[list[Target]]:
        """api.CoreAPI.resolve: RFC 3263 for ``uri`` (maddr, transport and sips
        honoured), the way a branch to it would go; never errbacks."""
        d: Deferred[list[Target]] = Deferred()
        self._resolve_hop(uri, d.callback)
        return d

    def _resolve_hop(self, hop: URI, then: Any) -> None:
        if hop.scheme not in ("sip", "sips"):
            then([])
            return
        host = hop.params.get("maddr") or hop.host
        transport = (hop.params.get("transport") or "").lower() or None
        secure = hop.scheme == "sips"
        if is_ip(host) and not secure:
            then([Target(transport or "udp", unbracket(host),
                         hop.port or (5061 if transport == "tls" else 5060))])
            return
        d = self.resolver.resolve(host, hop.port, transport, secure)
        d.addCallback(lambda targets: then(named(targets, unbracket(host))))

        def failed(f: Failure) -> None:
            log.failure("resolving {h}", f, h=host)
            then([])

        d.addErrback(failed)

    def _branch_targets(self, branch: Branch, targets: list[Target]) -> None:
        branch.targets = [t for t in targets if t.transport in ("udp", "tcp", "tls")]
        if branch.done:
            return
        if branch.response_ctx.cancelled or branch.cancel_wanted:
            branch.response_ctx.branch_failed(branch, 487, "Request Terminated")
            return
        self._try_target(branch)

    def _try_target(self, branch: Branch) -> None:
        rsp = branch.response_ctx
        while branch.target_index < len(branch.targets):
            target = branch.targets[branch.target_index]
            branch.target_index += 1
            source = rsp.server.source
            listener = target.listener or self.transport.pick_listener(
                target.transport, target.host, source.listener, source.host)
            if listener is None:
                continue
            self._send_branch(branch, target, listener)
            return
        rsp.branch_failed(branch, 503, "Service Unavailable")

    def _send_branch(self, branch: Branch, target: Target, listener: Listener) -> None:
        rsp = branch.response_ctx
        req = branch.request.copy()
        call = rsp.request_ctx.call
        if call.record_route:
            inbound = rsp.server.source.listener
            # Parameters after ;lr that modules asked for (nathelper's
            # add_rr_param(";nat=yes") for a caller behind NAT).
            params = "".join(f";{p}" for p in call.rr_params)
            # RFC 3261 16.6 step 4: a sips Request-URI gets a sips Record-Route.
            sips = rsp.request.uri.scheme == "sips"
            if inbound is not listener:
                req.add_header("Record-Route", record_route_value(inbound, params, sips), top=True)
            req.add_header("Record-Route", record_route_value(listener, params, sips), top=True)
        branch_id = f"{BRANCH_TAG}{self._loop_hash(rsp.request)}.{new_branch()[7:]}"
        siblings = self.transport.siblings
        if siblings is not None and target.transport != "udp":
            # A worker's: a sibling holding the connection it goes over
            # passes the answers back by this mark (net/siblings.py).
            branch_id += siblings.mark
        req.add_header("Via", listener.via(branch_id), top=True)
        branch.sent = req
        reliable = target.transport != "udp"
        if req.method == "INVITE":
            tx: Any = ClientInviteTransaction(req, reliable, self.timers, use_timer_c=True,
                                              branch=branch_id)
        else:
            tx = ClientNonInviteTransaction(req, reliable, self.timers, branch=branch_id)
        key = (branch_id, req.method)
        holder = ClientTx(tx, key, branch, target, listener)
        branch.client = holder
        self.client_txs[key] = holder
        self._run(holder, tx.start(self.clock.seconds()))

    def send_cancel(self, branch: Branch, cancel: Request) -> None:
        parent = branch.client
        if parent is None:
            return
        tx = ClientNonInviteTransaction(cancel, parent.target.transport != "udp", self.timers)
        key = (cancel.top_via.branch, "CANCEL")
        holder = ClientTx(tx, key, branch, parent.target, parent.listener)
        holder.is_cancel = True
        self.client_txs[key] = holder
        self._run(holder, tx.start(self.clock.seconds()))

    def arm_cancel_guard(self, branch: Branch) -> None:
        """9.1: give up on a CANCELed branch 64*T1 after the CANCEL if no
        final answer comes (the transaction's timer B is the backstop)."""
        holder = branch.client
        if holder is not None and holder.alive:
            self._run(holder, holder.tx.mark_cancelled(self.clock.seconds()))

    # -- CANCEL (16.10) ----------------------------------------------------------
    def _cancel(self, cancel: Request, holder: ServerTx) -> None:
        target = self.server_txs.get(cancel_target_key(cancel))
        if target is None or target.tx.state != TxState.PROCEEDING:
            self._reply_tx(holder, cancel, 481, "Call/Transaction Does Not Exist", [])
            return
        self._reply_tx(holder, cancel, 200, "OK", [])
        rsp = target.response_ctx
        if rsp is None:
            # Routing has not relayed yet (async lookup in flight).
            if target.request_ctx is not None:
                core = cast("ProxyCore", self)  # the ProxyCore this is mixed into
                rsp = target.response_ctx = ResponseContext(core, target.request_ctx, target)
                target.request_ctx.response = rsp
            else:
                return
        rsp.cancel()

    # -- responses --------------------------------------------------------------
    def receive_response(self, resp: Response, source: Source) -> None:
        self.count("responses")
        holder = self.client_txs.get(client_key(resp))
        if holder is None:
            siblings = self.transport.siblings
            if (siblings is not None and source.transport != "udp"
                    and siblings.pass_response(resp, source)):
                return  # another worker's request went out on our connection
            self._forward_response_stateless(resp)
            return
        tx = holder.tx
        self._run(holder, tx.receive(resp, self.clock.seconds()))
        if resp.status >= 200 and not holder.finished and tx.state not in _PENDING:
            self._client_answered(holder)

    def _forward_response_stateless(self, resp: Response) -> None:
        """16.11 / 18.1.2: answers to nothing we know are sent on only when
        the top Via is ours, and never to broadcast or multicast."""
        vias = resp.vias
        top = vias[0]
        if not (top.branch or "").startswith(BRANCH_TAG) or not self.is_myself(top.host, top.port):
            self.count("drop.response.foreign")
            return
        if len(vias) < 2:
            return
        nxt = vias[1]
        host = nxt.received or unbracket(nxt.host)
        if not is_unicast(host):
            self.count("drop.response.broadcast")
            return
        port = int(nxt.rport) if nxt.rport else (nxt.port or 5060)
        resp.pop_first_value("via")
        transport = nxt.transport.lower()
        listener = self.transport.pick_listener(transport, host, None)
        if listener is None or not is_ip(host):
            return
        self.reply_classes[resp.status // 100 % 7] += 1
        self.transport.send(resp.to_bytes(), transport, host, port, listener)

    def _forward_stateless(self, ctx: RequestContext, uri: URI, route: list[str] | None = None,
                           dst: Target | URI | None = None) -> None:
        """ACK for a 2xx (16.11): no transaction, a branch derived from the
        incoming one so retransmissions keep it."""
        req = self._build_forward(ctx.request, uri, route)

        def send(targets: list[Target]) -> None:
            for target in targets:
                if target.transport not in ("udp", "tcp", "tls"):
                    continue
                listener = target.listener or self.transport.pick_listener(
                    target.transport, target.host, ctx.source.listener, ctx.source.host)
                if listener is None:
                    continue
                seed = (ctx.request.top_via.branch or "") + str(ctx.request.uri)
                branch = BRANCH_TAG + "0" + hashlib.blake2s(seed.encode("utf-8", "surrogateescape"),
                                                            digest_size=8).hexdigest()
                out = req.copy()
                out.add_header("Via", listener.via(branch), top=True)
                self.transport.send(out.to_bytes(), target.transport, target.host, target.port, listener,
                                    target.name, connect=target.listener is None)
                return

        self._resolve(req, send, dst)

    # -- sending upstream -----------------------------------------------------------
    def send_upstream(self, holder: ServerTx, resp: Response) -> None:
        if not holder.alive or holder.finished:
            # Finished: the call was decided and its context released; a
            # repeated 2xx goes up through _relay_2xx_again instead.
            return
        req = holder.tx.request  # gone from the holder once the final is out
        self._send_response(holder, resp)
        if resp.status >= 200:
            log.info("{m} {u} from {s} -> {st} {r} (call-id {c})", m=req.method, u=req.uri,
                     s=holder.source, st=resp.status, r=resp.reason, c=req.call_id)

    def _send_response(self, holder: ServerTx, resp: Response) -> None:
        self.reply_classes[resp.status // 100 % 7] += 1
        call = holder._call
        if call is not None and call.upstream_fix is not None:
            call.upstream_fix(resp)
        tx = holder.tx
        self._run(holder, tx.send(resp, self.clock.seconds()))
        if holder.finished:
            return  # its request and CallState are gone: no hook to show them to
        status = resp.status
        if status >= 200 and tx.state == TxState.ACCEPTED and status < 300:
            # Kept for the callee's repeats of this 2xx (_relay_2xx_again).
            answers = holder.answers
            if answers is None:
                answers = holder.answers = {}
            answers[resp.to_tag] = holder.sent
        hooks = self.hooks.response_out
        if hooks:
            run_hooks("response_out", hooks, tx.request, holder.source, holder, resp)
        if status >= 200 and tx.state not in _PENDING:
            self._server_answered(holder)

    def _wire_response(self, holder: ServerTx, data: bytes) -> None:
        src = holder.source
        host, port = holder.dest  # txlayer.response_dest
        if src.transport == "udp":
            self.transport.send(data, "udp", host, port, src.listener)
            return
        conn = src.connection
        if conn is not None and not conn.closed:
            self.transport.send_on(data, conn)
            return
        # 18.2.2: the connection is gone; open one to the sent-by.
        self.transport.send(data, src.transport, host, port, src.listener)

    def _timeout(self, holder: Any, timer: str) -> None:
        if isinstance(holder, ServerTx):
            return  # H: no ACK came; nothing to tell anybody.
        if holder.is_cancel:
            return
        branch = holder.branch
        log.info("timer {t} fired for {m} to {u} (call-id {c})", t=timer, m=holder.tx.request.method,
                 u=branch.uri, c=holder.tx.request.call_id)
        if timer == "C":
            self.count("timer_c")
            if branch.provisional:
                branch.response_ctx.send_cancel(branch)
            else:
                # Nothing answered: the transaction goes, as if 408 came (16.8).
                self._terminate(holder)
            branch.response_ctx.branch_failed(branch, 408, "Request Timeout")
            return
        status = 487 if branch.cancel_wanted else 408
        branch.response_ctx.branch_failed(branch, status, REASONS.get(status))

    def _tcp_connect_failed(self, host: str, port: int) -> None:
        """A TCP next hop refused or timed out the connection: every branch
        waiting on it fails over now instead of waiting for timer B/F."""
        for holder in list(self.client_txs.values()):
            t = holder.target
            if holder.alive and t.transport in ("tcp", "tls") and t.host == host and t.port == port:
                self._client_transport_error(holder)

    def _client_transport_error(self, holder: ClientTx) -> None:
        if holder.is_cancel or not holder.alive:
            return
        self._terminate(holder)  # a LocalTx's Deferred fires None here
        branch = holder.branch
        if branch is None or branch.done:
            return
        self.count("transport_errors")
        # RFC 3263 4.3: try the next address of the same next hop.
        self._try_target(branch)
