"""Micro-benchmark of the SIP message layer: parse a typical ~700-byte INVITE,
read the properties a proxy reads, forward-style edits, serialise.

    python bench/parse_bench.py [iterations]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipsuite.sip.message import parse_datagram  # noqa: E402

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


def one(data: bytes) -> bytes:
    msg = parse_datagram(data)
    msg.top_via.branch
    msg.cseq.method
    msg.call_id
    msg.from_tag
    msg.to_tag
    msg.max_forwards
    msg.routes
    return msg.to_bytes()


def one_forward(data: bytes) -> bytes:
    msg = parse_datagram(data)
    msg.top_via.branch
    msg.cseq.method
    msg.from_tag
    msg.to_tag
    mf = msg.max_forwards
    msg.set_header("Max-Forwards", str((mf if mf is not None else 70) - 1))
    msg.add_header("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1234")
    msg.add_header("Record-Route", "<sip:192.0.2.1:5060;lr>")
    return msg.to_bytes()


def measure(fn, data: bytes, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(f"message: {len(INVITE)} bytes, Python {sys.version.split()[0]}")
    print(f"parse + reads + to_bytes:           {measure(one, INVITE, n):6.1f} us/message")
    print(f"parse + reads + proxy edits + bytes: {measure(one_forward, INVITE, n):6.1f} us/message")
    print(f"parse_datagram alone:               {measure(parse_datagram, INVITE, n):6.1f} us/message")


if __name__ == "__main__":
    main()
