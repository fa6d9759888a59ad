"""Flows: RFC 5626 outbound, and TCP/TLS connection reuse for phones behind NAT.

A phone behind NAT can only be reached over the flow it registered on: its
TCP/TLS connection, or for UDP the (our listener, its address and port)
5-tuple. The registrar records that flow in the binding as a Route URI
naming this node, whose user part is a flow token: the flow's transport,
listener and remote address, with an HMAC so nobody can make us send over a
flow we did not hand out (RFC 5626 5.2). The node that holds the connection
sends over it directly; another node sharing the Redis store routes the
request to that node through the URI, as to an RFC 5626 edge proxy, which
forwards it over the flow or answers 430 Flow Failed (5.3).

Without outbound (Kamailio's tcp aliasing) a TCP/TLS binding is reached over
its connection while the connection lives, then at its Contact as before;
an outbound binding whose flow failed is skipped and removed, so the AOR's
other bindings (another reg-id) take the call (RFC 5626 7).

A module (issue 13): ``SPEC`` sets it up always; it provides FLOWS (the
registrar records flows through it, the script reaches bindings through it),
takes requests routed to a flow of ours on ``request_received`` (the flow
token is in the Route entry 16.4 removed) and answers STUN on the SIP ports
while ``[registrar] outbound`` is on (RFC 5626 8).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.hosts import bracket, unbracket
from sipsuite.log import get_logger
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.net.stream import SIPStreamProtocol
from sipsuite.proxy.registrar.bindings import Binding, StoreUnavailable
from sipsuite.proxy.routing.base import DIALOG_CREATING, Destination, parse_address
from sipsuite.proxy.services import FLOWS, LOCATION
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.routing.base import RequestContext
    from sipsuite.sip.headers import NameAddr

log = get_logger("sipsuite.proxy.outbound")

_MAC_BYTES = 12  # 96 bits: a forged token is guessed once in 2**96 tries


class ForgedToken(Exception):
    """A flow token naming this node that this node did not make."""


@dataclass(frozen=True, slots=True)
class Flow:
    """Where one registered flow goes from this node."""

    transport: str
    listener: Listener
    host: str
    port: int

    def target(self) -> Target:
        # A listener on the Target pins the 5-tuple and forbids a new
        # connection: a phone behind NAT cannot be connected to.
        return Target(self.transport, self.host, self.port, listener=self.listener)


class FlowTokens:
    """Makes and reads flow tokens: URL-safe base64 of an HMAC and the flow."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own, derived, so a flow token never doubles as a nonce.
        self.key = hmac.new(secret, b"sipsuite flow token", hashlib.sha256).digest()

    def make(self, transport: str, listener: str, host: str, port: int) -> str:
        payload = f"{transport}|{listener}|{host}|{port}".encode()
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")

    def read(self, token: str) -> tuple[str, str, str, int]:
        """(transport, listener, host, port); raises ForgedToken."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise ForgedToken(token) from None
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        good = hmac.new(self.key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, good):
            raise ForgedToken(token)
        parts = payload.decode("utf-8", "replace").split("|")
        if len(parts) != 4 or not parts[3].isdigit():
            raise ForgedToken(token)
        return parts[0], parts[1], parts[2], int(parts[3])


class Flows:
    """The proxy's flows: what the registrar records, and how requests for a
    binding (or carrying a flow token in their Route) reach the phone."""

    name: ClassVar[str] = "outbound"

    def __init__(self, core: CoreAPI, secret: str) -> None:
        self.core = core
        # "" (a single node): random, so flows die with the process, as
        # their TCP connections do anyway.
        self.tokens = FlowTokens(secret.encode() if secret else secrets.token_bytes(32))
        self.failed = 0  # outbound bindings skipped (and removed) for a failed flow

    # -- registering -------------------------------------------------------------
    def flow_uri(self, source: Source) -> str:
        """The Route URI of the flow ``source`` came over, naming this node."""
        listener = source.listener
        token = self.tokens.make(source.transport, repr(listener), source.host, source.port)
        return f"<sip:{token}@{listener.sent_by()};transport={source.transport};lr;ob>"

    def registered(self, source: Source, contacts: list[str]) -> None:
        """Kamailio's tcp aliasing: a Contact on the connection's own address
        at another port (its listening port, the Via's) names this
        connection too, so in-dialog requests to that Contact reuse it. Only
        the source address's own ports: no REGISTER may divert traffic meant
        for another host."""
        conn = source.connection
        if conn is None:
            return
        for text in contacts:
            uri = URI.parse(text)
            if unbracket(uri.host) != source.host:
                continue
            secure = uri.scheme == "sips" or (uri.params.get("transport") or "").lower() == "tls"
            port = uri.port or (5061 if secure else 5060)
            if port != source.port:
                self.core.net.alias(conn, source.host, port)

    # -- reading flows -----------------------------------------------------------
    def local(self, uri: URI) -> Flow | None:
        """The flow a flow URI of this node names, None if it is gone (its
        connection closed, its listener no more); raises ForgedToken."""
        transport, listener_name, host, port = self.tokens.read(uri.user or "")
        net = self.core.net
        listener = net.listener_named(listener_name)
        if listener is None:
            return None
        if transport in ("tcp", "tls"):
            conn = net.connection_to(host, port)
            if conn is None:
                # Worker processes: the flow may be another worker's
                # connection, which send() goes over (net/siblings.py).
                if net.sibling_holds(transport, host, port) != listener_name:
                    return None
            elif conn.listener is not listener:
                return None
        return Flow(transport, listener, host, port)

    def connection(self, flow: Flow) -> SIPStreamProtocol | None:
        conn: SIPStreamProtocol | None = self.core.net.connection_to(flow.host, flow.port)
        return conn

    def destination(self, b: Binding) -> Destination | None:
        """Where a request for ``b`` goes; None when it is an outbound
        binding whose flow failed (the caller tries the next one)."""
        if b.path or not b.flow or not self._same_device(b):
            return Destination.of(b)  # an edge proxy on its Path holds the flow
        try:
            uri = URI.parse(b.flow.strip("<>"))
        except ValueError:
            return None if b.outbound else Destination.of(b)
        if not self.core.identity.is_myself(uri.host, uri.port):
            # Another node holds the connection: through it, as through an edge proxy.
            return Destination(b.uri, [b.flow])
        try:
            flow = self.local(uri)
        except ForgedToken:
            # Made with another secret (a restart without [auth] secret).
            flow = None
        if flow is not None:
            return Destination(b.uri, [], flow.target())
        if b.outbound:
            return None
        return Destination.of(b)  # the connection went: its Contact, as before

    @staticmethod
    def _same_device(b: Binding) -> bool:
        """Without outbound, a connection stands for a Contact only when the
        Contact is the connection's own device: the same address (at another
        port), or a NAT'ed one. A Contact naming another host (a third-party
        registration) is reached at that host."""
        if b.outbound or b.nat:
            return True
        received = parse_address(b.received or "")
        return received is not None and received.host == unbracket(b.uri.host)

    async def destinations(self, aor: str, bindings: list[Binding]) -> list[tuple[Binding, Destination]]:
        """Each binding with its Destination; outbound bindings whose flow
        failed are left out and removed from the store (RFC 5626 5.3)."""
        out = []
        for b in bindings:
            dst = self.destination(b)
            if dst is not None:
                out.append((b, dst))
                continue
            self.failed += 1
            log.info("flow of {c} ({aor}) failed: binding removed", c=b.contact, aor=aor)
            location = self.core.modules.get(LOCATION)
            if location is None:
                continue
            try:
                await location.remove(aor, b.contact)
            except StoreUnavailable as e:
                log.warn("could not remove {c} of {aor}: {e}", c=b.contact, aor=aor, e=e)
        return out

    # -- requests routed to a flow of ours -----------------------------------------
    def request_received(self, ctx: RequestContext) -> None:
        """The request_received hook: a request whose top Route was a flow
        URI of ours (another node, or our registrar part, routed it to a
        phone's flow we hold, RFC 5626 5.3) goes over that flow; the script
        never sees it."""
        flow = self.route_flow(ctx.removed_routes)
        if flow is not None:
            self.forward(ctx, flow)

    def route_flow(self, removed: Sequence[NameAddr]) -> Flow | ForgedToken | bool | None:
        """What the request's top Route named, given the Route entries of
        ours 16.4 removed (the top one first, when it was ours): None when it
        is no flow URI of ours; a Flow to send over; False for a flow that
        failed; ForgedToken."""
        if not removed:
            return None
        uri = removed[0].uri
        if ("ob" not in uri.params or not uri.user
                or not self.core.identity.is_myself(uri.host, uri.port)):
            return None
        try:
            flow = self.local(uri)
        except ForgedToken as e:
            return e
        return flow if flow is not None else False

    def forward(self, ctx: RequestContext, flow: Flow | ForgedToken | bool) -> None:
        """RFC 5626 5.3, the edge proxy's part: over the flow, 430 Flow Failed
        when it is gone, 403 for a token we never made."""
        if isinstance(flow, ForgedToken):
            log.info("{m} from {s}: forged flow token refused", m=ctx.method, s=ctx.source)
            ctx.reply(403, "Forbidden (Invalid Flow Token)")
            return
        if not isinstance(flow, Flow):
            ctx.reply(430, "Flow Failed")
            return
        log.debug("{m} to {u} over the flow to {t}:{h}:{p}", m=ctx.method, u=ctx.request.uri,
                  t=flow.transport, h=bracket(flow.host), p=flow.port)
        if self.core.config.proxy.record_route and ctx.method in DIALOG_CREATING:
            # The dialog's later requests come back here, to the node holding the flow.
            ctx.record_route()
        ctx.relay([Destination(ctx.request.uri, [], flow.target())])

    # -- the module's life --------------------------------------------------------
    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # [registrar] outbound is read at use (STUN, the registrar)

    def stats(self) -> Mapping[str, object]:
        return {"failed": self.failed}

    def stop(self) -> None:
        pass


class OutboundSpec:
    """Always set up: TCP/TLS connection reuse needs it even with
    ``[registrar] outbound`` off."""

    name = "outbound"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return True

    def setup(self, core: CoreAPI, config: Config) -> Flows:
        # "" (a single node): a random key, see Flows.  Worker processes get
        # the supervisor's when the file has none (proxy/worker.py
        # host_secret), so a flow one worker recorded is good at another.
        flows = Flows(core, config.auth.secret)
        core.hooks.on_request_received(flows.request_received)
        core.modules.provide(FLOWS, flows)
        # RFC 5626 8: STUN keep-alives answered while outbound is on (read at
        # each one, so cfg set registrar.outbound applies at once).
        core.net.set_stun(lambda: core.config.registrar.outbound)
        return flows


SPEC = OutboundSpec()
