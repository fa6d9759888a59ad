"""Wildcard listen addresses (issue 12 item 5): a proxy on udp/tcp 0.0.0.0 (or
[::]) puts the address each request arrived on in its Via and Record-Route,
answers from that address and forwards from it.

127.0.0.2 is local on Linux (all of 127.0.0.0/8 is) without being an
interface address: the proxy's guessed address (the host's primary one) is
neither 127.0.0.1 nor 127.0.0.2, so a proxy advertising one address for all
fails these tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from procs import (
    LOCALHOST,
    LOCALHOST6,
    ProxyFactory,
    ProxyProcess,
    SipMessage,
    TcpEndpoint,
    TcpServerEndpoint,
    UdpEndpoint,
    build_ack_for_2xx,
    build_invite,
    build_response,
    free_port,
    hostport,
    new_tag,
    via_sent_by,
    via_transport,
)

OTHER = "127.0.0.2"


@pytest.fixture(scope="module")
def callee() -> Iterator[UdpEndpoint]:
    with UdpEndpoint(LOCALHOST) as ep:
        yield ep


@pytest.fixture(scope="module")
def tcp_callee() -> Iterator[TcpServerEndpoint]:
    with TcpServerEndpoint(LOCALHOST) as ep:
        yield ep


@pytest.fixture(scope="module")
def proxy(proxy_factory: ProxyFactory, callee: UdpEndpoint,
          tcp_callee: TcpServerEndpoint) -> ProxyProcess:
    port = free_port()
    return proxy_factory(
        "wildcard", port=port, listen=[f"udp:0.0.0.0:{port}", f"tcp:0.0.0.0:{port}"],
        static={"bob": [f"sip:bob@{callee.sent_by}"],
                "carol": [f"sip:carol@{tcp_callee.sent_by};transport=tcp"]})


def _invite_at(callee: UdpEndpoint, call_id: str) -> SipMessage:
    got = callee.recv_until(lambda m: not m.is_response and m.method == "INVITE"
                            and m.call_id == call_id, 5.0)
    assert got is not None, "the INVITE was not forwarded"
    return got.msg


def _answer(callee: UdpEndpoint, invite: SipMessage) -> None:
    """200 OK to where the proxy's Via says, as a UA does (RFC 3261 18.2.2)."""
    host, _, port = via_sent_by(invite.vias[0]).rpartition(":")
    ok = build_response(invite, 200, "OK", to_tag=new_tag(),
                        extra=[*(("Record-Route", rr) for rr in invite.header_values("record-route")),
                               ("Contact", f"<sip:bob@{callee.sent_by}>")])
    callee.send(ok, (host.strip("[]"), int(port)))


@pytest.mark.parametrize("dest", [LOCALHOST, OTHER])
def test_udp_request_gets_the_address_it_arrived_on(proxy: ProxyProcess, callee: UdpEndpoint,
                                                    dest: str) -> None:
    call_id = f"wild-udp-{dest}"
    with UdpEndpoint(LOCALHOST) as caller:
        caller.send(build_invite("sip:bob@sipsuite.test", sent_by=caller.sent_by,
                                 call_id=call_id), (dest, proxy.port))
        trying = caller.recv_until(lambda m: m.is_response and m.status == 100, 5.0)
        invite = _invite_at(callee, call_id + "@sipsuite.test")
        assert via_sent_by(invite.vias[0]) == f"{dest}:{proxy.port}", invite.vias
        assert invite.header_values("record-route") == [f"<sip:{dest}:{proxy.port};lr>"]
        _answer(callee, invite)
        ok = caller.recv_until(lambda m: m.is_response and m.status == 200, 5.0)
        assert ok is not None
        # In the dialog: the ACK follows the route set to that same address,
        # which the proxy knows for its own (no loop, no 483).
        caller.send(build_ack_for_2xx(invite, ok.msg, sent_by=caller.sent_by), (dest, proxy.port))
        ack = callee.recv_until(lambda m: not m.is_response and m.method == "ACK"
                                and m.call_id == invite.call_id, 5.0)
    assert trying is not None
    # Answers come from the address the caller sent to, not just the port.
    assert trying.addr == (dest, proxy.port)
    assert ok.addr == (dest, proxy.port)
    assert ack is not None, "the ACK routed to our Record-Route did not reach the callee"
    assert via_sent_by(ack.msg.vias[0]) == f"{dest}:{proxy.port}"


def test_tcp_request_to_another_local_address(proxy: ProxyProcess, callee: UdpEndpoint) -> None:
    """Arrived over TCP on 127.0.0.2, leaves over UDP: both Record-Routes
    (one per transport) and the Via name 127.0.0.2."""
    call_id = "wild-tcp-in"
    with TcpEndpoint((OTHER, proxy.port)) as caller:
        caller.send(build_invite("sip:bob@sipsuite.test", sent_by=caller.sent_by,
                                 transport="TCP", call_id=call_id))
        invite = _invite_at(callee, call_id + "@sipsuite.test")
        assert via_transport(invite.vias[0]).upper() == "UDP"
        assert via_sent_by(invite.vias[0]) == f"{OTHER}:{proxy.port}"
        assert invite.header_values("record-route") == [
            f"<sip:{OTHER}:{proxy.port};lr>", f"<sip:{OTHER}:{proxy.port};transport=tcp;lr>"]
        _answer(callee, invite)
        ok = caller.recv_until(lambda m: m.is_response and m.status == 200, 5.0)
    assert ok is not None, "no 200 back over the caller's connection"


def test_tcp_connection_to_next_hop_leaves_from_the_arrival_address(
        proxy: ProxyProcess, tcp_callee: TcpServerEndpoint) -> None:
    call_id = "wild-tcp-out@sipsuite.test"
    with UdpEndpoint(LOCALHOST) as caller:
        caller.send(build_invite("sip:carol@sipsuite.test", sent_by=caller.sent_by,
                                 call_id=call_id.split("@")[0]), (OTHER, proxy.port))
        got = tcp_callee.recv_until(lambda m: not m.is_response and m.call_id == call_id, 5.0)
    assert got is not None, "the INVITE did not reach the TCP callee"
    assert via_transport(got.msg.vias[0]).upper() == "TCP"
    assert via_sent_by(got.msg.vias[0]) == f"{OTHER}:{proxy.port}"
    # The connection the proxy opened comes from the address its Via names.
    assert got.addr[0] == OTHER


@pytest.fixture(scope="module")
def callee6() -> Iterator[UdpEndpoint]:
    with UdpEndpoint(LOCALHOST6) as ep:
        yield ep


def test_ipv6_wildcard_advertises_loopback(proxy_factory: ProxyFactory,
                                           callee6: UdpEndpoint) -> None:
    port = free_port(host=LOCALHOST6)
    proxy6 = proxy_factory("wildcard6", port=port, listen=[f"udp:[::]:{port}", f"tcp:[::]:{port}"],
                           static={"bob": [f"sip:bob@{callee6.sent_by}"]})
    sent_by = hostport(LOCALHOST6, proxy6.port)
    with UdpEndpoint(LOCALHOST6) as caller:
        caller.send(build_invite("sip:bob@sipsuite.test", sent_by=caller.sent_by,
                                 call_id="wild-v6"), (LOCALHOST6, proxy6.port))
        invite = _invite_at(callee6, "wild-v6@sipsuite.test")
        trying = caller.recv_until(lambda m: m.is_response and m.status == 100, 5.0)
    assert via_sent_by(invite.vias[0]) == sent_by
    assert invite.header_values("record-route") == [f"<sip:{sent_by};lr>"]
    assert trying is not None and trying.addr == (LOCALHOST6, proxy6.port)
