"""The proxy anchors a call's media on the RTP relay ([features] nat,
[media] relay = "always").

sipp call_uac_rtp.xml -> proxy -> sipp uas_answer.xml -rtp_echo, with the
relay in the proxy's process (``twistd -n sipsuite``) and as a separate
``twistd -n rtp-relay`` driven by ``twistd -n sip-proxy --relay``: the SDP
each side receives points at the relay, the audio and its echo cross it
(per-party counters mid-call), and the BYE's D ends the session.  With a
relay too small for every call, the call it refuses is still connected,
unrelayed, and the relay goes on working.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procs
from common import free_port_range
from procs import LOCALHOST, SippProcess, parse_sipp_messages, sipp_dir
from test_relay_kamailio import PORTS, Relay, start_relay


def sipp_media(*extra: str) -> list[str]:
    """sipp's -mp: it binds that port and the next ones (RTP, RTCP, video RTP
    at +2): four free ones in a quiet region, not the one port free_port vouches for."""
    return [*extra, "-mp", str(free_port_range(4, (12000, 20000))[0])]


def media_tables(ports: tuple[int, int]) -> dict[str, dict[str, Any]]:
    return {
        "features": {"nat": True},
        "media": {"relay": "always"},
        "relay": {"media_addresses": [LOCALHOST], "ports": f"{ports[0]}-{ports[1]}"},
    }


def sdp_media(msg: procs.SipMessage) -> tuple[str, int]:
    body = msg.body.decode(errors="replace")
    c = re.search(r"^c=IN IP4 (\S+)", body, re.M)
    m = re.search(r"^m=audio (\d+)", body, re.M)
    assert c and m, f"no c=/m= in {body!r}"
    return c.group(1), int(m.group(1))


def received(path: Path, pick: Callable[[procs.SipMessage], bool]) -> list[procs.SipMessage]:
    return [t.msg for t in parse_sipp_messages(path) if t.direction == "received" and pick(t.msg)]


def is_invite(msg: procs.SipMessage) -> bool:
    return not msg.is_response and msg.method == "INVITE"


def is_ok_with_sdp(msg: procs.SipMessage) -> bool:
    return msg.is_response and msg.status == 200 and bool(msg.body)


def run_rtp_call(target: procs.Address, uas_port: int, ports: tuple[int, int], work: Path,
                 ctl: Callable[..., Any], diagnostics: Callable[[], str]) -> None:
    """One call with RTP both ways through the proxy at ``target``; ``ctl``
    runs sipsuite-ctl against whoever serves the relay's management."""
    work.mkdir(parents=True, exist_ok=True)
    # call_uac_rtp.xml streams this file by its bare name, from sipp's working folder.
    shutil.copy(sipp_dir() / "tone_440hz_1s.alaw", work / "tone_440hz_1s.alaw")
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                      local_port=uas_port, calls=1, timeout_s=30, service="bob",
                      trace_msg=True, extra=sipp_media("-rtp_echo"))
    uas.wait_bound()
    caller = SippProcess(sipp_dir() / "call_uac_rtp.xml", name="uac", workdir=work,
                         remote=target, local_port=procs.free_port(), calls=1,
                         timeout_s=30, service="bob", duration_ms=3000, trace_msg=True,
                         extra=sipp_media())
    during: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and caller.proc.poll() is None:
        shown = ctl("--json", "relay", "sessions")
        sessions = json.loads(shown.stdout) if shown.returncode == 0 else []
        if sessions and all(sessions[0][leg]["packets"] >= 25 for leg in ("caller", "callee")):
            during = sessions
            break
        time.sleep(0.3)
    uac = caller.wait()
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{diagnostics()}"
    assert (uac.rc, uac.successful, res.successful) == (0, 1, 1), "call failed" + diag

    invite = received(res.messages_path, is_invite)[0]
    answer = received(uac.messages_path, is_ok_with_sdp)[0]
    for what, msg in (("INVITE at the callee", invite), ("200 at the caller", answer)):
        addr, port = sdp_media(msg)
        assert addr == LOCALHOST and ports[0] <= port <= ports[1], (
            f"{what}: SDP points at {addr}:{port}, not the relay" + diag)
    assert during, "no session with audio both ways seen during the call" + diag

    deadline = time.monotonic() + 5
    sessions = None
    while time.monotonic() < deadline:
        sessions = json.loads(ctl("--json", "relay", "sessions").stdout)
        if not sessions:
            break
        time.sleep(0.2)
    assert not sessions, f"session left after BYE: {sessions}" + diag


def test_call_media_through_in_process_relay(
    sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path
) -> None:
    ports = free_port_range(40)
    uas_port = procs.free_port()
    proxy = proxy_factory("media-inproc", static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          tables=media_tables(ports))
    run_rtp_call(proxy.address, uas_port, ports, tmp_path / "sipp", proxy.ctl,
                 proxy.diagnostics)


def test_call_media_through_separate_relay(sipp_bin: str, tmp_path: Path) -> None:
    relay: Relay = start_relay(tmp_path / "relay")
    try:
        uas_port = procs.free_port()
        port = procs.free_port()
        tables = media_tables(PORTS)
        del tables["relay"]
        (tmp_path / "proxy").mkdir()
        cfg = procs.write_config(tmp_path / "proxy" / "sipsuite.toml", port=port,
                                 static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                                 tables=tables)
        proxy = procs.start_proxy(tmp_path / "proxy", cfg, port, plugin="sip-proxy",
                                  extra=["--relay", f"udp:{LOCALHOST}:{relay.control}"])
        try:
            def diagnostics() -> str:
                return (proxy.diagnostics() + "\n--- relay log:\n"
                        + relay.log.read_text(errors="replace")[-4000:])

            run_rtp_call(proxy.address, uas_port, PORTS, tmp_path / "sipp", relay.ctl,
                         diagnostics)
        finally:
            proxy.stop()
    finally:
        relay.proc.terminate()
        relay.proc.wait(15)


def test_call_refused_by_full_relay_is_connected_unrelayed(
    sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path
) -> None:
    # 8 ports = 4 RTP/RTCP pairs; a call takes two (one per party): two calls fit.
    ports = free_port_range(8)
    uas_port = procs.free_port()
    proxy = proxy_factory("media-full", static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          tables=media_tables(ports))
    work = tmp_path / "sipp"
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                      local_port=uas_port, calls=3, timeout_s=30, service="bob", trace_msg=True,
                      extra=sipp_media())
    uas.wait_bound()
    caller = SippProcess(sipp_dir() / "call_uac.xml", name="uac", workdir=work,
                         remote=proxy.address, local_port=procs.free_port(), calls=3,
                         rate=20, timeout_s=30, service="bob", duration_ms=3000, trace_msg=True,
                         extra=sipp_media())
    uac, res = caller.wait(), uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{proxy.diagnostics()}"
    assert (uac.rc, uac.successful, res.successful) == (0, 3, 3), "calls failed" + diag
    invites = received(res.messages_path, is_invite)
    assert len(invites) == 3, diag
    relayed = [m for m in invites if ports[0] <= sdp_media(m)[1] <= ports[1]]
    assert len(relayed) == 2, f"{[sdp_media(m) for m in invites]}" + diag
    # The third kept the caller's own media address: connected, not relayed.
    (unrelayed,) = [m for m in invites if m not in relayed]
    assert not ports[0] <= sdp_media(unrelayed)[1] <= ports[1]
    assert "media not relayed" in proxy.log_text(), diag

    # The relay is still in service: a fourth call is relayed, and nothing is left.
    run_rtp_call(proxy.address, uas_port, ports, tmp_path / "after", proxy.ctl,
                 proxy.diagnostics)
    stats = json.loads(proxy.ctl("--json", "relay", "stats").stdout)
    assert stats, diag


def test_cancelled_call_leaves_no_relay_session(
    sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path
) -> None:
    ports = free_port_range(40)
    uas_port = procs.free_port()
    proxy = proxy_factory("media-cancel", static={"carol": [f"sip:carol@{LOCALHOST}:{uas_port}"]},
                          tables=media_tables(ports))
    work = tmp_path / "sipp"
    # The callee rings and never answers; see test_calls for why this scenario.
    uas = SippProcess(sipp_dir() / "cancel_uas.xml", name="uas", workdir=work,
                      local_port=uas_port, calls=1, timeout_s=30, service="carol",
                      trace_msg=True, extra=sipp_media())
    uas.wait_bound()
    caller = SippProcess(sipp_dir() / "cancel_uac.xml", name="uac", workdir=work,
                         remote=proxy.address, local_port=procs.free_port(), calls=1,
                         timeout_s=30, service="carol", trace_msg=True, extra=sipp_media())
    uac, res = caller.wait(), uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{proxy.diagnostics()}"
    assert (uac.rc, uac.successful, res.successful) == (0, 1, 1), "cancel failed" + diag
    (invite,) = received(res.messages_path, is_invite)
    assert ports[0] <= sdp_media(invite)[1] <= ports[1], "INVITE not relayed" + diag
    # The 487 after the CANCEL deleted the session (D), well before any media timeout.
    deadline = time.monotonic() + 5
    sessions = None
    while time.monotonic() < deadline:
        sessions = json.loads(proxy.ctl("--json", "relay", "sessions").stdout)
        if not sessions:
            break
        time.sleep(0.2)
    assert not sessions, f"session left after CANCEL: {sessions}" + diag


def _with_sdp(message: bytes, body: bytes) -> bytes:
    """A built message (ending in Content-Length: 0) with ``body`` as SDP."""
    tail = b"Content-Length: 0\r\n\r\n"
    assert message.endswith(tail)
    return message[: -len(tail)] + (
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


def _sdp(port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {LOCALHOST}\r\ns=-\r\nc=IN IP4 {LOCALHOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n").encode()


def test_late_offer_offer_in_200_answer_in_ack(
    proxy_factory: procs.ProxyFactory, tmp_path: Path
) -> None:
    """An INVITE without SDP (RFC 3261 13.2.1's late offer): the callee's offer
    in the 200 and the caller's answer in the ACK are both rewritten to the
    relay, as rtpproxy_manage does (U on the reply, L on the ACK)."""
    ports = free_port_range(40)
    with procs.UdpEndpoint() as caller, procs.UdpEndpoint() as callee:
        proxy = proxy_factory("media-late", static={"dora": [f"sip:dora@{callee.sent_by}"]},
                              tables=media_tables(ports))
        invite = procs.build_request("INVITE", f"sip:dora@{LOCALHOST}:{proxy.port}",
                                     sent_by=caller.sent_by, contact=f"sip:c@{caller.sent_by}")
        caller.send(invite, proxy.address)
        got = callee.recv_until(lambda m: not m.is_response and m.method == "INVITE", 5)
        assert got is not None, proxy.diagnostics()
        inv = got.msg
        ok = procs.build_response(inv, 200, "OK", to_tag="callee1", extra=[
            ("Contact", f"<sip:dora@{callee.sent_by}>"),
            *[("Record-Route", v) for v in inv.header_values("record-route")]])
        callee.send(_with_sdp(ok, _sdp(30000)), got.addr)
        answer = caller.recv_until(lambda m: m.is_response and m.status == 200, 5)
        diag = f"\n{proxy.diagnostics()}"
        assert answer is not None, "no 200 at the caller" + diag
        addr, port = sdp_media(answer.msg)
        assert addr == LOCALHOST and ports[0] <= port <= ports[1], (
            f"the offer in the 200 points at {addr}:{port}, not the relay" + diag)
        ack = procs.build_ack_for_2xx(invite, answer.msg, sent_by=caller.sent_by)
        caller.send(_with_sdp(ack, _sdp(30002)), proxy.address)
        got_ack = callee.recv_until(lambda m: not m.is_response and m.method == "ACK", 5)
        assert got_ack is not None and got_ack.msg.body, "no ACK with SDP at the callee" + diag
        addr, port = sdp_media(got_ack.msg)
        assert addr == LOCALHOST and ports[0] <= port <= ports[1], (
            f"the answer in the ACK points at {addr}:{port}, not the relay" + diag)
        sessions = json.loads(proxy.ctl("--json", "relay", "sessions").stdout)
        assert len(sessions) == 1, sessions
        legs = {sessions[0][leg]["signalled"] for leg in ("caller", "callee")}
        assert legs == {f"{LOCALHOST}:30000", f"{LOCALHOST}:30002"}, sessions
