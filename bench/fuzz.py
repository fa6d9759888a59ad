"""Fuzz the proxy with many mutated messages: the harness of
tests/integration/test_fuzz.py (fuzzcorpus + fuzzrun), for a million cases
by default, against ``twistd -n sipsuite`` with auth, nat, antiflood and the
in-process relay. Prints cases/s, critical lines, tracebacks, OPTIONS that
went unanswered, RSS before and after, and whether a registered call still
works afterwards (sipp). Exit status 1 when anything was found.

    .venv/bin/python bench/fuzz.py [--cases N] [--seed S] [--radamsa-share F]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from fuzzrun import FuzzReport, Sink, new_mutator, rss_kb, run_fuzz, start_fuzz_proxy  # noqa: E402
from phones import Phone, PhonePair, add_users  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=4475)
    ap.add_argument("--batch", type=int, default=200, help="cases between two checks")
    ap.add_argument("--radamsa-share", type=float, default=0.1,
                    help="share of cases mutated by radamsa (slower) rather than our own edits")
    ap.add_argument("--hours", type=float, default=6.0, help="stop after this long")
    ap.add_argument("--no-call", action="store_true", help="skip the sipp call afterwards")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sipsuite-fuzz-"))
    sink = Sink()
    proxy = start_fuzz_proxy(work / "proxy", sink, log_level="warn")
    last = [0.0]

    def progress(report: FuzzReport, elapsed: float) -> None:
        if elapsed - last[0] >= 30:
            last[0] = elapsed
            rss = rss_kb(proxy.proc.pid) if proxy.proc and proxy.alive() else 0
            print(f"  {report.cases} cases, {report.cases / elapsed:.0f}/s,"
                  f" {len(report.findings)} findings, RSS {rss} kB", flush=True)

    try:
        alice, bob = Phone("alice", "alice-pw-7"), Phone("bob", "bob-pw-9")
        add_users(proxy, alice, bob)
        mutator = new_mutator(args.seed, args.radamsa_share)
        print(f"fuzzing {proxy.hostport} (log {proxy.log_path}): {args.cases} cases,"
              f" seed {args.seed}", flush=True)
        started = time.monotonic()
        report = run_fuzz(proxy, mutator, args.cases, batch=args.batch,
                          time_limit=args.hours * 3600, progress=progress)
        print(report.describe(mutator))
        called = "skipped"
        if report.alive and not args.no_call:
            phones = PhonePair(proxy, alice, bob, work / "phones")
            problem = phones.register() or phones.call()
            called = "ok" if problem is None else "FAILED\n" + problem
        print(f"cases          {report.cases}")
        print(f"seconds        {time.monotonic() - started:.1f}")
        print(f"cases/s        {report.rate:.0f}")
        print(f"criticals      {report.criticals}")
        print(f"tracebacks     {report.tracebacks}")
        print(f"unanswered     {sum('no answer to OPTIONS' in f.what for f in report.findings)}")
        print(f"tcp conns      {report.tcp_connections}")
        print(f"routed         {sink.answered} requests reached the callee")
        print(f"RSS before     {report.rss_before_kb} kB")
        print(f"RSS after      {report.rss_after_kb} kB")
        print(f"proxy alive    {report.alive}")
        print(f"call after     {called}")
        return 0 if report.alive and not report.findings and called in ("ok", "skipped") else 1
    finally:
        proxy.stop()
        sink.close()


if __name__ == "__main__":
    sys.exit(main())
