"""Routing: Kamailio's routing blocks as methods of a Python class.

``request_route`` is Kamailio's ``request_route``; ``branch_route``,
``reply_route`` and ``failure_route`` are its ``branch_route[]``,
``onreply_route[]`` and ``failure_route[]``. Any of them may be ``async``
(a location lookup in Redis is awaited). Users subclass ``DefaultRouting``
and name their class in ``[proxy] routing = "package.module:Class"``.

Each hook receives a ``RequestContext`` (``ctx``): the request, where it
came from, and the actions a script takes (``reply``, ``relay``, ``drop``,
``record_route``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sipsuite.hosts import unbracket
from sipsuite.log import get_logger
from sipsuite.proxy.api import CallState
from sipsuite.proxy.core.hookerrors import hook_failed
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.registrar.bindings import Binding
from sipsuite.proxy.routing.avp import Avps
from sipsuite.proxy.routing.fields import MessageFields
from sipsuite.proxy.services import AUTH, LOCATION, REGISTRAR, SHV, UAC, SharedVars
from sipsuite.sip.headers import NameAddr
from sipsuite.sip.message import Request, Response
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.proxy.core.context import Branch, ResponseContext
    from sipsuite.proxy.core.proxy import ProxyCore


_route_log = get_logger("sipsuite.proxy.routing")

# Methods that create a dialog and so are record-routed by the default
# script (kamailio.cfg record-routes INVITE and SUBSCRIBE; REFER also
# creates an implicit subscription, RFC 3515).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


class _Nobody:
    routing_action: tuple[Any, ...] = ()


_NOBODY = _Nobody()


class RequestContext(MessageFields):
    """What a routing hook sees of one incoming request and can do with it.

    Its Kamailio pseudo-variables (``ctx.ruri``, ``ctx.from_user``...) come
    from MessageFields (``sipsuite/proxy/routing/fields.py``)."""

    __slots__ = ("core", "request", "source", "response", "loose_routed", "removed_routes",
                 "handled", "vars", "tx_key", "debug", "call", "media_direction", "hook",
                 "watch")

    def __init__(self, core: ProxyCore, request: Request, source: Any, loose_routed: bool,
                 call: CallState | None = None) -> None:
        self.core = core
        self.request = request
        self.source = source
        # A Route header naming this proxy was removed (Kamailio's loose_route()).
        self.loose_routed = loose_routed
        # The Route entries naming this proxy that 16.4 removed (top first):
        # what our own Route carried, e.g. outbound's flow token.
        self.removed_routes: Sequence[NameAddr] = ()
        # The response context (RFC 3261 16.7), made at the first relay().
        self.response: ResponseContext | None = None
        self.handled = False
        # The user's own variables (a script's $var/$avp); nothing built in uses it.
        self.vars: dict[str, Any] = {}
        # Per-call state of the core and the modules: the server transaction's
        # (the same object its answers see), or its own for a stateless ACK.
        self.call = call if call is not None else CallState()
        # The server transaction's key, once known: saves computing it again
        # for every reply and relay (it parses the top Via).
        self.tx_key: tuple | None = None
        # [features] debug as it was when routing began: log every step.
        self.debug = False
        # A bridging relay's networks for this request's media, (sender,
        # receiver), each "internal" or "external" (Kamailio's
        # rtpproxy_manage("ie")); None: from [media] internal_networks.
        self.media_direction: tuple[str, str] | None = None
        # The hook running now (request_route, branch_route...; a module's
        # "owner.request_received"), set by the core's hook runner.
        self.hook = ""
        # The core's hook points, whose routing_action hooks see each action
        # (a stand-in core of a test may have none).
        self.watch: Any = getattr(core, "hooks", _NOBODY)

    @property
    def avp(self) -> Avps:
        """The transaction's AVPs (Kamailio's ``$avp``): set in request_route,
        seen by branch_route, reply_route and failure_route of the same
        transaction and by the branches failure_route starts
        (``sipsuite/proxy/routing/avp.py`` has the ``$avp`` twins)."""
        return self.call.get(Avps)

    @property
    def proxy_ctx(self) -> ResponseContext | None:
        """Deprecated name of ``response`` (documented before the rename)."""
        return self.response

    @proxy_ctx.setter
    def proxy_ctx(self, value: ResponseContext | None) -> None:
        self.response = value

    # -- facts -----------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.request.method

    @property
    def in_dialog(self) -> bool:
        return self.request.to_tag is not None

    def is_myself(self, uri: URI) -> bool:
        """The URI names this proxy: one of its addresses (and a listening
        port) or one of its configured domains."""
        return self.core.is_myself(uri.host, uri.port)

    def is_local_domain(self, uri: URI) -> bool:
        return self.core.is_local_domain(uri.host)

    def source_trusted(self) -> bool:
        return self.core.is_trusted(self.source.host)

    async def lookup(self, user: str) -> list[Binding]:
        """The user's bindings: static ones from the config, then registered
        ones, highest q first. Raises StoreUnavailable when the store (Redis)
        cannot answer in time."""
        found = await self.core.modules.require(LOCATION).lookup(user)
        if self.watch.routing_action:
            self.note("lookup", f"{user!r}: {len(found)} binding(s)"
                      + (": " + ", ".join(b.contact for b in found) if found else ""))
        return found

    def note(self, action: str, detail: str = "") -> None:
        """Show a decision to the modules that watch the routing (the
        routing_action hook: the flight recorder).  The actions below call
        it; a module calls it for its own decisions (the dispatcher's
        choice).  Nothing is built when nobody watches."""
        for owner, fn in self.watch.routing_action:
            try:
                fn(self, action, detail)
            except Exception:  # noqa: BLE001 - a watcher must not cost the request
                hook_failed(f"{owner}.routing_action", self.request, self.source)

    # -- actions ---------------------------------------------------------------
    async def register(self) -> None:
        """Store the REGISTER's bindings and answer it (Kamailio's save("location"))."""
        self.handled = True
        if self.watch.routing_action:
            self.note("register", "save(location)")
        await self.core.modules.require(REGISTRAR).save(self)

    async def auth_check(self, user: str, *, proxy: bool) -> bool:
        """Kamailio's auth_check: True when the request has valid digest
        credentials for ``user``; otherwise it has been answered (401/407
        challenge or 403) and the hook should return."""
        ok = await self.core.modules.require(AUTH).check(self, user, proxy=proxy)
        if not ok:
            self.handled = True
        if self.watch.routing_action:
            self.note("auth_check", f"{user!r} ({'proxy' if proxy else 'www'}): " + (
                "valid credentials" if ok else "no valid credentials (challenged or refused)"))
        return ok

    def consume_credentials(self, *, proxy: bool) -> None:
        self.core.modules.require(AUTH).consume(self, proxy=proxy)

    def reply(self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the request from here (Kamailio's sl_send_reply / t_reply)."""
        self.handled = True
        if self.watch.routing_action:
            self.note("reply", f"{status} {reason or ''}".rstrip())
        self.core.reply(self, status, reason, headers or [])

    def relay(self, targets: list[URI | str | Destination] | None = None) -> None:
        """Forward to every target in parallel (one branch each); ``None``
        forwards to the Request-URI by way of ``dst_uri`` when it is set,
        else of the pre-loaded Route or the Request-URI itself."""
        self.handled = True
        out: list[URI | Destination] = []
        if not targets:
            hop = self._dst_hop
            targets = [self.request.uri if hop is None else Destination(self.request.uri, dst=hop)]
        for target in targets:
            out.append(URI.parse(target) if isinstance(target, str) else target)
        if self.watch.routing_action:
            self.note("relay", "to " + ", ".join(map(_target_text, out)))
        self.core.relay(self, out)

    def record_route(self) -> None:
        """Kamailio's record_route(): this proxy stays on the dialog's path."""
        self.call.record_route = True
        if self.watch.routing_action:
            self.note("record_route")

    def replace_from(self, uri: URI | str | None = None, display: str | None = None) -> None:
        """Kamailio's uac_replace_from with restore_mode "auto": the callee
        sees this From (``display`` "" removes the display name, None keeps
        it), the caller its own; record-routes a dialog-creating request.
        Needs ``[uac] secret`` (docs/routing.md, "Caller-id")."""
        uac = self.core.modules.get(UAC)
        if uac is None:
            raise LookupError("replace_from needs [uac] secret (it is empty)")
        uac.replace(self, "from", uri, display)

    def replace_to(self, uri: URI | str | None = None, display: str | None = None) -> None:
        """Kamailio's uac_replace_to, restored the same way as replace_from."""
        uac = self.core.modules.get(UAC)
        if uac is None:
            raise LookupError("replace_to needs [uac] secret (it is empty)")
        uac.replace(self, "to", uri, display)

    def drop(self) -> None:
        """Neither answer nor forward (Kamailio's ``drop`` / ``exit``)."""
        self.handled = True
        if self.watch.routing_action:
            self.note("drop")

    def trace(self, fmt: str, /, **fields: object) -> None:
        """One line of the routing-step log, only while ``ctx.debug`` is on
        (DefaultRouting sets it from ``[features] debug``, kamailio.cfg's
        WITH_DEBUG): ``ctx.trace("lookup: {n} binding(s)", n=len(found))``.
        The fields are formatted by the logger, and not at all when tracing
        is off, so a script needs no ``if ctx.debug:`` around the call."""
        if not self.debug:
            return
        if self.watch.routing_action:
            # With the routing-step log on, the flight recorder has its lines too.
            try:
                line = fmt.format(**fields)
            except (KeyError, IndexError, ValueError, AttributeError):
                line = fmt
            self.note("trace", line)
        req = self.request
        _route_log.info("route {method} {uri} cid={cid}: " + fmt, method=req.method,
                        uri=req.uri, cid=req.call_id, **fields)


def _target_text(target: URI | Destination) -> str:
    if not isinstance(target, Destination):
        return str(target)
    dst = target.dst
    if dst is None:
        return str(target.uri)
    hop = str(dst) if isinstance(dst, URI) else f"{dst.transport}:{dst.host}:{dst.port}"
    return f"{target.uri} via {hop}"


class Destination:
    """A branch target with more than a Request-URI: a route set to put in
    front (a registered Path) and a fixed next hop (Kamailio's ``$du``: the
    address a NAT'ed phone registered from; or a URI, resolved by RFC 3263
    instead of the Request-URI: ``ctx.dst_uri``)."""

    __slots__ = ("uri", "route", "dst")

    def __init__(self, uri: URI, route: list[str] | None = None, dst: Target | URI | None = None) -> None:
        self.uri = uri
        self.route = route or []
        self.dst = dst

    @classmethod
    def of(cls, binding: Binding) -> Destination:
        """Where a request for ``binding`` goes: through its Path if it has
        one (the edge proxy there knows the way), else to the address it
        registered from when it is behind NAT, else to its Contact."""
        dst = None
        if binding.nat and not binding.path and binding.received:
            dst = parse_address(binding.received)
        return cls(binding.uri, list(binding.path), dst)

    def __repr__(self) -> str:
        return f"<Destination {self.uri} route={self.route} dst={self.dst}>"


def parse_address(text: str) -> Target | None:
    """'udp:192.0.2.1:5060' / 'tcp:[2001:db8::1]:5060' -> Target."""
    transport, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or transport not in ("udp", "tcp", "tls"):
        return None
    return Target(transport, unbracket(host), int(port))


class Routing:
    """Base class: hooks that do nothing. Subclass ``DefaultRouting``
    rather than this unless you want to start from scratch."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core

    @property
    def cfg(self) -> Any:
        """The run-time settings, as they are now (Kamailio's
        ``$sel(cfg_get.voicemail.srv_ip)`` is ``self.cfg.voicemail.srv_ip``):
        ``sipsuite-ctl cfg set`` replaces the config whole, and the next
        read here sees the new value; so read it where you use it, never keep
        a copy of it or of a section."""
        return self.core.config

    @property
    def config(self) -> Any:
        """Another name of :attr:`cfg` (the first one documented)."""
        return self.core.config

    @property
    def shv(self) -> SharedVars:
        """Kamailio's ``$shv``: variables shared by every process of the
        proxy (the workers) and, with ``[redis] url``, every node on that
        Redis: ``await self.shv.get(name)``, ``await self.shv.set(name, v)``,
        ``await self.shv.incr(name)`` (atomic, the new value).  Unlike plain
        attributes of ``self`` (``$var``: one copy per worker process)."""
        return self.core.modules.require(SHV)

    def request_route(self, ctx: RequestContext) -> Any:
        ctx.reply(500, "No routing")

    def branch_route(self, ctx: RequestContext, branch: Branch) -> Any:
        """Called for each new branch before it is sent; may edit
        ``branch.request`` (headers, Request-URI)."""

    def reply_route(self, ctx: RequestContext, branch: Branch, response: Response) -> Any:
        """Called for every response a branch receives."""

    def failure_route(self, ctx: RequestContext, response: Response) -> Any:
        """Called once every branch has a failure (3xx-6xx) and before the
        best one goes upstream; ``ctx.relay(...)`` here starts new branches
        (serial forking, gateway failover), ``ctx.reply`` replaces the answer.
        It runs for a CANCELed request too (``ctx.response.cancelled``, the
        response context's flag, and ``response`` a 487), to release what the call held: relay() starts no
        branch then, and a reply() should not be made."""
