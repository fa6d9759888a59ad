"""examples/dispatcher_routing.py and examples/failover_routing.py unit-tested
with sipsuite.testing, as a user would test his own routing class."""

from __future__ import annotations

from sipsuite.testing import OfflineProxy, build_request

GW = ["sip:192.0.2.11:5060", "sip:192.0.2.12:5060"]
DOMAIN = {"proxy": {"domains": ["sipsuite.test"]}}


def test_dispatcher_fails_over_to_the_next_gateway_and_refuses_strangers() -> None:
    proxy = OfflineProxy("examples.dispatcher_routing:DispatcherRouting", config=DOMAIN,
                         dispatcher={1: GW})
    out = proxy.receive(build_request("INVITE", "sip:+4930123@sipsuite.test",
                                      from_="sip:alice@sipsuite.test"))
    assert out.branch.destination == "udp:192.0.2.11:5060"
    assert out.branch.uri == "sip:+4930123@sipsuite.test"  # ds_select_dst: $du, not $ru
    assert "dispatcher: set 1 (round-robin) -> sip:192.0.2.11:5060" in out.trace
    again = out.branch.answer(503)
    assert again.branch.destination == "udp:192.0.2.12:5060"
    assert again.steps[-1].hook == "failure_route"
    assert again.branch.answer(200).status == 200
    stranger = proxy.receive(build_request("INVITE", "sip:+4930123@sipsuite.test", call_id="c2",
                                           from_="sip:mallory@evil.example"),
                             source="udp:198.51.100.66:5060")
    assert (stranger.status, stranger.branches) == (403, [])


def test_dispatcher_with_every_gateway_disabled_answers_503() -> None:
    proxy = OfflineProxy("examples.dispatcher_routing:DispatcherRouting", config=DOMAIN,
                         dispatcher={1: [GW[0] + " 4"]})  # flag 4: disabled
    out = proxy.receive(build_request("INVITE", "sip:+4930123@sipsuite.test",
                                      from_="sip:alice@sipsuite.test"))
    assert (out.status, out.reason) == (503, "No Gateway Available")


def test_failover_routing_tries_the_backup_gateway_and_marks_branches() -> None:
    proxy = OfflineProxy("examples.failover_routing:FailoverRouting",
                         config={**DOMAIN, "location": {"static": {
                             "gw-primary": ["sip:gw@192.0.2.21:5060"],
                             "gw-backup": ["sip:gw@192.0.2.22:5060"]}}})
    out = proxy.receive(build_request("INVITE", "sip:gw@sipsuite.test"))
    assert out.branch.destination == "udp:192.0.2.21:5060"
    assert b"\r\nX-Branch: sip:gw@192.0.2.21:5060\r\n" in out.branch.data
    backup = out.branch.answer(502)
    assert backup.branch.destination == "udp:192.0.2.22:5060"
    # 6xx is the callee's answer: no further gateway, it goes upstream.
    assert backup.branch.answer(603).status == 603
    assert proxy.routing.replies == 2  # type: ignore[attr-defined]


def seed(**features: bool) -> OfflineProxy:
    return OfflineProxy("examples.seed_routing:SeedRouting", config={
        **DOMAIN, "features": {"pstn": True, "voicemail": True, **features},
        "pstn": {"gw_ip": "192.0.2.40", "gw_port": 5090},
        "voicemail": {"srv_ip": "192.0.2.50", "srv_port": 5092},
        "uac": {"secret": "seed-kit-secret-" * 2}},
        bindings={"1001": ["sip:bob@192.0.2.20:5062"]})


def test_seed_routing_pstn_call_with_the_company_caller_id() -> None:
    proxy = seed()
    assert proxy.receive(build_request("INVITE", "sip:sipsuite.test")).status == 484
    out = proxy.receive(build_request("INVITE", "sip:004930999@sipsuite.test", call_id="c2",
                                      from_="sip:alice@sipsuite.test"))
    assert out.branch.destination == "udp:192.0.2.40:5090"
    assert out.branch.uri == "sip:+4930999@192.0.2.40:5090"
    assert out.branch.header("From") == '"ACME" <sip:+4930123456@sipsuite.test>;tag=kitfrom'
    # replace_from record-routes (the original From rides in our Record-Route).
    assert [s.action for s in out.steps][-5:] == [
        "replace_from", "record_route", "set", "trace", "relay"]
    assert out.steps[-4].by == "uac.replace"
    assert out.branch.answer(200).header("From") == "<sip:alice@sipsuite.test>;tag=kitfrom"


def test_seed_routing_busy_goes_to_voicemail_by_the_avp() -> None:
    proxy = seed()
    out = proxy.receive(build_request("INVITE", "sip:1001@sipsuite.test"))
    assert out.avps == {"oexten": ["1001"]}
    assert proxy.cfg_set("voicemail.srv_ip", "192.0.2.51")["old"] == "192.0.2.50"
    proxy.cfg_set("voicemail.srv_port", "5094")
    busy = out.branch.answer(486)
    assert busy.branch.uri == "sip:1001@192.0.2.51:5094"
    assert busy.avps == {"oexten": ["1001"], "voicemail": [True]}
