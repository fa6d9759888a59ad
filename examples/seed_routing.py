"""The routing snippets of "Kamailio for beginners" as a Python routing class.

Name it in the config to use it::

    [proxy]
    routing = "examples.seed_routing:SeedRouting"

    [uac]
    secret = "a long random string shared by every node"

Each block below carries the kamailio.cfg lines it stands for.  What
changes in the translation:

- ``route(PSTN)`` is a method call; the ``exit`` inside the route block is a
  ``return True`` the caller turns into its own ``return``;
- ``$avp(oexten)`` is ``ctx.avp["oexten"]``: set in request_route, read in
  failure_route of the same transaction;
- ``$sel(cfg_get.voicemail.srv_ip)`` is ``self.cfg.voicemail.srv_ip``, the
  config as it is now: ``sipsuite-ctl cfg set voicemail.srv_ip ...`` changes
  it for the next call, no reload;
- ``uac_replace_from()`` is ``ctx.replace_from()``: the gateway sees the
  company's caller-id, the caller keeps seeing its own From in every answer
  and in the gateway's BYE, without ``uac`` module parameters to set;
- ``$ru = ...`` is ``ctx.ruri = ...`` and takes effect at once: no
  ``msg_apply_changes()``;
- ``debug=4`` under ``#!ifdef WITH_DEBUG`` is ``ctx.debug``: per request,
  from ``[features] debug`` (``sipsuite-ctl cfg set features.debug true``) or
  for the callers named in ``debug_callers``; ``sipsuite-ctl debug 4`` is
  ``kamcmd cfg.seti core debug 4`` for the whole log.

NAT traversal and media relaying are left out (``DefaultRouting`` has them,
as the seed's WITH_NAT does).
"""

from __future__ import annotations

import re
from typing import Any

from sipsuite.proxy import DefaultRouting, RequestContext, RouteState
from sipsuite.sip.message import Response


class SeedRouting(DefaultRouting):
    # $var: an attribute of the routing object lives in this process only,
    # as Kamailio's $var lives in one worker: with [proxy] workers > 1 each
    # process has its own, and a reload starts a new one.
    debug_callers: frozenset[str] = frozenset()
    # The caller-id the PSTN sees, per user (a table in a database in real
    # life; a dict here); anyone else shows the company's main number.
    caller_ids: dict[str, str] = {}
    main_number = "+4930123456"
    company = "ACME"

    async def request_route(self, ctx: RequestContext) -> None:
        # #!ifdef WITH_DEBUG / debug=4: every routing step logged, for
        # everybody or only for the callers being debugged.
        ctx.debug = self.cfg.features.debug or ctx.from_user in self.debug_callers

        # route(WITHINDLG)
        if ctx.in_dialog:
            self.within_dialog(ctx)
            return

        uri = ctx.request.uri
        local_ruri = uri.scheme in ("sip", "sips") and ctx.is_local_domain(uri)
        # route(AUTH)
        if not await self.authenticate(ctx, local_ruri):
            return

        # remove_hf("Route"); if (is_method("INVITE|SUBSCRIBE")) record_route();
        if ctx.request.has_header("route"):
            ctx.request.remove_header("route")
        if ctx.method in ("INVITE", "SUBSCRIBE"):
            ctx.record_route()

        # route(SIPOUT): not for our domains; only for callers we know,
        # or the proxy is an open relay
        if not local_ruri:
            state = ctx.call.peek(RouteState)
            if ctx.source_trusted() or (state is not None and state.authenticated):
                ctx.trace("sipout: {host} -> relay", host=uri.host)
                ctx.relay()
            else:
                ctx.reply(403, "Not relaying")
            return

        # route(REGISTRAR)
        if ctx.method == "REGISTER":
            await ctx.register()
            return

        # if ($rU==$null) { sl_send_reply("484","Address Incomplete"); exit; }
        if not ctx.ruri_user:
            ctx.trace("no user in the Request-URI -> 484")
            ctx.reply(484, "Address Incomplete")
            return

        # route(PSTN); it may have relayed or refused: then we are done
        if self.pstn(ctx):
            return

        # route(LOCATION), with $avp(oexten) = $rU; for voicemail later
        ctx.avp["oexten"] = ctx.ruri_user
        await self.location(ctx, uri.user_unescaped)

    def pstn(self, ctx: RequestContext) -> bool:
        """route[PSTN]: True when the call went to the gateway or was refused."""
        features, gw = self.cfg.features, self.cfg.pstn
        # #!ifdef WITH_PSTN ... if (strempty($sel(cfg_get.pstn.gw_ip))) return;
        if not features.pstn or not gw.gw_ip:
            return False
        # if (!($rU=~"^(\+|00)[1-9][0-9]{3,20}$")) return;
        number = ctx.ruri_user or ""
        if not re.search(gw.pattern, number):
            return False
        # if (from_uri!=myself) { sl_send_reply("403", "Not Allowed"); exit; }
        if not self.pstn_allowed(ctx):
            ctx.reply(403, "Not Allowed")
            return True
        if number.startswith("00"):
            number = "+" + number[2:]
        # uac_replace_from("ACME", "sip:+4930123456@$fd"): the gateway sees the
        # company's number, alice keeps seeing her own From.
        cli = self.caller_ids.get(ctx.from_user or "", self.main_number)
        host = ctx.request.from_.uri.host
        ctx.replace_from(f"sip:{cli}@{host}", self.company)
        # $ru = "sip:" + $rU + "@" + $sel(cfg_get.pstn.gw_ip) + ":" + ...;
        ctx.ruri = f"sip:{number}@{gw.gw_ip}:{gw.gw_port}"
        ctx.trace("pstn: {number} as {cli} -> {ruri}", number=number, cli=cli, ruri=ctx.ruri)
        # route(RELAY)
        ctx.relay()
        return True

    def manage_failure(self, ctx: RequestContext, response: Response) -> Any:
        """failure_route[MANAGE_FAILURE]: busy or no answer goes to voicemail."""
        if self.serial_next(ctx, response):
            return
        # if (t_check_status("486|408")) { route(TOVOICEMAIL); exit; }
        if response.status in (486, 408) and self.to_voicemail(ctx):
            return
        # The rest of DefaultRouting's failure route, without its own
        # voicemail step (this class's replaces it).
        if not self.block_failure(ctx, response):
            self.location_failure(ctx, response)

    def to_voicemail(self, ctx: RequestContext) -> bool:
        """route[TOVOICEMAIL], the $avp(oexten) way."""
        vm = self.cfg.voicemail
        # #!ifdef WITH_VOICEMAIL; if (strempty($sel(cfg_get.voicemail.srv_ip))) return;
        if not self.cfg.features.voicemail or not vm.srv_ip:
            return False
        extension = ctx.avp.get("oexten")
        if extension is None or ctx.avp.get("voicemail"):
            return False  # not a call to a user of ours, or voicemail was busy itself
        ctx.avp["voicemail"] = True
        # $ru = "sip:" + $avp(oexten) + "@" + $sel(cfg_get.voicemail.srv_ip)
        #       + ":" + $sel(cfg_get.voicemail.srv_port);
        ctx.ruri = f"sip:{extension}@{vm.srv_ip}:{vm.srv_port}"
        ctx.trace("voicemail: {ext} -> {ruri}", ext=extension, ruri=ctx.ruri)
        ctx.relay()
        return True
