"""The nat module on its own: set up by its SPEC on a FakeCore, NAT
detection into the call's state, the Contact alias and the Record-Route
marker, no ProxyCore."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fakecore import FakeCore
from twisted.logger import globalLogPublisher

from sipsuite.proxy.api import CallState
from sipsuite.proxy.modules.nat import NAT_PARAM, SPEC, NatModule, NatState
from sipsuite.proxy.net.listener import Source
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.services import MEDIA, NAT
from sipsuite.sip.message import Request, Response
from sipsuite.sip.parser import parse_datagram


def config(nat: bool = True) -> Any:
    return SimpleNamespace(features=SimpleNamespace(nat=nat))


def make() -> tuple[FakeCore, NatModule]:
    core = FakeCore(config())
    core.modules.setup_all([SPEC], core.config)
    module = core.modules.get(NAT)
    assert isinstance(module, NatModule)
    return core, module


def request(method: str = "INVITE", contact: str = "sip:alice@10.0.0.8:5060",
            ruri: str = "sip:bob@sipsuite.test") -> Request:
    msg = parse_datagram(
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.8:5060;branch=z9hG4bK1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@sipsuite.test>;tag=ft\r\n"
        f"To: <sip:bob@sipsuite.test>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n"
        f"Contact: <{contact}>\r\nContent-Length: 0\r\n\r\n".encode())
    assert isinstance(msg, Request)
    return msg


def ctx_for(req: Request, host: str = "192.0.2.99", port: int = 40000) -> Any:
    return SimpleNamespace(request=req, source=Source("udp", host, port, None),  # type: ignore[arg-type]
                           vars={}, call=CallState())


def test_spec_follows_features_nat_at_start_only() -> None:
    assert SPEC.runtime_switch is False and SPEC.requires == ()
    off = FakeCore(config(nat=False))
    off.modules.setup_all([SPEC], off.config)
    assert off.modules.get(NAT) is None
    core, module = make()
    assert core.modules.by_name("nat") is module


def test_behind_nat_marks_the_call_the_contact_and_the_record_route() -> None:
    _, nat = make()
    ctx = ctx_for(request())
    assert nat.behind_nat(ctx) is False  # nothing detected yet
    assert nat.detect(ctx) is True
    assert ctx.call.get(NatState).behind_nat is True and nat.behind_nat(ctx)
    assert ctx.vars["nat"] is True  # the pre-module key, kept one release
    assert ctx.request.header("contact") == "<sip:alice@10.0.0.8:5060;alias=192.0.2.99~40000~1>"
    assert ctx.call.rr_params == [NAT_PARAM]
    nat.detect(ctx)  # twice (a user class and the default script): one marker
    assert ctx.call.rr_params == [NAT_PARAM]


def test_register_behind_nat_keeps_its_contact() -> None:
    _, nat = make()
    ctx = ctx_for(request("REGISTER", ruri="sip:sipsuite.test"))
    assert nat.detect(ctx) is True
    assert ctx.request.header("contact") == "<sip:alice@10.0.0.8:5060>"


def test_not_behind_nat_leaves_everything_alone() -> None:
    _, nat = make()
    ctx = ctx_for(request(contact="sip:alice@192.0.2.10:5060"), host="10.0.0.8", port=5060)
    assert nat.detect(ctx) is False
    assert nat.behind_nat(ctx) is False and ctx.vars["nat"] is False
    assert ctx.call.rr_params == []
    assert ctx.request.header("contact") == "<sip:alice@192.0.2.10:5060>"


def test_dialog_target_follows_the_alias() -> None:
    _, nat = make()
    req = request("BYE", ruri="sip:alice@10.0.0.8:5060;alias=192.0.2.99~40000~1")
    target = nat.dialog_target(req)
    assert target is not None and (target.transport, target.host, target.port) == (
        "udp", "192.0.2.99", 40000)
    assert str(req.uri) == "sip:alice@10.0.0.8:5060"
    assert nat.dialog_target(req) is None


@pytest.mark.parametrize("with_media", [False, True])
def test_start_warns_when_no_media_module_relays(with_media: bool) -> None:
    core, nat = make()
    if with_media:
        core.modules.provide(MEDIA, object())  # type: ignore[arg-type]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        core.modules.start()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if "no media relay is configured" in e.get("log_format", "")]
    assert bool(warned) is not with_media
    assert nat.stats() == {} and nat.stop() is None


def test_reply_alias_names_where_the_callee_was_reached() -> None:
    """set_contact_alias on a NAT'ed callee's answer: the alias is the
    binding's address (here its TCP connection's), the Contact otherwise kept."""
    _, nat = make()
    resp = parse_datagram(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 198.51.100.1;branch=z9hG4bK1\r\n"
        b"From: <sip:bob@sipsuite.test>;tag=ft\r\nTo: <sip:carol@sipsuite.test>;tag=tt\r\n"
        b"Call-ID: c1\r\nCSeq: 1 INVITE\r\n"
        b"Contact: <sip:carol@192.168.1.11:5060;transport=tcp>\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(resp, Response)
    assert nat.reply_alias(resp, Target("tcp", "192.0.2.50", 38612))
    assert resp.header("contact") == "<sip:carol@192.168.1.11:5060;transport=tcp;alias=192.0.2.50~38612~2>"
    # An answer aliased already (a retransmission, a 2xx after a 183) stays as it is.
    assert not nat.reply_alias(resp, Target("tcp", "192.0.2.50", 1))
