"""The transaction-stateful proxy core (RFC 3261 section 16).

Messages come in from the transports; requests are validated (16.3),
their Route set preprocessed (16.4) and handed to the routing class; what
the routing decides is carried out here: answers, and branches forwarded
through client transactions (16.6) whose answers the response context
(``context.py``) weighs (16.7).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.proxy.core.checks import BRANCH_TAG, RequestChecks
from sipsuite.proxy.core.context import Branch, ProxyContext
from sipsuite.proxy.core.hookerrors import answer_for, hook_failed
from sipsuite.proxy.core.timers import TimerHeap
from sipsuite.proxy.core.txlayer import ClientTx, ServerTx, TransactionDriver
from sipsuite.proxy.media.manager import MediaManager
from sipsuite.proxy.modules.accounting import Accounting
from sipsuite.proxy.modules.antiflood import RequestGuard
from sipsuite.proxy.modules.auth import Authenticator
from sipsuite.proxy.modules.natping import KEEPALIVE_BRANCH, NatKeepalive
from sipsuite.proxy.net.addresses import (
    guess_address,
    is_unicast,
    local_addresses,
    record_route_value,
    split_advertise,
    via_text,
)
from sipsuite.proxy.net.resolver import Resolver, Target, named
from sipsuite.proxy.net.transport import (
    Listener,
    Source,
    TransportLayer,
    is_ip,
    strip_brackets,
)
from sipsuite.proxy.registrar.location import (
    Binding,
    LocationStore,
    MemoryLocationStore,
    MemorySubscriberStore,
    StaticLocationStore,
    SubscriberStore,
    current,
)
from sipsuite.proxy.registrar.outbound import Flows
from sipsuite.proxy.registrar.registrar import Registrar
from sipsuite.proxy.routing.base import Destination, RequestContext, Routing
from sipsuite.proxy.routing.driver import drive
from sipsuite.proxy.routing.loader import make_routing
from sipsuite.sip.headers import Via
from sipsuite.sip.message import REASONS, Request, Response, make_response
from sipsuite.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TimerSettings,
    cancel_target_key,
    client_key,
    local_tag,
    new_branch,
    server_key,
)
from sipsuite.sip.uri import URI
from sipsuite.startup import cannot_listen, show_address

log = get_logger("sipsuite.proxy.core")

#: Methods counted by name in ``method_stats``; any other counts as "OTHER".
COUNTED_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "REFER",
    "MESSAGE", "INFO", "PRACK", "UPDATE", "PUBLISH",
})


class ProxyCore(RequestChecks, TransactionDriver):
    def __init__(self, config: Any, reactor: Any, resolver: Resolver | None = None,
                 location: LocationStore | None = None,
                 subscribers: SubscriberStore | None = None) -> None:
        self.config = config
        self.clock = reactor
        self.timer_heap = TimerHeap(reactor)
        p = config.proxy
        self.timers = TimerSettings(
            t1=config.timers.t1, t2=config.timers.t2, t4=config.timers.t4,
            timer_c=config.timers.timer_c,
        )
        self.transport = TransportLayer(reactor, self.receive, p.tcp_idle_timeout)
        self.transport.configure(p)
        self.transport.on_connection_failed = self._tcp_connect_failed
        if resolver is None:
            dns = None
            if p.dns_servers:
                from twisted.names import client

                dns = client.Resolver(servers=list(p.dns_servers), reactor=reactor)
            tls = {"tls"} if any(s.transport == "tls" for s in p.listen) else set()
            resolver = Resolver(reactor, timeout=p.dns_timeout, resolver=dns,
                                transports=frozenset({"udp", "tcp", *tls}))
        self.resolver = resolver
        self.location: LocationStore = location if location is not None else MemoryLocationStore()
        self.subscribers: SubscriberStore = (
            subscribers if subscribers is not None else MemorySubscriberStore()
        )
        # [location.static] entries live beside the store, never in it: they
        # are config, and must not be written to a Redis that other nodes share.
        self.static = StaticLocationStore(config.location_static) if config.location_static else None
        self.registrar = Registrar(self.location, config.registrar)
        self.auth = Authenticator(self.subscribers, config.auth,
                                  retry_after=config.registrar.retry_after)
        self.keepalive = NatKeepalive(self, config.nat, self.registrar.clock)
        self.flows = Flows(self, config.auth.secret)
        self.registrar.flows = self.flows
        self.transport.stun = lambda: self.config.registrar.outbound
        self.registrar.on_nat = self.keepalive.track
        self.domains = {d.lower() for d in p.domains}
        self.trusted = list(p.trusted)
        self.addresses: set[str] = set()
        self.ports: set[int] = set()
        self.server_txs: dict[tuple, ServerTx] = {}
        self.client_txs: dict[tuple, ClientTx] = {}
        # The key of the To tags of the answers this proxy makes itself
        # (local_tag): one tag per transaction, the same for its retransmissions.
        self.tag_secret = secrets.token_bytes(16)
        self.server_header = p.server_header
        self.stats: dict[str, int] = {}
        # Per-method requests and per-class replies sent (liveops stats,
        # /metrics): a dict and a list increment per message, nothing more.
        self.method_stats: dict[str, int] = {}
        self.reply_classes = [0] * 7  # index = status // 100, 1..6 used
        self.started_at = reactor.seconds()
        # The media manager ([features] nat with a relay); set by the service
        # wiring, which owns the relay client.  None: media is never touched.
        self.media: MediaManager | None = None
        # The dispatcher (sipsuite.proxy.modules.dispatcher.dispatcher) when [dispatcher] names
        # destinations; set by the service wiring.
        self.dispatcher: Any = None
        self.routing: Routing = make_routing(self)
        self.guard = RequestGuard(self)
        self.accounting = Accounting(self)
        # Set while the suite drains (sipsuite.drain): when the drain ends at the latest.
        self.drain_deadline: float | None = None

    # -- set-up ------------------------------------------------------------------
    def start(self) -> None:
        self.listen()
        self.keepalive.start()

    def listen(self) -> None:
        """Bind the [proxy] listen sockets (once: twistd binds them before it
        daemonises, start() after); StartupError names a socket that is taken."""
        if self.transport.listeners:
            return
        p = self.config.proxy
        # A wildcard listener advertises the address each message reached
        # (TransportLayer.local_listener); those addresses are ours too.
        self.transport.on_local_address = lambda addr: self.addresses.add(addr.lower())
        for spec in p.listen:
            adv_host, adv_port = split_advertise(p.advertise)
            advertise = adv_host or spec.host
            if advertise in ("0.0.0.0", "::"):
                # Only where no local address is known (see localaddr).
                advertise = guess_address(spec.host)
            listener = Listener(spec.transport, spec.host, spec.port, advertise, adv_port,
                                pinned=bool(adv_host))
            try:
                self.transport.listen(listener)
            except CannotListenError as exc:
                raise cannot_listen(show_address(spec.transport, spec.host, spec.port),
                                    exc) from None
            self.ports.add(listener.port)
            if adv_port:
                self.ports.add(adv_port)
            self.addresses.add(advertise.lower())
            if spec.host in ("0.0.0.0", "::"):
                self.addresses.update(local_addresses())
            else:
                self.addresses.add(spec.host.lower())
            log.info("listening on {l} (advertised as {a})", l=listener,
                     a="the address each message reaches" if spec.host in ("0.0.0.0", "::")
                     and not adv_host else listener.sent_by())

    def start_drain(self, deadline: float) -> None:
        """Stopping with calls up: requests outside a dialog get 503 from now on."""
        self.drain_deadline = deadline

    def stop(self) -> list[Any]:
        self.keepalive.stop()
        self.accounting.stop()
        for holder in list(self.server_txs.values()) + list(self.client_txs.values()):
            self._cancel_timers(holder)
        self.timer_heap.stop()
        return self.transport.stop()

    async def lookup(self, user: str) -> list[Binding]:
        found = await self.location.lookup(user)
        if self.static is not None:
            fixed = await self.static.lookup(user)
            if fixed:
                return current(fixed + found, self.registrar.clock())
        return found

    def local_tag(self, key: tuple, req: Request) -> str:
        """The To tag of our own answer to ``req``, whose server_key() is ``key``."""
        return local_tag(self.tag_secret, key, req)

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    # -- input ---------------------------------------------------------------------
    def receive(self, msg: Request | Response, source: Source) -> None:
        if isinstance(msg, Response):
            self.receive_response(msg, source)
        else:
            self.receive_request(msg, source)

    def receive_request(self, req: Request, source: Source) -> None:
        self.count("requests")
        if not self.guard.admit(req, source):
            return  # antiflood ban or scanner: no answer at all (antiflood.py)
        via = self._mark_via(req, source)
        method = req.method
        # Unknown method names are lumped together: a flood of made-up
        # methods must not grow the table.
        counted = method if method in COUNTED_METHODS else "OTHER"
        self.method_stats[counted] = self.method_stats.get(counted, 0) + 1
        if method == "ACK":
            key = server_key(req)
            holder = self.server_txs.get(key)
            if holder is not None and holder.tx.state in ("completed", "confirmed"):
                self._run(holder, holder.tx.receive(req, self.clock.seconds()))
                return
            if holder is None and req.to_tag == self.local_tag(key, req):
                # The ACK of an answer we made, come after its transaction
                # ended: it is ours, never to be routed (Kamailio's sl filter).
                return
            self._route(req, source, None)
            return
        key = server_key(req)
        holder = self.server_txs.get(key)
        if holder is not None:
            # A retransmission: the transaction re-sends its last answer.
            self.count("retransmissions")
            self._run(holder, holder.tx.receive(req, self.clock.seconds()))
            return
        reliable = source.transport != "udp"
        if method == "INVITE":
            tx: Any = ServerInviteTransaction(req, reliable, self.timers)
        else:
            tx = ServerNonInviteTransaction(req, reliable, self.timers)
        holder = ServerTx(tx, key, source, via)
        self.server_txs[key] = holder
        if method == "INVITE":
            # 16.2: a stateful proxy answers 100 at once so the caller stops
            # retransmitting while we route.
            self._send_response(holder, make_response(req, 100, "Trying"))
        if method == "CANCEL":
            self._cancel(req, holder)
            return
        self._route(req, source, holder)

    def _mark_via(self, req: Request, source: Source) -> Via:
        """RFC 3261 18.2.1 received and RFC 3581 rport on the top Via."""
        via = req.top_via
        if source.transport != "udp" and via.rport is None:
            return via
        changed = False
        if strip_brackets(via.host) != source.host:
            via.params["received"] = source.host
            changed = True
        if via.rport is not None and via.rport != str(source.port):
            via.params["rport"] = str(source.port)
            changed = True
        if changed:
            req.pop_first_value("via")
            req.add_header("Via", via_text(via), top=True)
        return via

    # -- 16.3 validation, 16.4 route preprocessing, then the routing class --------
    def _route(self, req: Request, source: Source, holder: ServerTx | None) -> None:
        error = self._validate(req)
        if error is not None:
            status, reason, headers = error
            if holder is not None:
                self._reply_tx(holder, req, status, reason, headers)
            return
        if self.drain_deadline is not None and holder is not None and req.to_tag is None:
            # Stopping: calls up keep their in-dialog requests (sipsuite.drain);
            # new work goes elsewhere (RFC 3263 4.3 on 503) or comes back later.
            self.count("drain.refused")
            wait = max(1, math.ceil(self.drain_deadline - self.clock.seconds()))
            self._reply_tx(holder, req, 503, "Service Unavailable", [("Retry-After", str(wait))])
            return
        flow = self.flows.route_flow(req)
        loose = self._preprocess_routes(req)
        rctx = RequestContext(self, req, source, loose)
        if holder is not None:
            holder.rctx = rctx
            rctx.tx_key = holder.key
        if flow is not None:
            # Our flow token in the Route: another node (or our registrar
            # part) routed this to a phone's flow we hold (RFC 5626 5.3).
            self.flows.forward(rctx, flow)
            return
        try:
            result = self.routing.request_route(rctx)
        except Exception:  # noqa: BLE001 - a script bug must not kill the proxy
            self._routing_error(rctx, Failure())
            return
        drive(result, lambda: self._routing_done(rctx), lambda f: self._routing_error(rctx, f))

    def _routing_error(self, rctx: RequestContext, failure: Failure) -> None:
        # One warning line, not a critical traceback: see hookerrors.
        status, reason, headers = answer_for(failure.value)
        answered = None if rctx.handled or rctx.request.method == "ACK" else status
        hook_failed("request_route", rctx.request, rctx.source, failure, answered)
        if answered is not None:
            rctx.reply(status, reason, headers)

    def _routing_done(self, rctx: RequestContext) -> None:
        if not rctx.handled and rctx.request.method != "ACK":
            log.warn("routing ended without an answer for {m} {u}; answering 500",
                     m=rctx.request.method, u=rctx.request.uri)
            rctx.reply(500, "Server Internal Error")

    # -- actions requested by the routing ---------------------------------------
    def reply(self, rctx: RequestContext, status: int, reason: str | None,
              headers: list[tuple[str, str]]) -> None:
        req = rctx.request
        if req.method == "ACK":
            return
        key = rctx.tx_key
        holder = self.server_txs.get(key if key is not None else server_key(req))
        if holder is None:
            return
        ctx = holder.context
        if ctx is not None and ctx.pending_routing:
            # Answer from failure_route: it replaces the best response.
            ctx.final_sent = True
        self._reply_tx(holder, req, status, reason, headers)

    def _reply_tx(self, holder: ServerTx, req: Request, status: int, reason: str | None,
                  headers: list[tuple[str, str]]) -> None:
        tag = self.local_tag(holder.key, req) if status > 100 and req.to_tag is None else None
        if self.server_header:
            headers = [*headers, ("Server", self.server_header)]
        resp = make_response(req, status, reason or REASONS.get(status, ""), to_tag=tag,
                             headers=headers)
        self._send_response(holder, resp)
        log.info("{m} {u} from {s} answered {st} {r} (call-id {c})", m=req.method, u=req.uri,
                 s=holder.source, st=status, r=resp.reason, c=req.call_id)

    def relay(self, rctx: RequestContext, targets: list[URI | Destination]) -> None:
        req = rctx.request
        if req.method == "ACK":
            for target in targets:
                if isinstance(target, Destination):
                    self._forward_stateless(rctx, target.uri, target.route, target.dst)
                else:
                    self._forward_stateless(rctx, target)
            return
        key = rctx.tx_key
        holder = self.server_txs.get(key if key is not None else server_key(req))
        if holder is None:
            return
        ctx = holder.context
        if ctx is None:
            ctx = holder.context = ProxyContext(self, rctx, holder)
            rctx.proxy_ctx = ctx
        if ctx.cancelled or ctx.final_sent:
            return
        for target in targets:
            if isinstance(target, Destination):
                self._start_branch(ctx, target.uri, target.route, target.dst)
            else:
                self._start_branch(ctx, target)

    def call_hook(self, name: str, rctx: RequestContext, *args: Any) -> None:
        def failed(f: Failure) -> None:
            hook_failed(name, rctx.request, rctx.source, f)

        try:
            result = getattr(self.routing, name)(rctx, *args)
        except Exception:  # noqa: BLE001 - a script bug must not kill the proxy
            hook_failed(name, rctx.request, rctx.source)
            return
        drive(result, lambda: None, failed)

    def run_failure_route(self, ctx: ProxyContext, best: Response) -> bool:
        """Give failure_route its chance; True when it started new branches,
        answered itself, or is still running (it calls check_complete again)."""
        before = len(ctx.branches)
        ctx.pending_routing = True
        state = {"sync": True}

        def done() -> None:
            ctx.pending_routing = False
            if not state["sync"]:
                ctx.check_complete()

        def failed(f: Failure) -> None:
            hook_failed("failure_route", ctx.rctx.request, ctx.rctx.source, f)
            done()

        try:
            result = self.routing.failure_route(ctx.rctx, best)
        except Exception:  # noqa: BLE001
            hook_failed("failure_route", ctx.rctx.request, ctx.rctx.source)
            result = None
        drive(result, done, failed)
        if ctx.pending_routing:
            state["sync"] = False
            return True
        return len(ctx.branches) > before or ctx.final_sent

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

    def _start_branch(self, ctx: ProxyContext, uri: URI, route: list[str] | None = None,
                      dst: Target | None = None) -> None:
        req = self._build_forward(ctx.request, uri, route)
        branch = Branch(ctx, uri, req)
        ctx.branches.append(branch)
        self.call_hook("branch_route", ctx.rctx, branch)
        self._resolve(branch.request, lambda targets: self._branch_targets(branch, targets), dst)

    def _resolve(self, req: Request, then: Any, dst: Target | None = None) -> None:
        if dst is not None:
            # A fixed destination (Kamailio's $du): a NAT'ed phone's source address.
            then([dst])
            return
        hop = self._next_hop(req)
        if hop.scheme not in ("sip", "sips"):
            then([])
            return
        host = hop.params.get("maddr") or hop.host
        transport = (hop.params.get("transport") or "").lower() or None
        secure = hop.scheme == "sips"
        if is_ip(host) and not secure:
            then([Target(transport or "udp", strip_brackets(host),
                         hop.port or (5061 if transport == "tls" else 5060))])
            return
        d = self.resolver.resolve(host, hop.port, transport, secure)
        d.addCallback(lambda targets: then(named(targets, strip_brackets(host))))
        d.addErrback(lambda f: (log.failure("resolving {h}", f, h=host), then([])))

    def _branch_targets(self, branch: Branch, targets: list[Target]) -> None:
        branch.targets = [t for t in targets if t.transport in ("udp", "tcp", "tls")]
        if branch.done:
            return
        if branch.ctx.cancelled or branch.cancel_wanted:
            branch.ctx.branch_failed(branch, 487, "Request Terminated")
            return
        self._try_target(branch)

    def _try_target(self, branch: Branch) -> None:
        ctx = branch.ctx
        while branch.target_index < len(branch.targets):
            target = branch.targets[branch.target_index]
            branch.target_index += 1
            source = ctx.server.source
            listener = target.listener or self.transport.pick_listener(
                target.transport, target.host, source.listener, source.host)
            if listener is None:
                continue
            self._send_branch(branch, target, listener)
            return
        ctx.branch_failed(branch, 503, "Service Unavailable")

    def _send_branch(self, branch: Branch, target: Target, listener: Listener) -> None:
        ctx = branch.ctx
        req = branch.request.copy()
        rctx = ctx.rctx
        if rctx.vars.get("record_route"):
            inbound = ctx.server.source.listener
            # kamailio.cfg's add_rr_param(";nat=yes"): a caller behind NAT.
            params = ";nat=yes" if rctx.vars.get("nat") else ""
            # RFC 3261 16.6 step 4: a sips Request-URI gets a sips Record-Route.
            sips = ctx.request.uri.scheme == "sips"
            if inbound is not listener:
                req.add_header("Record-Route", record_route_value(inbound, params, sips), top=True)
            req.add_header("Record-Route", record_route_value(listener, params, sips), top=True)
        branch_id = f"{BRANCH_TAG}{self._loop_hash(ctx.request)}.{new_branch()[7:]}"
        req.add_header("Via", f"SIP/2.0/{listener.transport.upper()} {listener.sent_by()};branch={branch_id}",
                       top=True)
        branch.sent = req
        reliable = target.transport != "udp"
        if req.method == "INVITE":
            tx: Any = ClientInviteTransaction(req, reliable, self.timers, use_timer_c=True)
        else:
            tx = ClientNonInviteTransaction(req, reliable, self.timers)
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
        if target is None or target.tx.state != "proceeding":
            self._reply_tx(holder, cancel, 481, "Call/Transaction Does Not Exist", [])
            return
        self._reply_tx(holder, cancel, 200, "OK", [])
        ctx = target.context
        if ctx is None:
            # Routing has not relayed yet (async lookup in flight).
            if target.rctx is not None:
                ctx = target.context = ProxyContext(self, target.rctx, target)
                target.rctx.proxy_ctx = ctx
            else:
                return
        ctx.cancel()

    # -- responses --------------------------------------------------------------
    def receive_response(self, resp: Response, source: Source) -> None:
        self.count("responses")
        holder = self.client_txs.get(client_key(resp))
        if holder is None:
            if (resp.top_via.branch or "").startswith(KEEPALIVE_BRANCH):
                self.keepalive.response(resp)
                return
            if self.dispatcher is not None and self.dispatcher.probe_response(resp):
                return
            self._forward_response_stateless(resp)
            return
        self._run(holder, holder.tx.receive(resp, self.clock.seconds()))

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
        host = nxt.received or strip_brackets(nxt.host)
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

    def _forward_stateless(self, rctx: RequestContext, uri: URI, route: list[str] | None = None,
                           dst: Target | None = None) -> None:
        """ACK for a 2xx (16.11): no transaction, a branch derived from the
        incoming one so retransmissions keep it."""
        req = self._build_forward(rctx.request, uri, route)

        def send(targets: list[Target]) -> None:
            for target in targets:
                if target.transport not in ("udp", "tcp", "tls"):
                    continue
                listener = target.listener or self.transport.pick_listener(
                    target.transport, target.host, rctx.source.listener, rctx.source.host)
                if listener is None:
                    continue
                seed = (rctx.request.top_via.branch or "") + str(rctx.request.uri)
                branch = BRANCH_TAG + "0" + hashlib.blake2s(seed.encode("utf-8", "surrogateescape"),
                                                            digest_size=8).hexdigest()
                out = req.copy()
                out.add_header("Via", f"SIP/2.0/{listener.transport.upper()} {listener.sent_by()};branch={branch}",
                               top=True)
                self.transport.send(out.to_bytes(), target.transport, target.host, target.port, listener,
                                    target.name, connect=target.listener is None)
                return

        self._resolve(req, send, dst)

    # -- sending upstream -----------------------------------------------------------
    def send_upstream(self, holder: ServerTx, resp: Response) -> None:
        if not holder.alive:
            return
        self._send_response(holder, resp)
        if resp.status >= 200:
            req = holder.tx.request
            log.info("{m} {u} from {s} -> {st} {r} (call-id {c})", m=req.method, u=req.uri,
                     s=holder.source, st=resp.status, r=resp.reason, c=req.call_id)

    def _send_response(self, holder: ServerTx, resp: Response) -> None:
        self.reply_classes[resp.status // 100 % 7] += 1
        self._run(holder, holder.tx.send(resp, self.clock.seconds()))
        if self.config.features.accounting:
            self.accounting.response(holder, resp)

    def _wire_response(self, holder: ServerTx, data: bytes) -> None:
        src = holder.source
        via = holder.via
        if src.transport == "udp":
            port = src.port if via.rport is not None else (via.port or 5060)
            maddr = via.maddr
            host = maddr if maddr and is_ip(maddr) else src.host
            self.transport.send(data, "udp", host, port, src.listener)
            return
        conn = src.connection
        if conn is not None and not conn.closed:
            self.transport.send_on(data, conn)
            return
        # 18.2.2: the connection is gone; open one to the sent-by.
        port = via.port or (5061 if src.transport == "tls" else 5060)
        self.transport.send(data, src.transport, via.received or src.host, port, src.listener)

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
                branch.ctx.send_cancel(branch)
            else:
                # Nothing answered: the transaction goes, as if 408 came (16.8).
                self._terminate(holder)
            branch.ctx.branch_failed(branch, 408, "Request Timeout")
            return
        status = 487 if branch.cancel_wanted else 408
        branch.ctx.branch_failed(branch, status, REASONS.get(status))

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
        self._terminate(holder)
        branch = holder.branch
        if branch.done:
            return
        self.count("transport_errors")
        # RFC 3263 4.3: try the next address of the same next hop.
        self._try_target(branch)
