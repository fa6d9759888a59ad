"""The ``#!define WITH_*`` route blocks of the default kamailio.cfg that
``DefaultRouting`` inherits: route[PSTN], route[TOVOICEMAIL] and the
switches of failure_route[MANAGE_FAILURE] (WITH_BLOCK3XX,
WITH_BLOCK401407, WITH_VOICEMAIL), plus the step log of WITH_DEBUG.

Each block is a method a user's routing class may override, and each reads
its switch and settings from ``self.config`` when a request uses it, so a
run-time change of the config (``sipsuite-ctl cfg set``) applies to the next
request.  What the script remembers of a request between its blocks (who
authenticated, the dialled user, the serial-forking groups) is a
:class:`RouteState` in the request's ``ctx.call``; ``ctx.vars`` is left to
user scripts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import quote

from sipsuite.log import get_logger
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.proxy.registrar.bindings import Binding
    from sipsuite.proxy.routing.base import Destination, RequestContext
    from sipsuite.sip.message import Response

log = get_logger("sipsuite.proxy.routing")

# RFC 3261 25.1 user characters that need no escaping (unreserved and
# user-unreserved); everything else in a dialled user is %-escaped.
_USER_SAFE = "-_.!~*'()&=+$,;?/"

# kamailio.cfg's TOVOICEMAIL serves INVITE (calls) and SUBSCRIBE (message
# waiting indication) to a user who is not registered.
VOICEMAIL_METHODS = frozenset({"INVITE", "SUBSCRIBE"})


@dataclass(slots=True)
class RouteState:
    """DefaultRouting's part of a request's CallState:
    ``ctx.call.get(RouteState)``, made on first use, seen by every hook of the
    transaction (failure_route reads what request_route left)."""

    # route[AUTH] found valid credentials (REGISTER, or a caller of ours).
    authenticated: bool = False
    # WITH_IPAUTH: a trusted source, not challenged.
    ipauth: bool = False
    # kamailio.cfg's $avp(oexten): the user location() looked up, the one
    # voicemail gets the call for.
    dialled: str | None = None
    # location() found bindings and relayed to them: failure_route's serial
    # forking and its 480 apply.
    located: bool = False
    # The bindings still to try, one group per q-value, highest first
    # ([registrar] serial_forking).
    serial: list[list[tuple[Binding, Destination]]] = field(default_factory=list)
    # route[PSTN] sent the call to the gateway (for a subclass's failure_route).
    to_pstn: bool = False
    # The call went to voicemail already: a busy voicemail is the caller's answer.
    to_voicemail: bool = False
    # Request-URIs of the branches to bindings registered from behind NAT
    # (Kamailio's FLB_NATB): reply_route aliases the Contact of their answers.
    nat_branches: set[str] = field(default_factory=set)


@lru_cache(maxsize=8)
def _compile(pattern: str) -> re.Pattern[str]:
    # The config validated the pattern; a changed pattern (cfg set) gets
    # compiled once on its first use.
    return re.compile(pattern)


def pstn_number(user: str, pattern: str) -> str | None:
    """The number to send to the gateway, or None when ``user`` is not a
    PSTN number: a match of ``pattern``, a leading ``00`` turned into ``+``
    (kamailio.cfg's strip(2); prefix("+"))."""
    if not _compile(pattern).search(user):
        return None
    return "+" + user[2:] if user.startswith("00") else user


def target_uri(user: str, host: str, port: int) -> URI:
    """sip:USER@HOST:PORT with USER escaped as a SIP URI needs it."""
    return URI(scheme="sip", user=quote(user, safe=_USER_SAFE), host=host, port=port)


class FeatureRoutes:
    """Mixin of DefaultRouting: the optional kamailio.cfg route blocks."""

    core: ProxyCore
    config: Config

    # Set once the "pstn on but no gateway" note has been logged.
    _pstn_no_gw_logged = False

    if TYPE_CHECKING:
        # DefaultRouting's: route[NATMANAGE] for the request sent on.
        async def media_offer(self, ctx: RequestContext) -> None: ...

    # -- WITH_DEBUG ----------------------------------------------------------------

    def trace(self, ctx: RequestContext, step: str) -> None:
        """Deprecated (one release): ``ctx.trace(fmt, **fields)``, which
        formats nothing while ``ctx.debug`` is off.  One line of the
        routing-step log, logged only while ``ctx.debug`` is on."""
        ctx.trace("{step}", step=step)

    # -- WITH_PSTN -----------------------------------------------------------------

    async def route_pstn(self, ctx: RequestContext, user: str) -> bool:
        """kamailio.cfg's route[PSTN]: True when the request was sent to the
        gateway or refused (403), False when it is not for the PSTN."""
        if not self.config.features.pstn:
            return False
        pstn = self.config.pstn
        if not pstn.gw_ip:
            if not self._pstn_no_gw_logged:
                self._pstn_no_gw_logged = True
                log.debug("[features] pstn is on but pstn.gw_ip is empty: no PSTN routing")
            ctx.trace("pstn: no gateway (pstn.gw_ip empty) -> skip")
            return False
        number = pstn_number(user, pstn.pattern)
        if number is None:
            ctx.trace("pstn: {user!r} does not match pstn.pattern -> skip", user=user)
            return False
        if not self.pstn_allowed(ctx):
            ctx.trace("pstn: caller not local or not authenticated -> 403 Not Allowed")
            ctx.reply(403, "Not Allowed")
            return True
        target = target_uri(number, pstn.gw_ip, pstn.gw_port)
        ctx.trace("pstn: {user} -> {target}", user=user, target=target)
        ctx.call.get(RouteState).to_pstn = True
        await self.media_offer(ctx)
        ctx.relay([target])
        return True

    def pstn_allowed(self, ctx: RequestContext) -> bool:
        """Only our own users call out (kamailio.cfg: from_uri==myself):
        the From is one of our domains, and with auth on the caller either
        authenticated or came from a trusted network with ipauth."""
        from_uri = ctx.request.from_.uri
        if from_uri.scheme not in ("sip", "sips") or not ctx.is_local_domain(from_uri):
            return False
        if not self.config.features.auth:
            return True
        state = ctx.call.peek(RouteState)
        return state is not None and (state.authenticated or state.ipauth)

    # -- WITH_VOICEMAIL ------------------------------------------------------------

    async def route_voicemail(self, ctx: RequestContext) -> bool:
        """kamailio.cfg's route[TOVOICEMAIL] from route[LOCATION]: a user with
        no binding gets the call on the voicemail server; True when it did."""
        target = self.voicemail_target(ctx)
        if target is None:
            return False
        await self.media_offer(ctx)
        ctx.relay([target])
        return True

    def voicemail_target(self, ctx: RequestContext) -> URI | None:
        """sip:DIALLED@srv_ip:srv_port for an INVITE/SUBSCRIBE that went
        through location() (RouteState.dialled, kamailio.cfg's $avp(oexten))
        and not to voicemail yet; None when voicemail is off or has no server."""
        if not self.config.features.voicemail:
            return None
        state = ctx.call.peek(RouteState)
        if (ctx.request.method not in VOICEMAIL_METHODS or state is None or not state.dialled
                or state.to_voicemail):
            return None
        user = state.dialled
        vm = self.config.voicemail
        if not vm.srv_ip:
            ctx.trace("voicemail: no server (voicemail.srv_ip empty) -> skip")
            return None
        target = target_uri(user, vm.srv_ip, vm.srv_port)
        ctx.trace("voicemail: {user} -> {target}", user=user, target=target)
        state.to_voicemail = True
        return target

    # -- failure_route[MANAGE_FAILURE] ---------------------------------------------

    def block_failure(self, ctx: RequestContext, response: Response) -> bool:
        """WITH_BLOCK3XX / WITH_BLOCK401407: such an answer to an INVITE
        goes upstream as 404; True when it was replaced."""
        if ctx.request.method != "INVITE":
            return False
        status = response.status
        features = self.config.features
        if 300 <= status < 400 and features.block3xx:
            switch = "block3xx"
        elif status in (401, 407) and features.block401407:
            switch = "block401407"
        else:
            return False
        ctx.trace("failure route: {status} blocked ({switch}) -> 404 Not Found", status=status,
                  switch=switch)
        ctx.reply(404, "Not Found")
        return True

    def voicemail_failure(self, ctx: RequestContext, response: Response) -> bool:
        """WITH_VOICEMAIL in failure_route: busy (486) or no answer (408)
        sends the call to voicemail (the call's relay session, if any, goes
        on to the new branch); True when it did."""
        if response.status not in (486, 408):
            return False
        target = self.voicemail_target(ctx)
        if target is None:
            return False
        ctx.relay([target])
        return True
