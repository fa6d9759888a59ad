#!/usr/bin/env python3
"""Calls-per-second benchmark of sipsuite's proxy, with Kamailio as the reference.

    python bench/proxy_cps.py [--rates 100,200,300,...] [--duration 20] [--quick]
    python bench/proxy_cps.py --workers 1,2 [--rates ...]   (scaling with processes)

Topology (everything on 127.0.0.1, every port picked at run time by binding port 0):

    sipp uac (call_uac.xml) --> proxy under test --> sipp uas (uas_answer.xml)

call_uac.xml honours Record-Route, so ACK and BYE pass through the proxy too: a call
is INVITE/100/180/200, ACK, BYE/200 through the proxy (7 datagrams in, 7 out).

For each rate a fresh UAS and a fresh proxy are started, so that a rate that
overloaded the proxy cannot spoil the next one and so that the transactions still
lingering from one rate (RFC 3261 timers L/M/J keep them for 64*T1 = 32 s) do not
fire inside the next rate's measuring window.

CPU is read from /proc/PID/stat (utime+stime) of the proxy's processes at the start
and at the end of the sipp run ("in-run" CPU), because the machine-wide /proc/stat
figure is unreliable on a shared VM.  At the reference rate (300 calls/s) the proxy
is also kept alive for --tail seconds after the run so that the deferred work (timers
that end transactions after the call) is counted too ("deferred" CPU); the Kamailio
figure is taken the same way so the two are comparable.

Needs sipp (Debian sip-tester) and kamailio on PATH; the scenarios are the
project's examples/sipp (or --sipp-dir).  Linux only (/proc).

The process and measurement machinery (sipp and the two proxies, /proc CPU and
UDP drop counters, ports, sipp result files) lives in benchlib.py beside this
script; this file is the benchmark: the runs, the sweep and the report.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchlib import (
    CLK_TCK,
    HOST,
    REPO,
    CpuMeter,
    UacOutcome,
    describe_failure,
    free_udp_port,
    kamailio_proxy,
    kill_group,
    read_uac,
    sipsuite_proxy,
    start_redis,
    start_sipp,
    stat_int,
    stat_ms,
    stop_sipp,
    tail,
    ticks_between,
    udp_drops,
)

DEFAULT_SIPP_DIR = REPO / "examples" / "sipp"
# Call hold time (ms): short calls, so the run measures call set-up/tear-down work.
CALL_MS = 100
# A run whose UAC retransmitted more than this share of its calls is not "clean":
# 0 would flag a single late datagram on this noisy 2-core VM, a trend is what matters.
RETRANS_CLEAN_SHARE = 0.01
DEFAULT_RATES = "100,200,300,400,500,600,800,1000"


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult(UacOutcome):
    proxy: str
    rate: int
    calls: int  # calls asked for (-m)
    created: int = 0
    window_s: float = 0.0
    cpu_ticks: int = 0
    load_s: float = 0.0  # seconds of the run in which calls were placed
    load_ticks: int = 0  # proxy CPU in those seconds
    tail_s: float = 0.0
    tail_ticks: int = 0
    uac_ticks: int = 0
    uas_ticks: int = 0
    invite_ms: float = float("nan")
    # datagrams dropped by the kernel on a full receive queue: proxy, uac, uas socket
    drops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_ms_per_call(self) -> float:
        done = self.ok + self.failed
        return self.cpu_ticks * 1000.0 / CLK_TCK / done if done else float("nan")

    @property
    def total_ms_per_call(self) -> float:
        done = self.ok + self.failed
        total = self.cpu_ticks + self.tail_ticks
        return total * 1000.0 / CLK_TCK / done if done else float("nan")

    def pct(self, ticks: int) -> float:
        """Share of one core over the whole run (used for the sipp processes)."""
        return ticks * 100.0 / CLK_TCK / self.window_s if self.window_s else float("nan")

    @property
    def load_pct(self) -> float:
        """The proxy's share of one core while calls were being placed."""
        return self.load_ticks * 100.0 / CLK_TCK / self.load_s if self.load_s else float("nan")

    @property
    def clean(self) -> bool:
        return (
            self.sipp_rc == 0
            and not self.timed_out
            and self.failed == 0
            and self.ok == self.calls
            and self.retrans <= RETRANS_CLEAN_SHARE * self.calls
        )


@dataclass
class Settings:
    sipp_dir: Path
    duration: float
    tail: float
    workroot: Path
    # --workers: sipsuite's [proxy] workers / Kamailio's children, the Redis
    # sipsuite needs for workers > 1, and sipp UAC options (a socket per call).
    workers: int = 1
    redis_url: str = ""
    uac_extra: tuple[str, ...] = ()
    # --no-trace: sipsuite with its flight recorder off ([trace] enabled).
    extra_conf: str = ""


def run_rate(settings: Settings, which: str, rate: int, *, with_tail: bool) -> RunResult:
    """One fresh UAS + one fresh proxy, `rate` calls/s for `duration` seconds."""
    calls = max(1, round(rate * settings.duration))
    workdir = settings.workroot / (f"{which}-{rate}" if settings.workers == 1 and not settings.uac_extra
                                   else f"{which}-w{settings.workers}-{rate}")
    workdir.mkdir()
    result = RunResult(which, rate, calls)
    # sipp gives up on a call after its retransmissions (about 32 s for an INVITE);
    # past that something is stuck, and -timeout_error turns that into a failure.
    sipp_limit = settings.duration + 40
    uas_port = free_udp_port()
    uas = start_sipp(
        workdir, "uas", sipp_limit + 30 + settings.tail,
        [
            "-sf", str(settings.sipp_dir / "uas_answer.xml"), "-s", "bob",
            "-i", HOST, "-p", str(uas_port),
            "-m", "10000000",
            "-timeout", f"{sipp_limit + 20 + settings.tail:.0f}s", "-timeout_error",
        ],
    )  # fmt: skip
    try:
        time.sleep(0.3)  # sipp binds its socket at start-up; nothing to poll for
        if uas.proc.poll() is not None:
            raise RuntimeError(f"sipp uas exited at start:\n{tail(workdir / 'uas.out')}")
        proxy_cm = (sipsuite_proxy(workdir, uas_port, settings.workers, settings.redis_url,
                                   settings.extra_conf)
                    if which == "sipsuite" else kamailio_proxy(workdir, uas_port, settings.workers))
        with proxy_cm as proxy:
            uac_port = free_udp_port()
            uas_meter = CpuMeter(uas.proc.pid)
            before, uas_before = proxy.meter.sample(), uas_meter.sample()
            t0 = time.monotonic()
            uac = start_sipp(
                workdir, "uac", sipp_limit + 15,
                [
                    f"{HOST}:{proxy.port}",
                    "-sf", str(settings.sipp_dir / "call_uac.xml"), "-s", "bob",
                    "-i", HOST, "-p", str(uac_port),
                    "-r", str(rate), "-m", str(calls), "-d", str(CALL_MS),
                    "-timeout", f"{sipp_limit:.0f}s", "-timeout_error",
                    *settings.uac_extra,
                ],
            )  # fmt: skip
            uac_meter = CpuMeter(uac.proc.pid)
            uac_last: dict[int, int] = {}
            ports = (proxy.port, uac_port, uas_port)
            drops_before = udp_drops(ports)
            drops_last = drops_before
            # CPU % is taken over the seconds in which sipp places calls (plus the last
            # calls' hold time), not over the whole run: a run with stuck calls goes on
            # for ~32 s more, idle, and would show a meaninglessly low percentage.
            load_s = settings.duration + 1.0
            load_sample: dict[int, int] | None = None
            # Poll rather than wait(): the UAC's own CPU must be sampled while it is
            # alive (a dead process's time is only visible to its parent).
            while uac.proc.poll() is None:
                uac_last = uac_meter.sample() or uac_last
                # The UAC's socket is gone once sipp exits: keep the last reading.
                drops_last = {**drops_last, **udp_drops(ports)}
                if load_sample is None and time.monotonic() - t0 >= load_s:
                    load_sample, load_s = proxy.meter.sample(), time.monotonic() - t0
                if time.monotonic() - t0 > sipp_limit + 25:
                    result.notes.append("sipp uac outlived its outer timeout; killed")
                    break
                time.sleep(0.2)
            after, uas_after = proxy.meter.sample(), uas_meter.sample()
            drops_last = {**drops_last, **udp_drops(ports)}
            result.drops = {
                role: drops_last.get(port, 0) - drops_before.get(port, 0)
                for role, port in zip(("proxy", "uac", "uas"), ports, strict=True)
            }
            t1 = time.monotonic()
            kill_group(uac.proc)
            result.window_s = t1 - t0
            result.cpu_ticks = ticks_between(before, after)
            if load_sample is None:
                load_sample, load_s = after, result.window_s
            result.load_s = load_s
            result.load_ticks = ticks_between(before, load_sample)
            result.uac_ticks = sum(uac_last.values())
            result.uas_ticks = ticks_between(uas_before, uas_after)
            stat = read_uac(result, uac)
            result.created = stat_int(stat, "OutgoingCall(C)")
            result.invite_ms = stat_ms(stat, "ResponseTimeinvite(C)")
            if not stat:
                result.notes.append(f"no sipp statistics; uac output:\n{tail(workdir / 'uac.out')}")
            if proxy.proc.poll() is not None:
                result.notes.append(f"proxy died (status {proxy.proc.returncode})")
            if with_tail and settings.tail > 0:
                # Transactions end 64*T1 after the call (timers L/M/J/K, Kamailio's
                # wt_timer): count that work too, for both proxies alike.
                time.sleep(settings.tail)
                result.tail_s = settings.tail
                result.tail_ticks = ticks_between(after, proxy.meter.sample())
            # The UAS holds each call 2 s after the BYE (uas_answer.xml), hence the
            # grace; stopped gently so that its final screen shows what it saw.
            stop_sipp(uas, 4.0)
            if not result.clean:
                result.notes.append(describe_failure(workdir, uac, uas, proxy, stat))
    finally:
        kill_group(uas.proc)
    return result


# --------------------------------------------------------------------------- report


def fmt(x: float, spec: str = ".3f") -> str:
    return "n/a" if x != x else format(x, spec)  # x != x: NaN


def print_table(results: Sequence[RunResult]) -> None:
    print(
        f"{'proxy':<9} {'rate':>5} {'calls ok':>9} {'failed':>7} {'retrans':>7} {'drops':>5}"
        f" {'CPU ms/call':>11} {'CPU %':>6} {'INVITE ms':>9} {'uac %':>6} {'uas %':>6}"
        f" {'clean':>5}"
    )
    for r in results:
        print(
            f"{r.proxy:<9} {r.rate:>5} {r.ok:>9} {r.failed:>7} {r.retrans:>7}"
            f" {r.drops.get('proxy', 0):>5}"
            f" {fmt(r.cpu_ms_per_call):>11} {fmt(r.load_pct, '.1f'):>6}"
            f" {fmt(r.invite_ms, '.1f'):>9} {fmt(r.pct(r.uac_ticks), '.0f'):>6}"
            f" {fmt(r.pct(r.uas_ticks), '.0f'):>6} {'yes' if r.clean else 'NO':>5}"
        )
    print(
        "CPU ms/call: the proxy's CPU from the start to the end of the sipp run, per call\n"
        "ended; CPU %: the proxy's share of one core while calls were placed (duration + 1 s);\n"
        "uac %/uas %: sipp's own CPU over the run (2 cores shared by all three);\n"
        "retrans: sipp uac retransmissions; drops: datagrams the kernel dropped on the\n"
        "proxy's full socket receive queue; INVITE ms: mean INVITE-to-200 time at the uac."
    )


def per_call_line(r: RunResult) -> str:
    if r.tail_s:
        deferred = r.total_ms_per_call - r.cpu_ms_per_call
        return (
            f"{fmt(r.total_ms_per_call)} ms (in-run {fmt(r.cpu_ms_per_call)} ms"
            f" + deferred {fmt(deferred)} ms in the {r.tail_s:.0f} s after the run)"
        )
    return f"{fmt(r.cpu_ms_per_call)} ms (in-run only)"


def report_run(r: RunResult) -> None:
    done = r.ok + r.failed
    print(
        f"  {r.proxy} {r.rate} calls/s: {r.ok}/{r.calls} ok, {r.failed} failed"
        f" ({r.created} created, {done} ended), {r.retrans} retrans,"
        f" drops proxy/uac/uas {r.drops.get('proxy', 0)}/{r.drops.get('uac', 0)}"
        f"/{r.drops.get('uas', 0)},"
        f" {fmt(r.cpu_ms_per_call)} ms CPU/call, {fmt(r.load_pct, '.1f')} % CPU,"
        f" {r.window_s:.1f} s",
        flush=True,
    )
    for note in r.notes:
        print("    " + note.replace("\n", "\n    "), flush=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default=None, help=f"rising call rates (default {DEFAULT_RATES})")
    p.add_argument("--duration", type=float, default=None, help="seconds per rate (default 20)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 s per rate, rates 100,300")
    p.add_argument("--ref-rate", type=int, default=300, help="rate compared with Kamailio")
    p.add_argument(
        "--tail", type=float, default=33.0,
        help="seconds the proxy is watched after the reference-rate run, for the CPU of"
        " transactions ending 64*T1 = 32 s after the call (0 = skip)",
    )  # fmt: skip
    p.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio reference")
    p.add_argument("--no-trace", action="store_true",
                   help="sipsuite with its flight recorder off (what the recorder costs)")
    p.add_argument("--no-sipsuite", action="store_true", help="only measure Kamailio")
    p.add_argument("--budget", type=float, default=450.0,
                   help="stop raising the rate above the reference rate when the next run, even"
                   " if it fails, and the Kamailio run could end later than this many seconds"
                   " after the start (default 450)")  # fmt: skip
    p.add_argument("--sipp-dir", type=Path, default=DEFAULT_SIPP_DIR,
                   help="folder with call_uac.xml and uas_answer.xml (default: examples/sipp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--workers", default=None,
                   help="worker counts to compare, e.g. 1,2: sipsuite [proxy] workers and"
                   " Kamailio children; prints the highest clean rate of each (the UAC then"
                   " opens a socket per call, so the calls come from many sources)")
    args = p.parse_args(argv)
    if args.quick:
        args.rates = args.rates or "100,300"
        args.duration = args.duration or 5.0
    args.rates = args.rates or DEFAULT_RATES
    args.duration = args.duration or 20.0
    try:
        args.rate_list = sorted({int(x) for x in args.rates.split(",") if x.strip()})
    except ValueError:
        p.error(f"--rates: expected numbers separated by commas, got {args.rates!r}")
    if not args.rate_list or min(args.rate_list) <= 0:
        p.error("--rates: need positive rates")
    try:
        args.workers_list = sorted({int(x) for x in (args.workers or "").split(",") if x.strip()})
    except ValueError:
        p.error(f"--workers: expected numbers separated by commas, got {args.workers!r}")
    if args.workers_list and not 1 <= min(args.workers_list) <= max(args.workers_list) <= 64:
        p.error("--workers: counts from 1 to 64")
    return args


def check_tools(sipp_dir: Path) -> None:
    missing = [t for t in ("sipp", "kamailio", "timeout") if shutil.which(t) is None]
    for f in ("call_uac.xml", "uas_answer.xml"):
        if not (sipp_dir / f).is_file():
            missing.append(str(sipp_dir / f))
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")


def workers_main(args: argparse.Namespace, settings: Settings, began: float) -> int:
    """--workers 1,2: for each count, the rising sweep of each proxy up to its
    first unclean rate; a table of the highest clean rates.

    Every run's UAC opens a socket per call (sipp -t un): sipsuite's workers
    share the port with SO_REUSEPORT, which spreads sources, so one UAC
    socket would put every call on one worker (Kamailio's UDP children
    read one socket and do not care)."""
    uac_extra = ("-t", "un", "-max_socket", "4096")
    proxies = [p for p, skip in (("sipsuite", args.no_sipsuite), ("kamailio", args.no_kamailio))
               if not skip]
    rows: list[tuple[str, int, int, bool, RunResult | None]] = []
    all_results: list[RunResult] = []
    with start_redis(settings.workroot) as redis_url:
        for n in args.workers_list:
            for which in proxies:
                run_settings = replace(settings, workers=n, redis_url=redis_url, uac_extra=uac_extra)
                highest, best, broke = 0, None, False
                for rate in args.rate_list:
                    r = run_rate(run_settings, which, rate, with_tail=False)
                    r.proxy = f"{which}/{n}"  # the table's rows: proxy/workers
                    report_run(r)
                    all_results.append(r)
                    if not r.clean:
                        broke = True
                        break
                    highest, best = rate, r
                rows.append((which, n, highest, not broke, best))
    print()
    print_table(all_results)
    print()
    # Where sipp shares the cores, the highest clean rate is sipp's limit as
    # much as the proxy's: calls per CPU second (the proxy's CPU, every
    # worker's) and the cores the proxy kept busy there tell the two apart.
    print(f"{'proxy':<9} {'workers':>7} {'highest clean rate':>19} {'CPU ms/call there':>18}"
          f" {'calls/CPU s':>11} {'cores busy':>10} {'x 1 worker':>10}")
    for which, n, highest, all_clean, best in rows:
        one, one_bounded = next(((h, not c) for w, m, h, c, _ in rows if w == which and m == 1),
                                (0, False))
        shown = f"{highest}{'+' if all_clean else ''} calls/s" if highest else "none"
        cpu_ms = best.cpu_ms_per_call if best is not None else None
        cpu = fmt(cpu_ms, ".3f") if cpu_ms is not None else "n/a"
        per_cpu_s = fmt(1000.0 / cpu_ms, ".0f") if cpu_ms else "n/a"
        busy = fmt(highest * cpu_ms / 1000.0, ".2f") if cpu_ms else "n/a"
        # A ratio needs the one-worker limit found; an unbounded N gives a floor.
        ratio = ("n/a" if not (one and highest and one_bounded)
                 else (">=" if all_clean else "") + fmt(highest / one, ".2f"))
        print(f"{which:<9} {n:>7} {shown:>19} {cpu:>18} {per_cpu_s:>11} {busy:>10} {ratio:>10}")
    print("(+: the highest rate tried was clean; the proxy may go further)")
    print(f"total time {time.monotonic() - began:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.sipp_dir)
    began = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="proxy_cps."))
    settings = Settings(args.sipp_dir, args.duration, args.tail, workroot,
                        extra_conf="[trace]\nenabled = false\n" if args.no_trace else "")
    if args.workers_list:
        try:
            return workers_main(args, settings, began)
        finally:
            if args.keep:
                print(f"work files kept in {workroot}")
            else:
                shutil.rmtree(workroot, ignore_errors=True)
    # Rough cost of one run, for the time budget: start-up, sipp, UAS drain, kill; a run
    # with failed calls lasts ~35 s longer (sipp waits out its retransmissions and the
    # proxy's 408 after timer B), and the sweep stops after such a run.
    per_run = args.duration + 7
    fail_extra = 35.0
    kam_reserve = 0.0 if args.no_kamailio else per_run + fail_extra + args.tail
    results: list[RunResult] = []
    ref = args.ref_rate
    print(
        f"rates {args.rate_list}, {args.duration:g} s per rate, {CALL_MS} ms calls,"
        f" work files in {workroot}",
        flush=True,
    )
    keep = args.keep
    try:
        sweep: list[RunResult] = []
        if not args.no_sipsuite:
            for rate in args.rate_list:
                spent = time.monotonic() - began
                extra = args.tail if rate == ref else 0.0
                # Rates up to the reference rate are always run: the comparison needs it.
                worst = spent + per_run + fail_extra + extra + kam_reserve
                if rate > ref and worst > args.budget:
                    print(f"  time budget reached: not running {rate} calls/s", flush=True)
                    break
                r = run_rate(settings, "sipsuite", rate, with_tail=rate == ref)
                report_run(r)
                sweep.append(r)
                if not r.clean:
                    break
            # The Kamailio comparison needs a sipsuite figure at the reference rate
            # even when the sweep stopped below it.
            if ref not in {r.rate for r in sweep}:
                print(f"  extra run at the reference rate {ref} calls/s", flush=True)
                r = run_rate(settings, "sipsuite", ref, with_tail=True)
                report_run(r)
                sweep.append(r)
        results.extend(sweep)
        kam: RunResult | None = None
        if not args.no_kamailio:
            kam = run_rate(settings, "kamailio", ref, with_tail=True)
            report_run(kam)
            results.append(kam)
        keep = keep or any(not r.clean for r in results)

        print()
        print_table(results)
        print()
        ours = next((r for r in sweep if r.rate == ref), None)
        if sweep:
            clean = [r.rate for r in sweep if r.clean]
            # "Clean" only counts up to the first unclean rate of the rising sweep.
            highest = 0
            for r in sorted(sweep, key=lambda r: r.rate):
                if not r.clean:
                    break
                highest = r.rate
            top = max(args.rate_list)
            suffix = " (the highest rate tried)" if highest == top else ""
            print(f"highest clean rate: {highest} calls/s{suffix}" if clean else
                  "highest clean rate: none (every rate tried had failed calls)")  # fmt: skip
        if ours is not None:
            print(f"sipsuite CPU per call at {ref} calls/s: {per_call_line(ours)}")
        if kam is not None:
            print(f"kamailio CPU per call at {ref} calls/s: {per_call_line(kam)}")
        if ours is not None and kam is not None:
            ratio = ours.total_ms_per_call / kam.total_ms_per_call
            in_run = ours.cpu_ms_per_call / kam.cpu_ms_per_call
            print(
                f"sipsuite/kamailio CPU per call at {ref} calls/s: {fmt(ratio, '.2f')} x"
                f" (target <= 4x; in-run only: {fmt(in_run, '.2f')} x)"
            )
            if not (ours.clean and kam.clean):
                print("  caution: a run at the reference rate was not clean")
        print(f"total time {time.monotonic() - began:.0f} s")
        return 0 if all(r.clean for r in results) else 1
    finally:
        if keep:
            print(f"work files kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
