"""5,000 mutated messages (fuzzcorpus, fuzzrun) against ``twistd -n sipsuite``
with authentication, NAT handling, antiflood and the in-process relay on; then
the proxy must still be running, its log free of critical lines and
tracebacks, its memory grown by less than 64 MB, and two real phones must
still register and call each other through it.

The run is reproducible: the seed is printed with every failing case (set
SIPSUITE_FUZZ_SEED to run another). bench/fuzz.py runs the same harness
for a million cases.
"""

from __future__ import annotations

import os
from pathlib import Path

from fuzzrun import RSS_BOUND_KB, LogWatch, Sink, new_mutator, run_fuzz, start_fuzz_proxy
from phones import Phone, PhonePair, add_users

SEED = int(os.environ.get("SIPSUITE_FUZZ_SEED", "4475"))
CASES = 5000


def test_fuzzed_proxy_survives_and_still_serves_a_call(sipp_bin: str, tmp_path: Path) -> None:
    sink = Sink()
    proxy = start_fuzz_proxy(tmp_path / "proxy", sink)
    try:
        alice, bob = Phone("alice", "alice-pw-7"), Phone("bob", "bob-pw-9")
        add_users(proxy, alice, bob)
        mutator = new_mutator(SEED)
        report = run_fuzz(proxy, mutator, CASES, time_limit=75.0)
        print(f"fuzz: {report.cases} cases, {report.rate:.0f}/s, {report.tcp_connections} TCP"
              f" connections, RSS {report.rss_before_kb} -> {report.rss_after_kb} kB,"
              f" {sink.answered} requests reached the callee")
        detail = "\n" + report.describe(mutator) + "\n" + proxy.diagnostics()
        assert report.alive, "the proxy died" + detail
        assert report.cases == CASES, f"only {report.cases} cases within the time limit" + detail
        assert report.findings == [], "critical lines, tracebacks or no answer" + detail
        grown = report.rss_after_kb - report.rss_before_kb
        assert grown < RSS_BOUND_KB, f"RSS grew by {grown} kB" + detail
        assert sink.answered > 0, "no fuzzed request was ever routed to the callee" + detail
        phones = PhonePair(proxy, alice, bob, tmp_path / "phones")
        problem = phones.register() or phones.call()
        assert problem is None, problem
    finally:
        proxy.stop()
        sink.close()


def test_log_watch_reads_across_rotations(tmp_path: Path) -> None:
    """twistd rotates its log every 1 MB; a critical line written just before a
    rotation (or two) must still be seen, and nothing twice."""
    log = tmp_path / "proxy.log"
    stamp = "2026-01-01T00:00:00+0000"
    log.write_text(f"{stamp} [x#info] old\n")
    watch = LogWatch(log)
    with log.open("a") as f:
        f.write(f"{stamp} [x#critical] one\n\tTraceback (most recent call last):\n")
    log.rename(tmp_path / "proxy.log.1")
    log.write_text(f"{stamp} [x#critical] two\n")
    (tmp_path / "proxy.log.1").rename(tmp_path / "proxy.log.2")
    log.rename(tmp_path / "proxy.log.1")
    log.write_text(f"{stamp} [x#info] fine\n{stamp} [x#critical] three\n{stamp} [x#crit")
    found = watch.new_problems()
    assert [p.split("] ")[1].split("\n")[0] for p in found] == ["one", "two", "three"]
    with log.open("a") as f:
        f.write("ical] four\n")
    assert [p.split("] ")[1] for p in watch.new_problems()] == ["four"]
    assert watch.new_problems() == []
