"""The registrar's rules (RFC 3261 10.3, RFC 3327, RFC 5626) on parsed
REGISTERs, without sockets: parse_register, apply_register, contact_values."""

from __future__ import annotations

import dataclasses

import pytest

from sipsuite.config import RegistrarConfig, load_config
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.registrar.location import Binding, current
from sipsuite.proxy.registrar.registrar import (
    RegisterRejected,
    apply_register,
    behind_nat,
    contact_values,
    is_private,
    parse_register,
)
from sipsuite.sip.message import ParseError, Request
from sipsuite.sip.parser import parse_datagram

CFG: RegistrarConfig = load_config(None).registrar
LISTENER = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
NOW = 1_000_000.0


def register(*headers: str, via: str = "127.0.0.1:5070", cseq: int = 1, call_id: str = "c1",
             to: str = "<sip:alice@example.com>") -> Request:
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        f"Via: SIP/2.0/UDP {via};branch=z9hG4bK{cseq}x{call_id}",
        "Max-Forwards: 70",
        f"From: {to};tag=f1",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *headers,
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_datagram("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def source(host: str = "127.0.0.1", port: int = 5070, transport: str = "udp") -> Source:
    return Source(transport, host, port, LISTENER)


def run(bindings: list[Binding], req: Request, now: float = NOW,
        cfg: RegistrarConfig = CFG) -> list[Binding]:
    reg = parse_register(req, source(), cfg)
    return current(apply_register(bindings, reg, now, cfg), now)


def rejected(req: Request, bindings: list[Binding] | None = None,
             cfg: RegistrarConfig = CFG) -> RegisterRejected:
    with pytest.raises(RegisterRejected) as info:
        run(bindings or [], req, cfg=cfg)
    return info.value


def test_add_binding_with_expires_from_header_param_or_default() -> None:
    b = run([], register("Contact: <sip:alice@127.0.0.1:5070>", "Expires: 300"))
    assert [(x.contact, x.expires) for x in b] == [("sip:alice@127.0.0.1:5070", NOW + 300)]
    b = run([], register("Contact: <sip:alice@127.0.0.1:5070>;expires=120", "Expires: 300"))
    assert b[0].expires == NOW + 120
    b = run([], register("Contact: <sip:alice@127.0.0.1:5070>"))
    assert b[0].expires == NOW + CFG.default_expires


def test_below_minimum_is_423_with_min_expires_and_above_maximum_is_lowered() -> None:
    e = rejected(register("Contact: <sip:a@127.0.0.1>", "Expires: 10"))
    assert (e.status, e.headers) == (423, [("Min-Expires", str(CFG.min_expires))])
    b = run([], register("Contact: <sip:a@127.0.0.1>", "Expires: 999999"))
    assert b[0].expires == NOW + CFG.max_expires


def test_refresh_replaces_and_zero_removes() -> None:
    b = run([], register("Contact: <sip:alice@127.0.0.1:5070>", "Expires: 300"))
    b = run(b, register("Contact: <sip:alice@127.0.0.1:5070>", "Expires: 600", cseq=2), now=NOW + 10)
    assert [(x.expires, x.cseq) for x in b] == [(NOW + 610, 2)]
    b = run(b, register("Contact: <sip:alice@127.0.0.1:5070>;expires=0", cseq=3))
    assert b == []


def test_contacts_compared_as_uris() -> None:
    b = run([], register("Contact: <sip:alice@Host.example;transport=UDP>"))
    b = run(b, register("Contact: <sip:alice@host.example;transport=udp>", cseq=2))
    assert len(b) == 1


def test_several_contacts_and_q_order() -> None:
    b = run([], register("Contact: <sip:a@127.0.0.1:1>;q=0.1, <sip:a@127.0.0.1:2>;q=0.9",
                         "Contact: <sip:a@127.0.0.1:3>"))
    assert [(x.contact, x.q) for x in b] == [
        ("sip:a@127.0.0.1:3", 1.0), ("sip:a@127.0.0.1:2", 0.9), ("sip:a@127.0.0.1:1", 0.1)]
    assert rejected(register("Contact: <sip:a@h>;q=1.5")).status == 400


def test_star_needs_expires_zero_and_to_be_alone() -> None:
    b = run([], register("Contact: <sip:a@127.0.0.1:1>, <sip:a@127.0.0.1:2>"))
    assert run(b, register("Contact: *", "Expires: 0", cseq=2)) == []
    assert rejected(register("Contact: *", "Expires: 10")).status == 400
    assert rejected(register("Contact: *")).status == 400
    # Mixed with addresses it is malformed: the parser answers 400 before routing.
    with pytest.raises(ParseError) as info:
        register("Contact: *, <sip:a@h>", "Expires: 0")
    assert info.value.status == 400


def test_older_cseq_of_same_call_id_changes_nothing() -> None:
    b = run([], register("Contact: <sip:a@127.0.0.1:1>", "Expires: 300", cseq=5))
    e = rejected(register("Contact: <sip:a@127.0.0.1:1>", "Expires: 0", cseq=4), b)
    assert e.status == 400
    # A different Call-ID (the phone restarted) is a new registration: it wins.
    b = run(b, register("Contact: <sip:a@127.0.0.1:1>", "Expires: 0", cseq=1, call_id="c2"))
    assert b == []


def test_to_must_be_a_sip_aor_with_a_user() -> None:
    assert rejected(register("Contact: <sip:a@h>", to="<tel:+15551234>")).status == 400
    assert rejected(register("Contact: <sip:a@h>", to="<sip:example.com>")).status == 400


def test_query_without_contact_has_no_contacts() -> None:
    reg = parse_register(register(), source(), CFG)
    assert reg.contacts == [] and not reg.star


def test_aor_key_is_unescaped_user() -> None:
    reg = parse_register(register("Contact: <sip:a@h>", to="<sip:%61lice@example.com>"), None, CFG)
    assert reg.aor == "alice"


def test_path_stored_and_instance_replaces_old_flow() -> None:
    inst = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    b = run([], register(f"Contact: <sip:a@192.0.2.1:1>;+sip.instance={inst};reg-id=1",
                         "Path: <sip:edge1.example;lr>", "Path: <sip:edge2.example;lr>"))
    assert b[0].path == ["<sip:edge1.example;lr>", "<sip:edge2.example;lr>"]
    assert b[0].instance == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
    # The same device comes back with another address: the new flow replaces the old.
    b = run(b, register(f"Contact: <sip:a@192.0.2.1:2>;+sip.instance={inst};reg-id=1",
                        call_id="c9"))
    assert [x.contact for x in b] == ["sip:a@192.0.2.1:2"]
    # Another reg-id is another flow of the same device: both stay.
    b = run(b, register(f"Contact: <sip:a@192.0.2.1:3>;+sip.instance={inst};reg-id=2",
                        call_id="c9", cseq=2))
    assert len(b) == 2
    values = contact_values(b, NOW)
    assert f"+sip.instance={inst}" in values[0] and ";reg-id=" in values[0]


def test_contact_limit_rejects_or_drops_oldest() -> None:
    cfg = dataclasses.replace(CFG, max_contacts=2)
    b = run([], register("Contact: <sip:a@127.0.0.1:1>", "Contact: <sip:a@127.0.0.1:2>"),
            cfg=cfg)
    e = rejected(register("Contact: <sip:a@127.0.0.1:3>", call_id="c5"), b, cfg=cfg)
    assert e.status == 503
    cfg = dataclasses.replace(cfg, max_contacts_policy="drop_oldest")
    b = run([], register("Contact: <sip:a@127.0.0.1:1>"), cfg=cfg)
    b = run(b, register("Contact: <sip:a@127.0.0.1:2>", call_id="c2"), now=NOW + 1, cfg=cfg)
    b = run(b, register("Contact: <sip:a@127.0.0.1:3>", call_id="c3"), now=NOW + 2, cfg=cfg)
    assert sorted(x.contact for x in b) == ["sip:a@127.0.0.1:2", "sip:a@127.0.0.1:3"]


def test_bad_expires_values_are_400() -> None:
    assert rejected(register("Contact: <sip:a@h>", "Expires: soon")).status == 400
    assert rejected(register("Contact: <sip:a@h>;expires=-1")).status == 400


def test_non_sip_contact_is_400() -> None:
    assert rejected(register("Contact: <name:John_Smith>")).status == 400


def test_contact_values_carry_remaining_expires() -> None:
    b = run([], register("Contact: <sip:a@127.0.0.1:1>;q=0.5", "Expires: 300"))
    assert contact_values(b, NOW + 100) == ["<sip:a@127.0.0.1:1>;expires=200;q=0.5"]


def test_nat_detection_like_nathelper_19() -> None:
    assert is_private("10.1.2.3") and is_private("192.168.0.1") and is_private("100.64.0.1")
    assert not is_private("127.0.0.1") and not is_private("192.0.2.1")
    for host in ("172.16.0.1", "172.31.255.1", "169.254.1.1", "fd00::1", "[fe80::1]"):
        assert is_private(host), host
    for host in ("172.32.0.1", "100.63.0.1", "100.128.0.1", "8.8.8.8", "2001:db8::1",
                 "example.com", "10.example.com"):
        assert not is_private(host), host
    same = register("Contact: <sip:a@127.0.0.1:5070>")
    assert not behind_nat(same, source())
    private = register("Contact: <sip:a@192.168.1.20:5060>")
    assert behind_nat(private, source())
    moved_port = register("Contact: <sip:a@127.0.0.1:5070>")
    assert behind_nat(moved_port, source(port=40000))
    other_via = register("Contact: <sip:a@127.0.0.1:5070>", via="192.0.2.9:5070")
    assert behind_nat(other_via, source())
    reg = parse_register(private, source(port=40000), CFG)
    assert reg.nat and reg.received == "udp:127.0.0.1:40000" and reg.socket == "udp:127.0.0.1:5060"


def test_escaped_headers_and_params_of_contact_kept() -> None:
    b = run([], register("Contact: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>"))
    assert b[0].contact == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    b = run([], register("Contact: sip:+19725552222@gw1.example.net;unknownparam"))
    assert b[0].contact == "sip:+19725552222@gw1.example.net"
    b = run([], register("Contact: <sip:+19725552222@gw1.example.net;unknownparam>"))
    assert b[0].contact == "sip:+19725552222@gw1.example.net;unknownparam"


def test_too_many_contacts_in_one_register_is_400() -> None:
    cfg = dataclasses.replace(CFG, max_contacts_per_request=4)
    contacts = ", ".join(f"<sip:u{i}@192.0.2.1>" for i in range(5))
    err = rejected(register(f"Contact: {contacts}"), cfg=cfg)
    assert (err.status, err.reason) == (400, "Too Many Contacts")
    assert len(run([], register(f"Contact: {contacts.rsplit(', ', 1)[0]}"), cfg=cfg)) == 4


def test_duplicate_contacts_are_found_across_a_long_list() -> None:
    # The duplicate check compares within buckets of user/host/port: the
    # same contact (escaped differently, parameters in another order) late
    # in a list still replaces the first.
    listed = [f"<sip:u{i}@192.0.2.{i}>" for i in range(20)]
    listed.insert(3, "<sip:alice@192.0.2.99;transport=tcp;x=1>")
    listed.append("<sip:%61lice@192.0.2.99;x=1;transport=TCP>;expires=60")
    bindings = run([], register(f"Contact: {', '.join(listed)}"))
    alice = [b for b in bindings if "192.0.2.99" in b.contact]
    assert len(bindings) == 21
    assert len(alice) == 1 and alice[0].expires == NOW + 60
