"""The proxy's transaction table: each sans-IO transaction of
sipsuite.sip.transaction with its timers, and the driver that carries out
the actions it returns (send, arm, disarm, pass up, time out, terminate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

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

    __slots__ = ("tx", "key", "timers", "alive")

    def __init__(self, tx: Any, key: tuple) -> None:
        self.tx = tx
        self.key = key
        self.timers: dict[str, Any] = {}
        self.alive = True


class ServerTx(_TxHolder):
    __slots__ = ("source", "response_ctx", "request_ctx", "via", "call")

    def __init__(self, tx: Any, key: tuple, source: Source, via: Via) -> None:
        super().__init__(tx, key)
        self.source = source
        self.via = via
        self.response_ctx: ResponseContext | None = None
        self.request_ctx: RequestContext | None = None
        # The modules' per-call state (api.CallState), there from the 100 Trying on.
        self.call = CallState()

    @property
    def request(self) -> Any:
        """The request that made the transaction (api.ServerTxView)."""
        return self.tx.request

    def pass_up(self, core: TransactionDriver, msg: Any) -> None:
        # An ACK matching an accepted INVITE (RFC 2543 peer): route it.
        core._route(msg, self.source, None)

    def time_out(self, core: TransactionDriver, timer: str) -> None:
        pass  # H: no ACK came; nothing to tell anybody.

    def detach(self) -> ResponseContext | None:
        rsp = self.response_ctx
        self.response_ctx = None
        self.request_ctx = None
        return rsp


class ClientTx(_TxHolder):
    __slots__ = ("branch", "target", "listener", "is_cancel")

    def __init__(self, tx: Any, key: tuple, branch: Branch | None, target: Target,
                 listener: Listener) -> None:
        super().__init__(tx, key)
        self.branch = branch  # None: a request of the proxy's own (LocalTx)
        self.target = target
        self.listener = listener
        self.is_cancel = False

    def pass_up(self, core: TransactionDriver, msg: Any) -> None:
        branch = self.branch
        if not self.is_cancel and branch is not None:
            branch.response_ctx.on_response(branch, msg)

    def time_out(self, core: TransactionDriver, timer: str) -> None:
        core._timeout(self, timer)

    def detach(self) -> ResponseContext | None:
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

    def detach(self) -> ResponseContext | None:
        # Ended without an answer (transport error, the UAC's own timeout).
        self.settle(None)
        return None


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
        return (sum(1 for h in self.server_txs.values() if h.alive and h.tx.state in _PENDING)
                + sum(1 for h in self.client_txs.values()
                      if h.alive and h.tx.state in _PENDING and h.branch is not None))

    def _run(self, holder: Any, actions: list[Any]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                data = action.msg.to_bytes()
                if isinstance(holder, ServerTx):
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

    # Provided by ProxyCore.
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
    rsp.branches = []
    rsp.request_ctx.response = None
