"""The offline proxy's relay (sipsuite.testing.media) tells the media module
when it lets a call go, as the real relay client does: a failed call's D
leaves no session behind in the module's table."""

from __future__ import annotations

from sipsuite.proxy.media.manager import MediaManager
from sipsuite.proxy.services import MEDIA
from sipsuite.testing import OfflineProxy, build_request

SDP = ("v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\n")


def test_a_failed_calls_delete_ends_its_relay_session() -> None:
    proxy = OfflineProxy(config={"proxy": {"domains": ["example.com"]}, "features": {"nat": True},
                                 "media": {"relay": "always"}},
                         bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com", body=SDP),
                        source="udp:198.51.100.7:5070")
    media = proxy.core.modules.require(MEDIA)
    assert isinstance(media, MediaManager)
    assert proxy.relay is not None
    [session] = media.sessions.sessions()
    assert session["from_tag"].endswith(";1") and session["relay"] == proxy.relay.uri
    busy = out.branch.answer(486)
    assert busy.status == 486
    assert not [s for s in busy.steps if s.action == "raised"], busy.steps
    assert [c for c, _ in proxy.relay.commands] == ["U", "D"]
    assert media.sessions.sessions() == []
