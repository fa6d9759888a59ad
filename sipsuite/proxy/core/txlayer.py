"""The proxy's transaction table: each sans-IO transaction of
sipsuite.sip.transaction with its timers, and the driver that carries out
the actions it returns (send, arm, disarm, pass up, time out, terminate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from sipsuite.hosts import is_ip
from sipsuite.proxy.api import CallState
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.sip.headers import Via
from sipsuite.sip.transaction import Arm, Disarm, PassUp, Send, Terminated, Timeout, TxState

if TYPE_CHECKING:
    from sipsuite.proxy.core.context import Branch, ResponseContext
    from sipsuite.proxy.net.resolver import Target
    from sipsuite.proxy.routing.base import RequestContext
    from sipsuite.sip.message import Response


#: States of a transaction whose final answer is still to come.
_PENDING = (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING)


class _TxHolder:
    """Timers and table entry around one sans-IO transaction."""

    __slots__ = ("tx", "key", "timers", "alive", "finished")

    def __init__(self, tx: Any, key: tuple) -> None:
        self.tx = tx
        self.key = key
        self.timers: dict[str, Any] = {}
        self.alive = True
        # finish() ran: only what the RFC timers still need is left.
        self.finished = False


class ServerTx(_TxHolder):
    __slots__ = ("source", "dest", "response_ctx", "request_ctx", "_call", "sent", "answers")

    def __init__(self, tx: Any, key: tuple, source: Source, via: Via) -> None:
        super().__init__(tx, key)
        self.source = source
        # Where answers go (RFC 3261 18.2.2, RFC 3581), worked out now from
        # the top Via so the holder need not keep it.
        self.dest = response_dest(source, via)
        self.response_ctx: ResponseContext | None = None
        self.request_ctx: RequestContext | None = None
        # The modules' per-call state (api.CallState), there from the 100 Trying on.
        self._call: CallState | None = CallState()
        # The bytes last sent (TransactionDriver._run): a finished
        # transaction keeps those instead of the parsed answer.
        self.sent = b""
        # The 2xx sent upstream, by To tag: an INVITE in RFC 6026's
        # Accepted state repeats them when a branch's 2xx comes again.
        self.answers: dict[str | None, bytes] | None = None

    @property
    def request(self) -> Any:
        """The request that made the transaction (api.ServerTxView); None
        once finished (hooks run before)."""
        return self.tx.request

    @property
    def call(self) -> CallState:
        call = self._call
        if call is None:
            raise RuntimeError("the transaction has finished: its CallState is gone")
        return call

    def pass_up(self, core: TransactionDriver, msg: Any) -> None:
        # An ACK matching an accepted INVITE (RFC 2543 peer): route it.
        core._route(msg, self.source, None)

    def time_out(self, core: TransactionDriver, timer: str) -> None:
        pass  # H: no ACK came; nothing to tell anybody.

    def finish(self) -> None:
        """The final answer went out and the call is decided: keep the key,
        the timers, where answers go and the bytes the RFC timers may still
        send; the request, its RequestContext, the response context and the
        modules' CallState go now (by reference count: nothing else points
        at them once the context's own links are cut)."""
        self.finished = True
        self.tx.finish(self.sent or None)
        self.sent = b""
        self.response_ctx = None
        self.request_ctx = None
        self._call = None

    def detach(self) -> ResponseContext | None:
        rsp = self.response_ctx
        self.response_ctx = None
        self.request_ctx = None
        return rsp


class ClientTx(_TxHolder):
    __slots__ = ("branch", "target", "listener", "is_cancel", "upstream")

    def __init__(self, tx: Any, key: tuple, branch: Branch | None, target: Target,
                 listener: Listener) -> None:
        super().__init__(tx, key)
        self.branch = branch  # None: a request of the proxy's own (LocalTx), or finished
        self.target = target
        self.listener = listener
        self.is_cancel = False
        # Finished in RFC 6026's Accepted state: the server transaction that
        # sent its 2xx upstream, which repeats it when it comes again.
        self.upstream: ServerTx | None = None

    def pass_up(self, core: TransactionDriver, msg: Any) -> None:
        branch = self.branch
        if not self.is_cancel and branch is not None:
            branch.response_ctx.on_response(branch, msg)
        elif self.upstream is not None:
            core._relay_2xx_again(self.upstream, msg)

    def time_out(self, core: TransactionDriver, timer: str) -> None:
        core._timeout(self, timer)

    def finish(self, upstream: ServerTx | None) -> None:
        """The final answer came and the call is decided: keep what absorbs
        retransmitted finals (the ACK as bytes) and, in Accepted, the server
        transaction a repeated 2xx goes up on; the branch goes now."""
        self.finished = True
        self.tx.finish()
        self.branch = None
        if self.tx.state == TxState.ACCEPTED:
            self.upstream = upstream

    def detach(self) -> ResponseContext | None:
        self.upstream = None
        branch = self.branch
        if branch is None:
            return None
        if branch.client is self:
            branch.client = None
        return branch.response_ctx


class LocalTx(ClientTx):
    """A request the proxy sends on its own (proxy/core/uac.py: keep-alives,
    probes): its first final answer, or None when none comes, fires
    ``result``; no branch, no response context, no routing hook."""

    __slots__ = ("result",)

    def __init__(self, tx: Any, key: tuple, target: Target, listener: Listener,
                 result: Deferred[Response | None]) -> None:
        super().__init__(tx, key, None, target, listener)
        self.result: Deferred[Response | None] | None = result

    def settle(self, resp: Response | None) -> None:
        d, self.result = self.result, None
        if d is not None:
            d.callback(resp)

    def pass_up(self, core: TransactionDriver, msg: Any) -> None:
        if msg.status >= 200:
            self.settle(msg)

    def time_out(self, core: TransactionDriver, timer: str) -> None:
        self.settle(None)

    def finish(self, upstream: ServerTx | None) -> None:
        self.finished = True
        self.tx.finish()

    def detach(self) -> ResponseContext | None:
        # Ended without an answer (transport error, the UAC's own timeout).
        self.settle(None)
        return None


def response_dest(source: Source, via: Via) -> tuple[str, int]:
    """Where a server transaction's answers go (RFC 3261 18.2.2, RFC 3581):
    over UDP the source port with rport (else the Via's) at maddr or the
    source address; over TCP/TLS the Via's sent-by, used only when the
    request's connection is gone."""
    if source.transport == "udp":
        port = source.port if via.rport is not None else (via.port or 5060)
        maddr = via.maddr
        return (maddr if maddr and is_ip(maddr) else source.host), port
    return via.received or source.host, via.port or (5061 if source.transport == "tls" else 5060)


class TransactionDriver:
    """Mixed into ProxyCore: runs transaction actions against its transport
    layer, timer heap and tables."""

    server_txs: dict[tuple, ServerTx]
    client_txs: dict[tuple, ClientTx]
    transport: Any
    timer_heap: Any
    clock: Any

    def counts(self) -> tuple[int, int]:
        """(server, client) transactions in the tables (api.TransactionView)."""
        return len(self.server_txs), len(self.client_txs)

    def in_flight(self) -> int:
        """Requests still being handled: received ones not answered finally
        yet, forwarded ones waiting for their final answer."""
        # The proxy's own requests (LocalTx: keep-alives, probes) are no
        # work of anybody's: a drain must not wait for a dead phone's OPTIONS.
        return (self.unanswered()
                + sum(1 for h in self.client_txs.values()
                      if h.alive and h.tx.state in _PENDING and h.branch is not None))

    def unanswered(self) -> int:
        """Received requests not answered finally yet (a worker process's
        heartbeat: what its death leaves unanswered)."""
        return sum(1 for h in self.server_txs.values() if h.alive and h.tx.state in _PENDING)

    def _run(self, holder: Any, actions: list[Any]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                data = action.msg.to_bytes()
                if isinstance(holder, ServerTx):
                    holder.sent = data
                    self._wire_response(holder, data)
                else:
                    t = holder.target
                    ok = self.transport.send(data, t.transport, t.host, t.port, holder.listener,
                                             t.name, connect=t.listener is None)
                    if not ok:
                        self._client_transport_error(holder)
            elif kind is Arm:
                old = holder.timers.get(action.timer)
                if old is not None and old.active():
                    old.cancel()
                holder.timers[action.timer] = self.timer_heap.call_later(action.delay, self._fire, holder, action.timer)
            elif kind is Disarm:
                old = holder.timers.pop(action.timer, None)
                if old is not None and old.active():
                    old.cancel()
            elif kind is PassUp:
                holder.pass_up(self, action.msg)
            elif kind is Timeout:
                holder.time_out(self, action.timer)
            elif kind is Terminated:
                self._terminate(holder)

    def _fire(self, holder: Any, name: str) -> None:
        holder.timers.pop(name, None)
        if holder.alive:
            self._run(holder, holder.tx.timer(name, self.clock.seconds()))

    def _cancel_timers(self, holder: Any) -> None:
        for call in holder.timers.values():
            if call.active():
                call.cancel()
        holder.timers.clear()

    def _terminate(self, holder: Any) -> None:
        holder.alive = False
        self._cancel_timers(holder)
        # Break the obvious cycles so reference counting frees a finished
        # call at once instead of leaving it to a full garbage collection.
        rsp = holder.detach()
        if rsp is not None:
            _release_if_done(rsp)
        table = self.server_txs if isinstance(holder, ServerTx) else self.client_txs
        key = holder.key
        if table.get(key) is holder:
            del table[key]

    # -- finished transactions keep little ------------------------------------
    def settle(self, rsp: ResponseContext) -> None:
        """Once the call ``rsp`` forwards is decided (_decided), its
        transactions keep only what the RFC timers still need and the
        context's cycles are cut, so the messages, the RequestContext, the
        branches and the context itself are freed now, by reference count,
        not 32 s later with the transactions."""
        if not _decided(rsp):
            return
        server = rsp.server
        for branch in rsp.branches:
            client = branch.client
            if client is not None and client.alive and not client.finished:
                client.finish(server)
        if server.alive and not server.finished:
            server.finish()
        _release(rsp)

    def _server_answered(self, holder: ServerTx) -> None:
        """``holder`` has just sent its final answer (and the response_out
        hooks have seen it)."""
        if holder.finished or not holder.alive:
            return
        rsp = holder.response_ctx
        if rsp is None:
            holder.finish()  # answered here: no branch to wait for
        else:
            self.settle(rsp)

    def _client_answered(self, holder: ClientTx) -> None:
        """``holder`` has just received its final answer (and passed it up)."""
        if holder.finished or not holder.alive:
            return
        branch = holder.branch
        if branch is None or holder.is_cancel:
            holder.finish(None)  # a LocalTx or a CANCEL: nothing upstream
        else:
            self.settle(branch.response_ctx)

    def _relay_2xx_again(self, server: ServerTx, resp: Response) -> None:
        """A 2xx on a finished INVITE branch (RFC 6026 Accepted): the callee
        repeats its 2xx until the ACK comes, and the proxy forwards each one
        (RFC 3261 16.7 step 10).  It is the 2xx already forwarded, which
        the server transaction kept as sent (after reply_route); one with
        another To tag (a fork downstream) goes up as 16.11 says."""
        if not server.alive:
            return
        answers = server.answers
        data = answers.get(resp.to_tag) if answers else None
        if data is None:
            self._forward_response_stateless(resp)
            return
        self.reply_classes[2] += 1
        self._wire_response(server, data)

    # Provided by ProxyCore.
    reply_classes: list[int]

    def _forward_response_stateless(self, resp: Response) -> None:
        raise NotImplementedError

    def _wire_response(self, holder: ServerTx, data: bytes) -> None:
        raise NotImplementedError

    def _client_transport_error(self, holder: ClientTx) -> None:
        raise NotImplementedError

    def _route(self, req: Any, source: Source, holder: ServerTx | None) -> None:
        raise NotImplementedError

    def _timeout(self, holder: Any, timer: str) -> None:
        raise NotImplementedError


def _release_if_done(rsp: ResponseContext) -> None:
    """Once the server transaction and every branch's client transaction
    are gone, cut the context's back-references: its branches and request
    context point at it, and those cycles would otherwise wait for a full
    garbage collection, whose pause grows with every call still alive."""
    if rsp.server.alive or any(b.client is not None for b in rsp.branches):
        return
    _release(rsp)


def _release(rsp: ResponseContext) -> None:
    rsp.branches = []
    rsp.request_ctx.response = None


def _decided(rsp: ResponseContext) -> bool:
    """The server transaction has sent its final answer, every branch has
    its own (or ended without a transaction) and no hook of this context is
    still running: nothing will use the context again."""
    if rsp.server.tx.state in _PENDING or rsp.pending_routing:
        return False
    if rsp.reply_queue is not None or rsp.reply_current is not None:
        return False
    for branch in rsp.branches:
        client = branch.client
        if client is None:
            if not branch.done:
                return False  # still resolving its next hop
        elif client.alive and client.tx.state in _PENDING:
            return False
    return True
