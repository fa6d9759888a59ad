#!/usr/bin/env python3
"""REGISTER-with-digest-authentication benchmark of sipsuite, with Kamailio as the reference.

    python bench/register_rate.py [--rates 100,200,400,...] [--seconds 5] [--users N]
                                  [--store redis|memory] [--kamailio-auth htable|db_text]
                                  [--repeat N] [--quick]

The registrar issue's reference is auth_db over db_text; at a population near
2,000 users, e.g.  --rates 400 --seconds 2.5 --repeat 3 --kamailio-auth db_text.

Topology (everything on 127.0.0.1, every port picked at run time):

    sipp (register_auth_inf_uac.xml) --> registrar under test [--> redis-server]

One "registration" is what a phone does to register: REGISTER, 401 challenge,
REGISTER with credentials, 200 (two requests, two responses).  Every registration
is for a user of its own: sipp reads user and password from an injection file
(user0001;pw1 ...), so each one looks up a different subscriber and, unless the
population is smaller than the sweep (--users), creates a new AOR.

sipsuite runs as `twistd sip-proxy` with [features] auth = true, subscribers and
bindings in a redis-server started here (--store memory: in the proxy), users
provisioned through the JSON-RPC management interface (user.add, batches of 200).
Kamailio runs bench/kamailio-registrar.cfg: one SIP worker (-n 1, children=1, like
sipsuite's one reactor thread), the same users, realm and stored HA1s from db_text
tables written here, usrloc in memory.  By default the HA1s are loaded into an
htable at start-up and checked with pv_auth_check() (a hash lookup, like sipsuite's
stores); --kamailio-auth db_text uses kamailio.cfg's auth_db auth_check() instead,
but db_text scans the whole table on every lookup, so that reference gets slower
as --users grows (~0.3 ms per registration at 2,000 users, ~2 ms at 50,000).

The rates are run in turns, sipsuite then Kamailio at each rate, each run against
a freshly started server (a rate that overloaded one cannot spoil the next, and
timers left over from one run do not fire in the next one's window); redis-server
and the provisioned subscribers live for the whole sweep.  Each rate takes the next
rate*seconds users of the population, the same ones for both servers.

CPU is utime+stime from /proc/PID/stat between the start and the end of the sipp
run: the proxy process (redis-server reported apart), Kamailio's whole process
group.  At the reference rate the servers are watched --tail seconds longer, for
work deferred past the run (sipsuite keeps a finished non-INVITE server
transaction 64*T1 = 32 s, RFC 3261 timer J).  sipsuite runs with its default
[nat] settings: its NAT keep-alive round (every 20 s, the first 20 s after start)
walks every AOR in the store, so it falls into the tail, where it also walks the
AORs of the earlier rates, and into the load itself only with --seconds above ~15.

Needs sipp, kamailio (with its db_text, auth_db, usrloc and registrar modules,
all in Debian's `kamailio` package) and redis-server on PATH.  Linux only (/proc).
The process and sipp machinery is benchlib.py's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH,
    CLK_TCK,
    FAIL_KEYS,
    HOST,
    CpuMeter,
    UacOutcome,
    free_udp_port,
    is_200,
    kill_group,
    read_uac,
    scenario_screen,
    start_sipp,
    start_twistd,
    stat_int,
    stat_ms,
    summarize_sipp_errors,
    tail,
    ticks_between,
    udp_drops,
    wait_ready,
)

SCENARIO = BENCH / "register_auth_inf_uac.xml"
KAMAILIO_CFG = BENCH / "kamailio-registrar.cfg"
REALM = "sipsuite"
DEFAULT_RATES = "100,200,400,600,800"
QUICK_RATES = "100,300"
RPC_BATCH = 200
# sipp gives up on a REGISTER after 5 retransmissions (~16 s at T1 = 500 ms, T2 = 4 s);
# anything still open after this many seconds beyond the load is stuck.
SIPP_GRACE = 40.0


# --------------------------------------------------------------------------- helpers


def free_tcp_port() -> int:
    """A TCP port nobody listens on right now (same small race as free_udp_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def user_name(i: int, width: int) -> str:
    return f"user{i:0{width}d}"


def password(i: int) -> str:
    return f"pw{i}"


def ha1(user: str, realm: str, pw: str) -> str:
    return hashlib.md5(f"{user}:{realm}:{pw}".encode()).hexdigest()


def popen_logged(
    cmd: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in a session of its own (group leader: measured and killed as
    a group), stdout and stderr to `log`."""
    out = open(log, "wb")
    try:
        return subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    finally:
        out.close()  # the child has its own copy


def log_problems(path: Path, markers: Sequence[str], shown: int = 4) -> tuple[int, list[str]]:
    """How many lines of a log contain one of `markers`, and the first few of them."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, []
    hits = [line for line in lines if any(m in line for m in markers)]
    return len(hits), [h[:300] for h in hits[:shown]]


# sipsuite logs through twisted.logger: "TIME [namespace#level] text"; Twisted's own
# "Unhandled error" reports come as #critical, tracebacks follow on later lines.
SIPSUITE_MARKERS = ("#warn]", "#error]", "#critical]", "Traceback", "Unhandled")
KAMAILIO_MARKERS = ("ERROR:", "WARNING:", "CRITICAL:", "ALERT:", "BUG:")


# --------------------------------------------------------------------------- redis


@dataclass
class Redis:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    meter: CpuMeter

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command in RESP, the first reply line back (enough for PING / DBSIZE)."""
    req = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(req)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.strip()


@contextmanager
def redis_server(workdir: Path) -> Iterator[Redis]:
    rdir = workdir / "redis"
    rdir.mkdir()
    port = free_tcp_port()
    log = workdir / "redis.log"
    cmd = [
        "redis-server", "--bind", HOST, "--port", str(port), "--dir", str(rdir),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
    ]  # fmt: skip
    proc = popen_logged(cmd, log, rdir)
    try:
        deadline = time.monotonic() + 15.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with status {proc.returncode}:\n{tail(log)}"
                )
            try:
                if redis_command(port, "PING") == b"+PONG":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING within 15 s:\n{tail(log)}")
            time.sleep(0.05)
        yield Redis(proc, port, log, CpuMeter(proc.pid))
    finally:
        kill_group(proc)


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    meter: CpuMeter
    markers: Sequence[str]
    mgmt_port: int = 0  # sipsuite's JSON-RPC management interface (TCP)


@dataclass
class Population:
    """The users of the sweep: user<i>, password pw<i>, i = 1..size."""

    size: int

    @property
    def width(self) -> int:
        return max(4, len(str(self.size)))

    def name(self, i: int) -> str:
        return user_name(i, self.width)

    def slice(self, start: int, count: int) -> list[int]:
        """`count` user numbers from the 0-based position `start`, wrapping around."""
        return [(start + k) % self.size + 1 for k in range(count)]


def rpc(port: int, calls: list[dict[str, Any]], timeout: float = 60.0) -> list[dict[str, Any]]:
    body = json.dumps(calls).encode()
    req = urllib.request.Request(
        f"http://{HOST}:{port}/", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        replies = json.loads(resp.read() or b"[]")
    if not isinstance(replies, list):
        raise RuntimeError(f"management interface: expected a batch reply, got {replies!r:.300}")
    return replies


USER_EXISTS = -32001
STORE_UNAVAILABLE = -32003


def provision(mgmt_port: int, pop: Population, numbers: Sequence[int]) -> tuple[int, int]:
    """user.add for `numbers` in batches; (added, already there).  Retries a batch
    while the store is unavailable (the proxy connects to Redis in the background)."""
    added = exists = 0
    for at in range(0, len(numbers), RPC_BATCH):
        batch = numbers[at : at + RPC_BATCH]
        calls = [
            {"jsonrpc": "2.0", "method": "user.add", "id": i,
             "params": {"user": pop.name(i), "password": password(i)}}
            for i in batch
        ]  # fmt: skip
        deadline = time.monotonic() + 15.0
        while True:
            replies = rpc(mgmt_port, calls)
            codes = [r.get("error", {}).get("code") for r in replies]
            if STORE_UNAVAILABLE in codes and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            break
        bad = [r for r in replies if "error" in r and r["error"].get("code") != USER_EXISTS]
        if bad or len(replies) != len(batch):
            raise RuntimeError(
                f"user.add failed for {len(bad)} of {len(batch)} users"
                f" ({len(replies)} replies); first: {bad[:1]!r:.400}"
            )
        exists += codes.count(USER_EXISTS)
        added += len(batch) - codes.count(USER_EXISTS)
    return added, exists


@contextmanager
def sipsuite_registrar(workdir: Path, redis_url: str, auth: bool = True) -> Iterator[Server]:
    """``redis_url`` "" is the in-memory store; ``auth`` False (bench/memory.py)
    saves every REGISTER unchallenged."""
    port = free_udp_port()
    mgmt = free_tcp_port()
    proc = start_twistd(workdir, (
        "[proxy]\n"
        f'listen = ["udp:{HOST}:{port}"]\n'
        f'domains = ["{HOST}"]\n'
        "[features]\n"
        f"auth = {'true' if auth else 'false'}\n"
        "[auth]\n"
        f'realm = "{REALM}"\n'
        "[redis]\n"
        f'url = "{redis_url}"\n'
        "[management]\n"
        f'listen = "tcp:{HOST}:{mgmt}"\n'
        "[log]\n"
        # warn: a log line per message would be part of the measured CPU otherwise.
        'level = "warn"\n'
    ), port)
    try:
        yield Server("sipsuite", proc, port, workdir / "proxy.log", CpuMeter(proc.pid),
                     SIPSUITE_MARKERS, mgmt)
    finally:
        kill_group(proc)


def write_kamailio_db(dbdir: Path, pop: Population) -> None:
    """db_text tables, headers and versions as Kamailio 5.6's own
    (/usr/share/kamailio/dbtext/kamailio/): "version", "subscriber" (version 7) for
    auth_db, and "htable" (version 2) for the WITH_HTABLE variant: key the user,
    value the HA1."""
    dbdir.mkdir()
    (dbdir / "version").write_text(
        "id(int,auto) table_name(string) table_version(int) \n"
        "0:version:1\n0:subscriber:7\n0:htable:2\n"
    )
    subscriber = ["id(int,auto) username(string) domain(string) password(string) ha1(string)"
                  " ha1b(string) "]  # fmt: skip
    htable = ["id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string)"
              " expires(int) "]  # fmt: skip
    for i in range(1, pop.size + 1):
        user, pw = pop.name(i), password(i)
        h = ha1(user, REALM, pw)
        subscriber.append(f"{i}:{user}:{REALM}:{pw}:{h}:{ha1(f'{user}@{REALM}', REALM, pw)}")
        htable.append(f"{i}:{user}:0:0:{h}:0")
    (dbdir / "subscriber").write_text("\n".join(subscriber) + "\n")
    (dbdir / "htable").write_text("\n".join(htable) + "\n")


@contextmanager
def kamailio_registrar(workdir: Path, dbdir: Path, auth: str) -> Iterator[Server]:
    """``auth``: "htable", "db_text" (auth_db) or "none" (no
    authentication, the db directory unused: bench/memory.py)."""
    port = free_udp_port()
    rundir = workdir / "kamrun"
    rundir.mkdir()
    log = workdir / "kamailio.log"
    cmd = [
        "kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-n", "1", "-m", "256", "-M", "16",
        "-Y", str(rundir),
        "-A", f"LISTEN=udp:{HOST}:{port}",
        "-A", f'DBURL="text://{dbdir}"',
        "-A", f'REALM="{REALM}"',
        *(["-A", "WITH_HTABLE"] if auth == "htable" else []),
        *(["-A", "NO_AUTH"] if auth == "none" else []),
    ]  # fmt: skip
    proc = popen_logged(cmd, log, workdir)
    try:
        wait_ready(proc, port, is_200, 70, 30.0, log)
        yield Server("kamailio", proc, port, log, CpuMeter(proc.pid), KAMAILIO_MARKERS)
    finally:
        kill_group(proc)


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult(UacOutcome):
    server: str
    rate: int
    count: int  # registrations asked for (-m)
    window_s: float = 0.0
    cpu_ticks: int = 0  # the server (Kamailio: its process group)
    redis_ticks: int = 0  # redis-server's CPU
    with_redis: bool = False  # sipsuite with --store redis
    tail_s: float = 0.0
    tail_ticks: int = 0
    tail_redis_ticks: int = 0
    reg_ms: float = float("nan")  # mean time from the first REGISTER to the 200
    drops: int = 0  # datagrams the kernel dropped on the server's full socket queue
    wrapped: bool = False  # the run re-registered users of the population
    log_lines: int = 0
    log_first: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (
            self.sipp_rc == 0
            and not self.timed_out
            and self.failed == 0
            and self.ok == self.count
            and self.retrans == 0
        )

    def cpu_s(self, *, with_redis: bool = False, with_tail: bool = False) -> float:
        ticks = self.cpu_ticks + (self.redis_ticks if with_redis else 0)
        if with_tail:
            ticks += self.tail_ticks + (self.tail_redis_ticks if with_redis else 0)
        return ticks / CLK_TCK

    def per_cpu_s(self, *, with_redis: bool = False, with_tail: bool = False) -> float:
        """Registrations per CPU second."""
        cpu = self.cpu_s(with_redis=with_redis, with_tail=with_tail)
        return self.ok / cpu if cpu > 0 and self.ok else float("nan")

    def us_per_reg(self, *, with_redis: bool = False, with_tail: bool = False) -> float:
        cpu = self.cpu_s(with_redis=with_redis, with_tail=with_tail)
        done = self.ok + self.failed
        return cpu * 1e6 / done if done else float("nan")


@dataclass
class Settings:
    seconds: float
    tail: float
    ref_rate: int
    workroot: Path
    pop: Population
    store: str
    kamailio_auth: str


def run_sipp(workdir: Path, server: Server, rate: int, count: int,
             redis: Redis | None, result: RunResult) -> None:  # fmt: skip
    """sipp at `rate` registrations/s against `server`; CPU, drops and sipp's counters
    into `result`."""
    limit = result.count / rate + SIPP_GRACE
    sipp_port = free_udp_port()
    before = server.meter.sample()
    redis_before = redis.meter.sample() if redis else {}
    drops_before = udp_drops([server.port]).get(server.port, 0)
    t0 = time.monotonic()
    uac = start_sipp(
        workdir, "uac", limit + 15,
        [
            f"{HOST}:{server.port}", "-sf", str(SCENARIO), "-inf", "users.csv",
            "-i", HOST, "-p", str(sipp_port),
            "-r", str(rate), "-rp", "1000", "-m", str(count),
            "-timeout", f"{limit:.0f}s", "-timeout_error",
        ],
    )  # fmt: skip
    try:
        uac.proc.wait(timeout=limit + 25)
    except subprocess.TimeoutExpired:
        result.notes.append("sipp outlived its outer timeout; killed")
    after = server.meter.sample()
    redis_after = redis.meter.sample() if redis else {}
    result.window_s = time.monotonic() - t0
    result.drops = udp_drops([server.port]).get(server.port, 0) - drops_before
    kill_group(uac.proc)
    result.cpu_ticks = ticks_between(before, after)
    result.redis_ticks = ticks_between(redis_before, redis_after)
    stat = read_uac(result, uac)
    result.reg_ms = stat_ms(stat, "ResponseTime1(C)")
    if not stat:
        result.notes.append(f"no sipp statistics; sipp output:\n{tail(workdir / 'uac.out')}")
    if server.proc.poll() is not None:
        result.notes.append(f"{server.name} died (status {server.proc.returncode})")
    if not result.clean:
        counters = ", ".join(f"{k[:-3]}={stat[k]}" for k in FAIL_KEYS if stat_int(stat, k))
        result.notes.append(
            f"sipp exit status {uac.proc.returncode}; counters: {counters or 'none'}\n"
            f"message table:\n{scenario_screen(uac.screen)}\n"
            f"-trace_err ({uac.errors}): {summarize_sipp_errors(uac.errors)}\n"
            f"{server.name} log {server.log} (last lines):\n{tail(server.log)}"
        )


def run_rate(settings: Settings, which: str, rate: int, start: int,
             redis: Redis | None, kam_db: Path) -> RunResult:  # fmt: skip
    """A fresh server, `rate` registrations/s for --seconds, users from position `start`."""
    count = max(1, round(rate * settings.seconds))
    workdir = settings.workroot / f"{which}-{rate}-{start}"
    workdir.mkdir()
    result = RunResult(which, rate, count, with_redis=which == "sipsuite" and redis is not None)
    pop = settings.pop
    numbers = pop.slice(start, count)
    result.wrapped = start + count > pop.size
    (workdir / "users.csv").write_text(
        "SEQUENTIAL\n" + "".join(f"{pop.name(i)};{password(i)}\n" for i in numbers)
    )
    if which == "sipsuite":
        ctx = sipsuite_registrar(workdir, redis.url if redis else "")
    else:
        ctx = kamailio_registrar(workdir, kam_db, settings.kamailio_auth)
    with ctx as server:
        if which == "sipsuite":
            t = time.monotonic()
            added, exists = provision(server.mgmt_port, pop, numbers)
            result.notes.append(
                f"provisioned {added} users ({exists} already there) in {time.monotonic() - t:.1f} s"
            )
        run_sipp(workdir, server, rate, count, redis if which == "sipsuite" else None, result)
        if rate == settings.ref_rate and settings.tail > 0 and server.proc.poll() is None:
            before = server.meter.sample()
            rbefore = redis.meter.sample() if redis and which == "sipsuite" else {}
            time.sleep(settings.tail)
            result.tail_s = settings.tail
            result.tail_ticks = ticks_between(before, server.meter.sample())
            if redis and which == "sipsuite":
                result.tail_redis_ticks = ticks_between(rbefore, redis.meter.sample())
        # Read before the server is stopped: Kamailio reports its children's exit at
        # ALERT level, which is shutdown noise, not a problem of the run.
        result.log_lines, result.log_first = log_problems(server.log, server.markers)
    return result


# --------------------------------------------------------------------------- report


def fmt(x: float, spec: str = ".0f") -> str:
    return "n/a" if x != x else format(x, spec)  # x != x: NaN


def report_run(r: RunResult) -> None:
    redis = f", redis {r.redis_ticks / CLK_TCK:.2f} s CPU" if r.with_redis else ""
    print(
        f"  {r.server} {r.rate}/s: {r.ok}/{r.count} ok, {r.failed} failed, {r.retrans} retrans,"
        f" {r.drops} drops, {r.cpu_s():.2f} s CPU{redis}, {fmt(r.us_per_reg())} us/reg,"
        f" {fmt(r.reg_ms, '.1f')} ms/reg, {r.window_s:.1f} s"
        + (" (users re-registered: population wrapped)" if r.wrapped else ""),
        flush=True,
    )
    if r.tail_s:
        tail_redis = (f", redis {r.tail_redis_ticks / CLK_TCK:.2f} s CPU"
                      f" ({fmt(r.us_per_reg(with_redis=True, with_tail=True))} us/reg with redis)"
                      if r.with_redis else "")
        print(f"    the {r.tail_s:.0f} s after the run: {r.tail_ticks / CLK_TCK:.2f} s CPU{tail_redis};"
              f" counted in, {fmt(r.us_per_reg(with_tail=True))} us/reg", flush=True)
    if r.log_lines:
        print(f"    {r.log_lines} warning/error lines in the {r.server} log; first:")
        for line in r.log_first:
            print("      " + line)
    for note in r.notes:
        print("    " + note.replace("\n", "\n    "), flush=True)


def print_table(results: Sequence[RunResult]) -> None:
    print(
        f"{'server':<9} {'rate':>5} {'regs ok':>8} {'failed':>6} {'retrans':>7} {'drops':>5}"
        f" {'CPU s':>6} {'us/reg':>7} {'regs/CPU-s':>10} {'redis s':>7} {'+redis/CPU-s':>12}"
        f" {'ms/reg':>6} {'clean':>5}"
    )
    for r in results:
        ours = r.with_redis
        print(
            f"{r.server:<9} {r.rate:>5} {r.ok:>8} {r.failed:>6} {r.retrans:>7} {r.drops:>5}"
            f" {r.cpu_s():>6.2f} {fmt(r.us_per_reg()):>7} {fmt(r.per_cpu_s()):>10}"
            f" {(f'{r.redis_ticks / CLK_TCK:.2f}' if ours else '-'):>7}"
            f" {(fmt(r.per_cpu_s(with_redis=True)) if ours else '-'):>12}"
            f" {fmt(r.reg_ms, '.1f'):>6} {'yes' if r.clean else 'NO':>5}"
        )
    print(
        "a reg = one registration: REGISTER, 401, REGISTER with credentials, 200.\n"
        "CPU s: the server's CPU (utime+stime) from the start to the end of the sipp run\n"
        "(sipsuite: the proxy process; Kamailio: all its processes); us/reg: CPU per reg;\n"
        "redis s: redis-server's CPU over the same window; +redis/CPU-s: regs per CPU second\n"
        "of proxy and redis-server together; drops: datagrams the kernel dropped on the\n"
        "server's full socket queue; ms/reg: sipp's mean time from first REGISTER to 200 (whole ms);\n"
        "clean: every reg succeeded, 0 failed, 0 retransmissions."
    )


def highest_clean(runs: Sequence[RunResult]) -> str:
    """The highest rate of the rising sweep before the first unclean run."""
    highest = 0
    for r in sorted(runs, key=lambda r: r.rate):
        if not r.clean:
            break
        highest = r.rate
    if not runs:
        return "not run"
    if not highest:
        return "none (the lowest rate was not clean)"
    top = max(r.rate for r in runs)
    return f"{highest}/s" + (" (the highest rate tried)" if highest == top else "")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_summary(results: Sequence[RunResult], ref: int, store: str) -> None:
    ours: dict[int, list[RunResult]] = {}
    kam: dict[int, list[RunResult]] = {}
    for r in results:
        (ours if r.server == "sipsuite" else kam).setdefault(r.rate, []).append(r)
    print(f"highest clean rate: sipsuite {highest_clean([rs[0] for rs in ours.values()])},"
          f" kamailio {highest_clean([rs[0] for rs in kam.values()])}")  # fmt: skip
    common = sorted(set(ours) & set(kam))
    if not common:
        return

    def us(runs: list[RunResult], **kw: bool) -> float:
        """Median CPU per registration over ``runs``."""
        return median([r.us_per_reg(**kw) for r in runs])

    print("regs per CPU second, sipsuite / kamailio, at each rate both ran"
          " (medians where a rate ran more than once):")  # fmt: skip
    for rate in common:
        o, k = ours[rate], kam[rate]
        line = f"  {rate:>5}/s: proxy only {fmt(us(k) / us(o), '.2f')}"
        if store == "redis":
            line += f", proxy+redis {fmt(us(k) / us(o, with_redis=True), '.2f')}"
        if not all(r.clean for r in o + k):
            line += "  (a run was not clean)"
        print(line)
    if ref not in common:
        return
    o, k = ours[ref], kam[ref]
    runs = f"median of {len(o)} runs each, " if len(o) > 1 or len(k) > 1 else ""
    print(f"at the reference rate {ref}/s ({runs}in-run):")
    if len(o) > 1 or len(k) > 1:
        print("  runs, us/reg: kamailio " + ", ".join(fmt(r.us_per_reg()) for r in k)
              + "; sipsuite " + ", ".join(fmt(r.us_per_reg()) for r in o))  # fmt: skip
    print(f"  kamailio: {fmt(1e6 / us(k))} regs/CPU-s ({fmt(us(k))} us/reg)")
    print(f"  sipsuite: {fmt(1e6 / us(o))} regs/CPU-s ({fmt(us(o))} us/reg), proxy only")
    if store == "redis":
        print(f"            {fmt(1e6 / us(o, with_redis=True))} regs/CPU-s"
              f" ({fmt(us(o, with_redis=True))} us/reg) with redis-server")  # fmt: skip
    print(f"  sipsuite/kamailio regs per CPU second: {fmt(us(k) / us(o), '.2f')} proxy only"
          + (f", {fmt(us(k) / us(o, with_redis=True), '.2f')} with redis-server"
             if store == "redis" else "")
          + " (target >= 0.40)")  # fmt: skip
    if all(r.tail_s for r in o + k):
        kt, ot = us(k, with_tail=True), us(o, with_tail=True)
        otr = us(o, with_redis=True, with_tail=True)
        print(
            f"  counting the {o[0].tail_s:.0f} s after the run too (deferred work):"
            f" kamailio {fmt(kt)} us/reg, sipsuite {fmt(ot)} us/reg"
            + (f" ({fmt(otr)} with redis)" if store == "redis" else "")
            + f"; ratio {fmt(kt / ot, '.2f')}"
            + (f" ({fmt(kt / otr, '.2f')} with redis)" if store == "redis" else "")
        )  # fmt: skip
    if not all(r.clean for r in o + k):
        print("  caution: a run at the reference rate was not clean")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rates", default=None, help=f"rising rates, registrations/s (default {DEFAULT_RATES})"
    )
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds of load per rate: rate*seconds registrations (default 5)")  # fmt: skip
    p.add_argument("--users", type=int, default=None,
                   help="users provisioned (default: as many as the sweep registers, so that"
                   " every registration is a user's first; fewer: runs wrap around and"
                   " re-register users)")  # fmt: skip
    p.add_argument("--store", choices=("redis", "memory"), default="redis",
                   help="sipsuite's subscriber and location store (default redis)")  # fmt: skip
    p.add_argument("--kamailio-auth", choices=("htable", "db_text"), default="htable",
                   help="where Kamailio looks subscribers up: an htable loaded at start-up"
                   " (default; constant cost, like sipsuite's stores) or auth_db over db_text"
                   " (a scan of the whole table per lookup: its cost grows with --users)")  # fmt: skip
    p.add_argument("--ref-rate", type=int, default=None,
                   help="rate of the headline comparison and the --tail watch (default 400;"
                   " --quick: its highest rate)")  # fmt: skip
    p.add_argument("--tail", type=float, default=None,
                   help="seconds both servers are watched after the reference-rate run, for"
                   " deferred work (default 33; --quick 0)")  # fmt: skip
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: rates {QUICK_RATES}, 3 s each, no tail (~30 s)",
    )
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each server at the reference rate, in turns; the summary"
                   " compares their medians (default 1)")  # fmt: skip
    p.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio reference")
    p.add_argument("--no-sipsuite", action="store_true", help="only measure Kamailio")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.quick:
        args.rates = args.rates or QUICK_RATES
        args.seconds = args.seconds or 3.0
        args.tail = 0.0 if args.tail is None else args.tail
    args.rates = args.rates or DEFAULT_RATES
    args.seconds = args.seconds or 5.0
    args.tail = 33.0 if args.tail is None else args.tail
    try:
        args.rate_list = sorted({int(x) for x in args.rates.split(",") if x.strip()})
    except ValueError:
        p.error(f"--rates: expected numbers separated by commas, got {args.rates!r}")
    if not args.rate_list or min(args.rate_list) <= 0:
        p.error("--rates: need positive rates")
    if args.seconds <= 0 or args.seconds > 120:
        p.error("--seconds: from above 0 to 120")
    if args.ref_rate is None:
        args.ref_rate = max(args.rate_list) if args.quick or 400 not in args.rate_list else 400
    if args.ref_rate not in args.rate_list:
        p.error(f"--ref-rate {args.ref_rate} is not one of --rates")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat: from 1 to 20")
    needed = sum(max(1, round(r * args.seconds)) * (args.repeat if r == args.ref_rate else 1)
                 for r in args.rate_list)
    args.users = args.users or needed
    if args.users <= 0 or args.users > 1_000_000:
        p.error("--users: from 1 to 1000000")
    return args


def check_tools() -> None:
    missing = [
        t for t in ("sipp", "kamailio", "redis-server", "timeout") if shutil.which(t) is None
    ]
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    began = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="register_rate."))
    pop = Population(args.users)
    settings = Settings(
        args.seconds, args.tail, args.ref_rate, workroot, pop, args.store, args.kamailio_auth
    )
    print(
        f"rates {args.rate_list}/s, {args.seconds:g} s each, {pop.size} users, sipsuite store"
        f" {args.store}, kamailio auth {args.kamailio_auth}, reference rate {args.ref_rate}/s,"
        f" work files in {workroot}",
        flush=True,
    )
    results: list[RunResult] = []
    keep = args.keep
    try:
        kam_db = workroot / "kamdb"
        write_kamailio_db(kam_db, pop)
        with maybe_redis(workroot, args.store) as redis:
            stopped: set[str] = set()
            start = 0
            for rate in args.rate_list:
                # The reference rate --repeat times, the two servers in turns, each
                # time with users of its own: one run is at the mercy of whatever
                # else this machine does meanwhile; the summary takes the median.
                for _ in range(args.repeat if rate == args.ref_rate else 1):
                    for which in ("sipsuite", "kamailio"):
                        if (which == "kamailio" and args.no_kamailio) or (
                            which == "sipsuite" and args.no_sipsuite
                        ):
                            continue
                        # After a run with failed registrations a server is only run
                        # again at the reference rate (the comparison needs it).
                        if which in stopped and rate != args.ref_rate:
                            continue
                        r = run_rate(settings, which, rate, start, redis, kam_db)
                        report_run(r)
                        results.append(r)
                        if r.failed or r.ok < r.count:
                            stopped.add(which)
                    start += max(1, round(rate * args.seconds))
            if redis is not None:
                size = redis_command(redis.port, "DBSIZE").decode(errors="replace")
                print(f"  redis-server: {size.lstrip(':')} keys at the end", flush=True)
        keep = keep or any(not r.clean for r in results)
        print()
        print_table(results)
        print()
        print_summary(results, args.ref_rate, args.store)
        print(f"total time {time.monotonic() - began:.0f} s")
        return 0 if all(r.clean for r in results) else 1
    finally:
        if keep:
            print(f"work files kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)


@contextmanager
def maybe_redis(workroot: Path, store: str) -> Iterator[Redis | None]:
    if store != "redis":
        yield None
        return
    with redis_server(workroot) as redis:
        yield redis


if __name__ == "__main__":
    sys.exit(main())
