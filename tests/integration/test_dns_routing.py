"""Next hop by DNS (RFC 3263): a binding whose host is a name is resolved
through SRV then A, from the DNS servers named in [proxy] dns_servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnsserver import DnsServer
from procs import (
    CalleeBehaviour,
    ProxyFactory,
    ProxyProcess,
    RawCallee,
    UdpEndpoint,
    build_ack_for,
    build_request,
)


@pytest.fixture(scope="module")
def dns_topo(proxy_factory: ProxyFactory) -> Iterator[tuple[ProxyProcess, RawCallee, DnsServer]]:
    callee = RawCallee()
    server = DnsServer()
    # SRV says port callee.port on host pbx.gw.test; the A record says where that is.
    server.add_srv("_sip._udp.gw.test", 10, 0, callee.port, "pbx.gw.test")
    server.add_a("pbx.gw.test", "127.0.0.1")
    static = {"srv": ["sip:srv@gw.test"], "nxdomain": ["sip:nx@nowhere.test"]}
    try:
        proxy = proxy_factory(
            "dns", static=static, dns_timeout=2.0,
            extra_proxy={"dns_servers": [f"{server.address[0]}:{server.address[1]}"]},
        )
        yield proxy, callee, server
    finally:
        callee.close()
        server.close()


def _call(proxy: ProxyProcess, user: str) -> int | None:
    with UdpEndpoint() as caller:
        req = build_request("INVITE", f"sip:{user}@sipsuite.test", sent_by=caller.sent_by,
                            contact=f"sip:alice@{caller.sent_by}")
        caller.send(req, proxy.address)
        final = caller.recv_until(lambda m: m.is_response and m.status >= 200, 6, [])
        if final is None:
            return None
        if final.msg.status >= 300:
            caller.send(build_ack_for(req, final.msg), proxy.address)
        return final.msg.status


def test_srv_then_a_record_give_the_next_hop(dns_topo: tuple[ProxyProcess, RawCallee, DnsServer]) -> None:
    proxy, callee, server = dns_topo
    callee.reset(CalleeBehaviour(provisional=(180,), final=486))
    status = _call(proxy, "srv")
    assert status == 486, f"got {status}; DNS queries {server.queries}\n{proxy.diagnostics()}"
    invites = callee.wait_for("INVITE", 1, timeout=2)
    assert invites and invites[0].msg.request_uri == "sip:srv@gw.test"
    assert ("_sip._udp.gw.test", 33) in server.queries and ("pbx.gw.test", 1) in server.queries


def test_unknown_name_gives_480(dns_topo: tuple[ProxyProcess, RawCallee, DnsServer]) -> None:
    """The user's only binding names a host that does not exist: its branch
    fails as with 503 (RFC 3263), and as no binding answered anything the
    default routing answers 480 Temporarily Unavailable."""
    proxy, _, server = dns_topo
    status = _call(proxy, "nxdomain")
    assert status == 480, f"got {status}; DNS queries {server.queries}\n{proxy.diagnostics()}"
    assert any(name.endswith("nowhere.test") for name, _ in server.queries)
