"""Micro-benchmark of the SIP message layer.

For every message of a sipp call through a record-routing proxy
(../shared/sipp/call_uac.xml against uas_answer.xml: INVITE, 100, 180, 200,
ACK, BYE, 200) plus the classic ~700-byte INVITE it measures

* ``parse``: parse_datagram alone;
* ``p+r+b``: parse, the typed reads the proxy core does on every message
  (top_via, vias, cseq, call_id, from_tag, to_tag, max_forwards, routes,
  record_routes) and to_bytes;
* ``fwd``: parse + reads + copy + the edits a forwarding proxy makes
  (Max-Forwards, Via, Record-Route) + to_bytes (requests only).

    python bench/parse_bench.py [iterations per round]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipsuite.sip.message import Message, Request, parse_datagram  # noqa: E402

BODY = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 97\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:97 iLBC/8000\r\n"
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: ExamplePhone/1.2.3\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)

# --- one sipp call (call_uac.xml -> proxy 127.0.0.1:5060 -> uas_answer.xml) -----
# Caller 127.0.0.1:5061, callee 127.0.0.1:5070; the messages as they travel
# between proxy and callee (2 Vias; BYE spiralled once more: 3 Vias).

SDP = (
    b"v=0\r\n"
    b"o=- 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 8\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=sendrecv\r\n"
)

VIA_PROXY = b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsps1f2e3d4c5b.8a7c6e5f4d3b2a19\r\n"
VIA_UAC = b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-31337-1-0;rport=5061;received=127.0.0.1\r\n"
FROM = b"From: \"sipp caller\" <sip:caller@127.0.0.1:5061>;tag=31337SIPpTag001\r\n"
TO = b"To: <sip:bob@127.0.0.1:5060>\r\n"
TO_TAGGED = b"To: <sip:bob@127.0.0.1:5060>;tag=31338SIPpTag011\r\n"
CALL_ID = b"Call-ID: 1-31337@127.0.0.1\r\n"
RR = b"Record-Route: <sip:127.0.0.1:5060;lr>\r\n"
ROUTE = b"Route: <sip:127.0.0.1:5060;lr>\r\n"
CONTACT_UAC = b"Contact: <sip:caller@127.0.0.1:5061;transport=UDP>\r\n"
CONTACT_UAS = b"Contact: <sip:bob@127.0.0.1:5070;transport=UDP>\r\n"
ALLOW = b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"


def _msg(start: bytes, *lines: bytes, body: bytes = b"", ctype: bool = False) -> bytes:
    head = start + b"\r\n" + b"".join(lines)
    if ctype:
        head += b"Content-Type: application/sdp\r\n"
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


CALL: list[tuple[str, bytes]] = [
    ("INVITE", _msg(b"INVITE sip:bob@127.0.0.1:5070 SIP/2.0", VIA_PROXY, VIA_UAC, RR,
                    b"Max-Forwards: 69\r\n", FROM, TO, CALL_ID, b"CSeq: 1 INVITE\r\n",
                    CONTACT_UAC, ALLOW, body=SDP, ctype=True)),
    ("100", _msg(b"SIP/2.0 100 Trying", VIA_PROXY, VIA_UAC, FROM, TO, CALL_ID,
                 b"CSeq: 1 INVITE\r\n")),
    ("180", _msg(b"SIP/2.0 180 Ringing", VIA_PROXY, VIA_UAC, RR, FROM, TO_TAGGED, CALL_ID,
                 b"CSeq: 1 INVITE\r\n", CONTACT_UAS)),
    ("200 INVITE", _msg(b"SIP/2.0 200 OK", VIA_PROXY, VIA_UAC, RR, FROM, TO_TAGGED, CALL_ID,
                        b"CSeq: 1 INVITE\r\n", CONTACT_UAS, ALLOW, body=SDP, ctype=True)),
    ("ACK", _msg(b"ACK sip:bob@127.0.0.1:5070;transport=UDP SIP/2.0", VIA_PROXY, VIA_UAC, ROUTE,
                 b"Max-Forwards: 69\r\n", FROM, TO_TAGGED, CALL_ID, b"CSeq: 1 ACK\r\n",
                 CONTACT_UAC)),
    ("BYE", _msg(b"BYE sip:bob@127.0.0.1:5070;transport=UDP SIP/2.0",
                 b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKsps99aa88bb77.0c1d2e3f4a5b6c7d\r\n",
                 VIA_PROXY, VIA_UAC, ROUTE, b"Max-Forwards: 68\r\n", FROM, TO_TAGGED, CALL_ID,
                 b"CSeq: 2 BYE\r\n", CONTACT_UAC)),
    ("200 BYE", _msg(b"SIP/2.0 200 OK", VIA_PROXY, VIA_UAC, FROM, TO_TAGGED, CALL_ID,
                     b"CSeq: 2 BYE\r\n", CONTACT_UAS)),
]


def reads(msg: Message) -> None:
    """The typed reads the proxy core makes on a message it handles."""
    msg.top_via.branch
    msg.vias
    msg.cseq.method
    msg.call_id
    msg.from_tag
    msg.to_tag
    msg.max_forwards
    msg.routes
    msg.record_routes


def one(data: bytes) -> bytes:
    msg = parse_datagram(data)
    reads(msg)
    return msg.to_bytes()


def one_forward(data: bytes) -> bytes:
    msg = parse_datagram(data)
    reads(msg)
    out = msg.copy()
    mf = msg.max_forwards
    out.set_header("Max-Forwards", str((mf if mf is not None else 70) - 1))
    out.add_header("Record-Route", "<sip:192.0.2.1:5060;lr>")
    out.add_header("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1234")
    return out.to_bytes()


def measure(fn: Callable[[bytes], object], data: bytes, n: int, rounds: int = 25) -> float:
    # Many short rounds, best one: robust against a busy machine.
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(f"Python {sys.version.split()[0]}, best of 25 x {n}, microseconds per message")
    print(f"{'message':<14}{'bytes':>6}{'parse':>9}{'p+r+b':>9}{'fwd':>9}")
    cases = [("INVITE 737B", INVITE), *CALL]
    totals = [0.0, 0.0]
    for name, data in cases:
        # Check the case parses and round-trips before timing it.
        msg = parse_datagram(data)
        assert msg.to_bytes() == data, name
        parse = measure(parse_datagram, data, n)
        full = measure(one, data, n)
        fwd = f"{measure(one_forward, data, n):9.1f}" if isinstance(msg, Request) else f"{'-':>9}"
        if name != "INVITE 737B":
            totals[0] += parse
            totals[1] += full
        print(f"{name:<14}{len(data):>6}{parse:9.1f}{full:9.1f}{fwd}")
    print(f"{'call (7 msgs)':<14}{'':>6}{totals[0]:9.1f}{totals[1]:9.1f}")


if __name__ == "__main__":
    main()
