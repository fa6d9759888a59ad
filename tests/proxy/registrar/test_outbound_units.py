"""RFC 5626 without sockets: when the registrar applies outbound (section 6),
flow tokens (5.2), and the STUN Binding answer of a SIP port (section 8)."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
import zlib
from pathlib import Path

import pytest
from proxykit import ProxyKit

from sipsuite.config import RegistrarConfig, load_config
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.net.stun import stun_reply
from sipsuite.proxy.registrar.location import Binding
from sipsuite.proxy.registrar.outbound import Flows, FlowTokens, ForgedToken
from sipsuite.proxy.registrar.registrar import RegisterRejected, parse_register
from sipsuite.sip.message import Request
from sipsuite.sip.parser import parse_datagram

CFG: RegistrarConfig = load_config(None).registrar
LISTENER = Listener("tcp", "127.0.0.1", 5060, "127.0.0.1")
SOURCE = Source("tcp", "127.0.0.1", 40001, LISTENER)
INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


def register(*headers: str, vias: int = 1, contact_params: str = f";reg-id=1;{INSTANCE}") -> Request:
    via_lines = [f"Via: SIP/2.0/TCP 192.0.2.{i}:5060;branch=z9hG4bK{i}" for i in range(vias)]
    lines = [
        "REGISTER sip:example.com SIP/2.0", *via_lines, "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=f1", "To: <sip:alice@example.com>",
        "Call-ID: c1", "CSeq: 1 REGISTER",
        f"Contact: <sip:alice@192.168.1.2:5070;transport=tcp>{contact_params}",
        *headers, "Content-Length: 0", "", "",
    ]
    msg = parse_datagram("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def test_first_hop_with_reg_id_instance_and_supported_applies_outbound() -> None:
    reg = parse_register(register("Supported: path, outbound"), SOURCE, CFG)
    assert reg.outbound
    assert reg.contacts[0].reg_id == 1


@pytest.mark.parametrize("headers, params", [
    ((), f";reg-id=1;{INSTANCE}"),  # the phone did not say Supported: outbound
    (("Supported: outbound",), f";{INSTANCE}"),  # no reg-id
    (("Supported: outbound",), ";reg-id=1"),  # no +sip.instance
])
def test_no_outbound_without_all_three(headers: tuple[str, ...], params: str) -> None:
    assert not parse_register(register(*headers, contact_params=params), SOURCE, CFG).outbound


def test_behind_an_edge_proxy_that_put_ob_on_its_path_outbound_applies() -> None:
    req = register("Supported: outbound", "Path: <sip:edge.example.net;lr;ob>", vias=2)
    reg = parse_register(req, SOURCE, CFG)
    assert reg.outbound and reg.path == ["<sip:edge.example.net;lr;ob>"]


def test_not_first_hop_and_no_ob_on_the_path_is_439() -> None:
    for path in ((), ("Path: <sip:edge.example.net;lr>",)):
        with pytest.raises(RegisterRejected) as info:
            parse_register(register("Supported: outbound", *path, vias=2), SOURCE, CFG)
        assert info.value.status == 439


def test_not_first_hop_without_supported_outbound_ignores_reg_id() -> None:
    reg = parse_register(register("Path: <sip:edge.example.net;lr>", vias=2), SOURCE, CFG)
    assert not reg.outbound and reg.contacts[0].reg_id is None


def test_switched_off_ignores_reg_id_even_from_the_first_hop() -> None:
    off = dataclasses.replace(CFG, outbound=False)
    reg = parse_register(register("Supported: outbound"), SOURCE, off)
    assert not reg.outbound and reg.contacts[0].reg_id is None


def test_flow_token_round_trip_and_forgeries() -> None:
    tokens = FlowTokens(b"secret")
    token = tokens.make("tcp", "tcp:127.0.0.1:5060", "203.0.113.9", 40001)
    assert tokens.read(token) == ("tcp", "tcp:127.0.0.1:5060", "203.0.113.9", 40001)
    # Only URI user-part characters: it is one.
    assert all(c.isalnum() or c in "-_" for c in token)
    other = FlowTokens(b"another secret").make("tcp", "tcp:127.0.0.1:5060", "203.0.113.9", 40001)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for forged in (other, flipped, "", "x", "!!!!", token[:10]):
        with pytest.raises(ForgedToken):
            tokens.read(forged)


def _binding_request(tid: bytes, fingerprint: bool) -> bytes:
    head = struct.pack("!HHI12s", 1, 8 if fingerprint else 0, 0x2112A442, tid)
    if not fingerprint:
        return head
    crc = (zlib.crc32(head) ^ 0x5354554E) & 0xFFFFFFFF
    return head + struct.pack("!HHI", 0x8028, 4, crc)


def _mapped(reply: bytes, tid: bytes) -> tuple[str, int]:
    kind, length, cookie, rtid = struct.unpack_from("!HHI12s", reply)
    assert (kind, cookie, rtid, 20 + length) == (0x0101, 0x2112A442, tid, len(reply))
    attr, size = struct.unpack_from("!HH", reply, 20)
    assert attr == 0x0020
    family, xport = struct.unpack_from("!xBH", reply, 24)
    port = xport ^ 0x2112
    raw = int.from_bytes(reply[28:28 + size - 4], "big")
    if family == 1:
        return str(ipaddress.IPv4Address(raw ^ 0x2112A442)), port
    mask = int.from_bytes(struct.pack("!I", 0x2112A442) + tid, "big")
    return str(ipaddress.IPv6Address(raw ^ mask)), port


@pytest.mark.parametrize("host", ["203.0.113.9", "2001:db8::7"])
def test_stun_binding_success_names_the_source(host: str) -> None:
    tid = bytes(range(12))
    assert _mapped(stun_reply(_binding_request(tid, False), host, 40123) or b"", tid) == (host, 40123)


def test_stun_fingerprint_answered_with_a_valid_one() -> None:
    tid = b"abcdefghijkl"
    reply = stun_reply(_binding_request(tid, True), "192.0.2.1", 5060) or b""
    assert _mapped(reply, tid) == ("192.0.2.1", 5060)
    kind, size, crc = struct.unpack_from("!HHI", reply, len(reply) - 8)
    assert (kind, size) == (0x8028, 4)
    assert crc == (zlib.crc32(reply[:-8]) ^ 0x5354554E) & 0xFFFFFFFF


@pytest.mark.parametrize("data", [
    b"", b"\x00\x01", b"\x00\x01\x00\x00" + b"\x00" * 16,  # no magic cookie (RFC 3489)
    struct.pack("!HHI12s", 0x0111, 0, 0x2112A442, b"x" * 12),  # a Binding error, not a request
    struct.pack("!HHI12s", 1, 4, 0x2112A442, b"x" * 12),  # length past the end
])
def test_stun_malformed_gets_no_answer(data: bytes) -> None:
    assert stun_reply(data, "192.0.2.1", 5060) is None


def test_stun_attribute_claiming_more_than_is_there_is_still_answered() -> None:
    # Length 0xffff on the last attribute: the scan for FINGERPRINT stops at the end.
    data = struct.pack("!HHI12s", 1, 8, 0x2112A442, b"x" * 12) + b"\x00\x06\xff\xff\x00\x00\x00\x00"
    assert _mapped(stun_reply(data, "192.0.2.1", 5060) or b"", b"x" * 12) == ("192.0.2.1", 5060)


class _Conn:
    """What Flows asks of a connection."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.closed = False


def _flows_with_connection(tmp_path: Path) -> tuple[Flows, _Conn]:
    kit = ProxyKit(tmp_path)
    core = kit.core
    core.transport.listeners.append(LISTENER)
    core.ports.add(5060)
    conn = _Conn(LISTENER)
    core.transport.connections[("203.0.113.9", 40001)] = conn  # type: ignore[assignment]
    return core.flows, conn


def _binding(flows: Flows, contact: str, **kw: object) -> Binding:
    uri = flows.flow_uri(Source("tcp", "203.0.113.9", 40001, LISTENER))
    return Binding(contact, flow=uri, received="tcp:203.0.113.9:40001", **kw)  # type: ignore[arg-type]


def test_binding_reached_over_its_live_connection(tmp_path: Path) -> None:
    flows, _ = _flows_with_connection(tmp_path)
    dst = flows.destination(_binding(flows, "sip:bob@203.0.113.9:5070;transport=tcp"))
    assert dst is not None and dst.dst is not None
    assert (dst.dst.transport, dst.dst.host, dst.dst.port, dst.dst.listener) == (
        "tcp", "203.0.113.9", 40001, LISTENER)
    assert dst.route == []


def test_connection_gone_plain_binding_goes_to_its_contact_outbound_one_nowhere(tmp_path: Path) -> None:
    flows, conn = _flows_with_connection(tmp_path)
    conn.closed = True
    plain = flows.destination(_binding(flows, "sip:bob@203.0.113.9:5070;transport=tcp"))
    assert plain is not None and plain.dst is None and str(plain.uri).startswith("sip:bob@203.0.113.9:5070")
    assert flows.destination(_binding(flows, "sip:bob@203.0.113.9:5070", outbound=True)) is None


def test_third_party_contact_is_not_sent_over_the_registering_connection(tmp_path: Path) -> None:
    flows, _ = _flows_with_connection(tmp_path)
    dst = flows.destination(_binding(flows, "sip:bob@198.51.100.7:5060;transport=tcp"))
    assert dst is not None and dst.dst is None and dst.route == []


def test_flow_held_by_another_node_is_routed_through_it(tmp_path: Path) -> None:
    flows, _ = _flows_with_connection(tmp_path)
    b = _binding(flows, "sip:bob@203.0.113.9:5070", outbound=True)
    b.flow = (b.flow or "").replace("127.0.0.1:5060", "192.0.2.50:5060")
    dst = flows.destination(b)
    assert dst is not None and dst.route == [b.flow] and dst.dst is None


def test_flow_token_edited_in_the_store_is_not_used(tmp_path: Path) -> None:
    flows, _ = _flows_with_connection(tmp_path)
    b = _binding(flows, "sip:bob@203.0.113.9:5070", outbound=True)
    b.flow = (b.flow or "").replace("sip:", "sip:x", 1)
    assert flows.destination(b) is None


def test_flow_whose_connection_another_worker_holds_is_alive(tmp_path: Path) -> None:
    """Worker processes: the connection is a sibling's (net/siblings.py), so
    the flow is alive here too and its requests go over it; a sibling's
    connection on another listener is not this flow."""
    from sipsuite.proxy.net.siblings import Siblings

    flows, _ = _flows_with_connection(tmp_path)
    layer = flows.core.net
    del layer.connections[("203.0.113.9", 40001)]  # type: ignore[attr-defined]
    b = _binding(flows, "sip:bob@203.0.113.9:5070", outbound=True)
    assert flows.destination(b) is None  # nobody holds it
    siblings = layer.siblings = Siblings(layer, 0, 2, str(tmp_path), None)  # type: ignore[attr-defined,arg-type]
    siblings.table[("tcp", "203.0.113.9", 40001)] = (1, repr(LISTENER), None)  # type: ignore[assignment]
    dst = flows.destination(b)
    assert dst is not None and dst.dst is not None and dst.route == []
    assert (dst.dst.transport, dst.dst.host, dst.dst.port, dst.dst.listener) == (
        "tcp", "203.0.113.9", 40001, LISTENER)
    siblings.table[("tcp", "203.0.113.9", 40001)] = (1, "tcp:127.0.0.1:5080", None)  # type: ignore[assignment]
    assert flows.destination(b) is None
