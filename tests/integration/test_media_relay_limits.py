"""Issue 11 on a real proxy relaying media (``twistd -n sipsuite``, its
in-process relay): Call-IDs and tags RTPProxy's protocol cannot carry as
they are (a space, a tab, ``&&``, non-Latin-1 text, a raw 0xFF byte) are
relayed and deleted like any other, with no critical line or traceback in
the log; an offer over [media] max_streams gets 488 and takes no relay
port; a source over [media] max_sessions_per_source gets 503.

The UAs are plain sockets driven step by step from the test (sipp cannot
put a raw 0xFF byte in a Call-ID), so each step is checked as it happens.
"""

from __future__ import annotations

import json
import re
from typing import Any

import procs
from common import free_port_range
from endpoints import Received, UdpEndpoint, statuses
from procs import LOCALHOST
from sipmsg import SipMessage, new_branch, uri_of

OTHER_HOST = "127.0.0.2"  # a second source address on loopback


def enc(text: str) -> bytes:
    # Header text with raw bytes kept (the parser's surrogateescape, both ways).
    return text.encode("utf-8", "surrogateescape")


def sdp(port: int, streams: int = 1) -> bytes:
    body = f"v=0\r\no=- 1 1 IN IP4 {LOCALHOST}\r\ns=-\r\nc=IN IP4 {LOCALHOST}\r\nt=0 0\r\n"
    body += "".join(f"m=audio {port + 2 * i} RTP/AVP 0\r\n" for i in range(streams))
    return body.encode()


def media_of(msg: SipMessage) -> tuple[str, int]:
    text = msg.body.decode(errors="replace")
    c = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+)", text, re.M)
    assert c and m, f"no c=/m= in {text!r}"
    return c.group(1), int(m.group(1))


def message(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return enc("\r\n".join(lines) + "\r\n\r\n") + body


def respond(req: SipMessage, status: int, reason: str, to_tag: str, contact: str,
            body: bytes = b"") -> bytes:
    headers = [("Via", v) for v in req.header_lines("via")]
    headers += [("Record-Route", v) for v in req.header_lines("record-route")]
    headers += [("From", req.header("from") or ""),
                ("To", f"{req.header('to')};tag={to_tag}"),
                ("Call-ID", req.call_id or ""), ("CSeq", req.header("cseq") or ""),
                ("Contact", f"<{contact}>")]
    return message(f"SIP/2.0 {status} {reason}", headers, body)


def wait(ep: UdpEndpoint, what: str, pred: Any, seen: list[Received]) -> SipMessage:
    got = ep.recv_until(pred, 5.0, seen)
    assert got is not None, f"no {what}; seen {statuses(seen)} " + " | ".join(
        r.msg.start_line for r in seen)
    return got.msg


def is_request(method: str) -> Any:
    return lambda m: not m.is_response and m.method == method


def is_status(code: int) -> Any:
    return lambda m: m.is_response and m.status == code


def sessions(proxy: procs.ProxyProcess, *call_id: str) -> list[dict[str, Any]]:
    shown = proxy.ctl("--json", "relay", "sessions", *call_id)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)  # type: ignore[no-any-return]


def relay_stats(proxy: procs.ProxyProcess) -> dict[str, Any]:
    shown = proxy.ctl("--json", "relay", "stats")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)  # type: ignore[no-any-return]


def invite(proxy: procs.ProxyProcess, caller: UdpEndpoint, call_id: str, from_tag: str,
           body: bytes) -> bytes:
    return message(f"INVITE sip:bob@{proxy.hostport} SIP/2.0", [
        ("Via", f"SIP/2.0/UDP {caller.sent_by};branch={new_branch()};rport"),
        ("Max-Forwards", "70"), ("From", f"<sip:alice@sipsuite.test>;tag={from_tag}"),
        ("To", "<sip:bob@sipsuite.test>"), ("Call-ID", call_id), ("CSeq", "1 INVITE"),
        ("Contact", f"<sip:alice@{caller.sent_by}>"),
    ], body)


def in_dialog(method: str, caller: UdpEndpoint, ok: SipMessage, cseq: int) -> bytes:
    """ACK / BYE from the caller: to the callee's Contact, through the Record-Route."""
    headers = [("Via", f"SIP/2.0/UDP {caller.sent_by};branch={new_branch()};rport"),
               ("Max-Forwards", "70")]
    headers += [("Route", r) for r in reversed(ok.header_values("record-route"))]
    headers += [("From", ok.header("from") or ""), ("To", ok.header("to") or ""),
                ("Call-ID", ok.call_id or ""), ("CSeq", f"{cseq} {method}")]
    return message(f"{method} {uri_of(ok.header('contact') or '')} SIP/2.0", headers)


ODD_CALLS = [
    # (Call-ID, From tag, the callee's To tag), as header text (surrogates = raw bytes)
    ("space in it@host", "ft1", "tt1"),
    ("tab\tin it@host", "ft2", "tt2"),
    ("a && b&&c", "ft3", "tt3"),
    ("Grüße-東京-звонок@例え", "ft4", "tt4"),
    ("raw\udcffbyte\udcfe@host", '"quoted from tag"', '"t\udcffu"'),
]


def test_odd_call_ids_and_tags_are_relayed_and_deleted(proxy_factory: procs.ProxyFactory) -> None:
    ports = free_port_range(40)
    callee = UdpEndpoint()
    proxy = proxy_factory("media-odd", static={"bob": [f"sip:bob@{callee.sent_by}"]},
                          tables=_tables(ports))
    caller = UdpEndpoint()
    try:
        for call_id, from_tag, to_tag in ODD_CALLS:
            seen: list[Received] = []
            diag = f"call-id {call_id!r}\n{proxy.diagnostics()}"
            caller.send(invite(proxy, caller, call_id, from_tag, sdp(4000)), proxy.address)
            inv = wait(callee, "INVITE at the callee", is_request("INVITE"), seen)
            assert inv.call_id == call_id, diag
            host, port = media_of(inv)
            assert host == LOCALHOST and ports[0] <= port <= ports[1], f"not relayed\n{diag}"
            contact = f"sip:bob@{callee.sent_by}"
            callee.send(respond(inv, 200, "OK", to_tag, contact, sdp(5000)), proxy.address)
            ok = wait(caller, "200 at the caller", is_status(200), seen)
            assert ports[0] <= media_of(ok)[1] <= ports[1], f"answer not relayed\n{diag}"
            # The relay holds the call's one stream, and `relay sessions CALL-ID`
            # finds it by the SIP Call-ID itself.
            (held,) = sessions(proxy, call_id)
            assert held["caller"]["port"] and held["callee"]["port"], diag
            assert [s["call_id"] for s in sessions(proxy)] == [held["call_id"]]

            caller.send(in_dialog("ACK", caller, ok, 1), proxy.address)
            wait(callee, "ACK at the callee", is_request("ACK"), seen)
            caller.send(in_dialog("BYE", caller, ok, 2), proxy.address)
            bye = wait(callee, "BYE at the callee", is_request("BYE"), seen)
            callee.send(respond(bye, 200, "OK", to_tag, contact), proxy.address)
            wait(caller, "200 to BYE", lambda m: m.is_response and m.cseq[1] == "BYE", seen)
            assert sessions(proxy) == [], f"BYE left the session\n{diag}"
        log = proxy.log_text()
        assert "#critical" not in log and "Traceback" not in log, proxy.diagnostics(200)
        assert relay_stats(proxy)["sessions_created"] == len(ODD_CALLS)
    finally:
        caller.close()
        callee.close()


def _tables(ports: tuple[int, int], **media: Any) -> dict[str, dict[str, Any]]:
    return {
        "features": {"nat": True},
        "media": {"relay": "always", **media},
        "relay": {"media_addresses": [LOCALHOST], "ports": f"{ports[0]}-{ports[1]}"},
    }


def test_offer_over_max_streams_gets_488_and_takes_no_port(
        proxy_factory: procs.ProxyFactory) -> None:
    ports = free_port_range(80)
    callee = UdpEndpoint()
    proxy = proxy_factory("media-streams", static={"bob": [f"sip:bob@{callee.sent_by}"]},
                          tables=_tables(ports, max_streams=4))
    caller = UdpEndpoint()
    try:
        seen: list[Received] = []
        caller.send(invite(proxy, caller, "many-streams@h", "ft", sdp(4000, 5)), proxy.address)
        refusal = wait(caller, "488", lambda m: m.is_response and m.status >= 300, seen)
        assert refusal.status == 488, proxy.diagnostics()
        warning = refusal.header("warning") or ""
        assert re.fullmatch(r'399 \S+ "Too many media streams: 5, at most 4"', warning), warning
        stats = relay_stats(proxy)
        assert stats["sessions_created"] == 0 and stats["ports_free"] == stats["ports_total"]
        assert callee.recv(0.3) is None, "the refused INVITE was forwarded"
        # At the limit it goes through, every stream relayed.
        caller.send(invite(proxy, caller, "four-streams@h", "ft", sdp(4000, 4)), proxy.address)
        inv = wait(callee, "INVITE at the callee", is_request("INVITE"), seen)
        relayed = re.findall(rb"^m=audio (\d+)", inv.body, re.M)
        assert len(relayed) == 4 and all(ports[0] <= int(p) <= ports[1] for p in relayed)
        assert "#critical" not in proxy.log_text()
    finally:
        caller.close()
        callee.close()


def test_sessions_per_source_are_capped(proxy_factory: procs.ProxyFactory) -> None:
    ports = free_port_range(80)
    callee = UdpEndpoint()
    proxy = proxy_factory("media-per-source", static={"bob": [f"sip:bob@{callee.sent_by}"]},
                          tables=_tables(ports, max_sessions_per_source=2))
    caller = UdpEndpoint()
    other = UdpEndpoint(OTHER_HOST)
    try:
        seen: list[Received] = []
        for n in range(2):
            caller.send(invite(proxy, caller, f"src-{n}@h", "ft", sdp(4000)), proxy.address)
            wait(callee, f"INVITE {n} at the callee", is_request("INVITE"), seen)
        caller.send(invite(proxy, caller, "src-2@h", "ft", sdp(4000)), proxy.address)
        refusal = wait(caller, "503", lambda m: m.is_response and m.status >= 300, seen)
        assert refusal.status == 503 and refusal.header("retry-after") is None, refusal
        assert "Too many relayed media sessions" in (refusal.header("warning") or "")
        assert relay_stats(proxy)["sessions_active"] == 2
        # Another address is not held back by this one's calls.
        other.send(invite(proxy, other, "other-0@h", "ft", sdp(4000)), proxy.address)
        inv = wait(callee, "the other source's INVITE", is_request("INVITE"), seen)
        assert inv.call_id == "other-0@h"
        assert relay_stats(proxy)["sessions_active"] == 3
        assert "#critical" not in proxy.log_text()
    finally:
        caller.close()
        other.close()
        callee.close()
