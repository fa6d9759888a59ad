"""Flows against a real proxy (RFC 5626 outbound; TCP phones behind NAT).

A "phone" here is a raw TCP connection from an ephemeral port whose Via and
Contact name another port, as a phone behind a NAT does: a listening socket
at that Contact port records whether the proxy ever tries it. Callers are
raw UDP sockets. Also: a failed flow hands the call to the AOR's next
binding, a forged flow token is refused, CRLF and STUN keep-alives are
answered, and with two proxies sharing Redis a call through the node that
does not hold the connection still reaches the phone over it.
"""

from __future__ import annotations

import base64
import socket
import struct
import time
import uuid
from collections.abc import Iterator

import procs
import pytest
from procs import (
    LOCALHOST,
    ProxyFactory,
    ProxyProcess,
    TcpEndpoint,
    TcpServerEndpoint,
    UdpEndpoint,
    build_invite,
    build_request,
    build_response,
    is_final,
)

DOMAIN = "sipsuite.test"


@pytest.fixture(scope="module")
def proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    return proxy_factory("outbound", tables={"registrar": {"min_expires": 0}})


class Phone:
    """A TCP phone behind NAT: registers over a connection from an ephemeral
    port, naming ``contact`` (where ``server`` listens) in its Via and Contact."""

    def __init__(self, proxy: ProxyProcess, user: str) -> None:
        self.user = user
        self.server = TcpServerEndpoint()
        self.contact_port = self.server.address[1]
        self.conn = TcpEndpoint((LOCALHOST, proxy.port))
        assert self.conn.address[1] != self.contact_port
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    @property
    def sent_by(self) -> str:
        return f"{LOCALHOST}:{self.contact_port}"

    def register(self, *, reg_id: int | None = None, supported: str = "",
                 instance: str = "urn:uuid:6b1a9b8e-0000-4000-8000-00000000000a",
                 expires: int = 600) -> procs.SipMessage:
        self.cseq += 1
        params = f";reg-id={reg_id};+sip.instance=\"<{instance}>\"" if reg_id is not None else ""
        extra = [("Expires", str(expires))]
        if supported:
            extra.append(("Supported", supported))
        req = build_request(
            "REGISTER", f"sip:{DOMAIN}", sent_by=self.sent_by, transport="TCP",
            from_uri=f"sip:{self.user}@{DOMAIN}", to_uri=f"sip:{self.user}@{DOMAIN}",
            call_id=self.call_id, cseq=self.cseq, extra=extra)
        contact = f"Contact: <sip:{self.user}@{self.sent_by};transport=tcp>{params}"
        req = req.replace(b"Content-Length: 0", contact.encode() + b"\r\nContent-Length: 0")
        self.conn.send(req)
        got = self.conn.recv_until(is_final, 3.0)
        assert got is not None, "no answer to the REGISTER"
        return got.msg

    def close(self) -> None:
        self.conn.close()
        self.server.close()


@pytest.fixture
def phones(proxy: ProxyProcess) -> Iterator[list[Phone]]:
    made: list[Phone] = []
    yield made
    for p in made:
        p.close()


def invite(proxy: ProxyProcess, caller: UdpEndpoint, user: str, via: ProxyProcess | None = None) -> bytes:
    data = build_invite(f"sip:{user}@{DOMAIN}", sent_by=caller.sent_by,
                        from_uri=f"sip:caller@{DOMAIN}")
    caller.send(data, (via or proxy).address)
    return data


def answer_busy(phone: Phone, got: procs.SipMessage) -> None:
    """End the call attempt: 486, which the proxy ACKs over the same connection."""
    phone.conn.send(build_response(got, 486, "Busy Here", to_tag="ph"))


def expect_invite_on_flow(proxy: ProxyProcess, phone: Phone, caller: UdpEndpoint) -> None:
    got = phone.conn.recv_until(lambda m: not m.is_response and m.method == "INVITE", 5.0)
    assert got is not None, f"no INVITE on the registered connection\n{proxy.diagnostics()}"
    answer_busy(phone, got.msg)
    final = caller.recv_until(is_final, 5.0)
    assert final is not None and final.msg.status == 486
    # Nothing ever connected to the Contact's port.
    assert phone.server.recv(0.3) is None
    assert phone.server.accepted == []


def test_tcp_phone_behind_nat_reached_over_its_connection(
        proxy: ProxyProcess, phones: list[Phone]) -> None:
    """Defect 10: no outbound at all, Via and Contact at another port than
    the connection's source; the call arrives over the connection."""
    phone = Phone(proxy, "tcpnat")
    phones.append(phone)
    ok = phone.register()
    assert ok.status == 200
    assert "outbound" not in (ok.header("require") or "")
    with UdpEndpoint() as caller:
        invite(proxy, caller, phone.user)
        expect_invite_on_flow(proxy, phone, caller)


def test_outbound_registration_requires_outbound_and_is_reached_over_its_flow(
        proxy: ProxyProcess, phones: list[Phone]) -> None:
    phone = Phone(proxy, "obtcp")
    phones.append(phone)
    ok = phone.register(reg_id=1, supported="path, outbound")
    assert ok.status == 200
    assert [v.strip().lower() for v in (ok.header("require") or "").split(",")] == ["outbound"]
    assert "reg-id=1" in (ok.header("contact") or "")
    with UdpEndpoint() as caller:
        invite(proxy, caller, phone.user)
        expect_invite_on_flow(proxy, phone, caller)


def test_outbound_without_supported_gets_no_require(proxy: ProxyProcess, phones: list[Phone]) -> None:
    phone = Phone(proxy, "obnosup")
    phones.append(phone)
    ok = phone.register(reg_id=1)
    assert ok.status == 200 and ok.header("require") is None


def test_failed_flow_hands_the_call_to_the_next_binding(
        proxy: ProxyProcess, phones: list[Phone]) -> None:
    first, second = Phone(proxy, "twoflows"), Phone(proxy, "twoflows")
    phones += [first, second]
    second.call_id = first.call_id  # one registration, two flows (RFC 5626 4.2)
    assert first.register(reg_id=1, supported="outbound").status == 200
    second.cseq = first.cseq
    both = second.register(reg_id=2, supported="outbound")
    assert both.status == 200 and len(both.header_values("contact")) == 2
    first.conn.close()  # flow 1 fails
    time.sleep(0.3)
    with UdpEndpoint() as caller:
        invite(proxy, caller, "twoflows")
        expect_invite_on_flow(proxy, second, caller)
    # The failed binding was removed: a query shows only reg-id 2.
    second.cseq += 1
    query = build_request("REGISTER", f"sip:{DOMAIN}", sent_by=second.sent_by, transport="TCP",
                          from_uri=f"sip:twoflows@{DOMAIN}", to_uri=f"sip:twoflows@{DOMAIN}",
                          call_id=second.call_id, cseq=second.cseq)
    second.conn.send(query)
    got = second.conn.recv_until(is_final, 3.0)
    assert got is not None and got.msg.status == 200
    contacts = got.msg.header_values("contact")
    assert len(contacts) == 1 and "reg-id=2" in contacts[0]
    assert first.server.accepted == []


def test_outbound_binding_whose_only_flow_failed_is_not_called_at_its_contact(
        proxy: ProxyProcess, phones: list[Phone]) -> None:
    phone = Phone(proxy, "obgone")
    phones.append(phone)
    assert phone.register(reg_id=1, supported="outbound").status == 200
    phone.conn.close()
    time.sleep(0.3)
    with UdpEndpoint() as caller:
        invite(proxy, caller, phone.user)
        final = caller.recv_until(is_final, 5.0)
        assert final is not None and final.msg.status == 404  # its one binding is gone
    assert phone.server.recv(0.3) is None
    assert phone.server.accepted == []


def refused(proxy: ProxyProcess, token: str) -> None:
    """An INVITE routed by ``token`` gets 403 and goes nowhere."""
    with UdpEndpoint() as caller, TcpServerEndpoint() as victim:
        route = f"<sip:{token}@{proxy.hostport};transport=udp;lr;ob>"
        data = build_invite(f"sip:someone@{victim.sent_by};transport=tcp", sent_by=caller.sent_by,
                            extra=[("Route", route)])
        caller.send(data, proxy.address)
        final = caller.recv_until(is_final, 3.0)
        assert final is not None and final.msg.status == 403
        assert victim.recv(0.3) is None and victim.accepted == []


@pytest.mark.parametrize("token", ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "forged"])
def test_forged_flow_token_refused(proxy: ProxyProcess, token: str) -> None:
    refused(proxy, token)


def test_flow_token_naming_a_real_listener_without_its_hmac_refused(proxy: ProxyProcess) -> None:
    """A token made to point at an address of one's choosing fails its HMAC."""
    payload = f"tcp|tcp:{LOCALHOST}:{proxy.port}|{LOCALHOST}|9".encode()
    refused(proxy, base64.urlsafe_b64encode(b"\0" * 12 + payload).decode().rstrip("="))


def test_crlf_ping_over_tcp_gets_a_pong(proxy: ProxyProcess) -> None:
    with socket.create_connection(proxy.address, timeout=3.0) as s:
        s.sendall(b"\r\n\r\n")
        assert s.recv(16) == b"\r\n"


def test_stun_binding_on_the_udp_sip_port(proxy: ProxyProcess) -> None:
    tid = b"sipsuite-tid"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCALHOST, 0))
        s.settimeout(3.0)
        s.sendto(struct.pack("!HHI12s", 1, 0, 0x2112A442, tid), proxy.address)
        reply = s.recv(512)
        port = s.getsockname()[1]
    kind, _, cookie, rtid = struct.unpack_from("!HHI12s", reply)
    assert (kind, cookie, rtid) == (0x0101, 0x2112A442, tid)
    attr, _, family, xport, xaddr = struct.unpack_from("!HHxBHI", reply, 20)
    assert (attr, family) == (0x0020, 1)
    assert (xport ^ 0x2112, socket.inet_ntoa(struct.pack("!I", xaddr ^ 0x2112A442))) == (port, LOCALHOST)


def test_call_through_another_node_reaches_the_flow(
        proxy_factory: ProxyFactory, make_redis_server, phones: list[Phone]) -> None:  # type: ignore[no-untyped-def]
    """Two nodes sharing Redis: the phone's connection is on node A, the call
    enters at node B, which routes it to A by the flow URI; A sends it over
    the connection."""
    redis = make_redis_server()
    tables = {"redis": {"url": redis.url(5), "timeout": 1.0}, "registrar": {"min_expires": 0}}
    node_a = proxy_factory("flow-a", tables=tables)
    node_b = proxy_factory("flow-b", tables=tables)
    phone = Phone(node_a, "twonodes")
    phones.append(phone)
    assert phone.register(reg_id=1, supported="outbound").status == 200
    with UdpEndpoint() as caller:
        invite(node_a, caller, phone.user, via=node_b)
        expect_invite_on_flow(node_b, phone, caller)


def test_in_dialog_request_to_the_contact_reuses_the_connection(
        proxy: ProxyProcess, phones: list[Phone]) -> None:
    """Kamailio's tcp aliasing: the Contact names the connection's address at
    another port; a request routed to that Contact (a BYE later in a call)
    goes over the connection, not to a new one."""
    phone = Phone(proxy, "alias")
    phones.append(phone)
    assert phone.register().status == 200
    with UdpEndpoint() as caller:
        bye = build_request(
            "BYE", f"sip:alias@{phone.sent_by};transport=tcp", sent_by=caller.sent_by,
            from_uri=f"sip:caller@{DOMAIN}", to_uri=f"sip:alias@{DOMAIN}", to_tag="ph",
            extra=[("Route", f"<sip:{proxy.hostport};lr>")])
        caller.send(bye, proxy.address)
        got = phone.conn.recv_until(lambda m: not m.is_response and m.method == "BYE", 5.0)
        assert got is not None, f"no BYE on the registered connection\n{proxy.diagnostics()}"
        phone.conn.send(build_response(got.msg, 200, "OK"))
        final = caller.recv_until(is_final, 5.0)
        assert final is not None and final.msg.status == 200
    assert phone.server.recv(0.3) is None
    assert phone.server.accepted == []


def test_udp_outbound_flow_is_the_address_it_registered_from(proxy: ProxyProcess) -> None:
    """Over UDP the flow is the 5-tuple: the INVITE goes from the listener
    the REGISTER reached to the address and port it came from, not to the
    port its Via and Contact name."""
    with UdpEndpoint() as phone, UdpEndpoint() as decoy, UdpEndpoint() as caller:
        req = build_request(
            "REGISTER", f"sip:{DOMAIN}", sent_by=decoy.sent_by, from_uri=f"sip:obudp@{DOMAIN}",
            to_uri=f"sip:obudp@{DOMAIN}", extra=[("Expires", "600"), ("Supported", "outbound")])
        contact = (f'Contact: <sip:obudp@{decoy.sent_by}>;reg-id=1;'
                   f'+sip.instance="<urn:uuid:6b1a9b8e-0000-4000-8000-0000000000ud>"')
        phone.send(req.replace(b"Content-Length: 0", contact.encode() + b"\r\nContent-Length: 0"),
                   proxy.address)
        ok = phone.recv_until(is_final, 3.0)
        assert ok is not None and ok.msg.status == 200
        assert (ok.msg.header("require") or "").strip().lower() == "outbound"
        invite(proxy, caller, "obudp")
        got = phone.recv_until(lambda m: not m.is_response and m.method == "INVITE", 5.0)
        assert got is not None and got.addr == proxy.address
        phone.send(build_response(got.msg, 486, "Busy Here", to_tag="ph"), proxy.address)
        final = caller.recv_until(is_final, 5.0)
        assert final is not None and final.msg.status == 486
        assert decoy.recv(0.3) is None
