"""Media anchoring: what Kamailio's ``rtpproxy_manage`` does, for the routing.

:class:`MediaManager` is the ``media`` module (issue 13; set up by
sipsuite.proxy.modules.media) and the MEDIA service the script calls
(sipsuite.proxy.services.MediaService).  It turns SIP events into relay
commands and SDP rewrites:

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

**Limits** (issue 11: one stranger's INVITE must not empty the relay's
port range; Kamailio's rtpproxy module has no twin of either, it sends a U
per m= line and relies on rtpproxy's port range):

* ``[media] max_streams``: an offer in a request whose media would be
  relayed, with more m= sections taking ports (port not 0) than this, is
  answered 488 Not Acceptable Here with ``Warning: 399`` (RFC 3261 21.4.26
  lets a 488 say why; none of the 3xx warn-codes of 20.43 names "too many
  streams", so 399, miscellaneous) before any relay command; so is one
  that adds streams past it in a re-INVITE or UPDATE.  An offer or answer
  in a response, or an answer in an ACK, over it (nobody to refuse it to)
  is forwarded unrelayed.
* ``[media] max_sessions_per_source``: relay sessions (one per relayed
  stream, what ``sipsuite-ctl relay sessions`` lists) charged to the
  address whose offer created them, held until the relay client forgets
  the call (D on BYE / failure / CANCEL, idle, evicted).  An offer that
  would take its source past it is answered 503 Service Unavailable with
  ``Warning: 399``, without Retry-After (RFC 3261 21.5.4: the client
  treats it as a 500 for this request only, rather than shunning the proxy
  for everything; an upstream proxy may try another server, which is the
  point).  Not 486: that says the callee is busy and sends calls to
  voicemail.  Sources in ``[proxy] trusted`` (gateways, PBX trunks) are
  not limited.

:class:`~sipsuite.proxy.media.local.LocalRelayClient` is the relay client of ``twistd -n sipsuite`` when
no ``[media] relays`` are named: the same client logic (stickiness, V/VF
checks, counters), but each command handed straight to the in-process
relay's command handler instead of a socket, so there is no control port to
share, pick or secure, and no datagram per command.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import Deferred

from sipsuite.hosts import bracket
from sipsuite.log import get_logger
from sipsuite.proxy.core.hookerrors import RequestRejected
from sipsuite.proxy.media.client import (
    RelayClient,
    RelayError,
    RelayUnavailable,
)
from sipsuite.proxy.media.sessions import RelaySessions
from sipsuite.proxy.modules.nat import media_nat, needs_relay, parse_sdp
from sipsuite.proxy.services import EVENTS, NAT
from sipsuite.sip import sdp
from sipsuite.sip.message import Message, Request, Response

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI
    from sipsuite.proxy.routing.base import RequestContext

__all__ = ["MediaManager", "MediaState"]

log = get_logger("sipsuite.proxy.media")

# Methods whose SDP is an offer (RFC 3264 / 3311); ACK with SDP (late offer's
# answer) is not handled.
OFFER_METHODS = frozenset({"INVITE", "UPDATE"})

UpdateCommand = Callable[..., Deferred[tuple[str | None, int]]]


#: [media] max_streams by default: audio, video, a second (content) video,
#: T.38 and real-time text fit twice over; 8 streams take 32 relay ports.
DEFAULT_MAX_STREAMS = 8
#: [media] max_sessions_per_source by default: 200 relay sessions (800
#: ports, under 3% of the default range), e.g. 200 audio calls from one
#: office NAT; a stranger needs ~40 addresses to empty the range.
DEFAULT_MAX_SESSIONS_PER_SOURCE = 200


@dataclass(slots=True)
class MediaState:
    """The media module's part of a transaction's CallState."""

    relayed: bool = False     # its offer went to the relay (U)
    late_offer: bool = False  # an INVITE without SDP whose call needs a relay
    deleted: bool = False     # end_call sent the call's D


class MediaManager:
    """Relay commands for the default routing.

    ``[media] relay`` (the mode), ``max_streams`` and
    ``max_sessions_per_source`` (0 = no limit) are read from the core's
    config at each use, so ``cfg set`` applies to the next offer; sources
    in ``[proxy] trusted`` are exempt from the per-source limit.  The module
    owns ``client``: start() starts its pings, stop() closes its sockets."""

    name: ClassVar[str] = "media"

    def __init__(self, core: CoreAPI, client: RelayClient) -> None:
        self.core = core
        self.client = client
        self.offers = 0
        self.answers = 0
        self.deletes = 0
        self.failures = 0
        self.refused = 0  # offers answered 488/503 or left unrelayed by the limits
        # Relay sessions by call (the client's call key): the source charged
        # and how many; and the total per source.  An entry ends when the
        # client forgets the call, whichever way that happens.
        self._charges: dict[str, tuple[str, int]] = {}
        self._per_source: dict[str, int] = {}
        # The sessions held on relays, for handle.relay_sessions() and the
        # relay.session.* events of the split deployment.
        self.sessions = RelaySessions(self._bus, core.wall)
        client.forgotten = self._forgotten

    @property
    def mode(self) -> str:
        """``[media] relay``: "nat" or "always"."""
        return self.core.config.media.relay

    @property
    def max_streams(self) -> int:
        return self.core.config.media.max_streams

    @property
    def max_sessions_per_source(self) -> int:
        return self.core.config.media.max_sessions_per_source

    def is_trusted(self, host: str) -> bool:
        return self.core.identity.is_trusted(host)

    def _bus(self) -> Any:
        events = self.core.modules.get(EVENTS)
        return None if events is None else events.bus

    def _forgotten(self, key: str, why: str) -> None:
        self._release(key)
        self.sessions.closed(key, why)

    def sessions_of(self, host: str) -> int:
        """Relay sessions charged to this source address now."""
        return self._per_source.get(host, 0)

    # -- the module -----------------------------------------------------------------

    def start(self) -> None:
        if not self.client.running:
            self.client.startService()  # the relay pings

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # the limits are read at use

    def stats(self) -> Mapping[str, object]:
        """The figures ``stats`` shows under "relay"."""
        return {
            "calls_anchored": self.client.calls_held,
            "offers": self.offers,
            "answers": self.answers,
            "deletes": self.deletes,
            "failures": self.failures,
            "refused": self.refused,  # offers over [media] max_streams / per-source sessions
        }

    def stop(self) -> Deferred[Any] | None:
        if not self.client.running:
            return None
        return self.client.stopService()

    # -- the MEDIA service ----------------------------------------------------------

    async def offer(self, ctx: RequestContext) -> bool:
        """An initial request's offer (route[NATMANAGE]): U for its SDP and
        rewrite it; True when the media is now relayed.  An INVITE without
        SDP that needs a relay is marked a late offer instead (its 2xx
        carries the offer, on_reply relays it).  Call before forwarding."""
        if await self.offer_request(ctx):
            return True
        self.late_offer(ctx)
        return False

    async def in_dialog(self, ctx: RequestContext) -> None:
        """A request inside a relayed (or to-be-relayed) call: BYE ends the
        relay session, ACK/PRACK carry the answer to a late offer, a
        re-INVITE / UPDATE with SDP is a new offer."""
        req = ctx.request
        if req.method == "BYE":
            if self.mode == "always" or self.is_relayed(req.call_id):
                await self.delete(req.call_id, req.from_tag, req.to_tag)
            return
        if req.method in ("ACK", "PRACK"):
            await self.answer_in_request(ctx)
            return
        await self.offer_request(ctx)

    def on_reply(self, ctx: RequestContext,
                 resp: Response) -> Coroutine[Any, Any, bool] | None:
        """The relay work a response needs, as a coroutine, or None (most
        answers: the script's reply_route then stays synchronous).  Failures
        are not handled here: end_call in failure_route, once every branch
        has ended."""
        state = ctx.call.peek(MediaState)
        if state is None:
            return None
        if state.late_offer and resp.status < 300:
            # The 2xx carries the offer (and so does each retransmission of
            # it: the same U again, which the relay answers the same way).
            if resp.status >= 200 and resp.body:
                return self.offer_in_reply(ctx, resp)
            return None
        if (state.relayed and 100 < resp.status < 300 and resp.body
                and parse_sdp(resp) is not None):
            return self.answer(ctx, resp)
        return None

    async def end_call(self, ctx: RequestContext) -> None:
        """D for the call of this transaction (it failed or was cancelled);
        once: a second call does nothing."""
        state = ctx.call.get(MediaState)
        if state.deleted:
            return
        state.deleted = True
        await self.delete(ctx.request.call_id, ctx.request.from_tag)

    def relayed(self, ctx: RequestContext) -> bool:
        """This transaction's offer is on the relay and end_call has not
        released it yet."""
        state = ctx.call.peek(MediaState)
        return state is not None and state.relayed and not state.deleted

    # -- decisions ----------------------------------------------------------------

    def is_relayed(self, call_id: str) -> bool:
        """This proxy has the call on a relay (it sent the call's offer)."""
        return self.client.relay_of(call_id) is not None

    def _behind_nat(self, ctx: RequestContext) -> bool:
        """The nat module's answer for this request (no nat module: no)."""
        nat = self.core.modules.get(NAT)
        return nat is not None and nat.behind_nat(ctx)

    # -- commands -----------------------------------------------------------------

    async def offer_request(self, ctx: RequestContext) -> bool:
        """U for the request's SDP and rewrite it; True when the media is now
        relayed.  Call before the request is forwarded."""
        req = ctx.request
        if req.method not in OFFER_METHODS:
            return False
        sd = parse_sdp(req)
        if sd is None:
            return False
        signalling = self._behind_nat(ctx)
        if not needs_relay(self.mode, signalling=signalling, media=media_nat(sd),
                           known=self.is_relayed(req.call_id)):
            return False
        refusal = self._refusal(ctx, req.call_id, sd)
        if refusal is not None:
            raise refusal
        # Kamailio without its 'r' flag: a NAT'ed party's media comes from
        # where its signalling did, not from the private address it wrote.
        source_host = ctx.source.host if signalling and media_nat(sd) else None
        endpoints = await self._update(self.client.offer, req, req, sd, ctx, source_host)
        if endpoints is None:
            return False
        self._charge(req.call_id, ctx.source.host, endpoints)
        try:
            req.body = sdp.rewrite(sd, endpoints).to_bytes()
        except ValueError as e:
            log.warn("call {c}: cannot rewrite SDP for the relay: {e}", c=req.call_id, e=e)
            return False
        self.offers += 1
        ctx.call.get(MediaState).relayed = True
        return True

    def late_offer(self, ctx: RequestContext) -> bool:
        """An INVITE without SDP whose call needs a relay: the offer will come
        in the 2xx and the answer in the ACK (RFC 3261 13.2.1's late offer).
        Marks the call; True when it is one."""
        req = ctx.request
        if req.method != "INVITE" or req.body or not needs_relay(
                self.mode, signalling=self._behind_nat(ctx), media=False,
                known=self.is_relayed(req.call_id)):
            return False
        ctx.call.get(MediaState).late_offer = True
        return True

    async def offer_in_reply(self, ctx: RequestContext, resp: Response) -> bool:
        """U for the offer a 2xx carries after a late-offer INVITE, and
        rewrite it. The offer comes from the callee, so the tags go swapped
        (rtpproxy_manage does the same for an offer in a reply)."""
        sd = parse_sdp(resp)
        if sd is None:
            return False
        refusal = self._refusal(ctx, resp.call_id, sd)
        if refusal is not None:
            # A response cannot be refused: it goes on, its media unrelayed.
            log.warn("call {c}: offer in a {s} not relayed: {e}", c=resp.call_id,
                     s=resp.status, e=refusal.detail)
            return False
        endpoints = await self._update(self.client.offer, ctx.request, resp, sd, ctx, None,
                                       swap=True)
        if endpoints is None:
            return False
        self._charge(resp.call_id, ctx.source.host, endpoints)
        if not self._rewrite(resp, sd, endpoints):
            return False
        self.offers += 1
        ctx.call.get(MediaState).relayed = True
        return True

    async def answer_in_request(self, ctx: RequestContext) -> bool:
        """L for the answer an ACK (or PRACK) carries to a late offer the
        relay took, and rewrite it; the tags go swapped, as for the offer."""
        req = ctx.request
        if not self.is_relayed(req.call_id):
            return False
        sd = parse_sdp(req)
        if sd is None:
            return False
        signalling = self._behind_nat(ctx)
        source_host = ctx.source.host if signalling and media_nat(sd) else None
        endpoints = await self._update(self.client.answer, req, req, sd, ctx, source_host,
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

    async def answer(self, ctx: RequestContext, resp: Response) -> bool:
        """L for a response's SDP to a request whose offer went to the relay,
        and rewrite it; True when rewritten."""
        state = ctx.call.peek(MediaState)
        if state is None or not state.relayed or resp.status >= 300:
            return False
        sd = parse_sdp(resp)
        if sd is None:
            return False
        endpoints = await self._update(self.client.answer, ctx.request, resp, sd, ctx, None)
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
        # The client forgets the call whatever the D's outcome; a client
        # that does not say so (a test's) must not leave the charge behind.
        self._release(RelayClient.key_of(call_id))
        try:
            deleted = await self.client.delete(call_id, from_tag, to_tag)
        except (RelayUnavailable, RelayError) as e:
            self.failures += 1
            log.warn("call {c}: relay delete failed: {e}", c=call_id, e=e)
            return False
        self.deletes += 1
        return bool(deleted)

    async def _update(self, command: UpdateCommand, req: Request, msg: Message,
                      sd: sdp.SessionDescription, ctx: RequestContext,
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
        streams = sdp.media_addresses(sd)
        wanted = sum(1 for _address, port in streams if port)
        if wanted > self.max_streams:
            # Offers in requests were refused before this; this is an answer
            # (or an offer in a response) over the limit: no relay command.
            log.warn("call {c}: {n} media streams, more than [media] max_streams {m}: "
                     "not relayed", c=call_id, n=wanted, m=self.max_streams)
            self.refused += 1
            return None
        results: list[tuple[str, int] | None] = []
        offering = command == self.client.offer
        try:
            for index, (address, port) in enumerate(streams):
                if port == 0 or not address:
                    results.append(None)  # rejected stream: no relay ports
                    continue
                host = address if source_host is None or sdp.is_hold(sd, index) else source_host
                relay_host, relay_port = await command(call_id, from_tag, to_tag, host, port,
                                                       media_index=index + 1)
                if offering:
                    self.sessions.opened(RelayClient.key_of(call_id), call_id, from_tag,
                                         index + 1, self.client.relay_of(call_id))
                if relay_host is None:
                    # A relay bound on every address named none: the one the
                    # SIP message reached us on is the best guess a phone has.
                    relay_host = ctx.source.listener.advertise
                results.append((relay_host, relay_port))
        except (RelayUnavailable, RelayError) as e:
            self.failures += 1
            log.warn("call {c}: relay unusable, media not relayed: {e}", c=call_id, e=e)
            if any(results) and offering:
                # Streams already set up would wait for their media timeout.
                self.client.delete(call_id, from_tag, to_tag).addErrback(lambda _f: None)
            return None
        live = [r for r in results if r is not None]
        if not live:
            return None
        fallback = live[0][0]
        return [r if r is not None else (fallback, 0) for r in results]

    # -- limits -------------------------------------------------------------------

    def _refusal(self, ctx: RequestContext, call_id: str,
                 sd: sdp.SessionDescription) -> RequestRejected | None:
        """Why this offer may not be relayed (488 / 503), or None."""
        streams = sum(1 for _address, port in sdp.media_addresses(sd) if port)
        agent = _warn_agent(ctx)
        if streams > self.max_streams:
            self.refused += 1
            text = f"Too many media streams: {streams}, at most {self.max_streams}"
            return RequestRejected(488, "Not Acceptable Here", text,
                                   [("Warning", f'399 {agent} "{text}"')])
        limit = self.max_sessions_per_source
        held = self._charges.get(RelayClient.key_of(call_id))
        source = held[0] if held is not None else ctx.source.host
        extra = streams - (held[1] if held is not None else 0)
        if extra <= 0 or not limit or self.is_trusted(source):
            return None
        now = self._per_source.get(source, 0)
        if now + extra <= limit:
            return None
        self.refused += 1
        text = f"Too many relayed media sessions from {source}: {now} of {limit} in use"
        return RequestRejected(503, "Service Unavailable", text,
                               [("Warning", f'399 {agent} "{text}"')])

    def _charge(self, call_id: str, host: str, endpoints: list[tuple[str, int]]) -> None:
        """Count the call's relay sessions against the source whose offer
        created them (a later offer of the call, from either party, adds to
        the first one's source)."""
        key = RelayClient.key_of(call_id)
        streams = sum(1 for _address, port in endpoints if port)
        held = self._charges.get(key)
        if held is not None:
            host, before = held
            if streams <= before:
                return
        else:
            before = 0
        self._charges[key] = (host, streams)
        self._per_source[host] = self._per_source.get(host, 0) + streams - before

    def _release(self, key: str) -> None:
        held = self._charges.pop(key, None)
        if held is None:
            return
        host, streams = held
        left = self._per_source.get(host, 0) - streams
        if left > 0:
            self._per_source[host] = left
        else:
            self._per_source.pop(host, None)


def _warn_agent(ctx: RequestContext) -> str:
    """RFC 3261 20.43 warn-agent: the address this proxy goes by there."""
    host = getattr(ctx.source.listener, "advertise", "") or "sipsuite"
    return bracket(host)
