"""What the proxy did with one message (or one tick of the clock): the
:class:`Outcome` the test kit returns, and the :class:`Branch` views of the
requests it sent on, which a test answers to drive reply_route and
failure_route."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sipsuite.proxy.net.listener import Source
from sipsuite.sip.builders import make_ack, make_cancel
from sipsuite.sip.message import Request, Response, make_response
from sipsuite.testing.network import Sent
from sipsuite.testing.recorder import RecordingContext, Step, avps_of
from sipsuite.testing.report import render

if TYPE_CHECKING:
    from sipsuite.testing.kit import OfflineProxy

__all__ = ["Branch", "Outcome"]


class Branch:
    """A request the proxy sent on with a client transaction (one branch of
    a relay): ``request`` as parsed from ``data``, the exact bytes that
    left, for ``destination`` (``udp:HOST:PORT``)."""

    def __init__(self, kit: OfflineProxy, sent: Sent, ctx: RecordingContext | None) -> None:
        self.kit = kit
        self.sent = sent
        self.ctx = ctx
        self.retransmissions = 0
        self._tag: str | None = None

    @property
    def request(self) -> Request:
        msg = self.sent.message
        assert isinstance(msg, Request)
        return msg

    @property
    def data(self) -> bytes:
        return self.sent.data

    @property
    def destination(self) -> str:
        return self.sent.destination

    @property
    def transport(self) -> str:
        return self.sent.transport

    @property
    def host(self) -> str:
        return self.sent.host

    @property
    def port(self) -> int:
        return self.sent.port

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def uri(self) -> str:
        return str(self.request.uri)

    def header(self, name: str) -> str | None:
        return self.request.header(name)

    def response(self, status: int, reason: str | None = None, *,
                 headers: Sequence[tuple[str, str]] = (), body: bytes | str = b"",
                 to_tag: str | None = None) -> Response:
        """The answer the next hop would send: the request's Vias, From, To
        (tagged ``to_tag``; when None, one tag made up for the branch, the
        same for its 180 and its 200), Call-ID and CSeq, plus ``headers``;
        a 2xx to an INVITE gets a Contact unless given one."""
        req = self.request
        if to_tag is None and status > 100 and req.to_tag is None:
            if self._tag is None:
                seed = f"{self.destination} {req.top_via.branch}".encode()
                self._tag = "kit" + hashlib.blake2s(seed, digest_size=4).hexdigest()
            to_tag = self._tag
        resp = make_response(req, status, reason, to_tag=to_tag, headers=list(headers))
        if (200 <= status < 300 and req.method in ("INVITE", "SUBSCRIBE")
                and not resp.has_header("contact")):
            user = req.uri.user or ""
            at = f"{user}@" if user else ""
            host = f"[{self.host}]" if ":" in self.host else self.host
            resp.add_header("Contact", f"<sip:{at}{host}:{self.port}>", top=False)
        if body:
            resp.body = body.encode() if isinstance(body, str) else body
            if not resp.has_header("content-type"):
                resp.add_header("Content-Type", "application/sdp", top=False)
        return resp

    def answer(self, status: int, reason: str | None = None, *,
               headers: Sequence[tuple[str, str]] = (), body: bytes | str = b"",
               to_tag: str | None = None) -> Outcome:
        """The next hop answers this branch with ``status``: the response
        goes through response_in, reply_route and, when it ends the last
        branch with a failure, failure_route.  Returns what the proxy did
        then (the reply upstream, or the new branches)."""
        return self.feed(self.response(status, reason, headers=headers, body=body, to_tag=to_tag))

    def feed(self, resp: Response) -> Outcome:
        """Feed a response built by hand as if this branch's next hop sent it."""
        src = Source(self.transport, self.host, self.port, self.sent.listener)
        kit = self.kit
        return kit.step(lambda: kit.core.receive(resp, src), self.ctx)

    def __repr__(self) -> str:
        return f"<Branch {self.method} {self.uri} -> {self.destination}>"


class Outcome:
    """What the proxy did during one step (a message received, a branch
    answered, the clock advanced).

    - ``decision``: ``"replied"`` (a final answer went upstream),
      ``"relayed"`` (new branches, or a stateless forward such as the ACK
      of a 2xx), ``"pending"`` (no final answer yet: branches still to
      answer, or the routing still awaits something) or ``"dropped"``
      (neither, and nothing more will come);
    - ``reply`` (the final answer upstream, a Response) with ``status``,
      ``reason`` and ``headers``; ``replies``: every answer upstream, 100
      Trying and provisional ones included;
    - ``branches``: the new branches (each with ``request``, ``data``,
      ``destination`` and ``answer()``); ``forwarded``: every request that
      left, retransmissions, CANCELs and ACKs included;
    - ``sent``: everything that left, in order, as :class:`Sent`;
    - ``steps``: the routing's actions, each with its hook and file:line;
      ``trace``: its ``ctx.trace`` lines (recorded even with debug off);
    - ``ack()`` and ``cancel()``: the caller's ACK of a final non-2xx
      answer, its CANCEL, each fed in as received and its Outcome returned;
    - ``avps`` (``ctx.avp.as_dict()``: each name's stack of values, newest
      first) and ``vars`` (``ctx.vars``) of the
      transaction as they are after the step; ``ctx`` itself.
    """

    def __init__(self, sent: list[Sent], branches: list[Branch], steps: list[Step],
                 ctx: RecordingContext | None, stateless: list[Sent] | None = None,
                 kit: OfflineProxy | None = None) -> None:
        self.kit = kit
        self.sent = sent
        self.stateless = stateless or []
        self.branches = branches
        self.steps = steps
        self._ctx = ctx

    @property
    def ctx(self) -> RecordingContext | None:
        """The request's context: the one made for a message received, else
        the one of the transaction the branches (or replies) belong to."""
        if self._ctx is not None:
            return self._ctx
        return next((b.ctx for b in self.branches if b.ctx is not None), None)

    # -- answers upstream --------------------------------------------------------------
    @property
    def replies(self) -> list[Response]:
        return [s.message for s in self.sent if isinstance(s.message, Response)]

    @property
    def reply(self) -> Response | None:
        finals = [r for r in self.replies if r.status >= 200]
        return finals[-1] if finals else None

    @property
    def status(self) -> int | None:
        reply = self.reply
        return reply.status if reply is not None else None

    @property
    def reason(self) -> str | None:
        reply = self.reply
        return reply.reason if reply is not None else None

    @property
    def headers(self) -> list[tuple[str, str]]:
        reply = self.reply
        return reply.header_items() if reply is not None else []

    def header(self, name: str) -> str | None:
        reply = self.reply
        return reply.header(name) if reply is not None else None

    # -- requests downstream ----------------------------------------------------------
    @property
    def forwarded(self) -> list[Sent]:
        return [s for s in self.sent if isinstance(s.message, Request)]

    @property
    def branch(self) -> Branch:
        """The one new branch (AssertionError when there is not exactly one)."""
        assert len(self.branches) == 1, f"expected one branch, got {self.branches}"
        return self.branches[0]

    # -- the decision --------------------------------------------------------------------
    @property
    def replied(self) -> bool:
        return self.reply is not None

    @property
    def relayed(self) -> bool:
        return bool(self.branches or self.stateless)

    @property
    def dropped(self) -> bool:
        return self.decision == "dropped"

    @property
    def decision(self) -> str:
        if self.replied:
            return "replied"
        if self.relayed:
            return "relayed"
        ctx = self.ctx
        if ctx is not None:
            rsp = ctx.response
            if rsp is not None and not rsp.final_sent and not rsp.cancelled:
                return "pending"  # branches still to answer
            if not ctx.handled and ctx.request.method != "ACK":
                return "pending"  # the routing still awaits something
        return "dropped"

    # -- what the routing did and kept -----------------------------------------------
    @property
    def trace(self) -> list[str]:
        return [s.detail for s in self.steps if s.action == "trace"]

    @property
    def avps(self) -> dict[str, Any]:
        ctx = self.ctx
        return avps_of(ctx) if ctx is not None else {}

    @property
    def vars(self) -> dict[str, Any]:
        ctx = self.ctx
        return dict(ctx.vars) if ctx is not None else {}

    # -- what the caller does next ---------------------------------------------------
    def ack(self) -> Outcome:
        """The caller ACKs this outcome's final non-2xx answer to its INVITE
        (RFC 3261 17.1.1.3: the INVITE's transaction absorbs it)."""
        reply = self.reply
        if reply is None or reply.status < 300:
            raise ValueError("ack(): no final non-2xx answer here (a 2xx's ACK is a request of"
                             " its own: receive() it)")
        return self._kit()._resend(self.ctx, lambda invite: make_ack(invite, reply))

    def cancel(self) -> Outcome:
        """The caller CANCELs the request of this outcome (RFC 3261 9.1)."""
        return self._kit()._resend(self.ctx, make_cancel)

    def _kit(self) -> OfflineProxy:
        if self.kit is None:
            raise ValueError("this outcome does not come from an OfflineProxy")
        return self.kit

    def explain(self) -> str:
        """The steps and what left, one per line (what ``route explain`` prints)."""
        return render(self)

    def __repr__(self) -> str:
        what = {"replied": f" {self.status} {self.reason}",
                "relayed": f" {len(self.branches)} branch(es)"}.get(self.decision, "")
        return f"<Outcome {self.decision}{what}>"
