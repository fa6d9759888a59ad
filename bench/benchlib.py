"""Process and measurement machinery for bench/proxy_cps.py.

- ports: ``free_udp_port``;
- CPU: ``proc_ticks`` / ``group_ticks`` / ``ticks_between`` read utime+stime from
  /proc/PID/stat, ``CpuMeter`` sums them over a process group; ``udp_drops`` reads
  the kernel's per-socket drop counters from /proc/net/udp;
- processes: ``kill_group``; ``sip_ping`` / ``wait_ready`` (an OPTIONS answer);
- sipp: ``start_sipp`` / ``stop_sipp`` -> ``Sipp``, its result files
  (``read_stat``, ``stat_int``, ``stat_ms``, ``summarize_sipp_errors``,
  ``scenario_screen``, ``describe_failure``);
- the proxies: ``sipsuite_proxy`` and ``kamailio_proxy`` (context managers
  yielding a ``Proxy``).

Linux only (/proc).
"""

from __future__ import annotations

import csv
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
KAMAILIO_CFG = BENCH / "kamailio-proxy.cfg"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# sipp's socket buffers, raised so that under load sipp is never the one
# dropping datagrams (the run would measure sipp, not the proxy).
SIPP_BUFF = "4194304"


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


def udp_drops(ports: Iterable[int], path: str = "/proc/net/udp") -> dict[int, int]:
    """Datagrams the kernel dropped because a socket's receive queue was full, per local
    UDP port (last column of /proc/net/udp).  Lost datagrams, not slow code, are what
    turn a short stall of the proxy into failed calls, so they are counted per run."""
    want = {f"{port:04X}": port for port in ports}
    out: dict[int, int] = {}
    try:
        with open(path) as f:
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


@dataclass(kw_only=True)
class UacOutcome:
    """What every benchmark's result reports of its sipp uac run (set by
    read_uac); a result dataclass derives from it."""

    ok: int = 0
    failed: int = 0
    retrans: int = 0
    sipp_rc: int | None = None
    timed_out: bool = False


def read_uac(result: UacOutcome, uac: Sipp) -> dict[str, str]:
    """After a finished sipp uac run, set what every benchmark's result
    reports of it: ``sipp_rc``, ``timed_out``, ``ok``, ``failed`` and
    ``retrans``; return its statistics row for the rest."""
    result.sipp_rc = uac.proc.returncode
    # 124/137: killed by `timeout`; -timeout_error makes sipp exit non-zero too.
    result.timed_out = result.sipp_rc in (124, 137)
    stat = read_stat(uac.stat)
    result.ok = stat_int(stat, "SuccessfulCall(C)")
    result.failed = stat_int(stat, "FailedCall(C)")
    result.retrans = stat_int(stat, "Retransmissions(C)")
    return stat


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


def start_twistd(workdir: Path, conf_text: str, port: int) -> subprocess.Popen[bytes]:
    """``twistd sip-proxy`` with ``conf_text`` as its config, in its own process
    group, once it answers OPTIONS on udp ``port`` (RuntimeError otherwise)."""
    conf = workdir / "sipsuite.toml"
    conf.write_text(conf_text)
    log = workdir / "proxy.log"
    # twistd, run in this very interpreter.  Not `python -m twisted`: that is `twist`,
    # which rejects twistd's --nodaemon/--pidfile/--logfile (exit status 64), and
    # twisted.scripts.twistd has no __main__ block, hence -c.  With --nodaemon twistd
    # neither forks nor daemonizes: the PID we start is the one running the reactor.
    cmd = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", f"--logfile={log}",
        # Extra twistd options, e.g. "--profile=/tmp/p --profiler=cprofile --savestats"
        # to see where a run's time goes (written when the proxy is stopped).
        *os.environ.get("SIPSUITE_TWISTD_ARGS", "").split(),
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
        # An OPTIONS to the proxy itself is answered "200 Keepalive" (before any auth).
        wait_ready(proc, port, is_200, 70, 30.0, log)
    except RuntimeError as e:
        kill_group(proc)
        raise RuntimeError(f"{e}\nstderr:\n{tail(workdir / 'proxy.stderr')}") from None
    return proc


@contextmanager
def sipsuite_proxy(workdir: Path, uas_port: int, workers: int = 1,
                   redis_url: str = "", extra_conf: str = "") -> Iterator[Proxy]:
    """``workers`` > 1 needs ``redis_url`` (start_redis); the CPU meter covers
    the supervisor's process group, its workers included.  ``extra_conf``:
    TOML tables appended to the config (a ``[trace]`` table that turns the
    flight recorder off, say)."""
    port = free_udp_port()
    proc = start_twistd(workdir, (
        "[proxy]\n"
        f'listen = ["udp:{HOST}:{port}"]\n'
        f"workers = {workers}\n"
        'domains = ["bench.test"]\n'
        "[location.static]\n"
        f'bob = ["sip:bob@{HOST}:{uas_port}"]\n'
        "[management]\n"
        'listen = ""\n'
        "[log]\n"
        # warn: a log line per message would be part of the measured CPU otherwise.
        'level = "warn"\n'
        "[redis]\n"
        f'url = "{redis_url}"\n'
        + extra_conf
    ), port)
    if workers > 1:
        # The first OPTIONS answer says one worker is up, not all of them.
        time.sleep(2.0)
    try:
        yield Proxy("sipsuite", proc, port, workdir / "proxy.log", CpuMeter(proc.pid))
    finally:
        kill_group(proc)


@contextmanager
def kamailio_proxy(workdir: Path, uas_port: int, children: int = 1) -> Iterator[Proxy]:
    port = free_udp_port()
    rundir = workdir / "kamrun"
    rundir.mkdir(exist_ok=True)
    log = workdir / "kamailio.log"
    cmd = [
        "kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-n", "1", "-m", "256", "-M", "8",
        "-Y", str(rundir),
        "-A", f"LISTEN=udp:{HOST}:{port}",
        "-A", f'UAS_URI="sip:{HOST}:{uas_port}"',
        "-A", f"CHILDREN={children}",
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


@contextmanager
def start_redis(workdir: Path) -> Iterator[str]:
    """A throw-away redis-server on a free loopback port (no persistence);
    yields its URL."""
    port = free_udp_port()
    out = open(workdir / "redis.out", "wb")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield f"redis://{HOST}:{port}"
    finally:
        kill_group(proc)


# --------------------------------------------------------------------------- failures


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
