#!/usr/bin/env python3
"""Calls-per-second benchmark of sipsuite's proxy, with Kamailio as the reference.

    python bench/proxy_cps.py [--rates 100,200,300,...] [--duration 20] [--quick]

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

Needs sipp (Debian sip-tester) and kamailio on PATH, and the scenarios in
../shared/sipp next to this repository (or --sipp-dir).  Linux only (/proc).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
DEFAULT_SIPP_DIR = REPO.parent / "shared" / "sipp"
KAMAILIO_CFG = BENCH / "kamailio-proxy.cfg"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Big enough that sipp itself never drops datagrams (see shared/bench/NOTES.md).
SIPP_BUFF = "4194304"
# Call hold time (ms): short calls, so the run measures call set-up/tear-down work.
CALL_MS = 100
# A run whose UAC retransmitted more than this share of its calls is not "clean":
# 0 would flag a single late datagram on this noisy 2-core VM, a trend is what matters.
RETRANS_CLEAN_SHARE = 0.01
DEFAULT_RATES = "100,200,300,400,500,600,800,1000"


# --------------------------------------------------------------------------- helpers


def free_udp_port() -> int:
    """A UDP port nobody uses right now.  Released again before the program binds it:
    a tiny race, acceptable on a benchmark machine, and the only way to hand a port
    to sipp/kamailio/twistd, which all insist on a number."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_ticks(pid: int) -> tuple[int, int] | None:
    """(utime+stime in clock ticks, process group id) of one process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and ')': the fields we want follow the LAST ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state); pgrp is field 5, utime 14, stime 15.
    return int(rest[11]) + int(rest[12]), int(rest[2])


def group_ticks(pgid: int) -> dict[int, int]:
    """CPU ticks of every live process in a process group (Kamailio's main process and
    the workers it forked; sipp and the `timeout` wrapper around it)."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        got = proc_ticks(int(entry.name))
        if got is not None and got[1] == pgid:
            out[int(entry.name)] = got[0]
    return out


def ticks_between(before: dict[int, int], after: dict[int, int]) -> int:
    # A process that started in between counts from 0; one that died is lost, but the
    # processes measured here live for the whole run.
    return sum(t - before.get(pid, 0) for pid, t in after.items())


class CpuMeter:
    """Sums utime+stime over the processes of one process group."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid

    def sample(self) -> dict[int, int]:
        return group_ticks(self.pgid)


def kill_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """Stop a process started with start_new_session=True, and everything it forked."""
    if proc.poll() is None or group_ticks(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # Kamailio's children may outlive the main process for a moment.
        deadline = time.monotonic() + grace
        while group_ticks(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def sip_ping(port: int, max_forwards: int, timeout: float = 0.5) -> str | None:
    """Send one OPTIONS to sip:127.0.0.1:PORT over UDP; the status line of the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        tag = secrets.token_hex(4)
        msg = (
            f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            f"Max-Forwards: {max_forwards}\r\n"
            f"From: <sip:bench@{HOST}:{lport}>;tag={tag}\r\n"
            f"To: <sip:{HOST}:{port}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}@{HOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            f"Contact: <sip:bench@{HOST}:{lport}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (HOST, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                return None
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            # A "100 Trying" is not an answer to OPTIONS; wait for the final one.
            if line.startswith("SIP/2.0 ") and not line.startswith("SIP/2.0 1"):
                return line
    return None


def wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    ok: Callable[[str], bool],
    max_forwards: int,
    limit: float,
    log: Path,
) -> str:
    """Ping until the proxy answers as `ok` wants; fail with its log if it dies or hangs."""
    deadline = time.monotonic() + limit
    last: str | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"proxy exited with status {proc.returncode} before answering OPTIONS;"
                f" log {log}:\n{tail(log)}"
            )
        last = sip_ping(port, max_forwards)
        if last is not None and ok(last):
            return last
        time.sleep(0.1)
    raise RuntimeError(
        f"proxy on udp:{HOST}:{port} did not answer OPTIONS as expected within {limit:.0f} s"
        f" (last answer: {last!r}); log {log}:\n{tail(log)}"
    )


def is_200(line: str) -> bool:
    return line.startswith("SIP/2.0 200")


def any_answer(line: str) -> bool:
    return line.startswith("SIP/2.0 ")


def udp_drops(ports: Iterable[int]) -> dict[int, int]:
    """Datagrams the kernel dropped because a socket's receive queue was full, per local
    UDP port (last column of /proc/net/udp).  Lost datagrams, not slow code, are what
    turn a short stall of the proxy into failed calls, so they are counted per run."""
    want = {f"{port:04X}": port for port in ports}
    out: dict[int, int] = {}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                cols = line.split()
                port = want.get(cols[1].rpartition(":")[2])
                if port is not None:
                    out[port] = out.get(port, 0) + int(cols[-1])
    except (OSError, IndexError, ValueError):
        pass
    return out


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no file)"
    return "\n".join(text[-lines:]) if text else "(empty)"


# sipp's -trace_err entries start with "DATE\tTIME\tEPOCH: " and are often not ended
# by a newline, so entries are found by their time stamps.
SIPP_EVENT = re.compile(r"\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ")
SIPP_CALL_ID = re.compile(r"(Call-Id '|call:? )\S+?(@\S+?)?('|,|\s|$)", re.IGNORECASE)


def summarize_sipp_errors(path: Path, shown: int = 2, lines: int = 14) -> str:
    """Counts of each kind of event in a sipp -trace_err file, plus the first few in full
    (the message sipp received is the evidence)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no file)"
    starts = [m.start() for m in SIPP_EVENT.finditer(text)]
    events = [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    if not events:
        return "(no events)"
    kinds: dict[str, int] = {}
    for ev in events:
        first = SIPP_EVENT.sub("", ev.splitlines()[0], count=1)
        # One line per kind: drop the call id and what follows "received".
        kind = SIPP_CALL_ID.sub(r"\1<id>\3", first.split(", received")[0])[:150]
        kinds[kind] = kinds.get(kind, 0) + 1
    out = [f"{len(events)} events:"]
    out += [f"  {n:5d} x {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])]
    for ev in events[:shown]:
        body = ev.splitlines()
        out.append("  first events in full:" if ev is events[0] else "  --")
        out += ["    " + x for x in body[:lines]]
        if len(body) > lines:
            out.append(f"    ... ({len(body) - lines} more lines)")
    return "\n".join(out)


# --------------------------------------------------------------------------- sipp


def read_stat(path: Path) -> dict[str, str]:
    """The last (cumulative) line of a sipp -trace_stat file, keyed by column name."""
    try:
        with open(path, newline="", errors="replace") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def stat_int(stat: dict[str, str], key: str) -> int:
    try:
        return int(stat.get(key, "0") or 0)
    except ValueError:
        return 0


def stat_ms(stat: dict[str, str], key: str) -> float:
    """sipp writes response times as HH:MM:SS:USEC."""
    try:
        h, m, s, us = (int(x) for x in stat[key].split(":"))
    except (KeyError, ValueError):
        return float("nan")
    return ((h * 60 + m) * 60 + s) * 1000.0 + us / 1000.0


def sipp_cmd(outer_timeout: float, *args: str) -> list[str]:
    # `timeout` as the outer bound: sipp's own -timeout does not end a run that has
    # stuck calls in every version, and it also bounds sipp if this script dies.
    return ["timeout", "-k", "5", f"{outer_timeout:.0f}", "sipp", "-nostdin", *args]


@dataclass
class Sipp:
    proc: subprocess.Popen[bytes]
    name: str
    workdir: Path

    @property
    def stat(self) -> Path:
        return self.workdir / f"{self.name}.csv"

    @property
    def errors(self) -> Path:
        return self.workdir / f"{self.name}_errors.log"

    @property
    def screen(self) -> Path:
        return self.workdir / f"{self.name}_screen.log"


def stop_sipp(sipp: Sipp, grace: float) -> None:
    """Ask sipp to finish its calls and quit (SIGUSR1), so that it writes its final
    screen and statistics; kill it if it has not quit within `grace` seconds.  USR1 goes
    to sipp only: it would kill the `timeout` wrapper that leads the group."""
    for pid in group_ticks(sipp.proc.pid):
        if pid != sipp.proc.pid:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
    try:
        sipp.proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    kill_group(sipp.proc)


def start_sipp(workdir: Path, name: str, outer_timeout: float, args: Sequence[str]) -> Sipp:
    full = sipp_cmd(
        outer_timeout,
        *args,
        "-buff_size", SIPP_BUFF,
        "-trace_stat", "-stf", f"{name}.csv", "-fd", "1",
        "-trace_err", "-error_file", f"{name}_errors.log",
        "-trace_screen", "-screen_file", f"{name}_screen.log",
    )  # fmt: skip
    out = open(workdir / f"{name}.out", "wb")  # sipp inherits it; ours is closed below
    proc = subprocess.Popen(
        full, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out.close()
    return Sipp(proc, name, workdir)


# --------------------------------------------------------------------------- proxies


@dataclass
class Proxy:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    meter: CpuMeter


@contextmanager
def sipsuite_proxy(workdir: Path, uas_port: int) -> Iterator[Proxy]:
    port = free_udp_port()
    conf = workdir / "sipsuite.toml"
    conf.write_text(
        "[proxy]\n"
        f'listen = ["udp:{HOST}:{port}"]\n'
        'domains = ["bench.test"]\n'
        "[location.static]\n"
        f'bob = ["sip:bob@{HOST}:{uas_port}"]\n'
        "[log]\n"
        # warn: a log line per message would be part of the measured CPU otherwise.
        'level = "warn"\n'
    )
    log = workdir / "proxy.log"
    # twistd, run in this very interpreter.  Not `python -m twisted`: that is `twist`,
    # which rejects twistd's --nodaemon/--pidfile/--logfile (exit status 64), and
    # twisted.scripts.twistd has no __main__ block, hence -c.  With --nodaemon twistd
    # neither forks nor daemonizes: the PID we start is the one running the reactor.
    cmd = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", f"--logfile={log}",
        "sip-proxy", "--config", str(conf),
    ]  # fmt: skip
    env = dict(os.environ)
    # The repository root on the path: sipsuite and its twisted/plugins drop-in are
    # found without an install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    stderr = open(workdir / "proxy.stderr", "wb")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
        start_new_session=True,
    )  # fmt: skip
    stderr.close()
    try:
        try:
            wait_ready(proc, port, is_200, 70, 30.0, log)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nstderr:\n{tail(workdir / 'proxy.stderr')}") from None
        # The twistd python process itself: `python -m twisted` neither forks nor
        # daemonizes with --nodaemon, so its group is just this one process.
        yield Proxy("sipsuite", proc, port, log, CpuMeter(proc.pid))
    finally:
        kill_group(proc)


@contextmanager
def kamailio_proxy(workdir: Path, uas_port: int) -> Iterator[Proxy]:
    port = free_udp_port()
    rundir = workdir / "kamrun"
    rundir.mkdir(exist_ok=True)
    log = workdir / "kamailio.log"
    cmd = [
        "kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-n", "1", "-m", "256", "-M", "8",
        "-Y", str(rundir),
        "-A", f"LISTEN=udp:{HOST}:{port}",
        "-A", f'UAS_URI="sip:{HOST}:{uas_port}"',
    ]  # fmt: skip
    out = open(log, "wb")
    # Own session: Kamailio's main process becomes a group leader, its forked workers
    # stay in that group, and the whole group is measured and killed together.
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out.close()
    try:
        # The reference config relays every out-of-dialog request to the UAS, which
        # would take an OPTIONS for a new call; Max-Forwards: 0 makes Kamailio answer
        # 483 itself, which proves that the worker reads the socket.
        wait_ready(proc, port, any_answer, 0, 30.0, log)
        yield Proxy("kamailio", proc, port, log, CpuMeter(proc.pid))
    finally:
        kill_group(proc)


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    proxy: str
    rate: int
    calls: int  # calls asked for (-m)
    ok: int = 0
    failed: int = 0
    created: int = 0
    retrans: int = 0
    sipp_rc: int | None = None
    timed_out: bool = False
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


def run_rate(settings: Settings, which: str, rate: int, *, with_tail: bool) -> RunResult:
    """One fresh UAS + one fresh proxy, `rate` calls/s for `duration` seconds."""
    calls = max(1, round(rate * settings.duration))
    workdir = settings.workroot / f"{which}-{rate}"
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
        start = sipsuite_proxy if which == "sipsuite" else kamailio_proxy
        with start(workdir, uas_port) as proxy:
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
            result.sipp_rc = uac.proc.returncode
            # 124/137: killed by `timeout`; -timeout_error makes sipp exit non-zero too.
            result.timed_out = result.sipp_rc in (124, 137)
            stat = read_stat(uac.stat)
            result.ok = stat_int(stat, "SuccessfulCall(C)")
            result.failed = stat_int(stat, "FailedCall(C)")
            result.created = stat_int(stat, "OutgoingCall(C)")
            result.retrans = stat_int(stat, "Retransmissions(C)")
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


FAIL_KEYS = (
    "FailedCannotSendMessage(C)", "FailedMaxUDPRetrans(C)", "FailedUnexpectedMessage(C)",
    "FailedCallRejected(C)", "FailedCmdNotSent(C)", "FailedTimeoutOnRecv(C)",
    "FailedTimeoutOnSend(C)", "OutOfCallMsgs(C)", "DeadCallMsgs(C)", "Retransmissions(C)",
    "FatalErrors(C)", "Warnings(C)", "WatchdogMajor(C)", "WatchdogMinor(C)",
)  # fmt: skip


def scenario_screen(path: Path) -> str:
    """The per-message table (Messages/Retrans/Timeout/Unexpected) of sipp's last screen."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no screen file)"
    out: list[str] = []
    for line in lines:
        if out and line.startswith("-----"):
            break
        if "Messages  Retrans" in line or out:
            out.append(line)
    return "\n".join(x for x in out if x.strip()) or "(no message table)"


def describe_failure(
    workdir: Path, uac: Sipp, uas: Sipp, proxy: Proxy, stat: dict[str, str]
) -> str:
    counters = ", ".join(f"{k[:-3]}={stat[k]}" for k in FAIL_KEYS if stat_int(stat, k))
    uas_stat = read_stat(uas.stat)
    uas_counters = ", ".join(
        f"{k[:-3]}={uas_stat[k]}"
        for k in ("IncomingCall(C)", "SuccessfulCall(C)", "FailedCall(C)", *FAIL_KEYS)
        if stat_int(uas_stat, k)
    )
    return (
        f"sipp uac exit status {uac.proc.returncode}; uac counters: {counters or 'none'}\n"
        f"uac message table (what the caller saw):\n{scenario_screen(uac.screen)}\n"
        f"uac -trace_err ({uac.errors}): {summarize_sipp_errors(uac.errors)}\n"
        f"uas counters: {uas_counters or 'none'}\n"
        f"uas message table (what the callee saw):\n{scenario_screen(uas.screen)}\n"
        f"uas -trace_err ({uas.errors}): {summarize_sipp_errors(uas.errors)}\n"
        f"{proxy.name} log {proxy.log} (last lines):\n{tail(proxy.log)}\n"
        f"work files kept in {workdir}"
    )


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
    p.add_argument("--no-sipsuite", action="store_true", help="only measure Kamailio")
    p.add_argument("--budget", type=float, default=450.0,
                   help="stop raising the rate above the reference rate when the next run, even"
                   " if it fails, and the Kamailio run could end later than this many seconds"
                   " after the start (default 450)")  # fmt: skip
    p.add_argument("--sipp-dir", type=Path, default=DEFAULT_SIPP_DIR)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
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
    return args


def check_tools(sipp_dir: Path) -> None:
    missing = [t for t in ("sipp", "kamailio", "timeout") if shutil.which(t) is None]
    for f in ("call_uac.xml", "uas_answer.xml"):
        if not (sipp_dir / f).is_file():
            missing.append(str(sipp_dir / f))
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.sipp_dir)
    began = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="proxy_cps."))
    settings = Settings(args.sipp_dir, args.duration, args.tail, workroot)
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
