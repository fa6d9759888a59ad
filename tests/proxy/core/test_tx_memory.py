"""A finished transaction keeps only what the RFC timers need (issue 19).

Once a call is decided (the final answer went upstream, every branch has its
own), the parsed messages, the RequestContext with its CallState, the
response context and its branches are freed at once, by reference count
(the checks run with the garbage collector off), while the transactions stay
in their tables for timers J/K/D/G/H/I and RFC 6026's Accepted window and
still do their job from what they kept: a retransmitted request gets the
stored answer byte for byte, a retransmitted non-2xx final is absorbed and
its ACK repeated byte for byte, a repeated 2xx is forwarded again.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxykit import ProxyKit, answer, request

from sipsuite.proxy import RequestContext, Routing
from sipsuite.proxy.api import CallState
from sipsuite.proxy.core.context import Branch, ResponseContext
from sipsuite.sip.message import Message, Request, Response
from sipsuite.sip.parser import parse_datagram
from sipsuite.sip.transaction import TxState

CALLER = "127.0.0.2"
CALLEE = "127.0.0.9"


class RelayAll(Routing):
    def request_route(self, ctx: RequestContext) -> None:
        ctx.relay()


class WeakRequest(Request):
    __slots__ = ("__weakref__",)


class WeakResponse(Response):
    __slots__ = ("__weakref__",)


def weakable(msg: Message) -> Any:
    """``msg`` as an instance that takes weak references (the core's
    message classes have __slots__ without __weakref__)."""
    if isinstance(msg, Request):
        req = WeakRequest.__new__(WeakRequest)
        msg._copy_base(req)
        req.method, req.uri = msg.method, msg.uri
        return req
    assert isinstance(msg, Response)
    resp = WeakResponse.__new__(WeakResponse)
    msg._copy_base(resp)
    resp.status, resp.reason = msg.status, msg.reason
    return resp


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Freed means freed by reference count: no collection may help."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Wire:
    """A bare core (no module) relaying everything, with the bytes it sends."""

    def __init__(self, tmp_path: Path) -> None:
        self.kit = kit = ProxyKit(tmp_path, modules=(), proxy={"trusted": [f"{CALLER}/32"]})
        kit.core.set_routing(RelayAll(kit.core))
        self.raw: list[tuple[bytes, str]] = []
        record = kit._send

        def send(data: bytes, transport: str, host: str, port: int, *args: Any, **kw: Any) -> bool:
            self.raw.append((data, host))
            return record(data, transport, host, port, *args, **kw)

        kit.core.transport.send = send  # type: ignore[method-assign]

    def take(self) -> list[tuple[bytes, str]]:
        self.kit.take()
        out, self.raw = self.raw, []
        return out

    def forwarded(self) -> bytes:
        """The bytes of the one request that went to the callee (bytes, so
        no parsed copy of ours stays alive)."""
        [data] = [d for d, h in self.raw if h == CALLEE and not d.startswith(b"SIP/")]
        return data


def parsed(data: bytes) -> Any:
    return parse_datagram(data)


def live(call_id: str) -> list[object]:
    """Every message or context of the call still in memory, reachable or
    not (the collector is off, so cyclic garbage would show here)."""
    out: list[object] = []
    for obj in gc.get_objects():
        if isinstance(obj, Message):
            if obj.call_id == call_id:
                out.append(obj)
        elif isinstance(obj, RequestContext | Branch):
            if obj.request.call_id == call_id:
                out.append(obj)
        elif isinstance(obj, ResponseContext) and obj.request_ctx.request.call_id == call_id:
            out.append(obj)
    return out


def start(wire: Wire, method: str, call_id: str) -> tuple[Any, list[Any], bytes]:
    """Feed ``method`` as a weakly referenceable object; return a weak
    reference to it, the state the core made for it (strong references) and
    the bytes forwarded to the callee."""
    req = weakable(parse_datagram(fresh(method, call_id)))
    wire.kit.feed(req, CALLER)
    [holder] = [h for h in wire.kit.core.server_txs.values() if h.tx.request is req]
    ctx, rsp = holder.request_ctx, holder.response_ctx
    state = [ctx, rsp, rsp.branches[0], holder.call]
    fwd = wire.forwarded()
    wire.take()
    return weakref.ref(req), state, fwd


def fresh(method: str, call_id: str) -> bytes:
    """The caller's request (again: a retransmission is the same bytes)."""
    return request(method, f"sip:bob@{CALLEE}:5099", call_id=call_id, branch=f"{call_id}-1")


def callee_answers(wire: Wire, fwd: bytes, status: int) -> Any:
    """Feed the callee's ``status`` to the forwarded request; a weak
    reference to the answer object."""
    resp = weakable(answer(parsed(fwd), status, to_tag="callee"))
    ref = weakref.ref(resp)
    wire.kit.feed(resp, CALLEE, 5099)
    return ref


def check_freed(wire: Wire, call_id: str, req_ref: Any, resp_ref: Any, state: list[Any]) -> None:
    """``state`` (a list, emptied here so these locals hold the only
    references): the RequestContext, ResponseContext, Branch and CallState."""
    ctx, rsp, branch, call = state
    state.clear()
    assert isinstance(ctx, RequestContext) and isinstance(rsp, ResponseContext)
    assert isinstance(branch, Branch) and isinstance(call, CallState)
    # 2: the local variable and getrefcount's argument: nobody else holds
    # it.  In this order, as each holds the next (branch -> response
    # context -> RequestContext -> CallState).
    assert sys.getrefcount(branch) == 2, "the finished transaction still holds a Branch"
    del branch
    assert sys.getrefcount(rsp) == 2, "... its ResponseContext"
    del rsp
    assert sys.getrefcount(ctx) == 2, "... its RequestContext"
    del ctx
    assert sys.getrefcount(call) == 2, "... its CallState"
    del call
    assert req_ref() is None, "the request outlived its final answer"
    assert resp_ref() is None, "the final answer outlived its forwarding"
    wire.kit.take()  # the kit's parsed copies of what went out
    assert live(call_id) == []


def test_non_invite_frees_at_once_and_timer_j_repeats_the_answer(tmp_path: Path, no_gc: None) -> None:
    wire = Wire(tmp_path)
    core = wire.kit.core
    req_ref, state, fwd = start(wire, "OPTIONS", "m-1")
    resp_ref = callee_answers(wire, fwd, 200)
    [(first, host)] = wire.take()
    assert host == CALLER and first.startswith(b"SIP/2.0 200 ")
    check_freed(wire, "m-1", req_ref, resp_ref, state)

    # Still there for timer J (server) and K (client), keeping bytes only.
    [server] = core.server_txs.values()
    [client] = core.client_txs.values()
    assert server.finished and server.tx.state == TxState.COMPLETED and server.tx.request is None
    assert client.finished and client.tx.state == TxState.COMPLETED and client.branch is None
    assert core.in_flight() == 0
    wire.kit.clock.advance(1.0)
    wire.kit.feed(fresh("OPTIONS", "m-1"), CALLER)
    assert wire.take() == [(first, CALLER)], "timer J: the same answer, byte for byte"
    assert core.stats["retransmissions"] == 1
    # The callee repeats its 200 within timer K: absorbed, nothing goes up.
    wire.kit.feed(answer(parsed(fwd), 200, to_tag="callee"), CALLEE, 5099)
    assert wire.take() == []
    wire.kit.clock.advance(31.5)  # 64*T1 after the answer: J ends
    assert core.server_txs == {} and core.client_txs == {}


def test_invite_failure_frees_at_once_and_repeats_answer_and_ack(tmp_path: Path,
                                                                 no_gc: None) -> None:
    wire = Wire(tmp_path)
    core = wire.kit.core
    req_ref, state, fwd = start(wire, "INVITE", "i-486")
    resp_ref = callee_answers(wire, fwd, 486)
    sent = wire.take()
    [ack] = [d for d, h in sent if h == CALLEE]
    [busy] = [d for d, h in sent if h == CALLER]
    assert ack.startswith(b"ACK ") and busy.startswith(b"SIP/2.0 486 ")
    check_freed(wire, "i-486", req_ref, resp_ref, state)

    [server] = core.server_txs.values()
    [client] = core.client_txs.values()
    assert server.finished and server.tx.state == TxState.COMPLETED
    assert client.finished and client.tx.state == TxState.COMPLETED
    # Timer G repeats the 486 until the ACK comes (over UDP), from its bytes.
    wire.kit.clock.advance(0.5)
    assert wire.take() == [(busy, CALLER)]
    # A retransmitted INVITE within the completed state gets the 486 again.
    wire.kit.feed(fresh("INVITE", "i-486"), CALLER)
    assert wire.take() == [(busy, CALLER)]
    # The callee did not get our ACK and repeats its 486: absorbed, ACK again.
    wire.kit.feed(answer(parsed(fwd), 486, to_tag="callee"), CALLEE, 5099)
    assert wire.take() == [(ack, CALLEE)], "timer D: the same ACK, byte for byte"
    # The caller's ACK ends the retransmissions (confirmed, timer I).
    wire.kit.feed(request("ACK", f"sip:bob@{CALLEE}:5099", call_id="i-486", branch="i-486-1",
                          to_tag=parsed(busy).to_tag), CALLER)
    assert server.tx.state == TxState.CONFIRMED and wire.take() == []
    wire.kit.clock.advance(5.0)  # timer I (T4)
    assert core.server_txs == {}
    wire.kit.clock.advance(32.0)  # timer D
    assert core.client_txs == {}


def test_invite_2xx_frees_at_once_and_the_accepted_window_holds(tmp_path: Path,
                                                                no_gc: None) -> None:
    wire = Wire(tmp_path)
    core = wire.kit.core
    req_ref, state, fwd = start(wire, "INVITE", "i-200")
    resp_ref = callee_answers(wire, fwd, 200)
    [(ok, host)] = wire.take()
    assert host == CALLER and ok.startswith(b"SIP/2.0 200 ")
    check_freed(wire, "i-200", req_ref, resp_ref, state)

    [server] = core.server_txs.values()
    [client] = core.client_txs.values()
    assert server.finished and server.tx.state == TxState.ACCEPTED
    assert client.finished and client.tx.state == TxState.ACCEPTED
    assert core.in_flight() == 0
    # RFC 6026 7.1: a retransmitted INVITE in Accepted is absorbed silently.
    wire.kit.clock.advance(1.0)
    wire.kit.feed(fresh("INVITE", "i-200"), CALLER)
    assert wire.take() == []
    # The callee repeats its 200 (our ACK is end to end): forwarded again,
    # the same bytes as the first time.
    wire.kit.feed(answer(parsed(fwd), 200, to_tag="callee"), CALLEE, 5099)
    assert wire.take() == [(ok, CALLER)]
    wire.kit.clock.advance(31.5)  # timers L and M
    assert core.server_txs == {} and core.client_txs == {}


class ForkTwo(Routing):
    def request_route(self, ctx: RequestContext) -> None:
        ctx.relay([f"sip:bob@{CALLEE}:5099", f"sip:bob@{OTHER}:5099"])


OTHER = "127.0.0.8"


def test_forked_call_is_freed_when_its_last_branch_ends(tmp_path: Path, no_gc: None) -> None:
    """Two branches: one answers 200, the other is CANCELed and ends with
    487 later.  The call is decided only then: the context lives until the
    last branch's final, then everything goes at once, the CANCEL's own
    transaction included; a repeated 200 still goes up."""
    wire = Wire(tmp_path)
    core = wire.kit.core
    core.set_routing(ForkTwo(core))
    wire.kit.feed(fresh("INVITE", "fork"), CALLER)
    sent = wire.take()
    [to_a] = [d for d, h in sent if h == CALLEE]
    [to_b] = [d for d, h in sent if h == OTHER]
    wire.kit.feed(answer(parsed(to_b), 180, to_tag="b"), OTHER, 5099)
    [server] = core.server_txs.values()
    rsp = server.response_ctx
    wire.kit.feed(answer(parsed(to_a), 200, to_tag="a"), CALLEE, 5099)
    sent = wire.take()
    ok = [d for d, h in sent if h == CALLER and d.startswith(b"SIP/2.0 200 ")]
    [cancel] = [d for d, h in sent if h == OTHER]
    assert len(ok) == 1 and cancel.startswith(b"CANCEL ")
    # Branch b has no final yet: nothing is finished, the context is alive.
    assert server.tx.state == TxState.ACCEPTED and not server.finished
    assert server.response_ctx is rsp and len(rsp.branches) == 2
    wire.kit.feed(answer(parsed(cancel), 200), OTHER, 5099)
    wire.kit.feed(answer(parsed(to_b), 487, to_tag="b"), OTHER, 5099)
    assert [h for d, h in wire.take()] == [OTHER]  # the ACK of the 487, nothing upstream
    assert server.finished and rsp.branches == []
    assert all(h.finished for h in core.client_txs.values()) and len(core.client_txs) == 3
    assert sys.getrefcount(rsp) == 2, "the decided call's ResponseContext is still held"
    del rsp
    assert live("fork") == []
    wire.kit.feed(answer(parsed(to_a), 200, to_tag="a"), CALLEE, 5099)
    assert wire.take() == [(ok[0], CALLER)]
