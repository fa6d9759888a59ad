#!/usr/bin/env python3
"""Packets-per-second benchmark of sipsuite's RTP relay, with rtpengine as the reference.

    python bench/relay_pps.py [--sessions 10,100,200,...] [--seconds 10] [--quick]

Topology (everything on 127.0.0.1, every port picked at run time):

    rtpgen.py caller sockets <--> relay under test <--> rtpgen.py callee sockets

For each number of sessions N, in turns for the two relays (a fresh relay process
each time): one or more load generator processes (bench/rtpgen.py) bind two
sockets per session, set the session up on the relay (sipsuite: RTPProxy U then L;
rtpengine: NG offer then answer, SDPs naming the two sockets), then every party
sends a 172-byte RTP datagram every 20 ms, so N sessions are 100*N packets/s into
the relay and as many out.  After --warmup seconds (latching) the packets of the
next --seconds are counted by sequence number: loss = 1 - received / sent.  Each
packet carries its send time, so the delay through the relay is measured too: a
relay short of CPU loses nothing at first, because every session has its own
sockets whose kernel queues (~250 datagrams, 5 s of one stream) absorb the backlog;
it delays instead.  So a packet received more than --max-delay (100 ms) after it
was sent counts as lost as well, as a jitter buffer would discard it
(--max-delay 0: the issue's plain definition).

The relay's CPU is utime+stime of its process group (/proc/PID/stat) over the
counted window; CPU per packet = that / packets received by the parties.  The
generators' own CPU and lateness against their 20 ms schedule are reported too: on
the 2-core VM they share the machine with the relay, and a generator that cannot
keep its schedule (or is near a full core) makes the figure meaningless.

N rises, per relay, until loss (lost + delayed) exceeds 0.1 % (--max-loss) or the
generator falls behind; the report gives each relay's highest packet rate with
loss <= 0.1 %, its CPU per packet, and our/rtpengine packets per CPU second at the
highest N both handled (target >= 0.5).  Session set-up and the /proc sampling fall
outside the counted window; reading /proc/net/udp at its start shows as a few ms
of delay on the relay's packets there.

rtpengine: Debian's rtpengine-daemon (/usr/bin/rtpengine), userspace forwarding
(--table=-1: no kernel module), in the foreground, --config-file=none so that
/etc/rtpengine/rtpengine.conf is not read, one worker thread by default
(--rtpengine-threads) like our single-threaded relay.  Linux only (/proc).

--netns adds "cfwd": bench/cfwd.c, a C forwarder (recvmmsg/sendmmsg, one
thread, epoll) with the sessions' peers fixed as the relay would have latched
them, compiled with the machine's gcc into the work directory at run time: the
userspace reference the kernel path's packet rate is set against.  Its
sessions are given on its stdin once the generators have bound their sockets.
--only a,b,... runs only those, alternating in that order at each N.

--workers N runs sipsuite's relay as ``rtp-relay --workers N``: a supervisor
and N worker processes in the relay's process group, whose CPU is all counted;
compare with --rtpengine-threads N for the same number of cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    BENCH,
    CLK_TCK,
    HOST,
    REPO,
    CpuMeter,
    free_udp_port,
    kill_group,
    tail,
    ticks_between,
    udp_drops,
)
from benchns import CALLEE_IP, CALLER_IP, RELAY_IP, Hosts, inside
from rtpgen import PACKET, PTIME, Result, bdecode, bencode, percentile_ms

RTPENGINE = "/usr/bin/rtpengine"
DEFAULT_SESSIONS = "10,100,200,400,600,800,1000,1200,1400,1600"
RELAYS = ("sipsuite", "rtpengine")
# --netns: sipsuite with [relay] kernel = "on" first, then in userspace.
# "cfwd": bench/cfwd.c, a C recvmmsg/sendmmsg forwarder with fixed peers, the
# userspace reference the kernel path is measured against (issue 16).
NETNS_RELAYS = ("sipsuite-kernel", "cfwd", "sipsuite", "rtpengine", "direct")
CFWD_SOURCE = BENCH / "cfwd.c"
# A generator is "behind" when its 99th percentile lateness against the 20 ms
# schedule exceeds this, or it used more than GEN_CPU_LIMIT of a core.
LATE_LIMIT_MS = 10.0
late_limit_ms = LATE_LIMIT_MS  # --late-limit
GEN_CPU_LIMIT = 0.90
SESSIONS_PER_GENERATOR = 300
# Relay + generators using this share of all CPUs: the relay competes with its own
# load for CPU, so a loss there is the machine's limit as much as the relay's.
SATURATED_PCT = 90.0


# --------------------------------------------------------------------------- ports


def bound_udp_ports() -> set[int]:
    out: set[int] = set()
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    out.add(int(line.split()[1].rpartition(":")[2], 16))
        except (OSError, StopIteration, ValueError, IndexError):
            pass
    return out


def media_port_range(size: int) -> tuple[int, int]:
    """An even-aligned range of `size` ports below Linux's ephemeral range (32768), so
    the generators' sockets (port 0) never land in it, with nothing bound in it now."""
    size += size % 2
    for _ in range(50):
        low = random.randrange(16000, 32768 - size, 2)
        used = bound_udp_ports()
        if not any(p in used for p in range(low, low + size)):
            return low, low + size - 1
    raise RuntimeError(f"no free range of {size} UDP ports below 32768")


# --------------------------------------------------------------------------- relays


@dataclass
class Relay:
    name: str
    proc: subprocess.Popen[bytes]
    control_port: int
    log: Path
    meter: CpuMeter
    cmd: list[str]
    # cfwd: hands it the sessions (its stdin) once the generators have bound
    # their parties' sockets, and waits until it has bound its own.
    feed: Callable[[str], None] | None = None


def rtpproxy_ping(port: int, ns: str = "") -> bool:
    with inside(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock as s:
        s.bind((HOST, 0))
        s.settimeout(0.3)
        s.sendto(b"ping1 V", (HOST, port))
        try:
            return s.recv(1024).split() == [b"ping1", b"20040107"]
        except (TimeoutError, ConnectionRefusedError):
            return False


def ng_ping(port: int, ns: str = "") -> bool:
    with inside(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock as s:
        s.bind((HOST, 0))
        s.settimeout(0.3)
        s.sendto(b"ping1 " + bencode({"command": "ping"}), (HOST, port))
        try:
            cookie, _, body = s.recv(65535).partition(b" ")
            reply = bdecode(body)
        except (TimeoutError, ConnectionRefusedError, ValueError):
            return False
        return cookie == b"ping1" and isinstance(reply, dict) and reply.get("result") == "pong"


def spawn(cmd: list[str], workdir: Path, name: str, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    out = open(workdir / f"{name}.out", "wb")
    # Own session: the relay leads a process group that is measured and killed whole.
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    out.close()
    return proc


def wait_up(relay: Relay, ping: Callable[[int, str], bool], ns: str = "",
            limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if relay.proc.poll() is not None:
            raise RuntimeError(f"{relay.name} exited with status {relay.proc.returncode} at"
                               f" start; {relay.log}:\n{tail(relay.log)}")
        if ping(relay.control_port, ns):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{relay.name} did not answer on its control port within {limit:.0f} s;"
                       f" {relay.log}:\n{tail(relay.log)}")


def in_ns(ns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd] if ns else cmd


@contextmanager
def sipsuite_relay(workdir: Path, low: int, high: int, threads: int, ns: str = "",
                   kernel: bool = False) -> Iterator[Relay]:
    # threads: --workers (rtp-relay --workers N: N processes of one reactor
    # thread each, in the relay's process group, so their CPU is counted).
    port = free_udp_port()
    conf = workdir / "relay.toml"
    conf.write_text(
        "[relay]\n"
        "drain_time = 0.0\n"
        f'kernel = "{"on" if kernel else "off"}"\n'
        "[management]\n"
        'relay_listen = ""\n'
        "[log]\n"
        # warn: a log line per event would be part of the measured CPU otherwise.
        'level = "warn"\n'
    )
    log = workdir / "relay.log"
    cmd = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", f"--logfile={log}",
        "rtp-relay", "--control", f"udp:{HOST}:{port}",
        "--media-address", RELAY_IP if ns else HOST,
        "--ports", f"{low}-{high}", "--config", str(conf), "--workers", str(threads),
    ]  # fmt: skip
    cmd = in_ns(ns, cmd)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = spawn(cmd, workdir, "relay", env)
    name = "sipsuite-kernel" if kernel else "sipsuite"
    relay = Relay(name, proc, port, log, CpuMeter(proc.pid), cmd)
    try:
        wait_up(relay, rtpproxy_ping, ns)
        yield relay
    finally:
        kill_group(proc)


@contextmanager
def rtpengine_relay(workdir: Path, low: int, high: int, threads: int, ns: str = "",
                    kernel: bool = False) -> Iterator[Relay]:
    del kernel  # never: Debian's kernel module is not built here
    port = free_udp_port()
    log = workdir / "relay.out"
    cmd = [
        RTPENGINE, "--config-file=none", "--foreground", "--log-stderr",
        "--table=-1", f"--interface={RELAY_IP if ns else HOST}", f"--listen-ng={HOST}:{port}",
        f"--port-min={low}", f"--port-max={high}", "--log-level=4",
        f"--num-threads={threads}",
    ]  # fmt: skip
    cmd = in_ns(ns, cmd)
    proc = spawn(cmd, workdir, "relay")
    relay = Relay("rtpengine", proc, port, log, CpuMeter(proc.pid), cmd)
    try:
        wait_up(relay, ng_ping, ns)
        yield relay
    finally:
        kill_group(proc)


@contextmanager
def no_relay(workdir: Path, low: int, high: int, threads: int, ns: str = "",
             kernel: bool = False) -> Iterator[Relay]:
    """--netns "direct": the parties send to each other through the relay host's
    plain IP routing; a process that does nothing stands in for the relay."""
    del low, high, threads, kernel
    cmd = in_ns(ns, ["sleep", "3600"])
    proc = spawn(cmd, workdir, "relay")
    try:
        yield Relay("direct", proc, 0, workdir / "relay.out", CpuMeter(proc.pid), cmd)
    finally:
        kill_group(proc)


def build_cfwd(workroot: Path) -> Path:
    """bench/cfwd.c compiled with this machine's gcc into the work directory."""
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("cfwd: gcc not found (Debian package gcc); it compiles bench/cfwd.c at run"
                 " time. Or leave cfwd out (--only ...)")
    binary = workroot / "cfwd"
    done = subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(CFWD_SOURCE)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.exit(f"cfwd: gcc failed on {CFWD_SOURCE}:\n{done.stderr.strip()}")
    return binary


@contextmanager
def cfwd_relay(workdir: Path, low: int, high: int, threads: int, ns: str = "",
               kernel: bool = False, binary: Path | None = None) -> Iterator[Relay]:
    """bench/cfwd.c in the relay's namespace; its sessions come later (feed)."""
    del low, high, threads, kernel
    assert binary is not None
    log = workdir / "relay.out"
    cmd = in_ns(ns, [str(binary), RELAY_IP if ns else HOST])
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def feed(lines: str) -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(lines.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if log.read_bytes().startswith(b"ready "):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"cfwd did not bind its sockets (status {proc.poll()});"
                           f" {log}:\n{tail(log)}")

    try:
        yield Relay("cfwd", proc, 0, log, CpuMeter(proc.pid), cmd, feed)
    finally:
        kill_group(proc)


# --------------------------------------------------------------------------- one step


@dataclass
class Ready:
    relay_ports: list[int]
    party_ports: list[int]
    setup_s: float


@dataclass
class Generator:
    proc: subprocess.Popen[bytes]
    sessions: int
    meter: CpuMeter
    ready: Ready | None = None
    result: Result | None = None


@dataclass
class StepResult:
    relay: str
    sessions: int
    generators: int
    window_s: float
    sent: int = 0
    received: int = 0
    send_errors: int = 0
    misrouted: int = 0
    silent_parties: int = 0
    relay_ticks: int = 0
    gen_ticks: int = 0
    gen_cpu_max: float = 0.0  # the busiest generator's share of one core over its load
    lateness: dict[str, int] = field(default_factory=dict)  # merged histograms (rtpgen)
    delay: dict[str, int] = field(default_factory=dict)
    late_max_ms: float = 0.0
    delayed: int = 0
    delay_max_ms: float = 0.0
    drops_relay: int = 0
    drops_gen: int = 0
    # Every CPU of the machine (/proc/stat), busy ticks over the window: in
    # kernel mode the forwarding is charged to no process (softirq).
    machine_ticks: int = 0
    softirq_ticks: int = 0
    # The ksoftirqd threads': packet processing the kernel deferred to them.
    ksoftirqd_ticks: int = 0
    setup_s: float = 0.0
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else float("nan")

    @property
    def delayed_share(self) -> float:
        return self.delayed / self.sent if self.sent else float("nan")

    @property
    def late_p99_ms(self) -> float:
        return percentile_ms(self.lateness, 0.99)

    def delay_ms(self, q: float) -> float:
        return percentile_ms(self.delay, q)

    @property
    def pps(self) -> float:
        """Packets the relay forwarded per second (received by the parties)."""
        return self.received / self.window_s if self.window_s else float("nan")

    @property
    def relay_cpu_s(self) -> float:
        return self.relay_ticks / CLK_TCK

    @property
    def us_per_packet(self) -> float:
        return self.relay_cpu_s / self.received * 1e6 if self.received else float("nan")

    @property
    def pps_per_cpu(self) -> float:
        return self.received / self.relay_cpu_s if self.relay_ticks else float("nan")

    @property
    def relay_pct(self) -> float:
        return self.relay_cpu_s * 100.0 / self.window_s if self.window_s else float("nan")

    @property
    def gen_pct(self) -> float:
        return self.gen_ticks * 100.0 / CLK_TCK / self.window_s if self.window_s else float("nan")

    @property
    def box_pct(self) -> float:
        """Relay and generators together, % of all the machine's CPUs."""
        if not self.window_s:
            return float("nan")
        used = (self.relay_ticks + self.gen_ticks) / CLK_TCK / self.window_s
        return used * 100.0 / (os.cpu_count() or 1)

    @property
    def machine_us_per_packet(self) -> float:
        """All CPUs' busy time (relay, generators, kernel, anything else) per packet."""
        return self.machine_ticks / CLK_TCK / self.received * 1e6 if self.received else float("nan")

    @property
    def path_us_per_packet(self) -> float:
        """Relay process + generators + ksoftirqd CPU per packet: every context the
        packets' work is charged to.  The kernel forwards a packet in the softirq
        that the sender's sendto raises on the veth, i.e. in the generator's
        context (its stime), or in ksoftirqd when deferred; so with the same load
        the difference between two relays is the difference of their paths.  Other
        programs on a shared machine do not count here, unlike in machine_ticks."""
        if not self.received:
            return float("nan")
        ticks = self.relay_ticks + self.gen_ticks + self.ksoftirqd_ticks
        return ticks / CLK_TCK / self.received * 1e6

    @property
    def path_pps_per_cpu(self) -> float:
        us = self.path_us_per_packet
        return 1e6 / us if us and us == us else float("nan")

    @property
    def saturated(self) -> bool:
        return self.box_pct >= SATURATED_PCT

    @property
    def generator_ok(self) -> bool:
        return (
            not self.error
            and self.late_p99_ms <= late_limit_ms
            and self.gen_cpu_max <= GEN_CPU_LIMIT
            and self.drops_gen == 0
        )

    def clean(self, max_loss: float) -> bool:
        """Lost plus delayed packets within the limit."""
        return not self.error and self.sent > 0 and self.loss + self.delayed_share <= max_loss


@dataclass
class Settings:
    seconds: float
    warmup: float
    workroot: Path
    generators: int  # 0: one per SESSIONS_PER_GENERATOR sessions
    rtpengine_threads: int
    max_loss: float
    max_delay: float
    hosts: Hosts | None = None
    workers: int = 1  # sipsuite's rtp-relay --workers
    cfwd: Path | None = None  # the compiled bench/cfwd.c


def read_line(gen: Generator, prefix: str, deadline: float) -> dict[str, Any]:
    """The JSON after `prefix` on the generator's stdout; RuntimeError on ERROR/EOF/time."""
    assert gen.proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"generator: no {prefix} line in time")
        ready, _, _ = select.select([gen.proc.stdout], [], [], left)
        if not ready:
            continue
        line = gen.proc.stdout.readline().decode(errors="replace")
        if not line:
            raise RuntimeError(f"generator exited (status {gen.proc.poll()}) before {prefix}")
        if line.startswith(prefix + " "):
            parsed = json.loads(line[len(prefix) + 1 :])
            assert isinstance(parsed, dict)
            return parsed
        if line.startswith("ERROR"):
            raise RuntimeError(f"generator: {line.strip()}")


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def run_step(settings: Settings, which: str, n: int) -> StepResult:
    warm_rounds = max(1, round(settings.warmup / PTIME))
    window_rounds = max(1, round(settings.seconds / PTIME))
    n_gen = settings.generators or max(1, math.ceil(n / SESSIONS_PER_GENERATOR))
    n_gen = min(n_gen, n)
    result = StepResult(which, n, n_gen, window_rounds * PTIME)
    workdir = settings.workroot / f"{which}-{n}"
    workdir.mkdir()
    # 4 ports per session (RTP+RTCP per leg), plus room for pairs another program holds.
    # With workers, calls spread by a hash of their Call-ID, not evenly: a
    # third more, so no worker's slice runs out.
    workers = settings.workers if which.startswith("sipsuite") else 1
    low, high = media_port_range(4 * n + 64 if workers == 1 else int(4 * n * 1.34) + 64 * workers)
    starters: dict[str, Callable[..., Any]] = {
        "rtpengine": rtpengine_relay, "direct": no_relay,
        "cfwd": functools.partial(cfwd_relay, binary=settings.cfwd),
    }  # fmt: skip
    start = starters.get(which, sipsuite_relay)
    hosts = settings.hosts
    ns = hosts.relay if hosts is not None else ""
    where: dict[str, str] = {} if hosts is None else {
        "caller_ns": hosts.caller, "callee_ns": hosts.callee, "relay_ns": hosts.relay,
        "caller_ip": CALLER_IP, "callee_ip": CALLEE_IP, "relay_ip": RELAY_IP,
    }  # fmt: skip
    gens: list[Generator] = []
    try:
        threads = workers if which.startswith("sipsuite") else settings.rtpengine_threads
        with start(workdir, low, high, threads, ns,
                   which == "sipsuite-kernel") as relay:
            result.notes.append("relay: " + " ".join(relay.cmd))
            first = 0
            tag = f"{which}{n}x{random.randrange(1 << 30):x}"
            for g, count in enumerate(split(n, n_gen)):
                spec = {
                    "relay": which, "control_port": relay.control_port, "sessions": count,
                    "first": first, "phase_offset": g / n_gen,
                    "warmup_rounds": warm_rounds, "window_rounds": window_rounds,
                    "drain_s": 0.5, "max_delay": settings.max_delay, "tag": tag,
                    "port_base": low, **where,
                }  # fmt: skip
                first += count
                err = open(workdir / f"gen{g}.err", "wb")
                proc = subprocess.Popen(
                    [sys.executable, str(BENCH / "rtpgen.py"), json.dumps(spec)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                    start_new_session=True,
                )  # fmt: skip
                err.close()
                gens.append(Generator(proc, count, CpuMeter(proc.pid)))
            # Set-up runs in parallel in the generators: ~2 control round trips a session.
            deadline = time.monotonic() + 30 + n * 0.05
            readies = [Ready(**read_line(gen, "READY", deadline)) for gen in gens]
            if relay.feed is not None:
                relay.feed(cfwd_sessions(readies, low, hosts is not None))
            relay_ports = sorted({p for r in readies for p in r.relay_ports})
            party_ports = sorted({p for r in readies for p in r.party_ports})
            result.setup_s = max(r.setup_s for r in readies)
            t0 = time.monotonic() + 0.3
            for gen in gens:
                assert gen.proc.stdin is not None
                gen.proc.stdin.write(f"GO {t0!r}\n".encode())
                gen.proc.stdin.flush()
            w_start = t0 + warm_rounds * PTIME
            w_end = w_start + window_rounds * PTIME
            time.sleep(max(0.0, w_start - time.monotonic()))
            # In namespaces the relay's sockets are in its /proc/PID/net/udp
            # (the parties' in theirs, not counted).
            udp = f"/proc/{relay.proc.pid}/net/udp" if hosts is not None else "/proc/net/udp"
            ksoftirqd = ksoftirqd_pids()
            r0 = relay.meter.sample()
            g0 = [gen.meter.sample() for gen in gens]
            m0 = machine_ticks()
            k0 = threads_ticks(ksoftirqd)
            d0 = udp_drops([*relay_ports, *party_ports], udp)
            time.sleep(max(0.0, w_end - time.monotonic()))
            r1 = relay.meter.sample()
            g1 = [gen.meter.sample() for gen in gens]
            m1 = machine_ticks()
            result.ksoftirqd_ticks = threads_ticks(ksoftirqd) - k0
            d1 = udp_drops([*relay_ports, *party_ports], udp)
            result.machine_ticks = m1[0] - m0[0]
            result.softirq_ticks = m1[1] - m0[1]
            result.relay_ticks = ticks_between(r0, r1)
            result.gen_ticks = sum(ticks_between(a, b) for a, b in zip(g0, g1, strict=True))
            rp = set(relay_ports)
            for port, count in d1.items():
                delta = count - d0.get(port, 0)
                if port in rp:
                    result.drops_relay += delta
                else:
                    result.drops_gen += delta
            deadline = time.monotonic() + 10
            for gen in gens:
                gen.result = Result(**read_line(gen, "RESULT", deadline))
            if relay.proc.poll() is not None:
                result.notes.append(f"relay died (status {relay.proc.returncode})")
            log_tail = tail(relay.log, 5)
            if log_tail not in ("(empty)", "(no file)") and which == "rtpengine":
                result.notes.append(f"rtpengine log (last lines):\n{log_tail}")
    except RuntimeError as e:
        result.error = str(e)
    finally:
        for gen in gens:
            kill_group(gen.proc)
    for gen in gens:
        r = gen.result
        if r is None:
            continue
        result.sent += r.sent
        result.received += r.received
        result.send_errors += r.send_errors
        result.misrouted += r.misrouted
        result.notes.extend(f"misrouted: {x}" for x in r.misrouted_samples)
        result.silent_parties += r.silent_parties
        result.delayed += r.delayed
        for mine, theirs in ((result.lateness, r.lateness), (result.delay, r.delay)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        result.late_max_ms = max(result.late_max_ms, r.late_max_ms)
        result.delay_max_ms = max(result.delay_max_ms, r.delay_max_ms)
        if r.load_s > 0:
            result.gen_cpu_max = max(result.gen_cpu_max, r.cpu_s / r.load_s)
    return result


def cfwd_sessions(readies: Sequence[Ready], low: int, netns: bool) -> str:
    """cfwd's stdin: session i (numbered across the generators, in order) on relay
    ports low+4i (facing the caller) and low+4i+2 (facing the callee), as the
    generators were told (rtpgen.py, port_base)."""
    caller_ip, callee_ip = (CALLER_IP, CALLEE_IP) if netns else (HOST, HOST)
    lines = []
    sid = 0
    for ready in readies:
        ports = ready.party_ports
        for j in range(len(ports) // 2):
            lines.append(f"{low + 4 * sid} {caller_ip} {ports[2 * j]}"
                         f" {low + 4 * sid + 2} {callee_ip} {ports[2 * j + 1]}\n")
            sid += 1
    return "".join(lines)


def ksoftirqd_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def threads_ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, softirq) ticks of all CPUs so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy, fields[6]


# --------------------------------------------------------------------------- report


def fmt(x: float, spec: str = ".1f") -> str:
    return "n/a" if x != x else format(x, spec)


def report_step(r: StepResult, max_loss: float) -> None:
    if r.error:
        print(f"  {r.relay} N={r.sessions}: FAILED: {r.error}", flush=True)
        return
    verdict = "ok" if r.clean(max_loss) else "LOSS" if r.loss > max_loss else "DELAY"
    if not r.generator_ok:
        verdict += ", generator behind"
    if r.saturated:
        verdict += ", machine saturated"
    print(
        f"  {r.relay} N={r.sessions}: {r.received}/{r.sent} packets in {r.window_s:g} s,"
        f" loss {fmt(r.loss * 100, '.3f')} %, {fmt(r.pps, '.0f')} pps, delay p50"
        f" {r.delay_ms(0.5):.2f} p99 {r.delay_ms(0.99):.2f} max {r.delay_max_ms:.0f} ms"
        f" ({r.delayed} packets over the limit),"
        f" relay {fmt(r.relay_pct)} % CPU, {fmt(r.us_per_packet)} us/packet;"
        f" generators {fmt(r.gen_pct)} % CPU (busiest {r.gen_cpu_max * 100:.0f} %),"
        f" lateness p99 {r.late_p99_ms:.2f} ms max {r.late_max_ms:.1f} ms;"
        f" machine {fmt(r.box_pct, '.0f')} %, all CPUs {fmt(r.machine_us_per_packet)} us/packet"
        f" (softirq {fmt(r.softirq_ticks / CLK_TCK / r.received * 1e6 if r.received else float('nan'))});"
        f" relay+generators+ksoftirqd {fmt(r.path_us_per_packet)} us/packet;"
        f" drops relay/gen {r.drops_relay}/{r.drops_gen}; set-up {r.setup_s:.1f} s [{verdict}]",
        flush=True,
    )
    if r.misrouted or r.silent_parties or r.send_errors:
        print(f"    misrouted {r.misrouted}, parties that got nothing {r.silent_parties},"
              f" send errors {r.send_errors}", flush=True)
    for note in r.notes[1:]:
        print("    " + note.replace("\n", "\n    "), flush=True)


def print_table(results: Sequence[StepResult], max_loss: float, max_delay: float) -> None:
    print(
        f"{'relay':<15} {'N':>4} {'offered':>7} {'pps':>7} {'loss %':>6} {'dly %':>6}"
        f" {'dly99':>6} {'relay %':>7} {'us/pkt':>6} {'pkt/CPU s':>9} {'gen %':>5}"
        f" {'late99':>6} {'box %':>5} {'all us':>6} {'path us':>7} {'drops':>7} {'ok':>3}"
    )
    for r in results:
        if r.error:
            print(f"{r.relay:<15} {r.sessions:>4} {100 * r.sessions:>7}  failed: "
                  f"{r.error.splitlines()[0][:60]}")
            continue
        ok = "yes" if r.clean(max_loss) and r.generator_ok else (
            "gen" if r.clean(max_loss) else "NO")
        print(
            f"{r.relay:<15} {r.sessions:>4} {100 * r.sessions:>7} {fmt(r.pps, '.0f'):>7}"
            f" {fmt(r.loss * 100, '.3f'):>6} {fmt(r.delayed_share * 100, '.3f'):>6}"
            f" {r.delay_ms(0.99):>6.1f} {fmt(r.relay_pct):>7} {fmt(r.us_per_packet):>6}"
            f" {fmt(r.pps_per_cpu, '.0f'):>9} {fmt(r.gen_pct, '.0f'):>5}"
            f" {r.late_p99_ms:>6.1f} {fmt(r.box_pct, '.0f'):>5}"
            f" {fmt(r.machine_us_per_packet):>6} {fmt(r.path_us_per_packet):>7}"
            f" {f'{r.drops_relay}/{r.drops_gen}':>7} {ok:>3}"
        )
    print(
        "offered: packets/s sent to the relay (100 per session); pps: forwarded packets/s\n"
        "(received by the parties); loss %: packets never received; dly %: received more\n"
        f"than {max_delay * 1000:g} ms after they were sent; dly99: 99th percentile of the"
        " delay (ms);\n"
        "relay %: the relay's CPU, % of one core, over the counted window; us/pkt: relay\n"
        "CPU per forwarded packet; gen %: all generators' CPU; late99: the generators'\n"
        "99th percentile lateness against the 20 ms schedule (ms); box %: relay +\n"
        "generators, % of all CPUs (>= 90: saturated, the relay competes with its load);\n"
        "all us: every CPU's busy time (/proc/stat) per forwarded packet, whatever ran;\n"
        "path us: relay + generators + ksoftirqd CPU per packet: every context the\n"
        "packets' work is charged to (the kernel forwards in the sender's softirq);\n"
        "drops: datagrams the kernel dropped on full relay/generator sockets;\n"
        f"ok: loss % + dly % <= {max_loss * 100:g} % and the generator kept up (gen: it did"
        " not)."
    )


def highest(results: Sequence[StepResult], which: str, max_loss: float) -> StepResult | None:
    best = None
    for r in sorted((r for r in results if r.relay == which), key=lambda r: r.sessions):
        if not (r.clean(max_loss) and r.generator_ok):
            break
        best = r
    return best


def compare_paths(results: Sequence[StepResult], max_loss: float) -> None:
    """--netns: per N that every relay handled cleanly, the CPU per packet of
    relay + generators + ksoftirqd, and that less the "direct" baseline (the
    parties alone through plain IP routing): what relaying itself costs."""
    by: dict[str, dict[int, StepResult]] = {}
    for r in results:
        by.setdefault(r.relay, {})[r.sessions] = r
    for n in sorted({r.sessions for r in results}):
        row = {name: steps.get(n) for name, steps in by.items()}
        if not all(x is not None and x.clean(max_loss) and x.generator_ok for x in row.values()):
            continue
        parts = [f"{name} {fmt(x.path_us_per_packet)}" for name, x in row.items()
                 if x is not None]
        print(f"  N={n}: CPU per packet, relay + generators + ksoftirqd (us): "
              + ", ".join(parts))
        base = row.get("direct")
        if base is None:
            continue
        extra = {name: x.path_us_per_packet - base.path_us_per_packet
                 for name, x in row.items() if x is not None and name != "direct"}
        line = "    over the direct baseline (us): " + ", ".join(
            f"{name} {fmt(v, '+.1f')}" for name, v in extra.items())
        k, e = extra.get("sipsuite-kernel"), extra.get("rtpengine")
        if k is not None and e is not None and k > 0:
            line += f"; rtpengine/kernel {fmt(e / k, '.1f')}x"
        c = extra.get("cfwd")
        if k is not None and c is not None and k > 0:
            line += f"; cfwd/kernel {fmt(c / k, '.1f')}x"
        print(line)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default=None,
                   help=f"rising session counts, 100 packets/s each (default {DEFAULT_SESSIONS})")
    p.add_argument("--seconds", type=float, default=None,
                   help="counted seconds per step (default 10)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of load before counting starts (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 10, 100 and 400 sessions, 4 s each (~45 s)")
    p.add_argument("--generators", type=int, default=0,
                   help=f"generator processes (default: one per {SESSIONS_PER_GENERATOR}"
                   " sessions)")
    p.add_argument("--rtpengine-threads", type=int, default=1,
                   help="rtpengine --num-threads (default 1, like our one reactor thread)")
    p.add_argument("--workers", type=int, default=1,
                   help="sipsuite's rtp-relay --workers (default 1: one process)")
    p.add_argument("--max-loss", type=float, default=0.001,
                   help="highest loss that counts as handled (default 0.001 = 0.1 %%)")
    p.add_argument("--max-delay", type=float, default=0.1,
                   help="seconds after sending past which a received packet counts as lost too"
                   " (a jitter buffer would discard it; default 0.1; 0: no limit)")
    p.add_argument("--only", default="",
                   help="measure only these relays, in this order at each N (comma-separated:"
                   f" {', '.join(NETNS_RELAYS)}), e.g. sipsuite-kernel,cfwd for paired runs")
    p.add_argument("--netns", action="store_true",
                   help="relay and parties on three hosts (network namespaces, veth links;"
                   " root): sipsuite with kernel forwarding, then in userspace, then rtpengine,"
                   " then no relay (\"direct\": the parties through plain IP routing, the"
                   " baseline)")
    p.add_argument("--budget", type=float, default=360.0,
                   help="do not start a step that could end later than this many seconds"
                   " after the start (default 360)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--late-limit", type=float, default=LATE_LIMIT_MS,
                   help="generator lateness p99 (ms) past which a step does not count"
                   f" (default {LATE_LIMIT_MS:g}; raise it on a machine other programs load)")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions = args.sessions or "10,100,400"
        args.seconds = args.seconds or 4.0
        args.warmup = args.warmup if args.warmup is not None else 1.0
    args.sessions = args.sessions or DEFAULT_SESSIONS
    args.seconds = args.seconds or 10.0
    args.warmup = args.warmup if args.warmup is not None else 2.0
    try:
        args.session_list = sorted({int(x) for x in args.sessions.split(",") if x.strip()})
    except ValueError:
        p.error(f"--sessions: expected numbers separated by commas, got {args.sessions!r}")
    if not args.session_list or min(args.session_list) <= 0:
        p.error("--sessions: need positive numbers")
    args.only_list = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in args.only_list if x not in NETNS_RELAYS]
    if unknown:
        p.error(f"--only: unknown relay {unknown[0]!r} (one of {', '.join(NETNS_RELAYS)})")
    if args.max_delay <= 0:
        args.max_delay = float("inf")
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be positive and --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    global late_limit_ms
    late_limit_ms = args.late_limit
    needs_ns = {"sipsuite-kernel", "direct"}.intersection(args.only_list)
    if needs_ns and not args.netns:
        sys.exit(f"--only {min(needs_ns)} needs --netns (on loopback every packet is local)")
    relays = args.only_list or list(NETNS_RELAYS if args.netns else RELAYS)
    if "rtpengine" in relays and not os.access(RTPENGINE, os.X_OK):
        sys.exit(f"missing {RTPENGINE} (Debian package rtpengine-daemon); or use"
                 " --only sipsuite")
    began = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="relay_pps."))
    settings = Settings(args.seconds, args.warmup, workroot, args.generators,
                        args.rtpengine_threads, args.max_loss, args.max_delay,
                        workers=args.workers)
    if "cfwd" in relays:
        settings.cfwd = build_cfwd(workroot)
    if args.netns:
        settings.hosts = Hosts()  # deleted in the finally below
    print(
        f"sessions {args.session_list} (100 packets/s each, {PACKET}-byte datagrams),"
        f" {args.warmup:g} s warm-up + {args.seconds:g} s counted per step,"
        f" sipsuite relay workers {args.workers},"
        f" {os.cpu_count()} CPUs, work files in {workroot}",
        flush=True,
    )
    results: list[StepResult] = []
    going = set(relays)
    stopped = dict.fromkeys(relays, "the end of --sessions")
    keep = args.keep
    try:
        for n in args.session_list:
            for which in relays:
                if which not in going:
                    continue
                # start-up + set-up + warm-up + window + drain + stop
                worst = args.warmup + args.seconds + 8 + n * 0.01
                if time.monotonic() - began + worst > args.budget:
                    print(f"  time budget reached: not running {which} N={n}", flush=True)
                    going.discard(which)
                    stopped[which] = f"the time budget (--budget {args.budget:g} s)"
                    continue
                r = run_step(settings, which, n)
                results.append(r)
                report_step(r, args.max_loss)
                if r.error or not r.clean(args.max_loss) or not r.generator_ok:
                    going.discard(which)
                    keep = keep or bool(r.error)
                    stopped[which] = (
                        f"an error at N={n}" if r.error
                        else f"loss or delay at N={n}" if not r.clean(args.max_loss)
                        else f"the generator falling behind at N={n}"
                    )
                    if r.saturated:
                        stopped[which] += " (machine saturated)"
            if not going:
                break

        print()
        print_table(results, args.max_loss, args.max_delay)
        print()
        best = {which: highest(results, which, args.max_loss) for which in relays}
        late = (f"lost, or delayed > {args.max_delay * 1000:g} ms"
                if math.isfinite(args.max_delay) else "lost; no delay limit")
        limit = f"loss ({late}) <= {args.max_loss * 100:g} %"
        for which in relays:
            b = best[which]
            if b is None:
                print(f"{which}: no step with {limit} and the generator keeping up")
                continue
            print(
                f"{which}: highest packet rate with {limit}:"
                f" {b.pps:.0f} packets/s (N={b.sessions}; the sweep was stopped by"
                f" {stopped[which]}), {fmt(b.us_per_packet, '.2f')} us CPU per packet"
                f" ({fmt(b.relay_pct, '.0f')} % of a core),"
                f" {fmt(b.pps_per_cpu, '.0f')} packets per CPU second"
            )
        if sorted(relays) == ["rtpengine", "sipsuite"]:
            ours = {r.sessions: r for r in results if r.relay == "sipsuite"}
            theirs = {r.sessions: r for r in results if r.relay == "rtpengine"}
            both = [
                n for n in sorted(ours)
                if n in theirs
                and all(x.clean(args.max_loss) and x.generator_ok for x in (ours[n], theirs[n]))
            ]
            for n in both:
                ratio = ours[n].pps_per_cpu / theirs[n].pps_per_cpu
                print(f"  N={n}: sipsuite/rtpengine packets per CPU second {fmt(ratio, '.2f')}")
            if both:
                n = both[-1]
                ratio = ours[n].pps_per_cpu / theirs[n].pps_per_cpu
                verdict = "met" if ratio >= 0.5 else "NOT met"
                print(
                    f"sipsuite/rtpengine packets per CPU second at N={n}"
                    f" ({ours[n].pps:.0f} vs {theirs[n].pps:.0f} packets/s):"
                    f" {fmt(ratio, '.2f')} (target >= 0.5: {verdict})"
                )
            else:
                print("sipsuite/rtpengine: no N that both handled; no ratio")
        if args.netns:
            compare_paths(results, args.max_loss)
        kern, cref = best.get("sipsuite-kernel"), best.get("cfwd")
        if kern is not None and cref is not None:
            print(f"sipsuite-kernel/cfwd highest clean packet rate: {kern.pps:.0f}/{cref.pps:.0f}"
                  f" = {fmt(100 * kern.pps / cref.pps, '.0f')} % (target >= 90 %), relay"
                  f" process {fmt(kern.relay_pct, '.1f')} % of one core at that rate"
                  " (target < 5 %)")
        print(f"total time {time.monotonic() - began:.0f} s")
        return 0 if all(not r.error for r in results) else 1
    finally:
        if settings.hosts is not None:
            settings.hosts.close()
        if keep:
            print(f"work files kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
