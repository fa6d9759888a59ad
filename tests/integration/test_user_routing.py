"""A user's routing class named in the config ([proxy] routing) runs in the
real proxy: async request_route, branch_route, reply_route and a
failure_route that fails a call over to a backup gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator

import procs
import pytest
from procs import (
    LOCALHOST,
    CalleeBehaviour,
    ProxyFactory,
    RawCallee,
    Received,
    UdpEndpoint,
    build_ack_for,
    build_request,
)

DOMAIN = "sipsuite.test"


def _invite(ep: UdpEndpoint, user: str) -> bytes:
    return build_request("INVITE", f"sip:{user}@{DOMAIN}", sent_by=ep.sent_by,
                         contact=f"sip:alice@{ep.sent_by}")


def _final(msg: procs.SipMessage) -> bool:
    return msg.is_response and msg.status >= 200


@pytest.fixture(scope="module")
def gateways(proxy_factory: ProxyFactory) -> Iterator[tuple[procs.ProxyProcess, RawCallee, RawCallee]]:
    primary, backup = RawCallee(), RawCallee()
    static = {
        "gw-primary": [f"sip:gw@{LOCALHOST}:{primary.port}"],
        "gw-backup": [f"sip:gw@{LOCALHOST}:{backup.port}"],
    }
    try:
        proxy = proxy_factory("user-routing", static=static,
                              extra_proxy={"routing": "examples.failover_routing:FailoverRouting"})
        yield proxy, primary, backup
    finally:
        primary.close()
        backup.close()


def test_failure_route_fails_over_to_the_backup(
    gateways: tuple[procs.ProxyProcess, RawCallee, RawCallee],
) -> None:
    proxy, primary, backup = gateways
    primary.reset(CalleeBehaviour(provisional=(), final=503))
    backup.reset(CalleeBehaviour(provisional=(180,), final=200, dialog=True))
    seen: list[Received] = []
    with UdpEndpoint() as caller:
        req = _invite(caller, "gw")
        caller.send(req, proxy.address)
        final = caller.recv_until(lambda m: _final(m), 10, seen)
        if final is not None and final.msg.status >= 300:
            caller.send(build_ack_for(req, final.msg), proxy.address)
    diag = "\n" + proxy.diagnostics()
    assert final is not None and final.msg.status == 200, f"caller saw {[r.msg.start_line for r in seen]}" + diag
    assert primary.messages("INVITE"), "the primary gateway never got the INVITE" + diag
    invites = backup.wait_for("INVITE", 1, timeout=3)
    assert invites, "failure_route did not send the call to the backup" + diag
    # branch_route ran for the new branch too.
    assert invites[0].msg.header("X-Branch") == f"sip:gw@{LOCALHOST}:{backup.port}", diag
    # The primary's 503 stayed inside the proxy (16.7: only the best answer goes up).
    assert 503 not in [r.msg.status for r in seen if r.msg.is_response], diag


def test_async_request_route_waits_then_answers(
    gateways: tuple[procs.ProxyProcess, RawCallee, RawCallee],
) -> None:
    proxy = gateways[0]
    with UdpEndpoint() as caller:
        req = _invite(caller, "slow")
        sent = time.monotonic()
        caller.send(req, proxy.address)
        final = caller.recv_until(lambda m: _final(m), 5, [])
        if final is not None:
            caller.send(build_ack_for(req, final.msg), proxy.address)
    assert final is not None and final.msg.status == 480, proxy.diagnostics()
    assert final.at - sent >= 0.19, "the hook's await did not hold the answer back"
