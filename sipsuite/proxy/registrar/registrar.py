"""Registrar: REGISTER processing as RFC 3261 section 10.3 lays it out.

``parse_register`` reads and checks what a REGISTER asks for (steps 5 and
6); ``apply_register`` changes an AOR's bindings accordingly (step 7); it is
a pure function so a Redis store can run it again after losing a race with
another proxy node. ``Registrar.register`` ties them to a store and answers
(step 8): 200 with every current binding, or the error the RFC asks for.

Beyond RFC 3261: Path (RFC 3327), +sip.instance/reg-id (RFC 5626), a per-AOR
contact limit, and Kamailio's "received": the address a REGISTER came from,
used instead of the Contact when the phone is behind NAT.

A module (issue 13): ``SPEC`` sets it up always; it provides REGISTRAR
(``ctx.register()`` is its ``save``), writes bindings through LOCATION and
records flows through FLOWS when the outbound module is there.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.hosts import unbracket
from sipsuite.log import get_logger
from sipsuite.proxy.registrar.bindings import Binding, StoreUnavailable
from sipsuite.proxy.services import EVENTS, FLOWS, LOCATION, REGISTRAR
from sipsuite.sip.headers import split_values
from sipsuite.sip.sdp import PRIVATE_NETWORKS
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.config import Config, RegistrarConfig
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.net.listener import Source
    from sipsuite.proxy.registrar.location import LocationStore
    from sipsuite.proxy.routing.base import RequestContext
    from sipsuite.proxy.services import FlowService
    from sipsuite.sip.message import Request

log = get_logger("sipsuite.proxy.registrar")

# 2**32 - 1: the largest delta-seconds RFC 3261 20.19 asks us to accept.
_MAX_DELTA = 4294967295


class RegisterRejected(Exception):
    """The REGISTER fails with this answer and changes nothing."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or []


@dataclass(slots=True)
class ContactRequest:
    """One Contact of a REGISTER, with the expiry it asks for (seconds)."""

    contact: str
    expires: int
    q: float = 1.0
    instance: str | None = None
    reg_id: int | None = None


@dataclass(slots=True)
class RegisterRequest:
    aor: str  # the key: the To user, unescaped
    call_id: str
    cseq: int
    star: bool = False  # Contact: * with Expires: 0: remove every binding
    contacts: list[ContactRequest] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    received: str | None = None
    socket: str | None = None
    user_agent: str = ""
    nat: bool = False
    outbound: bool = False  # RFC 5626 6: outbound applies; the 200 carries Require: outbound
    flow: str | None = None  # the flow its bindings record (sipsuite.proxy.registrar.outbound)


def _delta(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        raise RegisterRejected(400, f"Bad {what}")
    return min(int(text), _MAX_DELTA)


def _q(text: str | None) -> float:
    if text is None:
        return 1.0
    try:
        q = float(text)
    except ValueError:
        raise RegisterRejected(400, "Bad q value") from None
    if not 0.0 <= q <= 1.0:
        raise RegisterRejected(400, "Bad q value")
    return q


def is_private(host: str) -> bool:
    """RFC 1918, RFC 6598 (carrier-grade NAT), link-local and ULA addresses
    (the ranges nathelper's tests use, shared with the SDP test): where a
    Contact points that nobody outside the phone's LAN can reach."""
    host = unbracket(host)
    if ":" not in host and not host[:3].startswith(("10.", "17", "19", "10", "16")):
        # Every private IPv4 range starts so; this skips ipaddress (the
        # costliest step of a REGISTER's NAT test) for the rest and for names.
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in net for net in PRIVATE_NETWORKS)


def behind_nat(req: Request, source: Source) -> bool:
    """Kamailio nathelper's nat_uac_test(19): the Contact is a private
    address, the top Via names another address than the packet came from,
    or another port."""
    via = req.top_via
    via_host = unbracket(via.host)
    if via_host != source.host:
        return True
    if (via.port or 5060) != source.port and source.transport == "udp":
        return True
    return any(is_private(c.uri.host) and unbracket(c.uri.host) != source.host
               for c in req.contacts)


def parse_register(req: Request, source: Source | None, cfg: RegistrarConfig) -> RegisterRequest:
    """Steps 5 and 6: the AOR, and each Contact with the expiry it gets.
    Raises RegisterRejected with 400 or 423."""
    to_uri = req.to.uri
    if to_uri.scheme not in ("sip", "sips"):
        raise RegisterRejected(400, "Bad To: not a SIP AOR")
    if not to_uri.user:
        raise RegisterRejected(400, "Bad To: no user part")
    try:
        contacts, star = req.contacts, req.contact_star
    except ValueError:
        raise RegisterRejected(400, "Bad Contact") from None
    header_expires = _delta(req.header("expires"), "Expires")
    reg = RegisterRequest(aor=to_uri.user_unescaped, call_id=req.call_id, cseq=req.cseq.number)
    if star:
        if header_expires != 0:
            raise RegisterRejected(400, "Contact * needs Expires: 0")
        reg.star = True
        return reg
    if len(contacts) > cfg.max_contacts_per_request:
        # Each Contact is compared with the earlier ones for equivalence; a
        # cap keeps one REGISTER's cost bounded however many it lists.
        raise RegisterRejected(400, "Too Many Contacts")
    # Contacts that can be equivalent share these parts (RFC 3261 19.1.4):
    # comparing only within a bucket keeps a long list linear.
    seen: dict[tuple[str, str | None, str, int | None], list[URI]] = {}
    for addr in contacts:
        uri = addr.uri
        if uri.scheme not in ("sip", "sips"):
            # Nothing else can be routed to from here (RFC 4475 unksm2's name: URI).
            raise RegisterRejected(400, "Bad Contact: not a SIP URI")
        expires = _delta(addr.params.get("expires"), "Contact expires")
        if expires is None:
            expires = header_expires if header_expires is not None else cfg.default_expires
        if expires and expires < cfg.min_expires:
            raise RegisterRejected(423, "Interval Too Brief", [("Min-Expires", str(cfg.min_expires))])
        expires = min(expires, cfg.max_expires)
        instance = addr.params.get("+sip.instance")
        reg_id_text = addr.params.get("reg-id")
        if reg_id_text is not None and not reg_id_text.isdigit():
            raise RegisterRejected(400, "Bad reg-id")
        bucket = seen.setdefault(
            (uri.user_unescaped, uri.password, uri.host.lower(), uri.port), [])
        if any(uri.equivalent(s) for s in bucket):
            # The same contact twice: the last one wins, as a phone would mean.
            reg.contacts = [c for c in reg.contacts if not URI.parse(c.contact).equivalent(uri)]
        bucket.append(uri)
        reg.contacts.append(ContactRequest(
            contact=str(uri), expires=expires, q=_q(addr.params.get("q")),
            instance=instance.strip('"') if instance else None,
            reg_id=int(reg_id_text) if reg_id_text is not None else None,
        ))
    reg.path = [v.strip() for v in req.header_all("path")]
    _outbound(req, reg, cfg)
    if source is not None:
        reg.received = str(source)
        # Interned: every binding keeps these, and a registrar has a handful
        # of listeners and of phone models, not one per phone (issue 19:
        # ~60 bytes each per binding).  Mortal in CPython: dropped with the
        # last binding that uses them.
        reg.socket = sys.intern(repr(source.listener))
        reg.nat = behind_nat(req, source)
    reg.user_agent = sys.intern((req.header("user-agent") or "")[:200])
    return reg


def supported(req: Request) -> set[str]:
    return {v.strip().lower() for h in req.header_all("supported") for v in split_values(h)}


def _outbound(req: Request, reg: RegisterRequest, cfg: RegistrarConfig) -> None:
    """RFC 5626 6: outbound applies when we are the first hop (one Via) or
    the edge proxy nearest the phone put ``ob`` on its Path; then a REGISTER
    with ``Supported: outbound`` and a Contact with reg-id and +sip.instance
    is answered with ``Require: outbound``. Otherwise reg-id is ignored, or
    the REGISTER refused with 439 when it asked for outbound."""
    asked = any(c.reg_id is not None for c in reg.contacts)
    if not asked:
        return
    wants = "outbound" in supported(req)
    first_hop = len(req.vias) == 1
    edge_ob = False
    if reg.path:
        try:
            # The last Path value is the proxy nearest the phone, its first hop.
            edge_ob = "ob" in URI.parse(split_values(reg.path[-1])[-1].strip().strip("<>")).params
        except ValueError:
            raise RegisterRejected(400, "Bad Path") from None
    applies = cfg.outbound and (first_hop or edge_ob)
    if not applies:
        if wants and not first_hop and cfg.outbound:
            raise RegisterRejected(439, "First Hop Lacks Outbound Support")
        for c in reg.contacts:
            c.reg_id = None
        return
    reg.outbound = wants and any(c.reg_id is not None and c.instance for c in reg.contacts)


def first_hop_flow(flows: FlowService | None, source: Source | None, outbound: bool,
                   path: list[str]) -> str | None:
    """The flow a REGISTER's bindings record: none behind an edge proxy (its
    Path routes), for TCP/TLS always (connection reuse), for UDP with outbound."""
    if flows is None or source is None or path:
        return None
    if source.transport in ("tcp", "tls") or outbound:
        return flows.flow_uri(source)
    return None


def _same(binding: Binding, uri: URI, c: ContactRequest) -> bool:
    if c.instance is not None and binding.instance == c.instance and binding.reg_id == c.reg_id:
        return True  # RFC 5626 4.2: the same flow from the same device
    return binding.uri.equivalent(uri)


def apply_register(
    bindings: list[Binding], reg: RegisterRequest, now: float, cfg: RegistrarConfig
) -> list[Binding]:
    """Step 7 on ``bindings`` (edited in place); returns them. Raises
    RegisterRejected, leaving the caller to discard the edits."""
    if reg.star:
        for b in bindings:
            if b.call_id == reg.call_id and b.cseq >= reg.cseq:
                raise RegisterRejected(400, "Invalid CSeq number")
        bindings.clear()
        return bindings
    for c in reg.contacts:
        uri = URI.parse(c.contact)
        old = next((b for b in bindings if _same(b, uri, c)), None)
        if old is not None and old.call_id == reg.call_id and old.cseq >= reg.cseq:
            # An older (or repeated) REGISTER of the same registration
            # overtook a newer one: it must not undo what the newer set.
            raise RegisterRejected(400, "Invalid CSeq number")
        if old is not None:
            bindings.remove(old)
        if c.expires == 0:
            continue
        bindings.append(Binding(
            contact=c.contact, expires=now + c.expires, q=c.q, call_id=reg.call_id,
            cseq=reg.cseq, path=list(reg.path), received=reg.received, socket=reg.socket,
            instance=c.instance, reg_id=c.reg_id, user_agent=reg.user_agent, nat=reg.nat,
            updated=now, flow=reg.flow,
            outbound=reg.outbound and c.reg_id is not None and c.instance is not None,
        ))
    limit = cfg.max_contacts
    if limit and len(bindings) > limit:
        if cfg.max_contacts_policy == "reject":
            raise RegisterRejected(503, "Too many registered contacts")
        bindings.sort(key=lambda b: b.updated)
        del bindings[: len(bindings) - limit]
    return bindings


def contact_values(bindings: list[Binding], now: float) -> list[str]:
    """Contact header values for the 200: every current binding with the
    seconds it has left (RFC 3261 10.3 step 8)."""
    out = []
    for b in bindings:
        remaining = b.remaining(now)
        params = f";expires={remaining if remaining is not None else _MAX_DELTA}"
        if b.q != 1.0:
            params += f";q={b.q:g}"
        if b.instance is not None:
            params += f';+sip.instance="{b.instance}"'
        if b.reg_id is not None:
            params += f";reg-id={b.reg_id}"
        out.append(f"<{b.contact}>{params}")
    return out


class Registrar:
    """Answers REGISTER requests for our domains from the location store."""

    name: ClassVar[str] = "registrar"

    def __init__(self, core: CoreAPI) -> None:
        self.core = core
        # Told of every AOR that got a binding from behind NAT (keep-alives):
        # on_nat_binding() subscribers, and the one older slot.
        self._nat_listeners: list[Callable[[str], None]] = []
        self.on_nat: Callable[[str], None] | None = None
        self._date_at = -1
        self._date_text = ""

    # Read at use: cfg set replaces the config whole.
    @property
    def cfg(self) -> RegistrarConfig:
        return self.core.config.registrar

    @property
    def store(self) -> LocationStore:
        """The store of registered bindings (LOCATION's, without the static ones)."""
        return self.core.modules.require(LOCATION).store

    @property
    def flows(self) -> FlowService | None:
        """The outbound module's flows, if it is set up (records the flow a REGISTER came over)."""
        return self.core.modules.get(FLOWS)

    def clock(self) -> float:
        return self.core.wall()

    def on_nat_binding(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(aor)`` for each REGISTER that stores a binding from behind NAT."""
        self._nat_listeners.append(fn)

    def _date(self, now: float) -> str:
        """The Date header for ``now``: formatted once per second, not per 200."""
        second = int(now)
        if second != self._date_at:
            self._date_at = second
            self._date_text = formatdate(second, usegmt=True)
        return self._date_text

    async def save(self, ctx: RequestContext) -> None:
        """Kamailio's save("location"): store the REGISTER's bindings and answer it."""
        req = ctx.request
        try:
            reg = parse_register(req, ctx.source, self.cfg)
        except RegisterRejected as e:
            ctx.reply(e.status, e.reason, e.headers)
            return
        cfg = self.cfg
        flows = self.flows
        reg.flow = first_hop_flow(flows, ctx.source, reg.outbound, reg.path)
        events = self.core.modules.get(EVENTS)
        before: dict[str, float | None] | None = None
        if events is not None and events.registrations and (reg.contacts or reg.star):
            before = {}
        try:
            if before is not None:
                def change(bs: list[Binding], now: float) -> list[Binding]:
                    before.update((b.contact, b.expires) for b in bs
                                  if b.expires is None or b.expires > now)
                    return list(apply_register(bs, reg, now, cfg))

                bindings = await self.store.update(reg.aor, change)
            elif reg.contacts or reg.star:
                bindings = await self.store.update(
                    reg.aor, lambda bs, now: list(apply_register(bs, reg, now, cfg))
                )
            else:  # no Contact: a query
                bindings = await self.store.lookup(reg.aor)
        except RegisterRejected as e:
            ctx.reply(e.status, e.reason, e.headers)
            return
        except StoreUnavailable as e:
            log.warn("REGISTER for {aor}: location store unavailable: {e}", aor=reg.aor, e=e)
            ctx.reply(500, "Location Store Unavailable", [("Retry-After", str(cfg.retry_after))])
            return
        if before is not None and events is not None:
            events.bindings_changed(reg.aor, before, bindings)
        if reg.nat and reg.contacts:
            for fn in self._nat_listeners:
                fn(reg.aor)
            if self.on_nat is not None:
                self.on_nat(reg.aor)
        if reg.flow is not None and flows is not None and ctx.source is not None:
            flows.registered(ctx.source, [c.contact for c in reg.contacts if c.expires])
        now = self.clock()
        headers = [("Contact", v) for v in contact_values(bindings, now)]
        if reg.outbound:
            headers.append(("Require", "outbound"))
        if reg.path and "path" in supported(req):
            headers += [("Path", p) for p in reg.path]
        headers.append(("Date", self._date(now)))
        ctx.reply(200, "OK", headers)

    #: The name user routing classes used before save() (core.registrar.register(ctx)).
    register = save

    # -- the module's life --------------------------------------------------------
    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # [registrar] is read at use

    def stats(self) -> Mapping[str, object]:
        return {}

    def stop(self) -> None:
        pass


class RegistrarSpec:
    """Always set up: REGISTER for our domains is answered here."""

    name = "registrar"
    requires: tuple[ServiceKey[Any], ...] = (LOCATION,)
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return True

    def setup(self, core: CoreAPI, config: Config) -> Registrar:
        registrar = Registrar(core)
        core.modules.provide(REGISTRAR, registrar)
        return registrar


SPEC = RegistrarSpec()
