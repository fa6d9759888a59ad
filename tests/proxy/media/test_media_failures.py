"""When the relay session of a call that fails ends: in failure_route, once
every branch has ended, so a call that goes on to new branches (voicemail,
serial forking, dispatcher failover) keeps it, and a CANCELed call whose
branch never answered still releases it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxykit import ProxyKit, answer, request
from test_media import FakeClient

from sipsuite.proxy.modules.media import add_media

CALLER, CALLEE, VOICEMAIL = "127.0.0.2", "127.0.0.9", "127.0.0.77"
SDP = (b"v=0\r\no=- 1 7 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 8\r\na=sendrecv\r\n")


def relayed_kit(tmp_path: Path, **tables: Any) -> tuple[ProxyKit, FakeClient]:
    kit = ProxyKit(tmp_path, static={"bob": f"sip:bob@{CALLEE}:5099"},
                   features={"nat": True, **tables.pop("features", {})},
                   media={"relay": "always"}, **tables)
    client = FakeClient(("203.0.113.7", 30000), ("203.0.113.7", 30002), ("203.0.113.7", 30004))
    add_media(kit.core, client)
    return kit, client


def send_invite(kit: ProxyKit) -> Any:
    data = request("INVITE", "sip:bob@sipsuite.test", branch="i1")
    data = data.replace(b"Content-Length: 0\r\n", b"Content-Type: application/sdp\r\n"
                        b"Content-Length: %d\r\n" % len(SDP)) + SDP
    kit.feed(data, CALLER)
    forwarded = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]
    kit.take()
    return forwarded[-1] if forwarded else None


def verbs(client: FakeClient) -> list[str]:
    return [call[0] for call in client.calls]


def test_voicemail_after_busy_keeps_the_relay_session(tmp_path: Path) -> None:
    kit, client = relayed_kit(tmp_path, features={"voicemail": True},
                              voicemail={"srv_ip": VOICEMAIL})
    fwd = send_invite(kit)
    kit.feed(answer(fwd, 486, to_tag="callee"), CALLEE, 5099)
    to_vm = [m for m, h, _ in kit.sent if h == VOICEMAIL and not hasattr(m, "status")]
    assert to_vm and b"203.0.113.7" in to_vm[-1].body
    assert "D" not in verbs(client), "the session was deleted before the voicemail branch"


def test_busy_without_more_branches_deletes_the_session(tmp_path: Path) -> None:
    kit, client = relayed_kit(tmp_path)
    fwd = send_invite(kit)
    kit.feed(answer(fwd, 486, to_tag="callee"), CALLEE, 5099)
    assert [m.status for m, h, _ in kit.sent if h == CALLER] == [486]
    assert verbs(client).count("D") == 1


def test_cancel_before_any_answer_deletes_the_session(tmp_path: Path) -> None:
    kit, client = relayed_kit(tmp_path)
    send_invite(kit)
    kit.feed(request("CANCEL", "sip:bob@sipsuite.test", branch="i1"), CALLER)
    for _ in range(40):  # the branch ends by the CANCEL guard, not by an answer
        kit.clock.advance(1)
    assert 487 in [m.status for m, h, _ in kit.sent if h == CALLER]
    assert verbs(client).count("D") == 1
