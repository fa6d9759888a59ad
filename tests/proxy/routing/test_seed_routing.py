"""examples/seed_routing.py, the "Kamailio for beginners" snippets, in an
in-process core: 484, route(PSTN) with the caller-id rewrite, $avp(oexten)
and the voicemail Request-URI from the config as it is now, the debug switch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.logger import formatEvent

from examples.seed_routing import SeedRouting
from sipsuite.sip.message import Request, Response, make_response
from tests.proxykit import ProxyKit

SECRET = "seed-routing-test-secret"
GW, BOB, VM, ALICE = "127.0.0.9", "127.0.0.7", "127.0.0.8", "127.0.0.2"
ALICE_FROM = '"Alice" <sip:alice@sipsuite.test>;tag=caller'


def seed_kit(tmp_path: Path, **features: bool) -> ProxyKit:
    kit = ProxyKit(
        tmp_path, static={"1001": f"sip:bob@{BOB}:5099"},
        proxy={"routing": "examples.seed_routing:SeedRouting"},
        features={"pstn": True, "voicemail": True, **features},
        pstn={"gw_ip": GW, "gw_port": 5099},
        voicemail={"srv_ip": VM, "srv_port": 5090},
        uac={"secret": SECRET})
    assert isinstance(kit.core.routing, SeedRouting)
    return kit


def invite(ruri: str, from_: str = ALICE_FROM, call_id: str = "seed-1") -> bytes:
    return (f"INVITE {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ALICE}:5070;branch=z9hG4bK{call_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {from_}\r\nTo: <{ruri}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@{ALICE}:5070>\r\nContent-Length: 0\r\n\r\n").encode()


def finals(kit: ProxyKit, host: str = ALICE) -> list[Response]:
    return [m for m in kit.sent_to(host) if isinstance(m, Response) and m.status >= 200]


def requests_to(kit: ProxyKit, host: str) -> list[Request]:
    """The requests sent to ``host``, but the ACKs of its failures."""
    return [m for m in kit.sent_to(host) if isinstance(m, Request) and m.method != "ACK"]


def set_config(kit: ProxyKit, section: str, **values: Any) -> None:
    """What ``sipsuite-ctl cfg set`` does: a new config object, swapped in."""
    c = kit.core.config
    kit.core.reconfigure(dataclasses.replace(
        c, **{section: dataclasses.replace(getattr(c, section), **values)}))


def test_no_user_in_the_request_uri_is_484(tmp_path: Path) -> None:
    kit = seed_kit(tmp_path)
    kit.feed(invite("sip:sipsuite.test"), ALICE)
    assert [r.status for r in finals(kit)] == [484]


def test_a_pstn_number_goes_to_the_gateway_with_the_company_caller_id(tmp_path: Path) -> None:
    kit = seed_kit(tmp_path)
    kit.feed(invite("sip:004930999@sipsuite.test"), ALICE)
    [fwd] = requests_to(kit, GW)
    assert str(fwd.uri) == f"sip:+4930999@{GW}:5099"
    assert fwd.header("From") == '"ACME" <sip:+4930123456@sipsuite.test>;tag=caller'
    kit.take()
    kit.feed(make_response(fwd, 200, to_tag="gw"), GW, 5099)
    [ok] = finals(kit)
    assert ok.status == 200 and ok.header("From") == ALICE_FROM


def test_a_foreign_caller_may_not_call_the_pstn(tmp_path: Path) -> None:
    kit = seed_kit(tmp_path)
    kit.feed(invite("sip:+4930999@sipsuite.test", from_="<sip:eve@example.org>;tag=e"), ALICE)
    assert not requests_to(kit, GW)
    assert [r.status for r in finals(kit)] == [403]


def test_busy_goes_to_voicemail_with_the_dialled_extension_and_the_config_of_now(
        tmp_path: Path) -> None:
    kit = seed_kit(tmp_path)
    set_config(kit, "voicemail", srv_port=5091)  # cfg set voicemail.srv_port 5091
    kit.feed(invite("sip:1001@sipsuite.test"), ALICE)
    [to_bob] = requests_to(kit, BOB)
    assert str(to_bob.uri) == f"sip:bob@{BOB}:5099"  # location() rewrote $ru
    kit.take()
    kit.feed(make_response(to_bob, 486, to_tag="bob"), BOB, 5099)
    [to_vm] = requests_to(kit, VM)
    # $avp(oexten) survived into failure_route: the extension dialled, not bob's contact.
    assert str(to_vm.uri) == f"sip:1001@{VM}:5091"
    assert not finals(kit)
    kit.take()
    # A busy voicemail is the caller's answer: no second round.
    kit.feed(make_response(to_vm, 486, to_tag="vm"), VM, 5091)
    assert not requests_to(kit, VM)
    assert [r.status for r in finals(kit)] == [486]


def test_voicemail_off_at_run_time_lets_the_busy_through(tmp_path: Path) -> None:
    kit = seed_kit(tmp_path)
    set_config(kit, "features", voicemail=False)
    kit.feed(invite("sip:1001@sipsuite.test"), ALICE)
    [to_bob] = requests_to(kit, BOB)
    kit.take()
    kit.feed(make_response(to_bob, 486, to_tag="bob"), BOB, 5099)
    assert not requests_to(kit, VM)
    assert [r.status for r in finals(kit)] == [486]


def test_the_debug_switch_traces_only_the_callers_being_debugged(
        tmp_path: Path, events: list[dict[str, object]]) -> None:
    kit = seed_kit(tmp_path)
    kit.core.routing.debug_callers = frozenset({"alice"})  # type: ignore[attr-defined]
    kit.feed(invite("sip:sipsuite.test", call_id="traced"), ALICE)
    kit.feed(invite("sip:sipsuite.test", from_="<sip:carol@sipsuite.test>;tag=c",
                    call_id="quiet"), ALICE)
    lines = [formatEvent(e) for e in events if "484" in formatEvent(e) and "route" in formatEvent(e)]
    assert any("cid=traced" in ln for ln in lines)
    assert not any("cid=quiet" in ln for ln in lines)


def test_a_foreign_domain_is_not_relayed_for_an_unknown_caller(tmp_path: Path) -> None:
    kit = seed_kit(tmp_path)
    kit.feed(invite("sip:someone@example.org"), ALICE)
    assert [r.status for r in finals(kit)] == [403]
    assert not [m for m, h, _ in kit.sent if isinstance(m, Request)]
