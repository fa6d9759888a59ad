"""The core's local UAC (proxy/core/uac.py) on a ProxyKit: the request it
builds, its retransmissions on a task.Clock, how its Deferred fires
(answer, timeout, timer F, transport error, no listener) and that a drain
does not wait for it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from proxykit import ProxyKit

from sipsuite.proxy.api import UAC_BRANCH
from sipsuite.proxy.net.resolver import Target
from sipsuite.sip.message import Response, make_response

GW = Target("udp", "127.0.0.9", 5060)
URI = "sip:gw@127.0.0.9:5060"


def results(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addCallback(out.append)
    return out


def options_sent(kit: ProxyKit) -> list[Any]:
    return [m for m, h, _ in kit.sent if getattr(m, "method", None) == "OPTIONS"]


def test_request_built_once_and_retransmitted_t1_doubling_to_t2(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    got = results(kit.core.uac.request("OPTIONS", URI, GW, headers=[("Accept", "application/sdp")]))
    (req,) = options_sent(kit)
    assert str(req.uri) == URI
    assert req.top_via.branch.startswith(UAC_BRANCH) and req.top_via.rport is None
    assert req.header("max-forwards") == "70" and req.header("cseq") == "1 OPTIONS"
    assert req.header("from").startswith("<sip:sipsuite@127.0.0.1:5060>;tag=")
    assert req.header("to") == f"<{URI}>"
    assert req.call_id.endswith("@127.0.0.1")
    assert req.header("accept") == "application/sdp" and req.header("content-length") == "0"
    # RFC 3261 17.1.2.2: T1, 2*T1, 4*T1, then every T2 (4 s).
    t0, seen, times = kit.clock.seconds(), 1, []
    for _ in range(80):
        kit.clock.advance(0.25)
        now = len(options_sent(kit))
        times += [round(kit.clock.seconds() - t0, 2)] * (now - seen)
        seen = now
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    sent = options_sent(kit)
    assert {m.to_bytes() for m in sent} == {req.to_bytes()}
    assert got == []


def test_timers_section_applies_to_new_requests(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    core = kit.core
    core.reconfigure(dataclasses.replace(
        core.config, timers=dataclasses.replace(core.config.timers, t1=0.2)))
    core.uac.request("OPTIONS", URI, GW)
    kit.clock.advance(0.2)
    assert len(options_sent(kit)) == 2


def test_answer_matched_by_its_transaction(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    got = results(kit.core.uac.request("OPTIONS", URI, GW, rport=True))
    (req,) = options_sent(kit)
    assert req.top_via.rport == ""
    kit.take()
    kit.feed(make_response(req, 100, "Trying"), "127.0.0.9", 5060)
    assert got == []  # provisional: not yet
    kit.feed(make_response(req, 404, "Not Found"), "127.0.0.9", 5060)
    assert len(got) == 1 and isinstance(got[0], Response) and got[0].status == 404
    kit.feed(make_response(req, 200, "OK"), "127.0.0.9", 5060)  # a second final: absorbed
    assert len(got) == 1
    kit.clock.advance(10.0)
    assert kit.sent == [] and kit.core.client_txs == {}
    assert kit.core.stats.get("drop.response.foreign", 0) == 0


def test_timeout_and_timer_f_fire_none(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    soon = results(kit.core.uac.request("OPTIONS", URI, GW, timeout=2.0))
    late = results(kit.core.uac.request("OPTIONS", URI, GW))
    kit.clock.advance(1.95)  # (the core's timers run up to 10 ms early: TimerHeap)
    assert soon == []
    kit.clock.advance(0.1)
    assert soon == [None] and len(kit.core.client_txs) == 1
    kit.clock.advance(31.9 - 2.05)
    assert late == []
    kit.clock.advance(0.15)  # timer F: 64*T1
    assert late == [None] and kit.core.client_txs == {}
    # An answer after the end is ours (our branch) and goes nowhere.
    req = options_sent(kit)[0]
    kit.take()
    kit.feed(make_response(req, 200, "OK"), "127.0.0.9", 5060)
    assert kit.sent == [] and soon == [None]


def test_retransmit_false_sends_once(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    got = results(kit.core.uac.request("OPTIONS", URI, GW, timeout=20.0, retransmit=False))
    kit.clock.advance(19.9)
    assert len(options_sent(kit)) == 1 and got == []
    kit.clock.advance(0.2)
    assert got == [None] and kit.core.client_txs == {}


def test_not_counted_in_flight(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    kit.core.uac.request("OPTIONS", URI, GW)
    assert kit.core.counts() == (0, 1)
    assert kit.core.in_flight() == 0


def test_transport_error_and_no_listener_fire_none(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    core = kit.core
    calls: list[bool] = []

    def refuse(*args: Any, connect: bool = True, **kw: Any) -> bool:
        calls.append(connect)
        return False

    core.transport.send = refuse  # type: ignore[method-assign]
    tcp = Target("tcp", "127.0.0.9", 5060)
    got = results(core.uac.request("OPTIONS", URI, tcp, connect=False))
    assert got == [None] and calls == [False] and core.client_txs == {}
    kit.clock.advance(40.0)  # no timer left behind fires anything
    assert got == [None]
    core.transport.pick_listener = lambda *a, **k: None  # type: ignore[method-assign]
    assert results(core.uac.request("OPTIONS", URI, GW)) == [None]
    assert results(core.uac.request("OPTIONS", "not a uri", GW)) == [None]
