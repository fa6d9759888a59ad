"""ctx.replace_from / replace_to (the uac module): what the callee and the
caller see in every direction of a dialog, the restore after a restart,
forged and replayed restore parameters, and the secret's requirements."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import formatEvent

from sipsuite.config import ConfigError, load_config
from sipsuite.ops.liveops import ReloadFailed, reload_routing
from sipsuite.proxy import DefaultRouting, RequestContext
from sipsuite.proxy.modules.uac import PARAM, Sealer, TokenError
from sipsuite.proxy.routing.loader import RoutingError, check_requirements
from sipsuite.sip.message import Request, Response, make_response
from tests.proxykit import ProxyKit

SECRET = "0123456789abcdef-uac-test"
GW = "127.0.0.9"
ALICE = "127.0.0.2"
ALICE_FROM = '"Alice" <sip:alice@sipsuite.test>;tag=caller'
NEW_FROM = '"Company" <sip:+4930123456@pstn.example>'
GW_TO = "<sip:+4930999@sipsuite.test>"


class GatewayRouting(DefaultRouting):
    """Calls to a number go to the gateway with the company's caller-id."""

    reply_with: int | None = None

    async def request_route(self, ctx: RequestContext) -> None:
        if not ctx.in_dialog and ctx.request.uri.user and ctx.request.uri.user.startswith("+"):
            ctx.replace_from("sip:+4930123456@pstn.example", "Company")
            if ctx.request.uri.user == "+4930000":
                ctx.replace_to("sip:+4930111@pstn.example", "")
            if self.reply_with is not None:
                ctx.reply(self.reply_with)
                return
            ctx.relay([f"sip:{ctx.request.uri.user}@{GW}:5099"])
            return
        await super().request_route(ctx)


def kit_for(tmp_path: Path, secret: str = SECRET) -> ProxyKit:
    kit = ProxyKit(tmp_path, uac={"secret": secret})
    kit.core.set_routing(GatewayRouting(kit.core))
    return kit


def message(first: str, *, via: str, from_: str, to: str, call_id: str = "uac-1",
            cseq: str = "1 INVITE", route: str = "", contact: str = "") -> bytes:
    lines = [first, f"Via: SIP/2.0/UDP {via};branch=z9hG4bK{abs(hash((first, via, cseq)))};rport",
             "Max-Forwards: 70", f"From: {from_}", f"To: {to}", f"Call-ID: {call_id}",
             f"CSeq: {cseq}"]
    if route:
        lines.append(f"Route: {route}")
    if contact:
        lines.append(f"Contact: {contact}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def invite(number: str = "+4930999", call_id: str = "uac-1", to: str = GW_TO) -> bytes:
    return message(f"INVITE sip:{number}@sipsuite.test SIP/2.0", via=f"{ALICE}:5070",
                   from_=ALICE_FROM, to=to, call_id=call_id,
                   contact=f"<sip:alice@{ALICE}:5070>")


def only(msgs: list[Any], kind: type) -> Any:
    found = [m for m in msgs if isinstance(m, kind)]
    assert len(found) == 1, found
    return found[0]


def set_up_call(kit: ProxyKit, number: str = "+4930999", call_id: str = "uac-1",
                to: str = GW_TO) -> tuple[Request, str]:
    """An answered call: (the INVITE the gateway got, the Route of the dialog)."""
    kit.feed(invite(number, call_id, to), ALICE)
    fwd = only(kit.sent_to(GW), Request)
    kit.take()
    ok = make_response(fwd, 200, to_tag="callee")
    ok.add_header("Contact", f"<sip:gw@{GW}:5099>")
    kit.feed(ok, GW, 5099)
    kit.take()
    return fwd, fwd.header("Record-Route") or ""


# -- the initial request and its answers ------------------------------------------------


def test_callee_sees_the_new_from_with_its_tag_and_a_sealed_record_route(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    kit.feed(invite(), ALICE)
    fwd = only(kit.sent_to(GW), Request)
    assert fwd.header("From") == NEW_FROM + ";tag=caller"
    assert fwd.header("To") == GW_TO  # replace_from leaves the To alone
    rr = fwd.record_routes
    assert len(rr) == 1 and PARAM in rr[0].uri.params  # record-routed without being asked
    # The callee sees our Record-Route: the original is not readable there.
    assert "alice" not in (fwd.header("Record-Route") or "").lower()


def test_every_answer_carries_the_callers_own_from(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    kit.feed(invite(), ALICE)
    fwd = only(kit.sent_to(GW), Request)
    kit.take()
    for status, tag in ((180, "callee"), (200, "callee")):
        kit.feed(make_response(fwd, status, to_tag=tag), GW, 5099)
    answers = [m for m in kit.sent_to(ALICE) if isinstance(m, Response)]
    assert [a.status for a in answers] == [180, 200]
    for a in answers:
        assert a.header("From") == ALICE_FROM
        assert a.header("To") == GW_TO + ";tag=callee"


def test_a_local_answer_carries_the_callers_own_from(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    kit.core.routing.reply_with = 403  # type: ignore[attr-defined]
    kit.feed(invite(), ALICE)
    final = [m for m in kit.sent_to(ALICE) if isinstance(m, Response) and m.status == 403]
    assert final and final[0].header("From") == ALICE_FROM


def test_a_timeout_answer_made_here_carries_the_callers_own_from(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    kit.feed(invite(), ALICE)
    kit.take()
    kit.clock.advance(40)  # timer B: the gateway never answered
    final = [m for m in kit.sent_to(ALICE) if isinstance(m, Response) and m.status >= 400]
    assert final and final[0].status == 408
    assert final[0].header("From") == ALICE_FROM


def test_replace_to_callee_sees_the_new_to_and_the_caller_its_own(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    to = "<sip:+4930000@sipsuite.test>"
    kit.feed(invite("+4930000", to=to), ALICE)
    fwd = only(kit.sent_to(GW), Request)
    assert fwd.header("To") == "<sip:+4930111@pstn.example>"  # display "" removed none
    assert fwd.header("From") == NEW_FROM + ";tag=caller"
    kit.take()
    kit.feed(make_response(fwd, 200, to_tag="callee"), GW, 5099)
    ok = only(kit.sent_to(ALICE), Response)
    assert ok.header("To") == to + ";tag=callee"
    assert ok.header("From") == ALICE_FROM


# -- in-dialog requests -------------------------------------------------------------------


def test_callers_later_requests_carry_the_new_from_and_their_answers_the_old(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    _, route = set_up_call(kit)
    ack = message(f"ACK sip:gw@{GW}:5099 SIP/2.0", via=f"{ALICE}:5070", from_=ALICE_FROM,
                  to=GW_TO + ";tag=callee", cseq="1 ACK", route=route)
    kit.feed(ack, ALICE)
    assert only(kit.sent_to(GW), Request).header("From") == NEW_FROM + ";tag=caller"
    kit.take()
    bye = message(f"BYE sip:gw@{GW}:5099 SIP/2.0", via=f"{ALICE}:5070", from_=ALICE_FROM,
                  to=GW_TO + ";tag=callee", cseq="2 BYE", route=route)
    kit.feed(bye, ALICE)
    fwd = only(kit.sent_to(GW), Request)
    assert fwd.header("From") == NEW_FROM + ";tag=caller"
    assert fwd.header("To") == GW_TO + ";tag=callee"
    kit.take()
    kit.feed(make_response(fwd, 200), GW, 5099)
    ok = only(kit.sent_to(ALICE), Response)
    assert ok.header("From") == ALICE_FROM
    assert ok.header("To") == GW_TO + ";tag=callee"


def test_callees_requests_reach_the_caller_with_its_own_from_as_to(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    _, route = set_up_call(kit)
    for method, cseq in (("INVITE", "7 INVITE"), ("BYE", "8 BYE")):
        req = message(f"{method} sip:alice@{ALICE}:5070 SIP/2.0", via=f"{GW}:5099",
                      from_=GW_TO + ";tag=callee", to=NEW_FROM + ";tag=caller", cseq=cseq,
                      route=route)
        kit.feed(req, GW, 5099)
        fwd = only(kit.sent_to(ALICE), Request)
        assert fwd.method == method
        assert fwd.header("To") == ALICE_FROM  # restored, tag kept
        assert fwd.header("From") == GW_TO + ";tag=callee"
        kit.take()
        # Alice answers with the To she got; the gateway gets back the one it sent.
        kit.feed(make_response(fwd, 200), ALICE)
        ok = only(kit.sent_to(GW), Response)
        assert ok.header("To") == NEW_FROM + ";tag=caller"
        assert ok.header("From") == GW_TO + ";tag=callee"
        kit.take()


def test_replace_to_in_dialog_both_ways(tmp_path: Path) -> None:
    kit = kit_for(tmp_path)
    to = "<sip:+4930000@sipsuite.test>"
    new_to = "<sip:+4930111@pstn.example>"
    _, route = set_up_call(kit, "+4930000", to=to)
    bye = message(f"BYE sip:gw@{GW}:5099 SIP/2.0", via=f"{ALICE}:5070", from_=ALICE_FROM,
                  to=to + ";tag=callee", cseq="2 BYE", route=route)
    kit.feed(bye, ALICE)
    fwd = only(kit.sent_to(GW), Request)
    assert fwd.header("To") == new_to + ";tag=callee"
    kit.take()
    bye = message(f"BYE sip:alice@{ALICE}:5070 SIP/2.0", via=f"{GW}:5099",
                  from_=new_to + ";tag=callee", to=NEW_FROM + ";tag=caller", cseq="9 BYE",
                  route=route)
    kit.feed(bye, GW, 5099)
    fwd = only(kit.sent_to(ALICE), Request)
    assert fwd.header("From") == to + ";tag=callee"
    assert fwd.header("To") == ALICE_FROM


def test_a_new_proxy_with_the_same_secret_restores(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    _, route = set_up_call(kit_for(first))
    again = tmp_path / "again"
    again.mkdir()
    kit = kit_for(again)  # a restart: nothing of the call in memory
    bye = message(f"BYE sip:alice@{ALICE}:5070 SIP/2.0", via=f"{GW}:5099",
                  from_=GW_TO + ";tag=callee", to=NEW_FROM + ";tag=caller", cseq="9 BYE",
                  route=route)
    kit.feed(bye, GW, 5099)
    assert only(kit.sent_to(ALICE), Request).header("To") == ALICE_FROM
    kit.take()
    bye = message(f"BYE sip:gw@{GW}:5099 SIP/2.0", via=f"{ALICE}:5070", from_=ALICE_FROM,
                  to=GW_TO + ";tag=callee", cseq="2 BYE", route=route)
    kit.feed(bye, ALICE)
    assert only(kit.sent_to(GW), Request).header("From") == NEW_FROM + ";tag=caller"


# -- forged parameters -------------------------------------------------------------------


def _tampered(route: str) -> str:
    start = route.index(PARAM + "=") + len(PARAM) + 1
    c = route[start + 20]
    return route[:start + 20] + ("A" if c != "A" else "B") + route[start + 21:]


@pytest.mark.parametrize("how", ["tampered", "other secret", "other dialog", "garbage"])
def test_a_forged_restore_parameter_is_ignored_and_logged(
        tmp_path: Path, how: str, events: list[dict[str, object]]) -> None:
    kit = kit_for(tmp_path)
    _, route = set_up_call(kit)
    call_id = "uac-1"
    if how == "tampered":
        route = _tampered(route)
    elif how == "other secret":
        other = tmp_path / "other"
        other.mkdir()
        _, route = set_up_call(kit_for(other, secret="another-secret-of-the-attacker"))
    elif how == "other dialog":
        call_id = "uac-2"  # a token copied from one call into another
    else:
        start = route.index(PARAM + "=")
        route = route[:start] + PARAM + "=zzzz" + route[route.index(">"):]
    before = kit.core.stats.get("uac.forged", 0)
    bye = message(f"BYE sip:alice@{ALICE}:5070 SIP/2.0", via=f"{GW}:5099",
                  from_=GW_TO + ";tag=callee", to=NEW_FROM + ";tag=caller", cseq="9 BYE",
                  route=route, call_id=call_id)
    kit.feed(bye, GW, 5099)
    fwd = only(kit.sent_to(ALICE), Request)
    assert fwd.header("To") == NEW_FROM + ";tag=caller"  # left as sent
    assert kit.core.stats.get("uac.forged", 0) == before + 1
    assert any("restore parameter ignored" in formatEvent(e) for e in events)


def test_a_caller_cannot_mint_the_new_from_for_itself(tmp_path: Path) -> None:
    """A token from one call, replayed with the same tags in a new dialog
    of the caller's own (another Call-ID), does not rewrite its From."""
    kit = kit_for(tmp_path)
    _, route = set_up_call(kit)
    bye = message(f"BYE sip:gw@{GW}:5099 SIP/2.0", via=f"{ALICE}:5070", from_=ALICE_FROM,
                  to=GW_TO + ";tag=callee", cseq="2 BYE", route=route, call_id="uac-other")
    kit.feed(bye, ALICE)
    assert only(kit.sent_to(GW), Request).header("From") == ALICE_FROM


def test_sealer_round_trip_and_binding() -> None:
    sealer = Sealer(b"k" * 16)
    token = sealer.seal(b"payload", b"ad")
    assert sealer.open(token, b"ad") == b"payload"
    assert b"payload" not in token.encode()
    assert sealer.seal(b"payload", b"ad") != token  # a fresh nonce each time
    with pytest.raises(TokenError):
        sealer.open(token, b"other ad")
    with pytest.raises(TokenError):
        Sealer(b"j" * 16).open(token, b"ad")


# -- the secret and bad values ----------------------------------------------------------


def test_a_routing_that_calls_replace_from_needs_the_secret(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)  # [uac] secret = ""
    with pytest.raises(RoutingError, match=r"uac\.secret.*GatewayRouting.*replace_from"):
        check_requirements(GatewayRouting, kit.core.config)
    check_requirements(DefaultRouting, kit.core.config)  # does not call it: fine


def test_without_the_secret_a_call_is_refused_with_the_key_named(
        tmp_path: Path, events: list[dict[str, object]]) -> None:
    kit = ProxyKit(tmp_path)
    kit.core.set_routing(GatewayRouting(kit.core))  # past the start-up check
    kit.feed(invite(), ALICE)
    assert not kit.sent_to(GW)
    final = [m for m in kit.sent_to(ALICE) if isinstance(m, Response) and m.status >= 400]
    assert final and final[0].status == 500
    assert any("[uac] secret" in formatEvent(e) + str(e.get("log_failure", "")) for e in events)


def test_a_short_secret_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "short.toml"
    path.write_text('[uac]\nsecret = "short"\n')
    with pytest.raises(ConfigError, match=r"uac\.secret"):
        load_config(str(path))


class BadRouting(DefaultRouting):
    value = ""

    async def request_route(self, ctx: RequestContext) -> None:
        ctx.replace_from(self.value)
        ctx.relay([f"sip:x@{GW}:5099"])


@pytest.mark.parametrize("value", ["sip:a@b>\r\nX-Evil: 1", "not a uri", "http://x", "<sip:a@b> x"])
def test_a_bad_uri_is_refused_not_sent(tmp_path: Path, value: str) -> None:
    kit = ProxyKit(tmp_path, uac={"secret": SECRET})
    routing = BadRouting(kit.core)
    routing.value = value
    kit.core.set_routing(routing)
    kit.feed(invite(), ALICE)
    assert not kit.sent_to(GW)
    assert any(isinstance(m, Response) and m.status == 500 for m in kit.sent_to(ALICE))


def test_start_up_refuses_the_seed_example_without_the_secret(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match=r"^uac\.secret: .*SeedRouting, which calls replace_from$"):
        ProxyKit(tmp_path, proxy={"routing": "examples.seed_routing:SeedRouting"})


def test_reload_refuses_a_routing_that_needs_the_missing_secret(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, proxy={"routing": "examples.seed_routing:SeedRouting"},
                   uac={"secret": SECRET})
    running = kit.core.routing
    # The secret is gone from the config the reload sees (a start-up key:
    # only a test can change it under a running core).
    c = kit.core.config
    kit.core.config = dataclasses.replace(c, uac=dataclasses.replace(c.uac, secret=""))
    with pytest.raises(ReloadFailed, match=r"uac\.secret"):
        reload_routing(kit.core)
    assert kit.core.routing is running


def test_an_authentic_but_unreadable_token_changes_nothing(
        tmp_path: Path, events: list[dict[str, object]]) -> None:
    """A token sealed with our secret whose content is not ours (another
    version's layout): the request goes on as sent, with a warning."""
    kit = kit_for(tmp_path)
    token = Sealer(SECRET.encode()).seal(b'{"f":["only one"]}', b"uac-9\x00callee")
    bye = message(f"BYE sip:alice@{ALICE}:5070 SIP/2.0", via=f"{GW}:5099",
                  from_=GW_TO + ";tag=callee", to=NEW_FROM + ";tag=caller", cseq="9 BYE",
                  route=f"<sip:127.0.0.1:5060;lr;{PARAM}={token}>", call_id="uac-9")
    kit.feed(bye, GW, 5099)
    fwd = only(kit.sent_to(ALICE), Request)
    assert fwd.header("To") == NEW_FROM + ";tag=caller"
    assert any("unreadable restore token" in formatEvent(e) for e in events)
