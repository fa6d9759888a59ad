#!/usr/bin/env python3
"""The proxy's own CPU per call, in one process, with no sockets and no peers.

    python bench/proxy_inproc.py [-n CALLS] [--profile [--only METHOD]]
    python bench/proxy_inproc.py --instructions [--tree DIR] [-n CALLS]
    python bench/proxy_inproc.py ... --trace-memory 0   (the flight recorder off)

The core that ``twistd sip-proxy`` runs (build_core, the default routing, a
static binding for bob) is fed the datagrams of bench/proxy_cps.py's call
(INVITE; the callee's 180 and 200; ACK, BYE and its 200 along the recorded
route) straight into its UDP protocol's ``datagramReceived``; what it sends
goes to a socket stand-in that keeps the bytes, from which the callee's
answers are made.  Only the time inside ``datagramReceived`` is counted, so
the figure is the proxy's Python: parse, transactions, routing, forwarding,
serialising; not the kernel's sendto/recvfrom nor the reactor's loop, which
proxy_cps.py measures with them.  It prints the CPU per call and per kind of
datagram received.

On a shared VM the CPU times swing with the neighbours' load.
``--instructions`` counts instead the instructions the interpreter executes
per call (valgrind's cachegrind, no cache simulation), which the load does
not change: two runs of N and N/6 calls, their difference per call, so the
start-up is left out.  The driver's own work (making the callee's answers)
is counted with it, the same for every tree, so compare two trees with it
(``--tree`` imports sipsuite from another checkout, e.g. a git worktree of
an older commit) rather than reading the figure alone.  Needs valgrind.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UAS = ("127.0.0.1", 5099)
UAC = ("127.0.0.2", 5061)
WARMUP = 200
RATE = 300  # calls per GC freeze pass: proxy_cps.py's reference rate, one pass a second
SDP = (b"v=0\r\no=- 53655765 2353687637 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\n"
       b"t=0 0\r\nm=audio 6000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       b"a=sendrecv\r\n")


def headers(data: bytes, names: tuple[bytes, ...]) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [h for h in head if h.split(b":", 1)[0].lower() in names]


class Driver:
    """One proxy core and the two ends of its calls."""

    def __init__(self, workdir: Path, trace_memory: str | None = None) -> None:
        from twisted.internet import reactor

        from sipsuite import log
        from sipsuite.config import load_config
        from sipsuite.proxy.service import build_core

        conf = workdir / "proxy.toml"
        conf.write_text(
            '[proxy]\nlisten = ["udp:127.0.0.1:0"]\ndomains = ["bench.test"]\n'
            f'[location.static]\nbob = ["sip:bob@{UAS[0]}:{UAS[1]}"]\n'
            '[management]\nlisten = ""\n'
            # The flight recorder: on by default; "0" turns it off, a small
            # size makes every call evict an old one (its steady state).
            + (f'[trace]\nmemory = "{trace_memory}"\n' if trace_memory is not None else ""))
        # As twistd sip-proxy with bench/benchlib.py's [log] level: no line per call.
        log.set_level("warn")
        core = build_core(load_config(str(conf)), reactor)
        core.listen()  # a real socket, never read: the datagrams come from here
        listener = core.transport.listeners[0]
        self.proto = core.transport.udp[listener]
        self.port = listener.port
        self.out: list[tuple[bytes, tuple[str, int]]] = []
        out = self.out

        class Socket:
            def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
                out.append((data, addr))
                return len(data)

        class Port:
            socket = Socket()

        self.proto.transport = Port()  # type: ignore[assignment]
        self.busy = 0.0
        self.kinds: dict[str, float] = {}
        self.only: bytes | None = None
        self.profile: cProfile.Profile | None = None

    def feed(self, data: bytes, addr: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
        self.out.clear()
        prof = self.profile if self.only is None or data.startswith(self.only) else None
        started = time.process_time()
        if prof is not None:
            prof.enable()
        self.proto.datagramReceived(data, addr)
        if prof is not None:
            prof.disable()
        spent = time.process_time() - started
        self.busy += spent
        kind = (data[8:11] if data.startswith(b"SIP/") else data.split(b" ", 1)[0]).decode()
        self.kinds[kind] = self.kinds.get(kind, 0.0) + spent
        return list(self.out)

    def invite(self, i: int) -> bytes:
        return (f"INVITE sip:bob@127.0.0.1:{self.port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.2:5061;branch=z9hG4bK-{i}-1-0;rport\r\n"
                "Max-Forwards: 70\r\n"
                f'From: "sipp caller" <sip:caller@127.0.0.2:5061>;tag={i}SIPpTag001\r\n'
                f"To: <sip:bob@127.0.0.1:{self.port}>\r\n"
                f"Call-ID: {i}-123@127.0.0.2\r\nCSeq: 1 INVITE\r\n"
                "Contact: <sip:caller@127.0.0.2:5061;transport=UDP>\r\n"
                "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
                ).encode() + SDP

    @staticmethod
    def answer(req: bytes, status: bytes, to_tag: bool, body: bytes = b"") -> bytes:
        lines = [b"SIP/2.0 " + status]
        for h in headers(req, (b"via", b"from", b"to", b"call-id", b"cseq", b"record-route")):
            lines.append(h + b";tag=uas1" if to_tag and h.lower().startswith(b"to:") else h)
        if to_tag:
            lines.append(b"Contact: <sip:bob@127.0.0.1:5099;transport=UDP>")
        if body:
            lines.append(b"Content-Type: application/sdp")
        lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def in_dialog(self, method: str, i: int, record_route: list[bytes], cseq: int) -> bytes:
        # The caller's route set: the Record-Route values as they came (one hop).
        routes = b"".join(b"Route: " + r.split(b":", 1)[1].strip() + b"\r\n" for r in record_route)
        return (f"{method} sip:bob@127.0.0.1:5099;transport=UDP SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.2:5061;branch=z9hG4bK-{i}-{cseq}-x;rport\r\n"
                ).encode() + routes + (
                "Max-Forwards: 70\r\n"
                f'From: "sipp caller" <sip:caller@127.0.0.2:5061>;tag={i}SIPpTag001\r\n'
                f"To: <sip:bob@127.0.0.1:{self.port}>;tag=uas1\r\n"
                f"Call-ID: {i}-123@127.0.0.2\r\nCSeq: {cseq} {method}\r\n"
                "Contact: <sip:caller@127.0.0.2:5061;transport=UDP>\r\nContent-Length: 0\r\n\r\n"
                ).encode()

    def call(self, i: int) -> None:
        sent = self.feed(self.invite(i), UAC)
        forwarded = [d for d, a in sent if a == UAS]
        if not forwarded or not forwarded[0].startswith(b"INVITE"):
            raise SystemExit(f"call {i}: the INVITE was not forwarded: {sent!r}")
        invite = forwarded[0]
        self.feed(self.answer(invite, b"180 Ringing", True), UAS)
        sent = self.feed(self.answer(invite, b"200 OK", True, SDP), UAS)
        if not sent or sent[0][1] != UAC:
            raise SystemExit(f"call {i}: the 200 did not reach the caller: {sent!r}")
        record_route = headers(sent[0][0], (b"record-route",))
        self.feed(self.in_dialog("ACK", i, record_route, 1), UAC)
        sent = self.feed(self.in_dialog("BYE", i, record_route, 2), UAC)
        bye = [d for d, a in sent if a == UAS]
        if not bye:
            raise SystemExit(f"call {i}: the BYE was not forwarded: {sent!r}")
        sent = self.feed(self.answer(bye[0], b"200 OK", False), UAS)
        if not sent or sent[0][1] != UAC:
            raise SystemExit(f"call {i}: the BYE's 200 did not reach the caller: {sent!r}")


def run(calls: int, profile: bool, only: str | None, gc_threshold: int | None,
        trace_memory: str | None = None) -> None:
    driver = Driver(Path(tempfile.mkdtemp(prefix="proxy_inproc.")), trace_memory)
    if gc_threshold is not None:
        gc.set_threshold(gc_threshold, *gc.get_threshold()[1:])
    for i in range(WARMUP):
        driver.call(i)
    # As sipsuite.gcpolicy under twistd: everything alive at start is frozen,
    # and so are the young generations' survivors once a second (here every
    # RATE calls), that pass counted as the proxy's.
    gc.collect()
    gc.freeze()
    driver.busy = 0.0
    driver.kinds.clear()
    if profile:
        driver.profile = cProfile.Profile()
        driver.only = only.encode() if only else None
    for i in range(WARMUP, WARMUP + calls):
        driver.call(i)
        if i % RATE == 0:
            started = time.process_time()
            gc.collect(1)
            gc.freeze()
            driver.busy += time.process_time() - started
    print(f"{calls} calls: {driver.busy / calls * 1e6:.0f} us of CPU per call in the proxy "
          "(6 datagrams in, 7 out)")
    print("per kind received, us per call: " + ", ".join(
        f"{k} {v / calls * 1e6:.0f}" for k, v in driver.kinds.items()))
    if driver.profile is not None:
        pstats.Stats(driver.profile).sort_stats("tottime").print_stats(40)


def instructions(tree: Path, calls: int, extra: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")

    def count(n: int) -> int:
        done = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             sys.executable, __file__, "-n", str(n), *extra],
            env=env, capture_output=True, text=True, timeout=1800, check=False)
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return int(found.group(1).replace(",", ""))

    small = max(1, calls // 6)
    per_call = (count(calls) - count(small)) / (calls - small)
    print(f"{tree}: {per_call / 1e6:.3f} M instructions per call "
          f"(runs of {calls} and {small} calls, driver included)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--calls", type=int, default=3000)
    p.add_argument("--profile", action="store_true", help="cProfile the proxy's part")
    p.add_argument("--only", metavar="METHOD", help="profile only datagrams starting so (ACK, SIP/)")
    p.add_argument("--gc-threshold", type=int, metavar="N",
                   help="the collector's first threshold (default: CPython's, 700)")
    p.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    p.add_argument("--trace-memory", metavar="SIZE",
                   help='[trace] memory: 0 = the flight recorder off (default: as configured, on)')
    p.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="the checkout whose sipsuite is measured (--instructions)")
    args = p.parse_args(argv)
    if args.instructions:
        extra = [] if args.gc_threshold is None else ["--gc-threshold", str(args.gc_threshold)]
        if args.trace_memory is not None:
            extra += ["--trace-memory", args.trace_memory]
        instructions(args.tree, min(args.calls, 600), extra)
    else:
        run(args.calls, args.profile, args.only, args.gc_threshold, args.trace_memory)


if __name__ == "__main__":
    main()
