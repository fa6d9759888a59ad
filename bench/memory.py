#!/usr/bin/env python3
"""Memory benchmark: the proxy's RSS and PSS per call and per phone, against Kamailio.

    python bench/memory.py [--parts calls,registrations]
                           [--rate 300] [--duration 40] [--hold-ms 500]
                           [--phones 10000] [--reg-rate 500] [--settle 35]
                           [--tree DIR] [--no-kamailio] [--no-sipsuite]

Two parts, each for sipsuite and Kamailio in the same run.

calls:
Topology as bench/proxy_cps.py (sipp uac call_uac.xml -> proxy -> sipp uas
uas_answer.xml, everything on 127.0.0.1, ports picked at run time), with one
fresh UAS and one fresh proxy per proxy measured, one after the other in the
same run: ``twistd sip-proxy`` and Kamailio (bench/kamailio-proxy.cfg, one worker).

Memory is read every second from /proc/PID/smaps_rollup and summed over the
proxy's process group (Kamailio's main process and the workers it forked; the
one twistd process): RSS, and PSS, which splits the pages the processes share
(Kamailio's shared memory, the libraries) among them instead of counting them
once per process.  Printed for each proxy: idle (started, answering, before any
call), the plateau (mean of the last --plateau seconds of the load) and the
growth divided by what the proxy holds at the plateau: the calls in progress
(rate x hold time) and the transactions kept after their final answer, which
is where the memory of a SIP proxy goes at this load.  sipsuite keeps each
transaction for its RFC 3261 timers (INVITE server L and client M, BYE server
J: 64*T1 = 32 s; BYE client K: T4 = 5 s); Kamailio keeps a transaction (one
cell, both sides) for its wt_timer (5 s) after the final answer.  Those counts
are computed from the rate, so the per-transaction figures are approximate.

``--tree DIR`` runs the sipsuite part from another checkout (PYTHONPATH and
working directory), e.g. an older commit in a worktree:

    git worktree add --detach /tmp/mem-old f3704e2
    python bench/memory.py --tree /tmp/mem-old --no-kamailio

registrations: --phones phones (users from an injection file, one each, as
bench/register_rate.py's) registered once each for an hour with sipp
(bench/register_inf_uac.xml: no authentication) at --reg-rate per second,
into ``twistd sip-proxy`` with auth off and the in-memory location store (no
Redis: the twin of Kamailio's usrloc) and into Kamailio
(bench/kamailio-registrar.cfg -A NO_AUTH, usrloc db_mode 0).  Memory is read
idle and --settle seconds after the last registration (sipsuite keeps each
REGISTER transaction for timer J, 32 s; Kamailio answers statelessly), and
the growth divided by the phones registered is the bytes per phone.

The load is bounded in count (sipp -m) and in time (an outer `timeout` on
sipp).  Needs sipp and kamailio on PATH.  Linux only (/proc).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
import register_rate
from benchlib import (
    HOST,
    UacOutcome,
    free_udp_port,
    group_ticks,
    kamailio_proxy,
    kill_group,
    read_uac,
    sipsuite_proxy,
    start_sipp,
    stop_sipp,
    tail,
)

DEFAULT_SIPP_DIR = benchlib.REPO / "examples" / "sipp"
REG_SCENARIO = benchlib.BENCH / "register_inf_uac.xml"
MB = 1024 * 1024
# Seconds each proxy keeps a finished transaction (see the docstring), per call:
# sipsuite: INVITE server (L) + INVITE client (M) + BYE server (J) + BYE client (K).
SIPSUITE_TX_SECONDS = (32.0, 32.0, 32.0, 5.0)
# Kamailio: one cell per transaction (INVITE, BYE), wt_timer after the final answer.
KAMAILIO_TX_SECONDS = (5.0, 5.0)


def group_memory(pgid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over the live processes of a process group."""
    rss = pss = 0
    for pid in group_ticks(pgid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue  # gone meanwhile
    return rss, pss


@dataclass
class MemResult(UacOutcome):
    proxy: str
    rate: int
    calls: int
    idle: tuple[int, int] = (0, 0)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, pss)
    plateau: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)


def measure(which: str, args: argparse.Namespace, workroot: Path) -> MemResult:
    """One fresh UAS and one fresh proxy; ``args.rate`` calls/s for ``args.duration`` s."""
    calls = max(1, round(args.rate * args.duration))
    result = MemResult(which, args.rate, calls)
    workdir = workroot / which
    workdir.mkdir()
    limit = args.duration + 40  # sipp gives a stuck call up after ~32 s
    uas_port = free_udp_port()
    uas = start_sipp(workdir, "uas", limit + 40, [
        "-sf", str(args.sipp_dir / "uas_answer.xml"), "-s", "bob",
        "-i", HOST, "-p", str(uas_port), "-m", str(calls),
        "-timeout", f"{limit + 30:.0f}s",
    ])  # fmt: skip
    try:
        time.sleep(0.3)
        if uas.proc.poll() is not None:
            raise RuntimeError(f"sipp uas exited at start:\n{tail(workdir / 'uas.out')}")
        start = sipsuite_proxy if which == "sipsuite" else kamailio_proxy
        with start(workdir, uas_port) as proxy:
            time.sleep(1.0)  # settled after the readiness pings
            result.idle = group_memory(proxy.proc.pid)
            uac = start_sipp(workdir, "uac", limit + 15, [
                f"{HOST}:{proxy.port}",
                "-sf", str(args.sipp_dir / "call_uac.xml"), "-s", "bob",
                "-i", HOST, "-p", str(free_udp_port()),
                "-r", str(args.rate), "-m", str(calls), "-d", str(args.hold_ms),
                "-timeout", f"{limit:.0f}s", "-timeout_error",
            ])  # fmt: skip
            t0 = time.monotonic()
            next_at = t0
            # Sample through the load and until sipp is done, bounded in time.
            while time.monotonic() - t0 < limit + 20:
                now = time.monotonic()
                if now >= next_at:
                    rss, pss = group_memory(proxy.proc.pid)
                    result.samples.append((now - t0, rss, pss))
                    if args.verbose:
                        print(f"    {which} t={now - t0:5.1f}s RSS {rss / MB:7.1f} MB"
                              f" PSS {pss / MB:7.1f} MB", flush=True)
                    next_at += 1.0
                if uac.proc.poll() is not None:
                    break
                time.sleep(0.05)
            kill_group(uac.proc)
            read_uac(result, uac)
            if proxy.proc.poll() is not None:
                result.notes.append(f"proxy died (status {proxy.proc.returncode})")
        stop_sipp(uas, 4.0)
    finally:
        kill_group(uas.proc)
    # The plateau: the last --plateau seconds of the load itself (sipp may
    # wait a little longer for its last calls' BYE answers).
    end = min(args.duration, result.samples[-1][0]) if result.samples else 0.0
    window = [s for s in result.samples if end - args.plateau <= s[0] <= end + 0.5]
    if window:
        result.plateau = (statistics.mean(s[1] for s in window),
                          statistics.mean(s[2] for s in window))
    return result


@dataclass
class RegResult(UacOutcome):
    proxy: str
    phones: int
    idle: tuple[int, int] = (0, 0)
    held: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)


def measure_registrations(which: str, args: argparse.Namespace, workroot: Path) -> RegResult:
    """One fresh registrar; ``args.phones`` phones registered once each."""
    result = RegResult(which, args.phones)
    workdir = workroot / f"reg-{which}"
    workdir.mkdir()
    width = len(str(args.phones))
    # register_rate.py's user names; no password: no authentication here.
    (workdir / "users.csv").write_text("SEQUENTIAL\n" + "".join(
        register_rate.user_name(i, width) + "\n" for i in range(1, args.phones + 1)))
    limit = args.phones / args.reg_rate + register_rate.SIPP_GRACE
    if which == "sipsuite":
        server = register_rate.sipsuite_registrar(workdir, "", auth=False)
    else:
        server = register_rate.kamailio_registrar(workdir, workdir / "unused-db", "none")
    with server as srv:
        time.sleep(1.0)  # settled after the readiness pings
        result.idle = group_memory(srv.proc.pid)
        uac = start_sipp(workdir, "uac", limit + 15, [
            f"{HOST}:{srv.port}",
            "-sf", str(REG_SCENARIO), "-inf", str(workdir / "users.csv"),
            "-i", HOST, "-p", str(free_udp_port()),
            "-r", str(args.reg_rate), "-m", str(args.phones),
            "-timeout", f"{limit:.0f}s", "-timeout_error",
        ])  # fmt: skip
        try:
            uac.proc.wait(timeout=limit + 20)
        except subprocess.TimeoutExpired:
            result.notes.append("sipp outlived its timeout; killed")
        kill_group(uac.proc)
        read_uac(result, uac)
        # Let the finished REGISTER transactions go (timer J), then read.
        time.sleep(args.settle)
        result.held = group_memory(srv.proc.pid)
        if srv.proc.poll() is not None:
            result.notes.append(f"registrar died (status {srv.proc.returncode})")
    return result


def report_registrations(r: RegResult) -> None:
    grown = r.held[1] - r.idle[1]
    print(f"  {r.proxy}: {r.ok}/{r.phones} phones registered, {r.failed} failed;"
          f" idle RSS {r.idle[0] / MB:.1f} MB PSS {r.idle[1] / MB:.1f} MB;"
          f" with the phones RSS {r.held[0] / MB:.1f} MB PSS {r.held[1] / MB:.1f} MB;"
          f" {grown / max(1, r.ok):,.0f} B of PSS per phone"
          f" ({(r.held[0] - r.idle[0]) / max(1, r.ok):,.0f} B of RSS)", flush=True)
    for note in r.notes:
        print("    " + note.replace("\n", "\n    "), flush=True)


def report(r: MemResult, args: argparse.Namespace) -> None:
    idle_rss, idle_pss = r.idle
    top_rss, top_pss = r.plateau
    peak_pss = max((s[2] for s in r.samples), default=0)
    print(f"  {r.proxy}: {r.ok}/{r.calls} calls ok, {r.failed} failed;"
          f" idle RSS {idle_rss / MB:.1f} MB PSS {idle_pss / MB:.1f} MB;"
          f" plateau RSS {top_rss / MB:.1f} MB PSS {top_pss / MB:.1f} MB"
          f" (peak PSS {peak_pss / MB:.1f} MB)", flush=True)
    grown = top_pss - idle_pss
    in_progress = args.rate * args.hold_ms / 1000.0
    keeps = SIPSUITE_TX_SECONDS if r.proxy == "sipsuite" else KAMAILIO_TX_SECONDS
    held_tx = args.rate * sum(min(s, args.duration) for s in keeps)
    held_calls = args.rate * min(max(keeps), args.duration) + in_progress
    print(f"    PSS growth {grown / MB:.1f} MB: {grown / held_tx:,.0f} B per finished"
          f" transaction held (~{held_tx:,.0f}: {'+'.join(f'{s:g}' for s in keeps)} s per call),"
          f" {grown / held_calls:,.0f} B per call held (~{held_calls:,.0f}, in progress or in"
          f" its timers), {grown / in_progress:,.0f} B per call in progress"
          f" (~{in_progress:,.0f}, all growth counted)", flush=True)
    for note in r.notes:
        print("    " + note.replace("\n", "\n    "), flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="calls,registrations",
                   help="comma-separated: calls, registrations (default both)")
    p.add_argument("--phones", type=int, default=10000,
                   help="phones registered in the registrations part (default 10000)")
    p.add_argument("--reg-rate", type=int, default=500,
                   help="registrations per second (default 500)")
    p.add_argument("--settle", type=float, default=35.0,
                   help="seconds after the last registration before reading memory"
                        " (default 35: sipsuite's timer J is 32 s)")
    p.add_argument("--rate", type=int, default=300, help="calls per second (default 300)")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of load (default 40)")
    p.add_argument("--hold-ms", type=int, default=500, help="call length, sipp -d (default 500)")
    p.add_argument("--plateau", type=float, default=5.0,
                   help="seconds at the end of the load averaged as the plateau (default 5)")
    p.add_argument("--tree", type=Path, default=None,
                   help="run twistd sip-proxy from this checkout (e.g. an older commit)")
    p.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio reference")
    p.add_argument("--no-sipsuite", action="store_true", help="only measure Kamailio")
    p.add_argument("--sipp-dir", type=Path, default=DEFAULT_SIPP_DIR,
                   help="folder with call_uac.xml and uas_answer.xml (default: examples/sipp)")
    p.add_argument("--verbose", action="store_true", help="print every sample")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.hold_ms < 0:
        p.error("--rate and --duration must be positive")
    args.parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not args.parts or args.parts - {"calls", "registrations"}:
        p.error("--parts: calls and/or registrations")
    if args.phones <= 0 or args.reg_rate <= 0 or args.settle < 0:
        p.error("--phones and --reg-rate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in ("sipp", "kamailio", "timeout") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")
    if args.tree is not None:
        # benchlib.start_twistd puts REPO first on PYTHONPATH and runs there.
        benchlib.REPO = args.tree.resolve()
    workroot = Path(tempfile.mkdtemp(prefix="memory."))
    print(f"sipsuite from {benchlib.REPO}, work files in {workroot}", flush=True)
    results: list[MemResult] = []
    keep = args.keep
    which_ones = [w for w in ("sipsuite", "kamailio")
                  if not (w == "sipsuite" and args.no_sipsuite)
                  and not (w == "kamailio" and args.no_kamailio)]
    try:
        if "registrations" in args.parts:
            print(f"registrations: {args.phones} phones at {args.reg_rate}/s, read"
                  f" {args.settle:g} s after the last", flush=True)
            regs = []
            for which in which_ones:
                reg = measure_registrations(which, args, workroot)
                report_registrations(reg)
                regs.append(reg)
                keep = keep or bool(reg.failed or reg.notes)
            if len(regs) == 2 and regs[1].ok and regs[0].ok:
                per_ours, per_kam = ((g.held[1] - g.idle[1]) / g.ok for g in regs)
                if per_kam > 0:
                    print(f"  per phone sipsuite / Kamailio: {per_ours / per_kam:.1f}x", flush=True)
        if "calls" not in args.parts:
            return 0
        print(f"calls: {args.rate} calls/s of {args.hold_ms} ms calls for {args.duration:g} s"
              f" ({round(args.rate * args.duration)} calls per proxy)", flush=True)
        for which in which_ones:
            r = measure(which, args, workroot)
            report(r, args)
            results.append(r)
            keep = keep or bool(r.failed or r.notes)
        ours = next((r for r in results if r.proxy == "sipsuite"), None)
        kam = next((r for r in results if r.proxy == "kamailio"), None)
        if ours and kam and kam.plateau[0] and kam.plateau[1]:
            print(f"  plateau sipsuite / Kamailio: RSS {ours.plateau[0] / kam.plateau[0]:.1f}x,"
                  f" PSS {ours.plateau[1] / kam.plateau[1]:.1f}x", flush=True)
    finally:
        if keep:
            print(f"work files kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
