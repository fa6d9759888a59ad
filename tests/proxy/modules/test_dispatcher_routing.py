"""examples/dispatcher_routing.py with media relaying and callers it must
refuse, tested with sipsuite.testing (a fake relay added to its core): the
relay session follows the call through failover and is not left behind
when no gateway is usable; strangers do not reach the gateways."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import formatEvent, globalLogPublisher

from sipsuite.proxy.media.client import RelayError
from sipsuite.proxy.modules.media import add_media
from sipsuite.testing import OfflineProxy

GW = ["sip:127.0.0.11:5060", "sip:127.0.0.12:5060"]
ROUTING = "examples.dispatcher_routing:DispatcherRouting"
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\n")


class Relay:
    """Keeps sessions like a relay: an answer for a deleted one fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.sessions: set[str] = set()
        self.calls_held = 0

    def offer(self, call_id: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls.append("U")
        self.sessions.add(call_id)
        return succeed(("203.0.113.7", 30000))

    def answer(self, call_id: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls.append("L")
        if call_id not in self.sessions:
            return fail(RelayError(50, "no session"))
        return succeed(("203.0.113.7", 30002))

    def delete(self, call_id: str, *args: Any) -> Deferred[Any]:
        self.calls.append("D")
        self.sessions.discard(call_id)
        return succeed(True)

    def relay_of(self, call_id: str) -> str | None:
        return "udp:127.0.0.1:7722" if call_id in self.sessions else None


def invite(from_uri: str = "sip:alice@sipsuite.test") -> bytes:
    lines = ["INVITE sip:+4930123@sipsuite.test SIP/2.0",
             "Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKds1;rport",
             "Max-Forwards: 70", f"From: <{from_uri}>;tag=caller",
             "To: <sip:+4930123@sipsuite.test>", "Call-ID: c1", "CSeq: 1 INVITE",
             "Contact: <sip:alice@127.0.0.2:5070>", "Content-Type: application/sdp",
             f"Content-Length: {len(SDP)}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + SDP).encode()


def kit_with(sets: dict[str, list[str]], **tables: dict[str, Any]) -> tuple[OfflineProxy, Relay]:
    proxy = OfflineProxy(ROUTING, config={"proxy": {"domains": ["sipsuite.test"]},
                                          "media": {"relay": "always"}, **tables},
                         dispatcher=sets)
    relay = Relay()
    add_media(proxy.core, relay)
    return proxy, relay


def test_the_relay_session_follows_the_call_to_the_next_gateway() -> None:
    proxy, relay = kit_with({"1": GW})
    first = proxy.receive(invite(), "udp:127.0.0.2:5070").branch
    second = first.answer(503).branch
    assert second.destination == "udp:127.0.0.12:5060"
    assert b"203.0.113.7" in second.request.body
    ok = second.answer(200, body=SDP.replace("127.0.0.2", "127.0.0.12"))
    assert relay.calls == ["U", "L"], "the session was deleted before the failover"
    assert ok.status == 200 and ok.reply is not None and b"203.0.113.7" in ok.reply.body


def test_no_usable_gateway_releases_the_offer() -> None:
    proxy, relay = kit_with({"1": [GW[0] + " 4"]})  # flag 4: disabled
    out = proxy.receive(invite(), "udp:127.0.0.2:5070")
    assert [r.status for r in out.replies] == [100, 503]
    assert relay.calls == ["U", "D"] and relay.sessions == set()


def test_a_stranger_does_not_reach_the_gateways() -> None:
    """[features] auth off (the default): a From of another domain from an
    untrusted address is refused, as route[PSTN] refuses it."""
    proxy, relay = kit_with({"1": GW[:1]})
    out = proxy.receive(invite("sip:mallory@evil.example"), "udp:198.51.100.66:5070")
    assert out.branches == []
    assert [(r.status, s.host) for r, s in zip(out.replies, out.sent, strict=True)] == [
        (100, "198.51.100.66"), (403, "198.51.100.66")]
    assert relay.calls == []


def test_the_example_traces_its_steps_with_debug() -> None:
    """[features] debug: the example's own steps are on the routing-step log
    (ctx.trace), as the default script's are."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        proxy, _ = kit_with({"1": GW[:1], "2": [GW[1] + " 4"]}, features={"debug": True})
        for n, (caller, source) in enumerate([("sip:alice@sipsuite.test", "127.0.0.2"),
                                              ("sip:mallory@evil.example", "198.51.100.66"),
                                              ("sip:alice@sipsuite.test", "127.0.0.2")]):
            if n == 2:
                proxy.routing.setid = 2  # type: ignore[attr-defined]  # its gateway disabled
            proxy.receive(invite(caller).replace(b"ds1", b"ds%d" % n).replace(b"Call-ID: c1",
                                                                              b"Call-ID: c%d" % n),
                          f"udp:{source}:5070")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "sipsuite.proxy.routing"]
    steps = [line.split(": ", 1)[1] for line in lines if line.startswith("route INVITE ")
             and ": dispatcher: " in line]
    assert steps == ["dispatcher: set 1 (round-robin) -> sip:127.0.0.11:5060",
                     "dispatcher: caller not ours and not trusted -> 403",
                     "dispatcher: set 2 has no usable destination -> 503"]
