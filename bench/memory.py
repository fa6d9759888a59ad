#!/usr/bin/env python3
"""Memory benchmark: RSS and PSS per call, per phone and per relay session, against
Kamailio and rtpengine.

    python bench/memory.py [--parts calls,registrations,relay]
                           [--rates 100,300] [--holds 500,30000] [--duration S]
                           [--phones 10000] [--reg-rate 500] [--settle 35]
                           [--sessions 1000] [--relay-settle 3]
                           [--tree DIR] [--no-kamailio] [--no-rtpengine] [--no-sipsuite]

Three parts, each for sipsuite and its reference in the same run.

calls (--rates x --holds, each load once per proxy):
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

The load lasts --duration seconds; by default 40 s, or the call length plus
40 s for longer calls (70 s for 30 s calls), so that the plateau holds the
calls in progress and the finished transactions both at their full count.
sipp's -l (simultaneous calls) is set above rate x hold time (9,000 calls in
progress at 300 calls/s of 30 s calls).  When one rate runs with two call
lengths, the two plateaus give the split: growth = a x calls in progress +
b x finished transactions held, solved for a (bytes per call in progress) and
b (bytes per finished transaction), per proxy.

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

relay: --sessions relay sessions (1,000 by default) set up one after the
other in ``twistd rtp-relay`` and in rtpengine (Debian's rtpengine-daemon,
userspace only: --table=-1, one thread, --config-file=none), both driven
over the RTPProxy control protocol on UDP (rtpengine's --listen-udp), each
session an U then an L as Kamailio's rtpproxy_offer / rtpproxy_answer send
them; no media flows (the no-media timeouts are raised past the run).
Memory is read idle and --relay-settle seconds after the last session; the
growth divided by the sessions is the bytes per relay session.  The open file
count shows the sockets each relay holds per session (kernel socket memory is
not in RSS).

The load is bounded in count (sipp -m) and in time (an outer `timeout` on
sipp).  Needs sipp and kamailio on PATH (and /usr/bin/rtpengine for the relay
reference).  Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
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
import relay_pps
import rtpgen
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
# Seconds each proxy keeps a finished transaction (see the docstring), per call,
# and whether the transaction ends at the call's end (BYE) or its start (INVITE):
# sipsuite: INVITE server (L) + INVITE client (M) + BYE server (J) + BYE client (K).
SIPSUITE_TX = ((32.0, False), (32.0, False), (32.0, True), (5.0, True))
# Kamailio: one cell per transaction (INVITE, BYE), wt_timer after the final answer.
KAMAILIO_TX = ((5.0, False), (5.0, True))


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
class Load:
    rate: int  # calls per second
    hold_ms: int  # call length, sipp -d
    duration: float  # seconds of load

    @property
    def in_progress(self) -> float:
        """Calls in progress at the end of the load (fewer than rate x hold
        time when the load is shorter than one call)."""
        return self.rate * min(self.hold_ms / 1000.0, self.duration)

    def held_tx(self, proxy: str) -> float:
        """Finished transactions held at the plateau: an INVITE transaction ends at
        the call's start (200), a BYE transaction at its end."""
        hold = self.hold_ms / 1000.0
        total = 0.0
        for keep, at_end in SIPSUITE_TX if proxy == "sipsuite" else KAMAILIO_TX:
            total += self.rate * max(0.0, min(keep, self.duration - (hold if at_end else 0.0)))
        return total

    def __str__(self) -> str:
        return f"{self.rate} calls/s of {self.hold_ms} ms calls for {self.duration:g} s"


@dataclass
class MemResult(UacOutcome):
    proxy: str
    load: Load
    calls: int
    idle: tuple[int, int] = (0, 0)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, pss)
    plateau: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)


def measure(which: str, load: Load, args: argparse.Namespace, workroot: Path) -> MemResult:
    """One fresh UAS and one fresh proxy; ``load.rate`` calls/s for ``load.duration`` s."""
    calls = max(1, round(load.rate * load.duration))
    result = MemResult(which, load, calls)
    workdir = workroot / f"{which}-{load.rate}cps-{load.hold_ms}ms"
    workdir.mkdir()
    # The last calls end a hold time after the load; sipp gives a stuck call up
    # after ~32 s.
    limit = load.duration + load.hold_ms / 1000.0 + 40
    # Simultaneous calls: sipp's default (3 x rate x -d) would do, but say it.
    max_calls = int(load.in_progress * 1.5) + 2 * load.rate + 100
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
                "-r", str(load.rate), "-m", str(calls), "-d", str(load.hold_ms),
                "-l", str(max_calls),
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
    end = min(load.duration, result.samples[-1][0]) if result.samples else 0.0
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


def report(r: MemResult) -> None:
    load = r.load
    idle_rss, idle_pss = r.idle
    top_rss, top_pss = r.plateau
    peak_pss = max((s[2] for s in r.samples), default=0)
    print(f"  {r.proxy}: {r.ok}/{r.calls} calls ok, {r.failed} failed;"
          f" idle RSS {idle_rss / MB:.1f} MB PSS {idle_pss / MB:.1f} MB;"
          f" plateau RSS {top_rss / MB:.1f} MB PSS {top_pss / MB:.1f} MB"
          f" (peak PSS {peak_pss / MB:.1f} MB)", flush=True)
    grown = top_pss - idle_pss
    in_progress = load.in_progress
    keeps = SIPSUITE_TX if r.proxy == "sipsuite" else KAMAILIO_TX
    held_tx = load.held_tx(r.proxy)
    print(f"    PSS growth {grown / MB:.1f} MB: {grown / held_tx:,.0f} B per finished"
          f" transaction held (~{held_tx:,.0f}: {'+'.join(f'{s:g}' for s, _ in keeps)} s"
          f" per call), {grown / max(1.0, in_progress):,.0f} B per call in progress"
          f" (~{in_progress:,.0f}; each figure counting all the growth)", flush=True)
    for note in r.notes:
        print("    " + note.replace("\n", "\n    "), flush=True)


@dataclass
class RelayResult:
    relay: str
    sessions: int
    ok: int = 0
    idle: tuple[int, int] = (0, 0)
    held: tuple[int, int] = (0, 0)
    fds: tuple[int, int] = (0, 0)  # open descriptors idle, held
    setup_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def open_fds(pgid: int) -> int:
    n = 0
    for pid in group_ticks(pgid):
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return n


def start_relay(which: str, workdir: Path, low: int, high: int) -> relay_pps.Relay:
    """The relay under test on a run-time control port (RTPProxy protocol over
    UDP for both), media ports ``low``-``high`` on 127.0.0.1, no media timeout
    within the run."""
    port = free_udp_port()
    if which == "sipsuite":
        conf = workdir / "relay.toml"
        conf.write_text('[relay]\nmedia_timeout = 600.0\ndrain_time = 0.0\n'
                        '[management]\nrelay_listen = ""\n[log]\nlevel = "warn"\n')
        log = workdir / "relay.log"
        cmd = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", f"--logfile={log}",
            "rtp-relay", "--control", f"udp:{HOST}:{port}", "--media-address", HOST,
            "--ports", f"{low}-{high}", "--config", str(conf),
        ]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(benchlib.REPO),
                                                          env.get("PYTHONPATH")]))
    else:
        log = workdir / "relay.out"
        # rtpengine's rtpproxy-compatible listener (--listen-udp) takes the same
        # U and L commands; userspace only (--table=-1), one worker thread.
        cmd = [
            relay_pps.RTPENGINE, "--config-file=none", "--foreground", "--log-stderr",
            "--table=-1", f"--interface={HOST}", f"--listen-udp={HOST}:{port}",
            f"--port-min={low}", f"--port-max={high}", "--log-level=4",
            "--num-threads=1", "--timeout=600",
        ]  # fmt: skip
        env = None
    proc = relay_pps.spawn(cmd, workdir, "relay", env)
    relay = relay_pps.Relay(which, proc, port, log, benchlib.CpuMeter(proc.pid), cmd)
    try:
        relay_pps.wait_up(relay, relay_pps.rtpproxy_ping)
    except BaseException:
        kill_group(proc)
        raise
    return relay


def measure_relay(which: str, args: argparse.Namespace, workroot: Path) -> RelayResult:
    """One fresh relay; ``args.sessions`` sessions set up with U then L (as
    Kamailio's rtpproxy_offer / rtpproxy_answer), no media, then held."""
    result = RelayResult(which, args.sessions)
    workdir = workroot / f"relay-{which}"
    workdir.mkdir()
    # Four ports a session (RTP and RTCP on each side), with room for the
    # relays' random choice within the range.
    low, high = relay_pps.media_port_range(args.sessions * 6 + 1000)
    relay = start_relay(which, workdir, low, high)
    try:
        time.sleep(1.0)
        result.idle = group_memory(relay.proc.pid)
        fds_idle = open_fds(relay.proc.pid)
        addr = (HOST, relay.control_port)
        tag = f"{os.getpid()}-{which}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            t0 = time.monotonic()
            for i in range(args.sessions):
                # The parties' ports need not exist: no media flows.
                caller, callee = 40000 + 4 * (i % 5000), 40002 + 4 * (i % 5000)
                try:
                    rtpgen.setup_sipsuite(sock, addr, f"mem{i}-{tag}", caller, callee)
                except rtpgen.ControlError as e:
                    result.notes.append(f"session {i}: {e}")
                    break
                result.ok += 1
            result.setup_s = time.monotonic() - t0
        time.sleep(args.relay_settle)
        result.held = group_memory(relay.proc.pid)
        result.fds = (fds_idle, open_fds(relay.proc.pid))
        if relay.proc.poll() is not None:
            result.notes.append(f"relay died (status {relay.proc.returncode})")
    finally:
        kill_group(relay.proc)
    return result


def report_relay(r: RelayResult) -> None:
    grown_rss, grown_pss = (r.held[k] - r.idle[k] for k in (0, 1))
    print(f"  {r.relay}: {r.ok}/{r.sessions} sessions set up in {r.setup_s:.1f} s;"
          f" idle RSS {r.idle[0] / MB:.1f} MB PSS {r.idle[1] / MB:.1f} MB;"
          f" with the sessions RSS {r.held[0] / MB:.1f} MB PSS {r.held[1] / MB:.1f} MB;"
          f" {grown_pss / max(1, r.ok):,.0f} B of PSS per session"
          f" ({grown_rss / max(1, r.ok):,.0f} B of RSS);"
          f" open files {r.fds[0]} -> {r.fds[1]}", flush=True)
    for note in r.notes[:3]:
        print("    " + note.replace("\n", "\n    "), flush=True)


def relay_part(args: argparse.Namespace, workroot: Path) -> bool:
    """Both relays, one after the other; True when every session was set up."""
    print(f"relay: {args.sessions} sessions held (U then L, no media), read"
          f" {args.relay_settle:g} s after the last", flush=True)
    results = []
    for which in ("sipsuite", "rtpengine"):
        if which == "sipsuite" and args.no_sipsuite:
            continue
        if which == "rtpengine" and (args.no_rtpengine
                                     or not os.access(relay_pps.RTPENGINE, os.X_OK)):
            print(f"  rtpengine: skipped ({relay_pps.RTPENGINE}: Debian package"
                  " rtpengine-daemon)", flush=True)
            continue
        r = measure_relay(which, args, workroot)
        report_relay(r)
        results.append(r)
    if len(results) == 2 and all(r.ok for r in results):
        ours, theirs = ((r.held[1] - r.idle[1]) / r.ok for r in results)
        if theirs > 0:
            print(f"  per session sipsuite / rtpengine: {ours / theirs:.1f}x (PSS)", flush=True)
    return all(r.ok == r.sessions and not r.notes for r in results)


def report_split(short: MemResult, long: MemResult) -> None:
    """Two call lengths at one rate: growth = a x calls in progress + b x finished
    transactions held, solved for a and b (two equations, two unknowns)."""
    rows = [(r.load.in_progress, r.load.held_tx(r.proxy), r.plateau[1] - r.idle[1])
            for r in (short, long)]
    (x1, y1, g1), (x2, y2, g2) = rows
    det = x1 * y2 - x2 * y1
    if abs(det) < 1e-9:
        print(f"  {short.proxy} at {short.load.rate} calls/s: no split (the two loads"
              " hold the same mix)", flush=True)
        return
    a = (g1 * y2 - g2 * y1) / det
    b = (x1 * g2 - x2 * g1) / det
    print(f"  {short.proxy} at {short.load.rate} calls/s, {short.load.hold_ms} and"
          f" {long.load.hold_ms} ms calls: {a:,.0f} B per call in progress,"
          f" {b:,.0f} B per finished transaction held (PSS)", flush=True)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="calls,registrations,relay",
                   help="comma-separated: calls, registrations, relay (default all)")
    p.add_argument("--phones", type=int, default=10000,
                   help="phones registered in the registrations part (default 10000)")
    p.add_argument("--reg-rate", type=int, default=500,
                   help="registrations per second (default 500)")
    p.add_argument("--settle", type=float, default=35.0,
                   help="seconds after the last registration before reading memory"
                        " (default 35: sipsuite's timer J is 32 s)")
    p.add_argument("--rates", type=int_list, default=[100, 300],
                   help="calls per second, comma-separated (default 100,300)")
    p.add_argument("--holds", type=int_list, default=[500, 30000],
                   help="call lengths in ms (sipp -d), comma-separated (default 500,30000)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of load (default 40, or the call length + 40 s)")
    p.add_argument("--plateau", type=float, default=5.0,
                   help="seconds at the end of the load averaged as the plateau (default 5)")
    p.add_argument("--sessions", type=int, default=1000,
                   help="relay sessions held in the relay part (default 1000)")
    p.add_argument("--relay-settle", type=float, default=3.0,
                   help="seconds after the last session before reading memory (default 3)")
    p.add_argument("--no-rtpengine", action="store_true", help="skip the rtpengine reference")
    p.add_argument("--tree", type=Path, default=None,
                   help="run twistd sip-proxy from this checkout (e.g. an older commit)")
    p.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio reference")
    p.add_argument("--no-sipsuite", action="store_true", help="only measure Kamailio")
    p.add_argument("--sipp-dir", type=Path, default=DEFAULT_SIPP_DIR,
                   help="folder with call_uac.xml and uas_answer.xml (default: examples/sipp)")
    p.add_argument("--verbose", action="store_true", help="print every sample")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if (not args.rates or not args.holds or min(args.rates) <= 0 or min(args.holds) < 0
            or (args.duration is not None and args.duration <= 0)):
        p.error("--rates and --duration must be positive, --holds not negative")
    args.parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not args.parts or args.parts - {"calls", "registrations", "relay"}:
        p.error("--parts: calls, registrations and/or relay")
    if args.sessions <= 0 or args.sessions > 5000 or args.relay_settle < 0:
        p.error("--sessions: 1 to 5000")
    if args.phones <= 0 or args.reg_rate <= 0 or args.settle < 0:
        p.error("--phones and --reg-rate must be positive")
    return args


def loads(args: argparse.Namespace) -> list[Load]:
    out = []
    for rate in args.rates:
        for hold in args.holds:
            duration = args.duration or max(40.0, hold / 1000.0 + 40.0)
            out.append(Load(rate, hold, duration))
    return out


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
        if "calls" in args.parts:
            for load in loads(args):
                print(f"calls: {load} ({round(load.rate * load.duration)} calls per proxy)",
                      flush=True)
                step = []
                for which in which_ones:
                    r = measure(which, load, args, workroot)
                    report(r)
                    step.append(r)
                    keep = keep or bool(r.failed or r.notes)
                results.extend(step)
                ours = next((r for r in step if r.proxy == "sipsuite"), None)
                kam = next((r for r in step if r.proxy == "kamailio"), None)
                if ours and kam and kam.plateau[0] and kam.plateau[1]:
                    print(f"  plateau sipsuite / Kamailio: RSS"
                          f" {ours.plateau[0] / kam.plateau[0]:.1f}x,"
                          f" PSS {ours.plateau[1] / kam.plateau[1]:.1f}x", flush=True)
            for which in which_ones:
                for rate in args.rates:
                    # A run with failed calls held another mix than its load's.
                    runs = sorted((r for r in results if r.proxy == which and not r.failed
                                   and r.load.rate == rate and r.plateau[1]),
                                  key=lambda r: r.load.hold_ms)
                    if len(runs) >= 2:
                        report_split(runs[0], runs[-1])
        if "relay" in args.parts:
            keep = not relay_part(args, workroot) or keep
    finally:
        if keep:
            print(f"work files kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
