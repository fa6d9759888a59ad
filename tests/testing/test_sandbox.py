"""The dry-run sandbox behind route explain, on a live core (here an
OfflineProxy's): its decisions are the live proxy's, and nothing of the
live proxy changes (bindings, nonce counts, dispatcher position, shared
variables, counters)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from sipsuite.proxy import DefaultRouting, RequestContext
from sipsuite.proxy.services import SHV
from sipsuite.sip.digest import authorization, parse_challenge
from sipsuite.testing import OfflineProxy, build_request
from sipsuite.testing.sandbox import dry_run

DOMAIN = {"proxy": {"domains": ["example.com"]}}


def explain(live: OfflineProxy, message: str, source: str | None = None) -> dict[str, Any]:
    results: list[Any] = []
    Deferred.fromCoroutine(dry_run(live.core, message, source, live.clock)).addBoth(results.append)
    [result] = results
    assert isinstance(result, dict), result
    return result


def lines(result: dict[str, Any]) -> list[str]:
    from sipsuite.ops.ctl.liveops import render_explanation

    return render_explanation(result).splitlines()


def test_a_register_is_answered_but_stores_nothing_and_spends_no_nonce_count() -> None:
    live = OfflineProxy(config={**DOMAIN, "features": {"auth": True}, "auth": {"realm": "example.com"}},
                        users={"bob": "secret"})
    first = live.receive(build_request("REGISTER", "sip:example.com", from_="sip:bob@example.com",
                                       to="sip:bob@example.com"))
    nonce = parse_challenge(first.header("WWW-Authenticate") or "")["nonce"]
    creds = authorization("bob", "secret", "example.com", nonce, "REGISTER", "sip:example.com", nc=1)
    reg = build_request("REGISTER", "sip:example.com", from_="sip:bob@example.com",
                        to="sip:bob@example.com", cseq=2, headers=[("Authorization", creds)])
    stats = dict(live.core.stats)
    result = explain(live, reg)
    assert result["decision"] == "replied"
    assert "sent: 200 OK -> udp:127.0.0.2:5070" in lines(result)
    assert live.bindings("bob") == [] and dict(live.core.stats) == stats
    # nc=1 is still unused on the live proxy: it takes it.
    assert live.receive(reg).status == 200
    # ...and a dry run of the same one now sees the replay, as the live proxy would.
    assert "sent: 401 Unauthorized -> udp:127.0.0.2:5070" in lines(explain(live, reg))


def test_the_dispatcher_position_of_the_live_proxy_does_not_move() -> None:
    live = OfflineProxy("examples.dispatcher_routing:DispatcherRouting", config=DOMAIN,
                        dispatcher={1: ["sip:192.0.2.11", "sip:192.0.2.12"]})
    invite = build_request("INVITE", "sip:+4930@example.com", from_="sip:alice@example.com")
    for _ in range(2):
        assert "sent: INVITE sip:+4930@example.com -> udp:192.0.2.11:5060" in lines(explain(live, invite))
    assert live.receive(invite).branch.destination == "udp:192.0.2.11:5060"


class Counting(DefaultRouting):
    async def request_route(self, ctx: RequestContext) -> Any:
        await self.shv.incr("calls")
        ctx.avp["dialled"] = ctx.ruri_user
        await super().request_route(ctx)


def test_shared_variables_are_read_from_the_live_proxy_and_written_aside() -> None:
    live = OfflineProxy(Counting, config=DOMAIN)
    shv = live.core.modules.require(SHV)
    Deferred.fromCoroutine(shv.set("calls", 41))
    result = explain(live, build_request("INVITE", "sip:bob@example.com"))
    shown = lines(result)
    assert any(ln.startswith("request_route: shv calls += 1  [") and "test_sandbox.py:" in ln
               for ln in shown), shown
    assert any(ln.startswith("request_route: avp dialled = 'bob'  [") for ln in shown), shown
    got: list[Any] = []
    Deferred.fromCoroutine(shv.get("calls")).addCallback(got.append)
    assert got == [41]


def test_the_source_defaults_to_the_top_via() -> None:
    live = OfflineProxy(config={"proxy": {"domains": ["example.com"], "trusted": ["192.0.2.7"]}})
    msg = build_request("INVITE", "sip:x@192.0.2.50", from_="sip:carol@other.org",
                        via="udp:192.0.2.7:5070")
    trusted = explain(live, msg)
    assert "sent: INVITE sip:x@192.0.2.50 -> udp:192.0.2.50:5060" in lines(trusted)
    untrusted = explain(live, msg, source="udp:198.51.100.1:5070")
    assert "sent: 403 Not relaying -> udp:198.51.100.1:5070" in lines(untrusted)
