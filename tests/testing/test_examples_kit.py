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
