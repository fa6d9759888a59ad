"""Media anchoring: what Kamailio's ``rtpproxy_manage`` does, for the routing.

:class:`MediaManager` turns SIP events into relay commands and SDP rewrites:

* **offer** (U) on an INVITE / UPDATE with SDP, before it is forwarded: one U
  per m= section (``media_index`` 1, 2, ...: Kamailio's ``tag;medianum``),
  and the request's SDP rewritten to the relay's address and ports;
* **answer** (L) on a 1xx/2xx with SDP to a request whose offer was relayed:
  the response's SDP rewritten the same way;
* **delete** (D) on BYE and when the call fails or is cancelled.

Tags are the message's own From and To tags, as Kamailio sends them: the
relay tells the two parties apart by which tag comes first.

A relay that cannot be reached (:class:`RelayUnavailable`) or answers an
error (:class:`RelayError`, e.g. no free ports) is logged and the message
goes on unchanged: the call is connected without relaying, as Kamailio does.

:class:`LocalRelayClient` is the relay client of ``twistd -n sipsuite`` when
no ``[media] relays`` are named: the same client logic (stickiness, V/VF
checks, counters), but each command handed straight to the in-process
relay's dispatcher instead of a socket, so there is no control port to
share, pick or secure, and no datagram per command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from sipsuite.log import get_logger
from sipsuite.proxy.nat import media_nat, needs_relay, parse_sdp
from sipsuite.proxy.relayclient import (
    RelayClient,
    RelayError,
    RelaySpec,
    RelayUnavailable,
)
from sipsuite.proxy.relaypeers import NoAnswer, RelayState
from sipsuite.sip import sdp
from sipsuite.sip.message import Message, Request, Response

if TYPE_CHECKING:
    from sipsuite.proxy.routing import RequestContext

__all__ = ["LOCAL_RELAY_URI", "LocalRelayClient", "MediaManager"]

log = get_logger("sipsuite.proxy.media")

#: The name the in-process relay has in the client's status and logs.
LOCAL_RELAY_URI = "unix:in-process"

# Methods whose SDP is an offer (RFC 3264 / 3311); ACK with SDP (late offer's
# answer) is not handled.
OFFER_METHODS = frozenset({"INVITE", "UPDATE"})

UpdateCommand = Callable[..., Deferred[tuple[str | None, int]]]


class Dispatcher(Protocol):
    """The relay's ``ControlDispatcher``: one command in, one reply out."""

    def handle(self, data: bytes, *, datagram: bool = True) -> bytes: ...


class LocalRelayClient(RelayClient):
    """A RelayClient whose one relay is the relay in this process.

    ``dispatcher`` returns the relay's dispatcher, or None while there is
    none (not built yet): then the relay counts as not answering."""

    def __init__(self, dispatcher: Callable[[], Dispatcher | None], **kwargs: Any) -> None:
        super().__init__([RelaySpec(LOCAL_RELAY_URI)], **kwargs)
        self._dispatcher = dispatcher

    def _exchange_stream(self, relay: RelayState, data: bytes) -> Deferred[bytes]:
        target = self._dispatcher()
        if target is None:
            return fail(NoAnswer("the in-process relay is not running"))
        # Stream framing (no cookie): a retransmission cache has nothing to do here.
        return succeed(target.handle(data, datagram=False))


class MediaManager:
    """Relay commands for the default routing; ``mode`` is ``[media] relay``."""

    def __init__(self, client: RelayClient, mode: str = "nat") -> None:
        self.client = client
        self.mode = mode
        self.offers = 0
        self.answers = 0
        self.deletes = 0
        self.failures = 0

    # -- decisions ----------------------------------------------------------------

    def is_relayed(self, call_id: str) -> bool:
        """This proxy has the call on a relay (it sent the call's offer)."""
        return self.client.relay_of(call_id) is not None

    # -- commands -----------------------------------------------------------------

    async def offer(self, rctx: RequestContext) -> bool:
        """U for the request's SDP and rewrite it; True when the media is now
        relayed.  Call before the request is forwarded."""
        req = rctx.request
        if req.method not in OFFER_METHODS:
            return False
        sd = parse_sdp(req)
        if sd is None:
            return False
        signalling = bool(rctx.vars.get("nat"))
        if not needs_relay(self.mode, signalling=signalling, media=media_nat(sd),
                           known=self.is_relayed(req.call_id)):
            return False
        # Kamailio without its 'r' flag: a NAT'ed party's media comes from
        # where its signalling did, not from the private address it wrote.
        source_host = rctx.source.host if signalling and media_nat(sd) else None
        endpoints = await self._update(self.client.offer, req, req, sd, rctx, source_host)
        if endpoints is None:
            return False
        try:
            req.body = sdp.rewrite(sd, endpoints).to_bytes()
        except ValueError as e:
            log.warn("call {c}: cannot rewrite SDP for the relay: {e}", c=req.call_id, e=e)
            return False
        self.offers += 1
        rctx.vars["media"] = True
        return True

    def late_offer(self, rctx: RequestContext) -> bool:
        """An INVITE without SDP whose call needs a relay: the offer will come
        in the 2xx and the answer in the ACK (RFC 3261 13.2.1's late offer).
        Marks the call; True when it is one."""
        req = rctx.request
        if req.method != "INVITE" or req.body or not needs_relay(
                self.mode, signalling=bool(rctx.vars.get("nat")), media=False,
                known=self.is_relayed(req.call_id)):
            return False
        rctx.vars["late_offer"] = True
        return True

    async def offer_in_reply(self, rctx: RequestContext, resp: Response) -> bool:
        """U for the offer a 2xx carries after a late-offer INVITE, and
        rewrite it. The offer comes from the callee, so the tags go swapped
        (rtpproxy_manage does the same for an offer in a reply)."""
        sd = parse_sdp(resp)
        if sd is None:
            return False
        endpoints = await self._update(self.client.offer, rctx.request, resp, sd, rctx, None,
                                       swap=True)
        if endpoints is None or not self._rewrite(resp, sd, endpoints):
            return False
        self.offers += 1
        rctx.vars["media"] = True
        return True

    async def answer_in_request(self, rctx: RequestContext) -> bool:
        """L for the answer an ACK (or PRACK) carries to a late offer the
        relay took, and rewrite it; the tags go swapped, as for the offer."""
        req = rctx.request
        if not self.is_relayed(req.call_id):
            return False
        sd = parse_sdp(req)
        if sd is None:
            return False
        signalling = bool(rctx.vars.get("nat"))
        source_host = rctx.source.host if signalling and media_nat(sd) else None
        endpoints = await self._update(self.client.answer, req, req, sd, rctx, source_host,
                                       swap=True)
        if endpoints is None or not self._rewrite(req, sd, endpoints):
            return False
        self.answers += 1
        return True

    def _rewrite(self, msg: Message, sd: sdp.SessionDescription,
                 endpoints: list[tuple[str, int]]) -> bool:
        try:
            msg.body = sdp.rewrite(sd, endpoints).to_bytes()
        except ValueError as e:
            log.warn("call {c}: cannot rewrite SDP for the relay: {e}", c=msg.call_id, e=e)
            return False
        return True

    async def answer(self, rctx: RequestContext, resp: Response) -> bool:
        """L for a response's SDP to a request whose offer went to the relay,
        and rewrite it; True when rewritten."""
        if not rctx.vars.get("media") or resp.status >= 300:
            return False
        sd = parse_sdp(resp)
        if sd is None:
            return False
        endpoints = await self._update(self.client.answer, rctx.request, resp, sd, rctx, None)
        if endpoints is None:
            return False
        try:
            resp.body = sdp.rewrite(sd, endpoints).to_bytes()
        except ValueError as e:
            log.warn("call {c}: cannot rewrite SDP for the relay: {e}", c=resp.call_id, e=e)
            return False
        self.answers += 1
        return True

    async def delete(self, call_id: str, from_tag: str | None, to_tag: str | None = None) -> bool:
        """D for every stream of the call; True when the relay had it."""
        if not from_tag:
            return False
        try:
            deleted = await self.client.delete(call_id, from_tag, to_tag)
        except (RelayUnavailable, RelayError) as e:
            self.failures += 1
            log.warn("call {c}: relay delete failed: {e}", c=call_id, e=e)
            return False
        self.deletes += 1
        return bool(deleted)

    async def _update(self, command: UpdateCommand, req: Request, msg: Message,
                      sd: sdp.SessionDescription, rctx: RequestContext,
                      source_host: str | None, *, swap: bool = False
                      ) -> list[tuple[str, int]] | None:
        """One U/L per live m= section: the relay's (address, port) for each
        section in order, or None when the relay failed us (logged).
        ``swap``: the SDP comes from the To side (late offer and its answer)."""
        call_id = req.call_id
        from_tag, to_tag = msg.from_tag, msg.to_tag
        if swap:
            from_tag, to_tag = to_tag, from_tag
        if not from_tag:
            return None
        results: list[tuple[str, int] | None] = []
        try:
            for index, (address, port) in enumerate(sdp.media_addresses(sd)):
                if port == 0 or not address:
                    results.append(None)  # rejected stream: no relay ports
                    continue
                host = address if source_host is None or sdp.is_hold(sd, index) else source_host
                relay_host, relay_port = await command(call_id, from_tag, to_tag, host, port,
                                                       media_index=index + 1)
                if relay_host is None:
                    # A relay bound on every address named none: the one the
                    # SIP message reached us on is the best guess a phone has.
                    relay_host = rctx.source.listener.advertise
                results.append((relay_host, relay_port))
        except (RelayUnavailable, RelayError) as e:
            self.failures += 1
            log.warn("call {c}: relay unusable, media not relayed: {e}", c=call_id, e=e)
            if any(results) and command == self.client.offer:
                # Streams already set up would wait for their media timeout.
                self.client.delete(call_id, from_tag, to_tag).addErrback(lambda _f: None)
            return None
        live = [r for r in results if r is not None]
        if not live:
            return None
        fallback = live[0][0]
        return [r if r is not None else (fallback, 0) for r in results]
