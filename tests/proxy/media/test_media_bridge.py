"""A bridging relay's I/E flags (issue 16): with ``[media]
internal_networks`` each party is given the relay address of its own
network (Kamailio's ``rtpproxy_manage("ie")``); without it, no flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from memoryrelay import MemoryPorts
from proxykit import ProxyKit, answer, request
from test_media import ctx_for, manager, run
from test_media_limits import with_sdp
from twisted.internet.defer import Deferred, succeed

from sipsuite.proxy.media.local import LocalRelayClient
from sipsuite.proxy.modules.media import add_media
from sipsuite.proxy.services import MEDIA
from sipsuite.rtprelay.control import ControlHandler
from sipsuite.rtprelay.table import SessionTable
from sipsuite.sip.message import Request, make_response
from sipsuite.sip.parser import parse_datagram

INTERNAL_NET = "10.0.0.0/8"
RELAY_IN, RELAY_OUT = "10.0.0.5", "203.0.113.5"


def sdp(host: str, port: int = 4000) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\n").encode()


class Recorder:
    """A relay client that records each U/L's modifiers and answers a port."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []  # (verb, modifiers)
        self.known: set[str] = set()

    def offer(self, call_id: str, *args: Any, modifiers: str = "", **kw: Any) -> Deferred[Any]:
        self.known.add(call_id)
        self.sent.append(("U", modifiers))
        return succeed((RELAY_OUT, 30000))

    def answer(self, call_id: str, *args: Any, modifiers: str = "", **kw: Any) -> Deferred[Any]:
        self.sent.append(("L", modifiers))
        return succeed((RELAY_OUT, 30002))

    def delete(self, *args: Any) -> Deferred[Any]:
        return succeed(True)

    def relay_of(self, call_id: str) -> str | None:
        return "udp:127.0.0.1:7722" if call_id in self.known else None


def kit_for(tmp_path: Path, client: Any, callee: str, networks: list[str]) -> ProxyKit:
    kit = ProxyKit(tmp_path, static={"bob": f"sip:bob@{callee}:5099"}, features={"nat": True},
                   media={"relay": "always", "internal_networks": networks})
    add_media(kit.core, client)
    return kit


def call_through(kit: ProxyKit, caller: str, callee: str) -> tuple[Request, Any]:
    """caller INVITEs bob (at callee) with SDP; bob answers 200 with SDP.
    Returns the INVITE bob got and the 200 the caller got."""
    kit.feed(with_sdp(request("INVITE", "sip:bob@sipsuite.test", host=caller), sdp(caller)),
             caller)
    (invite,) = [m for m in kit.sent_to(callee) if isinstance(m, Request)]
    ok = answer(invite, 200, to_tag="bobtag")
    ok.body = sdp(callee)
    ok.set_header("Content-Type", "application/sdp")
    kit.take()
    kit.feed(ok, callee, 5099)
    (final,) = [m for m in kit.sent_to(caller) if getattr(m, "status", 0) == 200]
    return invite, final


@pytest.mark.parametrize(("caller", "callee", "offer", "reply"), [
    ("198.51.100.2", "203.0.113.9", "EE", "EE"),   # both on the public side
    ("10.0.0.2", "203.0.113.9", "IE", "EI"),       # caller inside, callee outside
    ("198.51.100.2", "10.0.0.9", "EI", "IE"),      # caller outside, callee inside
    ("10.0.0.2", "10.1.2.3", "II", "II"),          # both inside
])
def test_offer_and_answer_carry_each_partys_network(tmp_path: Path, caller: str, callee: str,
                                                    offer: str, reply: str) -> None:
    client = Recorder()
    kit = kit_for(tmp_path, client, callee, [INTERNAL_NET, "192.0.2.128/25"])
    call_through(kit, caller, callee)
    # U from the caller: its network, then the callee's; L the other way.
    assert client.sent == [("U", offer), ("L", reply)]


def test_no_internal_networks_sends_no_flags(tmp_path: Path) -> None:
    client = Recorder()
    kit = kit_for(tmp_path, client, "10.0.0.9", [])
    call_through(kit, "10.0.0.2", "10.0.0.9")
    assert client.sent == [("U", ""), ("L", "")]


def test_nated_caller_counts_by_its_source_not_its_private_sdp() -> None:
    # The private LAN of a home behind NAT is "internal" by address, but its
    # media reaches the relay from the router's public address.
    client = Recorder()
    media = manager(client, "always")
    media.core.config.media.internal_networks = [_net("192.168.0.0/16")]
    req = _invite("192.168.1.10", to="sip:bob@203.0.113.9")
    ctx = ctx_for(req, nat=True)
    ctx.source.host = "203.0.113.50"
    assert run(media.offer(ctx)) is True
    assert client.sent == [("U", "EE")]


def test_script_override_wins_and_the_answer_goes_back(tmp_path: Path) -> None:
    client = Recorder()
    media = manager(client, "always")
    media.core.config.media.internal_networks = [_net(INTERNAL_NET)]
    req = _invite("198.51.100.2", to="sip:bob@203.0.113.9")
    ctx = ctx_for(req)
    ctx.media_direction = ("external", "internal")
    assert run(media.offer(ctx)) is True
    resp = make_response(req, 200, to_tag="bobtag")
    resp.body = sdp("203.0.113.9")
    resp.set_header("Content-Type", "application/sdp")
    assert run(media.answer(ctx, resp)) is True
    assert client.sent == [("U", "EI"), ("L", "IE")]


def test_override_works_without_internal_networks_and_rejects_nonsense() -> None:
    client = Recorder()
    media = manager(client, "always")
    ctx = ctx_for(_invite("198.51.100.2"))
    ctx.media_direction = ("internal", "internal")
    assert run(media.offer(ctx)) is True
    assert client.sent == [("U", "II")]
    bad = ctx_for(_invite("198.51.100.2", call_id="call-2"))
    bad.media_direction = ("inside", "outside")
    failure = run(media.offer(bad))
    assert failure.check(ValueError) and "media_direction" in str(failure.value)


def test_reinvite_from_the_callee_gets_the_sides_reversed() -> None:
    client = Recorder()
    media = manager(client, "always")
    media.core.config.media.internal_networks = [_net(INTERNAL_NET)]
    first = ctx_for(_invite("10.0.0.2", to="sip:bob@203.0.113.9"))
    assert run(media.offer(first)) is True
    # bob (outside) re-INVITEs: From is his tag, To the caller's.
    reinvite = _invite("203.0.113.9", from_tag="bobtag", to_tag="ft")
    assert run(media.in_dialog(ctx_for(reinvite))) is None
    # and the caller's re-INVITE goes the first way again.
    again = _invite("10.0.0.2", to_tag="bobtag")
    assert run(media.in_dialog(ctx_for(again))) is None
    assert client.sent == [("U", "IE"), ("U", "EI"), ("U", "IE")]


def test_late_offer_flags_follow_the_2xx_and_the_ack(tmp_path: Path) -> None:
    client = Recorder()
    kit = kit_for(tmp_path, client, "203.0.113.9", [INTERNAL_NET])
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", host="10.0.0.2"), "10.0.0.2")
    (invite,) = [m for m in kit.sent_to("203.0.113.9") if isinstance(m, Request)]
    ok = answer(invite, 200, to_tag="bobtag")
    ok.body = sdp("203.0.113.9")
    ok.set_header("Content-Type", "application/sdp")
    kit.take()
    kit.feed(ok, "203.0.113.9", 5099)
    (final,) = [m for m in kit.sent_to("10.0.0.2") if getattr(m, "status", 0) == 200]
    ack = request("ACK", "sip:bob@203.0.113.9:5099", host="10.0.0.2", branch="a1",
                  to_tag="bobtag", route=invite.header("record-route") or "")
    kit.feed(with_sdp(ack, sdp("10.0.0.2")), "10.0.0.2")
    # The offer comes from bob (outside), the answer from the caller (inside).
    assert client.sent == [("U", "EI"), ("L", "IE")]


class BridgePorts(MemoryPorts):
    """MemoryPorts that remember which address each port was bound on, as
    MediaPorts does."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__(low, high)
        self.bound: dict[int, str] = {}

    def allocate(self) -> int:
        port = super().allocate()
        self.bound[port] = self.bind_address
        return port

    def address_of(self, leg: Any) -> str | None:
        return None if leg.port is None else self.bound[leg.port]


def test_a_bridging_relay_gives_each_side_its_own_address(tmp_path: Path) -> None:
    table = SessionTable(BridgePorts(30000, 30999))
    handler = ControlHandler(table, table.ports, [RELAY_IN, RELAY_OUT])  # type: ignore[arg-type]
    kit = kit_for(tmp_path, LocalRelayClient(lambda: handler), "203.0.113.9", [INTERNAL_NET])
    invite, final = call_through(kit, "10.0.0.2", "203.0.113.9")
    assert f"c=IN IP4 {RELAY_OUT}".encode() in invite.body  # bob: the public side
    assert f"c=IN IP4 {RELAY_IN}".encode() in final.body    # the caller: its own
    assert sorted(table.ports.bound.values()) == [RELAY_IN, RELAY_OUT]


def test_flags_to_a_relay_that_does_not_bridge_leave_the_call_unrelayed(tmp_path: Path) -> None:
    table = SessionTable(MemoryPorts(30000, 30999))
    handler = ControlHandler(table, table.ports, ["127.0.0.1"])  # type: ignore[arg-type]
    kit = kit_for(tmp_path, LocalRelayClient(lambda: handler), "203.0.113.9", [INTERNAL_NET])
    invite, final = call_through(kit, "10.0.0.2", "203.0.113.9")
    # The relay refused the I/E (E11/E12): the SDPs go end to end, as for
    # any relay error, and nothing is held on the relay.
    assert b"c=IN IP4 10.0.0.2" in invite.body and b"c=IN IP4 203.0.113.9" in final.body
    assert len(table) == 0
    assert kit.core.modules.require(MEDIA).failures == 1  # type: ignore[attr-defined]


def _net(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_network(text)


def _invite(host: str, *, to: str = "sip:bob@203.0.113.9", call_id: str = "call-1",
            from_tag: str = "ft", to_tag: str | None = None) -> Request:
    data = request("INVITE", to, host=host, call_id=call_id, from_tag=from_tag,
                   to_tag=to_tag or "")
    msg = parse_datagram(with_sdp(data, sdp(host)))
    assert isinstance(msg, Request)
    return msg



def test_call_to_a_nated_binding_is_relayed_in_nat_mode(tmp_path: Path) -> None:
    # kamailio.cfg's FLB_NATB: a public caller, a callee registered from
    # behind NAT (private Contact, from the router's address): relayed, and
    # on a bridging relay the callee's side is judged by where it is reached.
    client = Recorder()
    kit = ProxyKit(tmp_path, features={"nat": True},
                   media={"relay": "nat", "internal_networks": ["192.168.0.0/16"]})
    add_media(kit.core, client)
    kit.feed(request("REGISTER", "sip:sipsuite.test", host="192.168.1.10", branch="r1"),
             "203.0.113.50", 40000)
    assert [m.status for m in kit.sent_to("203.0.113.50")] == [200]
    kit.take()
    kit.feed(with_sdp(request("INVITE", "sip:bob@sipsuite.test", host="198.51.100.2"),
                      sdp("198.51.100.2")), "198.51.100.2")
    (invite,) = [m for m in kit.sent_to("203.0.113.50") if isinstance(m, Request)]
    assert f"c=IN IP4 {RELAY_OUT}".encode() in invite.body
    assert client.sent == [("U", "EE")]  # reached at 203.0.113.50, not its private Contact


def test_call_to_a_public_binding_is_not_relayed_in_nat_mode(tmp_path: Path) -> None:
    client = Recorder()
    kit = ProxyKit(tmp_path, features={"nat": True}, media={"relay": "nat"})
    add_media(kit.core, client)
    kit.feed(request("REGISTER", "sip:sipsuite.test", host="203.0.113.9", branch="r1"),
             "203.0.113.9")
    kit.take()
    kit.feed(with_sdp(request("INVITE", "sip:bob@sipsuite.test", host="198.51.100.2"),
                      sdp("198.51.100.2")), "198.51.100.2")
    (invite,) = [m for m in kit.sent_to("203.0.113.9") if isinstance(m, Request)]
    assert b"c=IN IP4 198.51.100.2" in invite.body and client.sent == []


@pytest.mark.parametrize(("caller", "callee", "sent"), [
    ("198.51.100.2", "10.0.0.9", [("U", "EI"), ("L", "IE")]),  # across: relayed
    ("192.0.2.10", "203.0.113.9", [("U", "IE"), ("L", "EI")]),  # across: relayed
    ("198.51.100.2", "203.0.113.9", []),                        # one side, no NAT
])
def test_nat_mode_relays_calls_across_the_bridge(tmp_path: Path, caller: str, callee: str,
                                                 sent: list[tuple[str, str]]) -> None:
    # Neither party is behind NAT and no offer names a private address (an
    # internal network may be a public range), but the two networks reach
    # each other only through the relay.
    client = Recorder()
    kit = ProxyKit(tmp_path, static={"bob": f"sip:bob@{callee}:5099"}, features={"nat": True},
                   media={"relay": "nat", "internal_networks": [INTERNAL_NET, "192.0.2.0/24"]})
    add_media(kit.core, client)
    kit.feed(with_sdp(request("INVITE", "sip:bob@sipsuite.test", host=caller),
                      sdp(caller)), caller)
    (invite,) = [m for m in kit.sent_to(callee) if isinstance(m, Request)]
    ok = answer(invite, 200, to_tag="bobtag")
    ok.body = sdp(callee)
    ok.set_header("Content-Type", "application/sdp")
    kit.feed(ok, callee, 5099)
    assert client.sent == sent


def test_internal_networks_change_at_run_time(tmp_path: Path) -> None:
    from sipsuite.ops.liveops import cfg_set

    client = Recorder()
    kit = kit_for(tmp_path, client, "203.0.113.9", [])
    call_through(kit, "10.0.0.2", "203.0.113.9")
    cfg_set(kit.core, "media.internal_networks", '["10.0.0.0/8"]')
    kit.take()
    kit.feed(with_sdp(request("INVITE", "sip:bob@sipsuite.test", host="10.0.0.2",
                              call_id="call-2", branch="b2"), sdp("10.0.0.2")), "10.0.0.2")
    assert client.sent == [("U", ""), ("L", ""), ("U", "IE")]
