"""The transaction-stateful proxy core (RFC 3261 section 16).

Messages come in from the transports; requests are validated (16.3),
their Route set preprocessed (16.4) and handed to the routing class; what
the routing decides is carried out here: answers, and branches forwarded
through client transactions (16.6) whose answers the response context
(``context.py``) weighs (16.7).  This module is the upstream half (receive,
route, reply); ``forwarding.py`` the downstream half (branches, CANCEL and the
responses), mixed in.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError

from sipsuite.hosts import unbracket
from sipsuite.log import get_logger
from sipsuite.proxy.api import CoreFigures, ServiceKey
from sipsuite.proxy.core.checks import RequestChecks
from sipsuite.proxy.core.context import ResponseContext
from sipsuite.proxy.core.forwarding import Forwarding
from sipsuite.proxy.core.hookerrors import hook_failed
from sipsuite.proxy.core.hookrun import run_script
from sipsuite.proxy.core.hooks import HookPoints
from sipsuite.proxy.core.modules import ModuleRegistry
from sipsuite.proxy.core.timers import TimerHeap
from sipsuite.proxy.core.txlayer import ClientTx, ServerTx, TransactionDriver
from sipsuite.proxy.core.uac import LocalUAC
from sipsuite.proxy.net.addresses import (
    guess_address,
    local_addresses,
    split_advertise,
    via_text,
)
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.net.resolver import Resolver
from sipsuite.proxy.net.transport import TransportLayer
from sipsuite.proxy.routing.base import Destination, RequestContext, Routing
from sipsuite.proxy.routing.loader import make_routing
from sipsuite.proxy.services import (
    AUTH,
    DISPATCHER,
    FLOWS,
    LOCATION,
    MEDIA,
    NATPING,
    REGISTRAR,
    SUBSCRIBERS,
)
from sipsuite.sip.headers import Via
from sipsuite.sip.message import REASONS, Request, Response, make_response
from sipsuite.sip.transaction import (
    LOCAL_TAG_PREFIX,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TimerSettings,
    TxState,
    local_tag,
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

#: RFC 3261 17.2.1: an ACK for a non-2xx final answer belongs to the INVITE
#: server transaction only once that answer has been sent.
_ABSORBS_ACK = (TxState.COMPLETED, TxState.CONFIRMED)


#: Core attributes of the features that became modules, and the service
#: each now resolves to (see ProxyCore.__getattr__).
_LEGACY_SERVICES: dict[str, ServiceKey[Any]] = {
    "auth": AUTH, "dispatcher": DISPATCHER, "flows": FLOWS, "keepalive": NATPING,
    "location": LOCATION, "media": MEDIA, "registrar": REGISTRAR, "subscribers": SUBSCRIBERS,
}


class StatCounters(dict[str, int]):
    """The core's named counters: a dict (``core.stats["requests"]``, read by
    the stats RPCs) that is also api.Counters for the modules."""

    def count(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class ProxyCore(RequestChecks, Forwarding, TransactionDriver):
    """The transaction-stateful SIP proxy of one process: api.CoreAPI.

    It owns the transports, the resolver, the transaction tables and their
    timer heap, the routing class and the per-transaction response contexts;
    RequestChecks (16.3), Forwarding (branches, CANCEL, responses) and
    TransactionDriver (the transactions' actions) are mixed in.  It knows no
    feature: registrar, auth, media, dispatcher... are modules in
    ``modules``, which reach the core through ``hooks`` and the CoreAPI
    surface only.  Made by the proxy service (proxy/service.py), which sets
    the modules up; ``start()`` binds the sockets and starts the modules."""

    #: What the routing hooks get as ``ctx``.  The routing test kit and
    #: ``route explain`` (sipsuite/testing/) put a subclass here that records
    #: each action with the line that made it; the proxy itself pays nothing.
    context_class: type[RequestContext] = RequestContext

    def __init__(self, config: Any, reactor: Any, resolver: Resolver | None = None,
                 transport_class: type[TransportLayer] = TransportLayer) -> None:
        self.config = config
        self.clock = reactor
        # Feature modules plug in here (api.CoreAPI.hooks / .modules); the
        # service wiring sets them up (proxy/service.py).
        self.hooks = HookPoints()
        self.modules = ModuleRegistry(self, self.hooks)
        self.timer_heap = TimerHeap(reactor)
        p = config.proxy
        self.timers = TimerSettings(
            t1=config.timers.t1, t2=config.timers.t2, t4=config.timers.t4,
            timer_c=config.timers.timer_c,
        )
        # transport_class: the test kit's captures what would be sent instead.
        self.transport = transport_class(reactor, self.receive, p.tcp_idle_timeout)
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
        self.domains = {d.lower() for d in p.domains}
        self.trusted = list(p.trusted)
        self.addresses: set[str] = set()
        self.ports: set[int] = set()
        self.server_txs: dict[tuple, ServerTx] = {}
        self.client_txs: dict[tuple, ClientTx] = {}
        # Requests of the proxy's own (keep-alives, probes): api.CoreAPI.uac.
        self.uac = LocalUAC(self)
        # The key of the To tags of the answers this proxy makes itself
        # (local_tag): one tag per transaction, the same for its retransmissions.
        self.tag_secret = secrets.token_bytes(16)
        self.server_header = p.server_header
        self.stats = StatCounters()
        # Per-method requests and per-class replies sent (liveops stats,
        # /metrics): a dict and a list increment per message, nothing more.
        self.method_stats: dict[str, int] = {}
        self.reply_classes = [0] * 7  # index = status // 100, 1..6 used
        self.started_at = reactor.seconds()
        self.routing: Routing = self.make_routing()
        # Set while the suite drains (sipsuite.drain): when the drain ends at the latest.
        self.drain_deadline: float | None = None

    def make_routing(self) -> Routing:
        """The routing object ``[proxy] routing`` names (route explain's
        sandbox core takes the live proxy's class instead)."""
        return make_routing(self)

    # -- api.CoreAPI -------------------------------------------------------------------
    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Any:
        return self.timer_heap.call_later(delay, fn, *args)

    @property
    def identity(self) -> ProxyCore:
        return self

    @property
    def transactions(self) -> ProxyCore:
        return self

    @property
    def net(self) -> TransportLayer:
        return self.transport

    def figures(self) -> CoreFigures:
        """The core's counters as one snapshot (ops/stats.py reads this, not the tables)."""
        s = self.stats
        drops = {k.removeprefix("drop."): v for k, v in s.items() if k.startswith("drop.")}
        for cause, n in self.transport.drops.items():
            key = f"transport.{cause}"
            drops[key] = drops.get(key, 0) + n
        classes = self.reply_classes
        return CoreFigures(
            requests=s.get("requests", 0),
            requests_by_method=dict(sorted(self.method_stats.items())),
            responses=s.get("responses", 0),
            replies_by_class={f"{c}xx": classes[c] for c in range(1, 7)},
            retransmissions=s.get("retransmissions", 0),
            transactions=self.counts(),
            drops=dict(sorted(drops.items())),
            uptime=max(0.0, self.clock.seconds() - self.started_at),
        )

    def set_routing(self, routing: Routing) -> Routing:
        """Route new requests (and the later hooks of calls in flight) with
        ``routing``; returns the one it replaces (``routing reload``)."""
        previous, self.routing = self.routing, routing
        return previous

    def reconfigure(self, new: Any) -> None:
        """Make ``new`` the config (``cfg set``): the core applies its own
        sections, then every module its part (run-time switches set up or
        tear down their module first).  Raises when a part refuses; the
        caller re-applies the old config (ops.liveops.cfg_set)."""
        old, self.config = self.config, new
        if new.timers != old.timers:
            # New transactions take the new values; running ones keep theirs.
            t = new.timers
            self.timers = TimerSettings(t1=t.t1, t2=t.t2, t4=t.t4, timer_c=t.timer_c)
        p = new.proxy
        self.domains = {d.lower() for d in p.domains}
        self.trusted = list(p.trusted)
        self.server_header = p.server_header
        self.transport.configure(p)
        self.modules.reconfigure(old, new)

    # -- set-up ------------------------------------------------------------------
    def start(self) -> None:
        self.listen()
        self.modules.start()

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
            if listener.via_port:  # a worker's private port (net/reuseport.py)
                self.ports.add(listener.via_port)
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
        waits = self.modules.stop()
        for holder in list(self.server_txs.values()) + list(self.client_txs.values()):
            self._cancel_timers(holder)
        self.timer_heap.stop()
        return [*self.transport.stop(), *waits]

    def local_tag(self, key: tuple, req: Request) -> str:
        """The To tag of our own answer to ``req``, whose server_key() is ``key``."""
        return local_tag(self.tag_secret, key, req)

    def count(self, name: str) -> None:
        self.stats.count(name)

    # -- input ---------------------------------------------------------------------
    def receive(self, msg: Request | Response, source: Source) -> None:
        if isinstance(msg, Response):
            self.receive_response(msg, source)
        else:
            self.receive_request(msg, source)

    def receive_request(self, req: Request, source: Source) -> None:
        self.count("requests")
        for owner, hook in self.hooks.request_in:
            try:
                if hook(req, source) is False:
                    return  # dropped by a module: no answer at all
            except Exception:  # noqa: BLE001 - fail-open: a broken module must not black-hole SIP
                hook_failed(f"{owner}.request_in", req, source)
        via = self._mark_via(req, source)
        method = req.method
        # Unknown method names are lumped together: a flood of made-up
        # methods must not grow the table.
        counted = method if method in COUNTED_METHODS else "OTHER"
        self.method_stats[counted] = self.method_stats.get(counted, 0) + 1
        if method == "ACK":
            key = server_key(req)
            holder = self.server_txs.get(key)
            if holder is not None and holder.tx.state in _ABSORBS_ACK:
                self._run(holder, holder.tx.receive(req, self.clock.seconds()))
                return
            to_tag = req.to_tag
            if (holder is None and to_tag is not None and to_tag.startswith(LOCAL_TAG_PREFIX)
                    and to_tag == self.local_tag(key, req)):
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
        if unbracket(via.host) != source.host:
            via.params["received"] = source.host
            changed = True
        if via.rport is not None and via.rport != str(source.port):
            via.params["rport"] = str(source.port)
            changed = True
        if changed:
            req.set_top_via(via, via_text(via))
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
        loose, removed = self._preprocess_routes(req)
        ctx = self.context_class(self, req, source, loose,
                                 holder.call if holder is not None else None)
        ctx.removed_routes = removed
        if holder is not None:
            holder.request_ctx = ctx
            ctx.tx_key = holder.key
        for owner, hook in self.hooks.request_received:
            # A module may take the request before the script (outbound's
            # flow forwarding); one that raises is answered like the script.
            run_script(f"{owner}.request_received", ctx, hook, answer=True)
            if ctx.handled:
                return
        run_script("request_route", ctx, self.routing.request_route,
                   done=lambda: self._routing_done(ctx), answer=True)

    @staticmethod
    def _routing_done(ctx: RequestContext) -> None:
        if not ctx.handled and ctx.request.method != "ACK":
            log.warn("routing ended without an answer for {m} {u}; answering 500",
                     m=ctx.request.method, u=ctx.request.uri)
            ctx.reply(500, "Server Internal Error")

    # -- actions requested by the routing ---------------------------------------
    def reply(self, ctx: RequestContext, status: int, reason: str | None,
              headers: list[tuple[str, str]]) -> None:
        req = ctx.request
        if req.method == "ACK":
            return
        holder = self._server_tx(ctx)
        if holder is None:
            return
        rsp = holder.response_ctx
        if rsp is not None and rsp.pending_routing:
            # Answer from failure_route: it replaces the best response.
            rsp.final_sent = True
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

    def _server_tx(self, ctx: RequestContext) -> ServerTx | None:
        """The server transaction ``ctx`` routes (gone once it ended)."""
        key = ctx.tx_key
        return self.server_txs.get(key if key is not None else server_key(ctx.request))

    def relay(self, ctx: RequestContext, targets: list[URI | Destination]) -> None:
        req = ctx.request
        if req.method == "ACK":
            for target in targets:
                if isinstance(target, Destination):
                    self._forward_stateless(ctx, target.uri, target.route, target.dst)
                else:
                    self._forward_stateless(ctx, target)
            return
        holder = self._server_tx(ctx)
        if holder is None or holder.finished:
            return  # finished: answered and decided, nothing to relay to
        rsp = holder.response_ctx
        if rsp is None:
            rsp = holder.response_ctx = ResponseContext(self, ctx, holder)
            ctx.response = rsp
        if rsp.cancelled or rsp.final_sent:
            return
        for target in targets:
            if isinstance(target, Destination):
                self._start_branch(rsp, target.uri, target.route, target.dst)
            else:
                self._start_branch(rsp, target)

    def call_hook(self, name: str, ctx: RequestContext, *args: Any) -> None:
        run_script(name, ctx, getattr(self.routing, name), *args)

    def run_failure_route(self, rsp: ResponseContext, best: Response) -> bool:
        """Give failure_route its chance; True when it started new branches,
        answered itself, or is still running (it calls check_complete again)."""
        before = len(rsp.branches)
        rsp.pending_routing = True
        rsp.failure_async = False
        if run_script("failure_route", rsp.request_ctx, self.routing.failure_route, best,
                      done=rsp.failure_routed):
            rsp.failure_async = True  # failure_routed() weighs the branches again
            return True
        return len(rsp.branches) > before or rsp.final_sent


def _legacy(name: str, key: ServiceKey[Any]) -> property:
    def get(core: ProxyCore) -> Any:
        return core.modules.get(key)

    get.__doc__ = f"Deprecated: ``core.modules.get({key.name.upper()})``."
    return property(get)


# Names features had on the core before they became modules (``core.media``,
# ``core.dispatcher``...): routing classes written against them keep working
# for a release, resolved through the module registry.  Set outside the
# class body so a type checker does not count them as the core's own (the
# CoreAPI conformance check in tests/typing_checks.py must not be vacuous).
for _name, _key in _LEGACY_SERVICES.items():
    setattr(ProxyCore, _name, _legacy(_name, _key))
