"""The media module on its own (a FakeCore, a fake relay client): the MEDIA
service the script calls, its state in the call, limits read at use, the
relay client's lifecycle and the figures ``stats`` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakecore import FakeCore
from proxykit import ProxyKit
from test_media import SDP, FakeClient, ctx_for, invite, manager, media_config, run

from sipsuite.proxy.api import CallState
from sipsuite.proxy.core.hookerrors import RequestRejected
from sipsuite.proxy.media.client import RelayClient
from sipsuite.proxy.media.manager import MediaManager, MediaState
from sipsuite.proxy.modules import nat as nat_module
from sipsuite.proxy.modules.media import SPEC, add_media
from sipsuite.proxy.services import MEDIA, NAT
from sipsuite.sip.message import Request, make_response
from sipsuite.sip.parser import parse_datagram

RELAY = ("203.0.113.7", 30000)


def no_sdp_invite() -> Request:
    req = invite()
    req.body = b""
    req.remove_header("content-type")
    return req


def bye(call_id: str = "call-1") -> Request:
    msg = parse_datagram(
        b"BYE sip:alice@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20;branch=z9hG4bK2\r\n"
        b"From: <sip:bob@example.com>;tag=tt\r\nTo: <sip:alice@example.com>;tag=ft\r\n"
        b"Call-ID: " + call_id.encode() + b"\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(msg, Request)
    return msg


def test_spec_needs_nat_and_relays(tmp_path: Path) -> None:
    assert SPEC.requires == (NAT,) and SPEC.runtime_switch is False
    assert not SPEC.enabled(media_config())  # nat on, no relays
    kit = ProxyKit(tmp_path, features={"nat": True}, media={"relays": ["udp:127.0.0.1:7722"]})
    media = kit.core.modules.get(MEDIA)
    assert isinstance(media, MediaManager) and kit.core.modules.by_name("media") is media
    assert isinstance(media.client, RelayClient) and media.client.relay_of("x") is None
    assert kit.core.media is media  # the attribute routing classes used before issue 13
    assert ProxyKit(tmp_path, media={"relays": ["udp:127.0.0.1:7722"]}).core.modules.get(
        MEDIA) is None  # [features] nat off


def test_added_by_hand_it_provides_the_service() -> None:
    core = FakeCore(media_config())
    client = FakeClient()
    module = add_media(core, client)
    assert core.modules.get(MEDIA) is module and core.modules.by_name("media") is module
    assert module.client is client and module.mode == "always"


def test_late_offer_is_relayed_from_the_2xx() -> None:
    client = FakeClient(RELAY)
    media = manager(client, "always")
    req = no_sdp_invite()
    ctx = ctx_for(req)
    assert run(media.offer(ctx)) is False
    state = ctx.call.get(MediaState)
    assert state.late_offer and not state.relayed and not media.relayed(ctx)
    assert media.on_reply(ctx, make_response(req, 180, to_tag="tt")) is None
    ok = make_response(req, 200, to_tag="tt")
    ok.set_header("Content-Type", "application/sdp")
    ok.body = SDP.replace(b"{addr}", b"192.0.2.20")
    assert run(media.on_reply(ctx, ok)) is True
    assert client.calls == [("U", "call-1", "tt", "ft", "192.0.2.20", 4000, 1)]  # tags swapped
    assert media.relayed(ctx) and b"203.0.113.7" in ok.body


def test_answers_go_through_on_reply_only_for_a_relayed_offer() -> None:
    client = FakeClient(RELAY, ("203.0.113.7", 30002))
    media = manager(client, "always")
    req = invite()
    plain = ctx_for(invite())
    ringing = make_response(req, 183, to_tag="tt")
    ringing.set_header("Content-Type", "application/sdp")
    ringing.body = SDP.replace(b"{addr}", b"192.0.2.20")
    assert media.on_reply(plain, ringing) is None  # nothing relayed: stays synchronous
    ctx = ctx_for(req)
    assert run(media.offer(ctx)) is True
    assert media.on_reply(ctx, make_response(req, 180, to_tag="tt")) is None  # no SDP
    assert run(media.on_reply(ctx, ringing)) is True
    assert [c[0] for c in client.calls] == ["U", "L"]


def test_end_call_deletes_once() -> None:
    client = FakeClient(RELAY)
    media = manager(client, "always")
    ctx = ctx_for(invite())
    assert run(media.offer(ctx)) is True
    run(media.end_call(ctx))
    run(media.end_call(ctx))
    assert [c[0] for c in client.calls] == ["U", "D"]
    assert ctx.call.get(MediaState).deleted and not media.relayed(ctx)
    assert media.deletes == 1


def test_in_dialog_bye_deletes_what_the_relay_holds() -> None:
    client = FakeClient()
    nat_mode = manager(client, "nat")
    run(nat_mode.in_dialog(ctx_for(bye())))
    assert client.calls == []  # not relayed, "nat" mode: nothing to delete
    client.known.add("call-1")
    run(nat_mode.in_dialog(ctx_for(bye())))
    assert client.calls == [("D", "call-1", "tt", "ft")]
    always = FakeClient()
    run(manager(always, "always").in_dialog(ctx_for(bye("call-2"))))
    assert [c[0] for c in always.calls] == ["D"]


def test_the_nat_module_decides_in_nat_mode() -> None:
    # No NatState in the call: the nat module saw no NAT (or is not there).
    client = FakeClient(RELAY)
    media = manager(client, "nat")
    ctx = ctx_for(invite())
    ctx.call = CallState()
    assert run(media.offer(ctx)) is False and client.calls == []
    nat = media.core.modules.get(NAT)
    assert nat is not None
    detected = ctx_for(invite(via="10.0.0.8:5060"))
    detected.call = CallState()
    assert nat.detect(detected) is True
    assert run(media.offer(detected)) is True


def test_limits_are_read_from_the_config_at_use() -> None:
    client = FakeClient(RELAY, RELAY)
    media = manager(client, "always", max_streams=2)
    two = SDP.replace(b"{addr}", b"192.0.2.10") + b"m=audio 4002 RTP/AVP 8\r\n"
    assert run(media.offer(ctx_for(invite(body=two)))) is True
    # cfg set replaces the config whole; the next offer sees the new limit.
    media.core.config = media_config("always", max_streams=1)
    failure = run(media.offer(ctx_for(invite(body=two))))
    assert isinstance(failure.value, RequestRejected) and failure.value.status == 488
    assert [c[0] for c in client.calls] == ["U", "U"] and media.refused == 1


def test_lifecycle_starts_and_stops_the_client() -> None:
    events: list[str] = []

    class Client(FakeClient):
        running = 0

        def startService(self) -> None:
            self.running = 1
            events.append("start")

        def stopService(self) -> Any:
            self.running = 0
            events.append("stop")
            return None

    core = FakeCore(media_config())
    core.modules.setup_all([nat_module.SPEC], core.config)
    module = add_media(core, Client())
    core.modules.start()
    module.start()  # a second start does not start the client twice
    assert events == ["start"]
    core.modules.stop()
    assert events == ["start", "stop"] and module.stop() is None


def test_stats_are_the_relay_figures() -> None:
    client = FakeClient(RELAY)
    client.calls_held = 1  # type: ignore[attr-defined]
    media = manager(client, "always")
    assert run(media.offer(ctx_for(invite()))) is True
    assert media.stats() == {"calls_anchored": 1, "offers": 1, "answers": 0, "deletes": 0,
                             "failures": 0, "refused": 0}
