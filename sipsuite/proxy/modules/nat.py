"""NAT detection for signalling and media, like Kamailio's nathelper.

``signalling_nat`` is nat_uac_test(19) (the registrar's ``behind_nat``: a
private Contact, or a top Via naming another address or port than the
packet came from); ``media_nat`` is nat_uac_test(8) (a private address in
the SDP).  ``needs_relay`` is the decision the default routing takes for a
call's media, kept free of I/O so it is unit-tested on its own.

The ``nat`` module (``[features] nat``, set at start only: the media module
and its relay client exist or not from start-up on) offers them to the
script as the NAT service (sipsuite.proxy.services.NatService):
``detect(ctx)`` is kamailio.cfg's route[NATDETECT], its answer kept in the
transaction's CallState (:class:`NatState`) for the media decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.hosts import bracket, unbracket
from sipsuite.log import get_logger
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.registrar.registrar import behind_nat
from sipsuite.proxy.services import MEDIA, NAT
from sipsuite.sip import sdp
from sipsuite.sip.message import Message, Request, Response

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.routing.base import RequestContext

__all__ = [
    "NAT_PARAM", "SPEC", "NatModule", "NatSpec", "NatState", "add_contact_alias", "handle_ruri_alias",
    "media_nat", "needs_relay", "parse_sdp", "signalling_nat",
]

log = get_logger("sipsuite.proxy.nat")

#: The Record-Route parameter marking a call with a party behind NAT
#: (kamailio.cfg's ``add_rr_param(";nat=yes")``).
NAT_PARAM = "nat=yes"


def signalling_nat(req: Request, source: Any) -> bool:
    """nathelper's nat_uac_test(19) on a request and where it came from."""
    try:
        return behind_nat(req, source)
    except ValueError:
        # An unparsable Contact: nothing to tell, and routing goes on.
        return False


# Kamailio's alias protocol numbers (PROTO_UDP, PROTO_TCP, PROTO_TLS).
_PROTO_NUMBER = {"udp": "1", "tcp": "2", "tls": "3"}
_PROTO_NAME = {v: k for k, v in _PROTO_NUMBER.items()}


def add_contact_alias(req: Message, source: Any) -> bool:
    """nathelper's add_contact_alias(): ``;alias=IP~PORT~PROTO`` (where the
    request really came from) on its one Contact URI, so requests sent back
    to that Contact in the dialog reach the NAT binding, not the private
    address the phone wrote.  False (nothing changed) unless there is
    exactly one Contact without an alias yet."""
    try:
        contacts = req.contacts
    except ValueError:
        return False
    if len(contacts) != 1 or req.contact_star:
        return False
    contact = contacts[0]
    if "alias" in contact.uri.params or contact.uri.scheme not in ("sip", "sips"):
        return False
    contact.uri.params["alias"] = f"{bracket(source.host)}~{source.port}~{_PROTO_NUMBER.get(source.transport, '1')}"
    # A bare addr-spec would turn the URI parameter into a header parameter.
    contact.angle = True
    req.set_header("Contact", str(contact))
    return True


def handle_ruri_alias(req: Request) -> Target | None:
    """nathelper's handle_ruri_alias(): the next hop an ``;alias`` in the
    Request-URI names (the parameter is removed), or None without one."""
    alias = req.uri.params.get("alias")
    if not alias:
        return None
    parts = alias.split("~")
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in _PROTO_NAME:
        return None
    host, port, proto = unbracket(parts[0]), int(parts[1]), _PROTO_NAME[parts[2]]
    del req.uri.params["alias"]
    return Target(proto, host, port)


def parse_sdp(msg: Message) -> sdp.SessionDescription | None:
    """The message's SDP, or None when it has none (or none we can read).

    A body that is not SDP is forwarded untouched, as Kamailio does with a
    body its rtpproxy module cannot parse."""
    if not msg.body:
        return None
    ctype = (msg.header("content-type") or "").split(";", 1)[0].strip().lower()
    if ctype and ctype != "application/sdp":
        return None
    try:
        sd = sdp.parse(msg.body)
    except sdp.SDPError:
        return None
    return sd if sd.media else None


def media_nat(sd: sdp.SessionDescription | None) -> bool:
    """nathelper's nat_uac_test(8): a private address in the SDP."""
    return sd is not None and sdp.has_private_address(sd)


def needs_relay(mode: str, *, signalling: bool, media: bool, known: bool = False) -> bool:
    """Whether a call's media goes through a relay.

    ``mode`` is ``[media] relay``: "always", or "nat" (only when a party is
    behind NAT: its signalling or its SDP says so).  ``known`` says the call
    is already on a relay (a re-INVITE of a relayed call stays relayed even
    when the re-INVITE's sender is not behind NAT)."""
    return mode == "always" or known or signalling or media


# -- the module --------------------------------------------------------------------


@dataclass(slots=True)
class NatState:
    """The nat module's part of a transaction's CallState."""

    behind_nat: bool = False  # the sender's signalling is NAT'ed (nat_uac_test 19)


class NatModule:
    """nathelper for the script: NAT detection, the Contact alias, the
    Record-Route marker and where an aliased Request-URI goes."""

    name: ClassVar[str] = "nat"

    def __init__(self, core: CoreAPI) -> None:
        self.core = core

    def detect(self, ctx: RequestContext) -> bool:
        """kamailio.cfg's route[NATDETECT]: True when the sender is behind
        NAT; then its Contact gets the alias of where it really is (not on a
        REGISTER: the registrar keeps the source itself) and our
        Record-Route ``;nat=yes``."""
        req = ctx.request
        behind = signalling_nat(req, ctx.source)
        ctx.call.get(NatState).behind_nat = behind
        # Before issue 13 the script kept this in ctx.vars, where user
        # routing classes read it: set there too for one release.
        ctx.vars["nat"] = behind
        if behind:
            if req.method != "REGISTER":
                add_contact_alias(req, ctx.source)
            rr = ctx.call.rr_params
            if NAT_PARAM not in rr:
                rr.append(NAT_PARAM)
        return behind

    def behind_nat(self, ctx: RequestContext) -> bool:
        """What detect() found for this transaction (False before it ran)."""
        state = ctx.call.peek(NatState)
        return state is not None and state.behind_nat

    def dialog_target(self, req: Request) -> Target | None:
        """kamailio.cfg's route[DLGURI]: the address an ``;alias`` in the
        Request-URI names (the parameter removed), or None."""
        return handle_ruri_alias(req)

    def reply_alias(self, resp: Response, sent_to: Target) -> bool:
        """kamailio.cfg's route[NATMANAGE] on a reply of a branch to a
        binding registered from behind NAT (FLB_NATB): set_contact_alias(),
        so the dialog's requests to the callee (ACK, BYE, re-INVITE) reach
        the NAT binding (for TCP, its connection) the request went to, not
        the private address its Contact names."""
        return add_contact_alias(resp, sent_to)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        # After every module is set up, the suite's hand-added media one too.
        if self.core.modules.get(MEDIA) is None:
            # sip-proxy with [features] nat but no [media] relays / --relay.
            log.warn("[features] nat is on but no media relay is configured:"
                     " media will not be relayed")

    def reconfigure(self, old: Config, new: Config) -> None:
        pass

    def stats(self) -> Mapping[str, object]:
        return {}

    def stop(self) -> None:
        return None


class NatSpec:
    """``[features] nat``."""

    name = "nat"
    requires: tuple[ServiceKey[Any], ...] = ()
    # Start-up only (liveops' _STARTUP_ONLY): switching it later would
    # detect NAT in signalling but never relay media.
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return bool(config.features.nat)

    def setup(self, core: CoreAPI, config: Config) -> NatModule:
        module = NatModule(core)
        core.modules.provide(NAT, module)
        return module


SPEC = NatSpec()
