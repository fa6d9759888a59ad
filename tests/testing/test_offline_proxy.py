"""sipsuite.testing.OfflineProxy: a routing class in a real core, no sockets,
a fake clock; each test asserts what the proxy does, as a routing test would."""

from __future__ import annotations

from typing import Any

import pytest

from sipsuite.config import ConfigError
from sipsuite.proxy import DefaultRouting, RequestContext
from sipsuite.sip.digest import authorization, parse_challenge
from sipsuite.testing import OfflineProxy, build_request

DOMAIN = {"proxy": {"domains": ["example.com"]}}


def test_a_call_to_a_registered_user_is_relayed_with_the_exact_bytes() -> None:
    proxy = OfflineProxy(config=DOMAIN, bindings={"bob": ["sip:bob@192.0.2.20:5062"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com", from_="sip:alice@example.com"),
                        source="udp:198.51.100.7:5070")
    assert out.decision == "relayed"
    assert [r.status for r in out.replies] == [100]
    branch = out.branch
    assert branch.destination == "udp:192.0.2.20:5062"
    assert branch.uri == "sip:bob@192.0.2.20:5062"
    lines = branch.data.decode().split("\r\n")
    assert lines[0] == "INVITE sip:bob@192.0.2.20:5062 SIP/2.0"
    assert lines[1] == "Record-Route: <sip:127.0.0.1:5060;lr>"
    assert lines[2].startswith("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
    assert "Max-Forwards: 69" in lines
    # The default script's step log, recorded though [features] debug is off.
    assert "location: 'bob': 1 binding(s) -> relay to sip:bob@192.0.2.20:5062" in out.trace


def test_an_unknown_user_gets_404_and_a_foreign_caller_403() -> None:
    proxy = OfflineProxy(config=DOMAIN)
    out = proxy.receive(build_request("INVITE", "sip:nobody@example.com"))
    assert (out.decision, out.status, out.reason) == ("replied", 404, "Not Found")
    out = proxy.receive(build_request("INVITE", "sip:x@elsewhere.example", call_id="c2",
                                      from_="sip:eve@evil.example"))
    assert (out.status, out.reason) == (403, "Not relaying")
    assert out.branches == []


def test_users_are_challenged_and_then_let_through() -> None:
    proxy = OfflineProxy(config={**DOMAIN, "features": {"auth": True}, "auth": {"realm": "example.com"}},
                         users={"alice": "secret"}, bindings={"bob": ["sip:bob@192.0.2.20"]})
    first = proxy.receive(build_request("INVITE", "sip:bob@example.com", from_="sip:alice@example.com"))
    assert first.status == 407
    nonce = parse_challenge(first.header("Proxy-Authenticate") or "")["nonce"]
    creds = authorization("alice", "secret", "example.com", nonce, "INVITE", "sip:bob@example.com")
    second = proxy.receive(build_request("INVITE", "sip:bob@example.com", from_="sip:alice@example.com",
                                         cseq=2, headers=[("Proxy-Authorization", creds)]))
    assert second.decision == "relayed"
    # consume_credentials: the callee never sees them.
    assert second.branch.header("Proxy-Authorization") is None
    assert any(s.action == "auth_check" and "valid credentials" in s.detail for s in second.steps)


def test_register_stores_a_binding_on_the_fake_clock() -> None:
    proxy = OfflineProxy(config=DOMAIN)
    out = proxy.receive(build_request("REGISTER", "sip:example.com", from_="sip:carol@example.com",
                                      to="sip:carol@example.com", headers=[("Expires", "60")],
                                      via="udp:203.0.113.5:5066"),
                        source="udp:203.0.113.5:5066")
    assert out.status == 200
    [binding] = proxy.bindings("carol")
    assert binding.contact == "sip:carol@203.0.113.5:5066"
    proxy.advance(61)
    assert proxy.bindings("carol") == []


def test_a_busy_callee_goes_to_voicemail_from_failure_route() -> None:
    proxy = OfflineProxy(config={**DOMAIN, "features": {"voicemail": True},
                                 "voicemail": {"srv_ip": "192.0.2.99", "srv_port": 5080}},
                         bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com", from_="sip:alice@example.com"))
    busy = out.branch.answer(486)
    assert busy.decision == "relayed" and busy.reply is None
    assert busy.branch.destination == "udp:192.0.2.99:5080"
    assert busy.branch.uri == "sip:bob@192.0.2.99:5080"
    assert [s.hook for s in busy.steps if s.action == "relay"] == ["failure_route"]
    ok = busy.branch.answer(200)
    assert ok.status == 200 and ok.reply is not None and ok.reply.to_tag


def test_no_answer_at_all_is_480_after_the_transaction_timeout() -> None:
    proxy = OfflineProxy(config=DOMAIN, bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com", from_="sip:alice@example.com"))
    assert out.branch.retransmissions == 0
    later = proxy.advance(5)
    assert later.reply is None and out.branch.retransmissions >= 3  # timer A, fired at its times
    end = proxy.advance(40)  # timer B (32 s) on a branch that never answered
    assert (end.status, end.reason) == (480, "Temporarily Unavailable")


class Picky(DefaultRouting):
    async def request_route(self, ctx: RequestContext) -> Any:
        if ctx.request.header("User-Agent") == "friendly-scanner":
            ctx.drop()
            return
        if ctx.request.uri.user == "gw":
            ctx.vars["tried"] = 1
            ctx.relay(["sip:gw@192.0.2.30", "sip:gw@192.0.2.31:5070"])
            return
        await super().request_route(ctx)

    def failure_route(self, ctx: RequestContext, response: Any) -> Any:
        if ctx.vars.get("tried") == 1:
            ctx.vars["tried"] = 2
            ctx.reply(503, "All Gateways Down")
            return None
        return super().failure_route(ctx, response)


def test_a_routing_class_of_ones_own_its_decisions_and_their_lines() -> None:
    proxy = OfflineProxy(Picky, config=DOMAIN)
    out = proxy.receive(build_request("INVITE", "sip:gw@example.com"))
    assert [b.destination for b in out.branches] == ["udp:192.0.2.30:5060", "udp:192.0.2.31:5070"]
    [relay] = [s for s in out.steps if s.action == "relay"]
    assert relay.hook == "request_route"
    assert relay.where.endswith(f"test_offline_proxy.py:{Picky.request_route.__code__.co_firstlineno + 6}")
    first = out.branches[0].answer(500)  # the other branch has not answered yet
    assert first.decision == "pending" and first.replies == []
    last = out.branches[1].answer(408)
    assert (last.status, last.reason) == (503, "All Gateways Down")
    assert last.vars == {"tried": 2}
    dropped = proxy.receive(build_request("OPTIONS", "sip:x@example.com", call_id="c9",
                                          headers=[("User-Agent", "friendly-scanner")]))
    assert dropped.decision == "dropped" and dropped.replies == []


def test_config_as_toml_text_and_a_bad_key_named() -> None:
    proxy = OfflineProxy(config='[proxy]\ndomains = ["example.org"]\n')
    assert proxy.config.proxy.domains == ["example.org"] or tuple(proxy.config.proxy.domains) == ("example.org",)
    with pytest.raises(ConfigError, match="nosuchkey"):
        OfflineProxy(config={"proxy": {"nosuchkey": 1}})


class Vocabulary(DefaultRouting):
    async def request_route(self, ctx: RequestContext) -> Any:
        ctx.avp["oexten"] = ctx.ruri_user
        ctx.ruri_user = "bob"
        await self.shv.incr("calls")
        await super().request_route(ctx)

    def failure_route(self, ctx: RequestContext, response: Any) -> Any:
        ctx.avp.add("failed", response.status)
        return super().failure_route(ctx, response)


def test_avp_field_and_shv_writes_are_steps_and_avps_last_the_transaction() -> None:
    proxy = OfflineProxy(Vocabulary, config=DOMAIN, bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:1000@example.com"))
    first = Vocabulary.request_route.__code__.co_firstlineno
    where = {s.action: s.where for s in out.steps}
    assert where["avp"].endswith(f"test_offline_proxy.py:{first + 1}")
    assert where["set"].endswith(f"test_offline_proxy.py:{first + 2}")
    assert where["shv"].endswith(f"test_offline_proxy.py:{first + 3}")
    assert [str(s).split("  [")[0] for s in out.steps[:3]] == [
        "request_route: avp oexten = '1000'", "request_route: set ruri_user = 'bob'",
        "request_route: shv calls += 1"]
    assert out.branch.uri == "sip:bob@192.0.2.20"
    after = out.branch.answer(486)
    assert after.avps == {"oexten": ["1000"], "failed": [486]}  # each a stack, newest first
    assert [s.hook for s in after.steps if s.action == "avp"] == ["failure_route"]


SDP = ("v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\n")


def test_media_is_anchored_on_a_relay_that_is_not_asked() -> None:
    proxy = OfflineProxy(config={**DOMAIN, "features": {"nat": True}, "media": {"relay": "always"}},
                         bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com", body=SDP),
                        source="udp:198.51.100.7:5070")
    assert b"c=IN IP4 203.0.113.1\r\n" in out.branch.request.body
    assert any(s.action == "media" and s.detail.startswith("offer (U) 198.51.100.7:4000 -> ")
               for s in out.steps), out.steps
    ok = out.branch.answer(200, body=SDP.replace("198.51.100.7", "192.0.2.20"))
    assert ok.reply is not None and b"c=IN IP4 203.0.113.1\r\n" in ok.reply.body
    assert proxy.relay is not None and [c for c, _ in proxy.relay.commands] == ["U", "L"]


class Buggy(DefaultRouting):
    async def request_route(self, ctx: RequestContext) -> Any:
        if ctx.ruri_user == "oops":
            raise KeyError("no such gateway")
        await super().request_route(ctx)


def test_a_hook_that_raises_is_a_step_with_the_line_that_raised() -> None:
    proxy = OfflineProxy(Buggy, config=DOMAIN)
    out = proxy.receive(build_request("INVITE", "sip:oops@example.com"))
    assert out.status == 500
    [raised] = [s for s in out.steps if s.action == "raised"]
    assert (raised.hook, raised.detail) == ("request_route", "KeyError: 'no such gateway'")
    assert raised.where.endswith(f"test_offline_proxy.py:{Buggy.request_route.__code__.co_firstlineno + 2}")


def test_the_caller_acks_a_failure_and_cancels_a_call() -> None:
    proxy = OfflineProxy(config=DOMAIN, bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com"))
    busy = out.branch.answer(486)
    assert busy.status == 486
    acked = busy.ack()  # absorbed by the INVITE's transaction: nothing sent, nothing routed
    assert acked.sent == [] and acked.steps == []
    assert proxy.advance(40).sent == []  # no 486 again (timer G stopped by the ACK)

    ringing = proxy.receive(build_request("INVITE", "sip:bob@example.com", call_id="c2"))
    assert ringing.branch.answer(180).replies[0].status == 180
    cancelled = ringing.cancel()
    assert [r.status for r in cancelled.replies] == [200]  # the CANCEL's own answer
    [cancel] = [s.message for s in cancelled.forwarded]
    assert cancel.method == "CANCEL" and cancel.top_via.branch == ringing.branch.request.top_via.branch
    terminated = ringing.branch.answer(487)
    assert terminated.status == 487


def test_timer_c_cancels_a_branch_that_rings_too_long() -> None:
    proxy = OfflineProxy(config={**DOMAIN, "timers": {"timer_c": 10.0}},
                         bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com"))
    assert out.branch.answer(180).replies[0].status == 180
    assert proxy.advance(9).forwarded == []
    fired = proxy.advance(1.2)
    [cancel] = [s.message for s in fired.forwarded]
    assert cancel.method == "CANCEL" and cancel.top_via.branch == out.branch.request.top_via.branch
    # A phone that rang keeps its 408 (failure_route's 480 is for no answer at all).
    assert (fired.status, fired.steps[-1].hook) == (408, "failure_route")
    assert proxy.stats.get("timer_c") == 1
    late = out.branch.answer(487)  # the callee confirms the CANCEL: only ACKed
    assert late.replies == [] and [s.message.method for s in late.forwarded] == ["ACK"]


class CallerId(DefaultRouting):
    async def request_route(self, ctx: RequestContext) -> Any:
        if not ctx.in_dialog and ctx.ruri_user == "bob":
            ctx.replace_from(uri="sip:+4930123@example.com", display="Office")
        await super().request_route(ctx)


def test_replace_from_is_a_step_and_the_caller_gets_its_own_from_back() -> None:
    proxy = OfflineProxy(CallerId, config={**DOMAIN, "uac": {"secret": "k" * 32}},
                         bindings={"bob": ["sip:bob@192.0.2.20"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@example.com", from_="sip:alice@example.com"))
    [step] = [s for s in out.steps if s.action == "replace_from"]
    assert step.detail == "uri='sip:+4930123@example.com', display='Office'"
    assert step.where.endswith(f"test_offline_proxy.py:{CallerId.request_route.__code__.co_firstlineno + 2}")
    assert b'\r\nFrom: "Office" <sip:+4930123@example.com>;tag=kitfrom\r\n' in out.branch.data
    ok = out.branch.answer(200)
    assert ok.header("From") == "<sip:alice@example.com>;tag=kitfrom"
