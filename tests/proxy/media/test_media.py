"""The proxy's media decisions and SDP handling (sipsuite.proxy.modules.nat / media),
and the ordering of answers behind an async reply_route (context.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fakecore import FakeCore
from twisted.internet.defer import Deferred, fail, succeed

from sipsuite.proxy.api import CallState
from sipsuite.proxy.core.context import ResponseContext
from sipsuite.proxy.core.hooks import HookPoints
from sipsuite.proxy.media.client import RelayError, RelayUnavailable
from sipsuite.proxy.media.local import LocalRelayClient
from sipsuite.proxy.media.manager import MediaManager, MediaState
from sipsuite.proxy.modules import nat as nat_module
from sipsuite.proxy.modules.media import add_media
from sipsuite.proxy.modules.nat import (
    NatState,
    media_nat,
    needs_relay,
    parse_sdp,
    signalling_nat,
)
from sipsuite.rtpproxy import protocol as rp
from sipsuite.sip.message import Request, Response, make_response
from sipsuite.sip.parser import parse_datagram

SDP = (b"v=0\r\no=- 1 7 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 8\r\na=rtcp:4001\r\na=sendrecv\r\n")


def invite(addr: str = "192.0.2.10", via: str = "192.0.2.10:5060", body: bytes | None = None,
           ctype: str = "application/sdp") -> Request:
    sdp = SDP.replace(b"{addr}", addr.encode()) if body is None else body
    head = (f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=ft\r\n"
            "To: <sip:bob@example.com>\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@{addr}:5060>\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n").encode()
    msg = parse_datagram(head + sdp)
    assert isinstance(msg, Request)
    return msg


def source(host: str = "192.0.2.10", port: int = 5060) -> Any:
    return SimpleNamespace(transport="udp", host=host, port=port,
                           listener=SimpleNamespace(advertise="198.51.100.1"))


@pytest.mark.parametrize(("mode", "signalling", "media", "known", "expected"), [
    ("always", False, False, False, True),
    ("nat", False, False, False, False),
    ("nat", True, False, False, True),
    ("nat", False, True, False, True),
    ("nat", False, False, True, True),
])
def test_needs_relay(mode: str, signalling: bool, media: bool, known: bool,
                     expected: bool) -> None:
    assert needs_relay(mode, signalling=signalling, media=media, known=known) is expected


def test_nat_detection() -> None:
    public = invite()
    assert not signalling_nat(public, source())
    assert signalling_nat(public, source(port=40000))  # Via port differs: NAT'ed
    assert not media_nat(parse_sdp(public))
    assert media_nat(parse_sdp(invite("10.1.2.3", via="10.1.2.3:5060")))
    assert parse_sdp(invite(ctype="text/plain")) is None
    assert parse_sdp(invite(body=b"")) is None
    assert parse_sdp(invite(body=b"not sdp at all")) is None


class FakeClient:
    """Records commands; answers each U/L with the next of ``ports``."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls: list[tuple[Any, ...]] = []
        self.known: set[str] = set()

    def _next(self, verb: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls.append((verb, *args, kwargs.get("media_index")))
        result = self.results.pop(0)
        if isinstance(result, Exception):
            return fail(result)
        return succeed(result)

    def offer(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.known.add(args[0])
        return self._next("U", *args, **kwargs)

    def answer(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._next("L", *args, **kwargs)

    def delete(self, *args: Any) -> Deferred[Any]:
        self.calls.append(("D", *args))
        return succeed(True)

    def relay_of(self, call_id: str) -> str | None:
        return "udp:127.0.0.1:7722" if call_id in self.known else None


def media_config(mode: str = "always", *, max_streams: int = 8,
                 max_sessions_per_source: int = 200) -> Any:
    return SimpleNamespace(
        features=SimpleNamespace(nat=True),
        media=SimpleNamespace(relay=mode, relays=[], max_streams=max_streams,
                              max_sessions_per_source=max_sessions_per_source))


def manager(client: Any, mode: str = "always", **limits: int) -> MediaManager:
    """The media module on a FakeCore, beside the nat module, over ``client``."""
    core = FakeCore(media_config(mode, **limits))
    core.modules.setup_all([nat_module.SPEC], core.config)
    return add_media(core, client)


def ctx_for(req: Request, nat: bool = False) -> Any:
    call = CallState()
    call.put(NatState(behind_nat=nat))  # what the nat module's detect() found
    return SimpleNamespace(request=req, source=source(), vars={}, call=call)


def run(coro: Any) -> Any:
    d = Deferred.fromCoroutine(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "did not finish"
    return results[0]


def test_offer_and_answer_rewrite_sdp() -> None:
    client = FakeClient(("203.0.113.7", 30000), ("203.0.113.7", 30002))
    media = manager(client, "always")
    req = invite()
    ctx = ctx_for(req)
    assert run(media.offer(ctx)) is True
    assert client.calls[0] == ("U", "call-1", "ft", None, "192.0.2.10", 4000, 1)
    body = req.body.decode()
    assert "c=IN IP4 203.0.113.7" in body and "m=audio 30000 " in body
    assert "a=rtcp:30001" in body and "o=- 1 8 IN IP4" in body
    assert ctx.call.get(MediaState).relayed is True and media.relayed(ctx)

    resp = make_response(req, 200, to_tag="tt")
    resp.body = SDP.replace(b"{addr}", b"192.0.2.20")
    resp.set_header("Content-Type", "application/sdp")
    assert run(media.answer(ctx, resp)) is True
    assert client.calls[1] == ("L", "call-1", "ft", "tt", "192.0.2.20", 4000, 1)
    assert b"m=audio 30002 " in resp.body and b"c=IN IP4 203.0.113.7" in resp.body


def test_not_relayed_without_nat_in_nat_mode() -> None:
    client = FakeClient()
    media = manager(client, "nat")
    req = invite()
    before = req.body
    assert run(media.offer(ctx_for(req))) is False
    assert req.body == before and client.calls == []


def test_nated_caller_uses_signalling_source_for_private_sdp() -> None:
    client = FakeClient(("203.0.113.7", 30000))
    media = manager(client, "nat")
    req = invite("10.0.0.8", via="10.0.0.8:5060")
    ctx = ctx_for(req, nat=True)
    assert run(media.offer(ctx)) is True
    assert client.calls[0][4] == "192.0.2.10"  # where its signalling came from


@pytest.mark.parametrize("error", [
    RelayUnavailable("no relay answered"),
    RelayError(rp.ErrorCode.LSTFAIL_2, "answered E8"),
])
def test_relay_failure_leaves_call_unrelayed(error: Exception) -> None:
    media = manager(FakeClient(error), "always")
    req = invite()
    before = req.body
    ctx = ctx_for(req)
    assert run(media.offer(ctx)) is False
    assert req.body == before and ctx.call.peek(MediaState) is None
    assert media.failures == 1


def test_answer_only_after_a_relayed_offer() -> None:
    client = FakeClient()
    media = manager(client, "always")
    req = invite()
    resp = make_response(req, 200, to_tag="tt")
    resp.body = SDP.replace(b"{addr}", b"192.0.2.20")
    assert run(media.answer(ctx_for(req), resp)) is False
    assert client.calls == []


class FakeDispatcher:
    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def handle(self, data: bytes, *, datagram: bool = True) -> bytes:
        assert datagram is False
        self.commands.append(data)
        return b"30000 127.0.0.1\n"


def test_local_relay_client_hands_commands_to_the_dispatcher() -> None:
    dispatcher = FakeDispatcher()
    client = LocalRelayClient(lambda: dispatcher)
    result = run(_await(client.offer("call-1", "ft", None, "192.0.2.10", 4000)))
    assert result == ("127.0.0.1", 30000)
    assert dispatcher.commands[0].startswith(b"U call-1 192.0.2.10 4000 ft;1")
    assert client.relay_of("call-1") == "unix:in-process"

    gone = LocalRelayClient(lambda: None)
    failure = run(_await(gone.offer("call-2", "ft", None, "192.0.2.10", 4000)))
    assert isinstance(failure.value, RelayUnavailable)


async def _await(d: Deferred[Any]) -> Any:
    return await d


class _Routing:
    def __init__(self) -> None:
        self.waits: list[Deferred[None]] = []

    def reply_route(self, ctx: Any, branch: Any, resp: Response) -> Any:
        if resp.status != 183:
            return None

        async def slow() -> None:
            d: Deferred[None] = Deferred()
            self.waits.append(d)
            await d

        return slow()


def test_answers_wait_for_an_async_reply_route_and_keep_their_order() -> None:
    routing = _Routing()
    core = SimpleNamespace(routing=routing, hooks=HookPoints())  # no response_in hook
    req = invite()
    handled: list[int] = []

    class Recording(ResponseContext):
        __slots__ = ()

        def _handle(self, branch: Any, resp: Response, local: bool) -> None:
            handled.append(resp.status)

    rsp = Recording(core, SimpleNamespace(request=req, hook=""), None)  # type: ignore[arg-type]
    branch = SimpleNamespace(done=False)
    for status in (183, 180, 200):
        rsp.on_response(branch, make_response(req, status, to_tag="tt"))  # type: ignore[arg-type]
    assert handled == [] and len(routing.waits) == 1
    routing.waits[0].callback(None)
    assert handled == [183, 180, 200]
    assert rsp.reply_queue is None


def test_record_route_carries_the_nat_marker() -> None:
    from sipsuite.proxy.net.addresses import record_route_value
    from sipsuite.proxy.net.listener import Listener

    listener = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
    assert record_route_value(listener) == "<sip:127.0.0.1:5060;lr>"
    assert record_route_value(listener, ";nat=yes") == "<sip:127.0.0.1:5060;lr;nat=yes>"


def test_contact_alias_round_trip() -> None:
    from sipsuite.proxy.modules.nat import add_contact_alias, handle_ruri_alias

    req = invite("10.0.0.8", via="10.0.0.8:5060")
    assert add_contact_alias(req, source("192.0.2.99", 40000))
    contact = req.header("contact")
    assert contact == "<sip:alice@10.0.0.8:5060;alias=192.0.2.99~40000~1>"
    assert not add_contact_alias(req, source("192.0.2.99", 40000))  # only once

    bye = parse_datagram(
        f"BYE {contact.strip('<>')} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK2\r\n"
        "From: <sip:bob@example.com>;tag=tt\r\nTo: <sip:alice@example.com>;tag=ft\r\n"
        "Call-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n".encode())
    assert isinstance(bye, Request)
    target = handle_ruri_alias(bye)
    assert target is not None and (target.transport, target.host, target.port) == (
        "udp", "192.0.2.99", 40000)
    assert str(bye.uri) == "sip:alice@10.0.0.8:5060"
    assert b"BYE sip:alice@10.0.0.8:5060 SIP/2.0" in bye.to_bytes()
    assert handle_ruri_alias(bye) is None
