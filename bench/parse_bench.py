"""Micro-benchmark of the SIP message layer.

For every message of a sipp call through a record-routing proxy
(examples/sipp/call_uac.xml against uas_answer.xml: INVITE, 100, 180, 200,
ACK, BYE, 200) plus the classic ~700-byte INVITE it measures

* ``parse``: parse_datagram alone;
* ``p+r+b``: parse, the typed reads the proxy core does on every message
  (top_via, vias, cseq, call_id, from_tag, to_tag, max_forwards, routes,
  record_routes) and to_bytes;
* ``fwd``: parse + reads + copy + the edits a forwarding proxy makes
  (Max-Forwards, Via, Record-Route) + to_bytes (requests only).

    python bench/parse_bench.py [-n ITERATIONS] [--compare REV]

``--compare REV`` times sipsuite/sip as of git revision REV (a private copy
imported next to the working tree's) against the working tree, round by
round in turn, so both see the same machine load: on a shared, noisy VM the
ratio is the figure to read, not the absolute times.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipsuite.sip.message import Message, Request  # noqa: E402
from sipsuite.sip.parser import parse_datagram  # noqa: E402

Parse = Callable[[bytes], Message]

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


def workloads(parse: Parse) -> tuple[Callable[[bytes], object], ...]:
    """(parse, parse + reads + to_bytes, parse + reads + forward edits + to_bytes)."""

    def one(data: bytes) -> bytes:
        msg = parse(data)
        reads(msg)
        return msg.to_bytes()

    def one_forward(data: bytes) -> bytes:
        msg = parse(data)
        reads(msg)
        out = msg.copy()
        mf = msg.max_forwards
        out.set_header("Max-Forwards", str((mf if mf is not None else 70) - 1))
        out.add_header("Record-Route", "<sip:192.0.2.1:5060;lr>")
        out.add_header("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1234")
        return out.to_bytes()

    return parse, one, one_forward


def baseline(rev: str) -> Parse:
    """parse_datagram of sipsuite/sip as of git revision ``rev``, as a private
    package (imports rewritten) so that it loads beside the working tree's."""
    tmp = tempfile.mkdtemp(prefix="parse_bench_")
    atexit.register(shutil.rmtree, tmp, True)  # once imported, the files can go
    pkg = Path(tmp) / "baseline_sip"
    pkg.mkdir()
    for name in ("__init__", "uri", "headers", "message", "parser"):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:sipsuite/sip/{name}.py"],
            check=True, capture_output=True, text=True).stdout
        text = text.replace("sipsuite.sip.", "baseline_sip.").replace(
            "from sipsuite.sip import", "from baseline_sip import")
        (pkg / f"{name}.py").write_text(text)
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module("baseline_sip.parser").parse_datagram  # type: ignore[no-any-return]


def timed(fn: Callable[[bytes], object], data: bytes, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(data)
    return (time.perf_counter() - t0) / n * 1e6


def best(fns: list[Callable[[bytes], object]], data: bytes, n: int, rounds: int) -> list[float]:
    # Many short rounds, the best of each: robust against a busy machine;
    # with a baseline the functions take turns within every round.
    out = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            out[i] = min(out[i], timed(fn, data, n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="iterations per round (1000)")
    ap.add_argument("--rounds", type=int, default=25, help="rounds, best one counts (25)")
    ap.add_argument("--compare", metavar="REV", help="also time sipsuite/sip of this git revision")
    args = ap.parse_args()
    parsers = [parse_datagram] if args.compare is None else [baseline(args.compare), parse_datagram]
    kinds = [workloads(p) for p in parsers]
    print(f"Python {sys.version.split()[0]}, best of {args.rounds} x {args.n}, microseconds per message")
    cols = ("parse", "p+r+b", "fwd")
    if args.compare is None:
        print(f"{'message':<14}{'bytes':>6}" + "".join(f"{c:>9}" for c in cols))
    else:
        print(f"{args.compare} -> working tree")
        print(f"{'message':<14}{'bytes':>6}" + "".join(f"{c + ' old':>11}{'new':>7}{'x':>6}" for c in cols))
    totals = [[0.0] * len(parsers) for _ in range(2)]
    for name, data in [("INVITE 737B", INVITE), *CALL]:
        # Check the case parses and round-trips before timing it.
        msg = parse_datagram(data)
        assert msg.to_bytes() == data, name
        row = f"{name:<14}{len(data):>6}"
        for k in range(3):
            if k == 2 and not isinstance(msg, Request):
                row += f"{'-':>9}" if len(parsers) == 1 else f"{'-':>11}{'-':>7}{'':>6}"
                continue
            times = best([w[k] for w in kinds], data, args.n, args.rounds)
            if k < 2 and name != "INVITE 737B":
                totals[k] = [t + u for t, u in zip(totals[k], times, strict=True)]
            row += _cells(times)
        print(row)
    print(f"{'call (7 msgs)':<14}{'':>6}" + "".join(_cells(t) for t in totals))


def _cells(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:9.1f}"
    return f"{times[0]:11.1f}{times[1]:7.1f}{times[0] / times[1]:6.2f}"


if __name__ == "__main__":
    main()
