"""ctx's message fields, the twins of Kamailio's $ru $rU $rd $du $fu $fU $fn
$tu $tU $ci $ua $si $sp $pr (issue 14).

Each property read, written, and read again at once (no msg_apply_changes());
then through a real core: what leaves on the wire after a write, tags kept;
$du sends the request elsewhere without changing its Request-URI and stays
for failure_route; a From write is not restored in the answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from proxykit import ProxyKit, answer

from sipsuite.proxy import RequestContext, Routing
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.sip.message import Request, Response
from sipsuite.sip.parser import parse_datagram
from sipsuite.sip.uri import URI

CALLER = "127.0.0.2"


def invite(ruri: str = "sip:4711@sipsuite.test", *, from_: str = '"Alice A." <sip:alice@sipsuite.test;x=1>;tag=caller',
           to: str = "<sip:bob@sipsuite.test>", call_id: str = "fields-1", ua: str = "Zoiper 5.6",
           host: str = CALLER) -> bytes:
    lines = [
        f"INVITE {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:5070;branch=z9hG4bKf{call_id};rport",
        "Max-Forwards: 70",
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:alice@{host}:5070>",
        f"User-Agent: {ua}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def context(data: bytes, transport: str = "udp", host: str = CALLER, port: int = 5070) -> RequestContext:
    req = parse_datagram(data)
    assert isinstance(req, Request)
    listener = Listener(transport, "127.0.0.1", 5060, "127.0.0.1")
    return RequestContext(None, req, Source(transport, host, port, listener), False)  # type: ignore[arg-type]


def test_every_field_reads_the_request_and_where_it_came_from() -> None:
    ctx = context(invite("sip:4711@Sipsuite.Test:5080;user=phone"), "tcp", "127.0.0.5", 40123)
    assert ctx.ruri == "sip:4711@Sipsuite.Test:5080;user=phone"  # as it came
    assert (ctx.ruri_user, ctx.ruri_host) == ("4711", "sipsuite.test")
    assert ctx.dst_uri is None
    assert (ctx.from_uri, ctx.from_user, ctx.from_display) == ("sip:alice@sipsuite.test;x=1", "alice", "Alice A.")
    assert (ctx.to_uri, ctx.to_user) == ("sip:bob@sipsuite.test", "bob")
    assert (ctx.call_id, ctx.user_agent) == ("fields-1", "Zoiper 5.6")
    assert (ctx.source_ip, ctx.source_port, ctx.proto) == ("127.0.0.5", 40123, "tcp")


def test_a_request_without_display_name_user_part_or_user_agent_reads_none() -> None:
    ctx = context(invite("sip:sipsuite.test", from_="<sip:alice@sipsuite.test>;tag=t", ua="x")
                  .replace(b"User-Agent: x\r\n", b""))
    assert ctx.ruri_user is None and ctx.from_display is None and ctx.user_agent is None


def test_a_write_is_read_back_at_once_and_keeps_tags_and_parameters() -> None:
    ctx = context(invite())
    ctx.ruri = "sip:bob@127.0.0.9:5099"
    assert ctx.ruri == "sip:bob@127.0.0.9:5099" and ctx.ruri_host == "127.0.0.9"
    ctx.ruri_user = "+4930123"
    ctx.ruri_host = "gw.example.net"
    assert ctx.ruri == "sip:+4930123@gw.example.net:5099"
    ctx.ruri_host = "[2001:DB8::1]"
    assert ctx.ruri == "sip:+4930123@[2001:db8::1]:5099" and ctx.ruri_host == "[2001:db8::1]"
    ctx.ruri = URI.parse("sip:carol@sipsuite.test")
    assert ctx.request.uri.user == "carol"
    ctx.ruri_user = None
    assert ctx.ruri == "sip:sipsuite.test"

    ctx.from_user = "anonymous"
    assert ctx.from_uri == "sip:anonymous@sipsuite.test;x=1"
    ctx.from_uri = "sip:+4930999@pstn.example.net"
    assert ctx.from_user == "+4930999" and ctx.from_display == "Alice A."
    ctx.from_display = 'Help "Desk"'
    assert ctx.from_display == 'Help "Desk"'
    assert ctx.request.header("From") == r'"Help \"Desk\"" <sip:+4930999@pstn.example.net>;tag=caller'
    ctx.from_display = None
    assert ctx.request.header("From") == "<sip:+4930999@pstn.example.net>;tag=caller"
    assert ctx.request.from_tag == "caller"

    ctx.to_user = "4711"
    assert ctx.to_uri == "sip:4711@sipsuite.test"
    ctx.to_uri = "sip:vm@voicemail.test"
    assert ctx.to_user == "vm" and ctx.request.header("To") == "<sip:vm@voicemail.test>"

    ctx.dst_uri = "sip:127.0.0.20:5070;transport=tcp"
    assert ctx.dst_uri == "sip:127.0.0.20:5070;transport=tcp"
    ctx.dst_uri = None
    assert ctx.dst_uri is None


def test_bad_values_are_refused_where_they_are_written() -> None:
    ctx = context(invite())
    for name, value in (("ruri", "not a uri"), ("ruri_host", "bad host!"), ("ruri_host", "h:5080"),
                        ("ruri_host", "u@h"), ("ruri_host", "h;transport=tcp"), ("from_uri", "alice"),
                        ("to_uri", "sip:[::1"), ("dst_uri", "nowhere"), ("dst_uri", "tel:+4930123")):
        with pytest.raises(ValueError):
            setattr(ctx, name, value)
    assert ctx.ruri == "sip:4711@sipsuite.test" and ctx.from_user == "alice" and ctx.dst_uri is None


@pytest.mark.parametrize("name", ["call_id", "user_agent", "source_ip", "source_port", "proto"])
def test_the_fields_kamailio_cannot_write_are_read_only(name: str) -> None:
    ctx = context(invite())
    with pytest.raises(AttributeError):
        setattr(ctx, name, "x")


class Rewrite(Routing):
    """What a PSTN route does: number, caller-id and next hop rewritten."""

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self.failures: list[tuple[str | None, str]] = []

    def request_route(self, ctx: RequestContext) -> None:
        if ctx.method != "INVITE":
            ctx.relay()
            return
        ctx.ruri_user = "0049" + (ctx.ruri_user or "")
        ctx.ruri_host = "pstn.example.net"
        ctx.from_user = "+4930100"
        ctx.from_display = "ACME"
        ctx.to_user = ctx.ruri_user
        ctx.dst_uri = "sip:127.0.0.20:5072"  # the gateway, by address
        ctx.relay()

    def failure_route(self, ctx: RequestContext, response: Response) -> None:
        self.failures.append((ctx.dst_uri, ctx.ruri))
        if len(self.failures) == 1:
            ctx.relay()  # $du still set: the same gateway again
        elif len(self.failures) == 2:
            ctx.dst_uri = None  # resetdsturi(): by the Request-URI now
            ctx.ruri = "sip:vm@127.0.0.30:5090"
            ctx.relay()


def _invites(kit: ProxyKit) -> list[tuple[Request, str, int]]:
    return [(m, h, p) for m, h, p in kit.take() if isinstance(m, Request) and m.method == "INVITE"]


def test_what_leaves_on_the_wire_carries_the_writes_and_dst_uri_picks_the_next_hop(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, modules=())
    routing = Rewrite(kit.core)
    kit.core.set_routing(routing)

    kit.feed(invite("sip:301234@sipsuite.test"), CALLER)
    [(out, host, port)] = _invites(kit)
    assert (host, port) == ("127.0.0.20", 5072)  # $du, not the Request-URI's host
    assert str(out.uri) == "sip:0049301234@pstn.example.net"
    assert out.header("From") == '"ACME" <sip:+4930100@sipsuite.test;x=1>;tag=caller'
    assert out.header("To") == "<sip:0049301234@sipsuite.test>"
    assert out.header("Call-ID") == "fields-1" and out.header("User-Agent") == "Zoiper 5.6"

    kit.feed(answer(out, 503, to_tag="gw1"), "127.0.0.20", 5072)
    [(again, host, port)] = _invites(kit)
    assert (host, port) == ("127.0.0.20", 5072)  # failure_route's relay() kept $du
    assert routing.failures == [("sip:127.0.0.20:5072", "sip:0049301234@pstn.example.net")]

    kit.feed(answer(again, 486, to_tag="gw2"), "127.0.0.20", 5072)
    [(vm, host, port)] = _invites(kit)
    assert (host, port) == ("127.0.0.30", 5090) and str(vm.uri) == "sip:vm@127.0.0.30:5090"

    # The callee's answer goes up as it came: the caller's From is not put back
    # (ctx.replace_from does that).
    ok = answer(vm, 200, to_tag="vm")
    kit.feed(ok, "127.0.0.30", 5090)
    [up] = [m for m, h, _ in kit.take() if isinstance(m, Response) and m.status == 200]
    assert up.header("From") == '"ACME" <sip:+4930100@sipsuite.test;x=1>;tag=caller'


def test_a_dst_uri_by_name_is_resolved_like_a_request_uri(tmp_path: Path) -> None:
    """$du with a host name (here localhost, no DNS) and a transport: RFC 3263
    picks the address and the transport the branch goes over."""
    kit = ProxyKit(tmp_path, modules=())

    class ByName(Routing):
        def request_route(self, ctx: RequestContext) -> None:
            ctx.dst_uri = "sip:localhost:5099;transport=tcp"
            ctx.relay()

    kit.core.set_routing(ByName(kit.core))
    sent: list[tuple[str, str, int]] = []
    kit.core.transport.send = lambda data, transport, host, port, *a, **k: sent.append(  # type: ignore[method-assign]
        (transport, host, port)) or True
    kit.feed(invite("sip:bob@sipsuite.test"), CALLER)
    assert sent[-1] == ("tcp", "127.0.0.1", 5099)
