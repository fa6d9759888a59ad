"""[media] max_streams and max_sessions_per_source (issue 11, defect 6): an
offer over either is refused before any relay command, with the answer and
Warning media.py documents, and a source's sessions end with its calls."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from memoryrelay import MemoryPorts, result_of
from proxykit import ProxyKit, answer, request
from test_media import FakeClient, ctx_for, invite, manager, run
from twisted.internet import task

from sipsuite.ops.liveops import cfg_set
from sipsuite.proxy.api import CallState
from sipsuite.proxy.media.local import LocalRelayClient
from sipsuite.proxy.modules.media import add_media
from sipsuite.rtprelay.control import ControlHandler
from sipsuite.rtprelay.table import SessionTable
from sipsuite.sip.message import make_response

CALLER, CALLEE, GATEWAY = "127.0.0.2", "127.0.0.9", "127.0.0.50"
RELAY = ("203.0.113.7", 30000)


def sdp(streams: int, *, rejected: int = 0) -> bytes:
    body = (b"v=0\r\no=- 1 7 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n")
    for i in range(streams):
        body += b"m=audio %d RTP/AVP 8\r\n" % (4000 + 2 * i)
    body += b"m=video 0 RTP/AVP 96\r\n" * rejected
    return body


def with_sdp(data: bytes, body: bytes) -> bytes:
    return data.replace(b"Content-Length: 0\r\n", b"Content-Type: application/sdp\r\n"
                        b"Content-Length: %d\r\n" % len(body)) + body


def kit_with(tmp_path: Path, client: Any, **limits: Any) -> ProxyKit:
    kit = ProxyKit(tmp_path, static={"bob": f"sip:bob@{CALLEE}:5099"}, features={"nat": True},
                   proxy={"trusted": [f"{GATEWAY}/32"]}, media={"relay": "always", **limits})
    add_media(kit.core, client)
    return kit


def call(kit: ProxyKit, body: bytes, *, host: str = CALLER, call_id: str = "call-1",
         branch: str = "i1") -> list[Any]:
    """Send an INVITE; the caller's answers (after 100)."""
    kit.take()
    kit.feed(with_sdp(request("INVITE", "sip:bob@sipsuite.test", host=host, call_id=call_id,
                              branch=branch), body), host)
    return [m for m, h, _ in kit.sent if h == host and hasattr(m, "status") and m.status > 100]


def forwarded(kit: ProxyKit) -> list[Any]:
    return [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]


def warning_of(resp: Any) -> str:
    value = resp.header("warning")
    assert value is not None, "no Warning header"
    return value


def test_offer_over_max_streams_is_answered_488_before_any_relay_command(tmp_path: Path) -> None:
    client = FakeClient()
    kit = kit_with(tmp_path, client, max_streams=8)
    (refusal,) = call(kit, sdp(9))
    assert (refusal.status, refusal.reason) == (488, "Not Acceptable Here")
    assert warning_of(refusal).startswith('399 127.0.0.1 "Too many media streams: 9, at most 8"')
    assert client.calls == [] and forwarded(kit) == []
    assert kit.core.media.refused == 1


def test_max_streams_counts_streams_that_take_ports(tmp_path: Path) -> None:
    # Rejected (port 0) m= lines cost the relay nothing and do not count.
    client = FakeClient(*[(RELAY[0], RELAY[1] + 2 * i) for i in range(8)])
    kit = kit_with(tmp_path, client, max_streams=8)
    assert call(kit, sdp(8, rejected=5)) == []
    assert [c[0] for c in client.calls] == ["U"] * 8
    (fwd,) = forwarded(kit)
    assert fwd.body.count(b"m=") == 13 and b"203.0.113.7" in fwd.body


def test_reinvite_adding_streams_past_the_limit_gets_488(tmp_path: Path) -> None:
    client = FakeClient(RELAY, RELAY)
    kit = kit_with(tmp_path, client, max_streams=2)
    assert call(kit, sdp(1)) == []
    fwd = forwarded(kit)[-1]
    kit.feed(answer(fwd, 200, to_tag="callee"), CALLEE, 5099)
    assert kit.core.media.sessions_of(CALLER) == 1
    kit.take()
    reinvite = with_sdp(request("INVITE", "sip:alice@127.0.0.2:5070", call_id="call-1",
                                to_tag="callee", branch="re1", cseq=2,
                                route="<sip:127.0.0.1;lr>"), sdp(3))
    kit.feed(reinvite, CALLER)
    statuses = [m.status for m, h, _ in kit.sent if h == CALLER and hasattr(m, "status")]
    assert statuses[-1] == 488
    assert [c[0] for c in client.calls] == ["U"]  # none for the refused re-INVITE
    assert not [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]


def test_answer_over_max_streams_goes_unrelayed() -> None:
    client = FakeClient(RELAY)
    media = manager(client, "always", max_streams=1)
    req = invite()
    ctx = ctx_for(req)
    assert run(media.offer(ctx)) is True
    resp = make_response(req, 200, to_tag="tt")
    resp.set_header("Content-Type", "application/sdp")
    resp.body = sdp(2)
    assert run(media.answer(ctx, resp)) is False
    assert resp.body == sdp(2) and [c[0] for c in client.calls] == ["U"]


def test_sessions_per_source_are_capped_and_come_back_when_calls_end(tmp_path: Path) -> None:
    client = FakeClient(*[RELAY] * 9)
    kit = kit_with(tmp_path, client, max_sessions_per_source=3)
    media = kit.core.media
    assert call(kit, sdp(2), call_id="a", branch="a1") == []
    assert call(kit, sdp(1), call_id="b", branch="b1") == []
    assert media.sessions_of(CALLER) == 3
    (refusal,) = call(kit, sdp(1), call_id="c", branch="c1")
    assert refusal.status == 503 and refusal.header("retry-after") is None
    assert "Too many relayed media sessions from 127.0.0.2: 3 of 3" in warning_of(refusal)
    assert len(client.calls) == 3  # no U for the refused call
    # Another address has its own allowance; a trusted gateway has none.
    assert call(kit, sdp(1), host="127.0.0.3", call_id="d", branch="d1") == []
    assert call(kit, sdp(3), host=GATEWAY, call_id="e", branch="e1") == []
    # The BYE of call "b" ends its session: room for one more from CALLER.
    run(media.delete("b", "caller", "callee"))
    assert media.sessions_of(CALLER) == 2
    assert call(kit, sdp(1), call_id="f", branch="f1") == []
    assert media.sessions_of(CALLER) == 3


def test_trusted_sources_are_not_limited(tmp_path: Path) -> None:
    client = FakeClient(*[RELAY] * 4)
    kit = kit_with(tmp_path, client, max_sessions_per_source=1)
    for n in range(4):
        assert call(kit, sdp(1), host=GATEWAY, call_id=f"gw{n}", branch=f"g{n}") == []
    assert kit.core.media.sessions_of(GATEWAY) == 4


def test_sessions_end_when_the_relay_client_forgets_the_call() -> None:
    # The real client and relay command handler: D, idle expiry and eviction all
    # give the source its sessions back.
    clock = task.Clock()
    table = SessionTable(MemoryPorts(30000, 30999))
    handler = ControlHandler(table, table.ports, ["127.0.0.1"])  # type: ignore[arg-type]
    client = LocalRelayClient(lambda: handler, reactor=clock, call_idle_time=100,
                              max_calls=3)
    media = manager(client, "always", max_sessions_per_source=10)

    def offer(call_id: str) -> None:
        req = invite(body=sdp(2))
        req.set_header("Call-ID", call_id)
        assert run(media.offer(SimpleNamespace(request=req, source=SimpleNamespace(
            host=CALLER, listener=SimpleNamespace(advertise="127.0.0.1")), vars={},
            call=CallState()))) is True

    offer("x 1")
    offer("x\u00ff2")
    assert media.sessions_of(CALLER) == 4 and len(table) == 4
    assert result_of(client.delete("x 1", "ft")) is True
    assert media.sessions_of(CALLER) == 2 and len(table) == 2
    clock.advance(101)
    client._purge_idle()
    assert media.sessions_of(CALLER) == 0
    for n in range(4):  # max_calls 3: the oldest is evicted by the fourth
        offer(f"y{n}")
    assert media.sessions_of(CALLER) == 6


def test_limits_change_at_run_time(tmp_path: Path) -> None:
    client = FakeClient(*[RELAY] * 3)
    kit = kit_with(tmp_path, client)
    cfg_set(kit.core, "media.max_streams", "2")
    (refusal,) = call(kit, sdp(3))
    assert refusal.status == 488 and client.calls == []
    cfg_set(kit.core, "media.max_streams", "3")
    assert call(kit, sdp(3), call_id="call-2", branch="i2") == []
    cfg_set(kit.core, "media.max_sessions_per_source", "3")
    (refusal,) = call(kit, sdp(1), call_id="call-3", branch="i3")
    assert refusal.status == 503
