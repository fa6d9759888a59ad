#!/usr/bin/env python3
"""Control-plane rate of sipsuite's RTP relay: RTPProxy commands per second.

    python bench/relay_control_rate.py [--workers 1,2] [--sessions 1000] [--window 1,16]

For each worker count a fresh ``twistd rtp-relay --workers N`` on 127.0.0.1
(ports picked at run time), then, for each window W, one client sets up and
tears down --sessions sessions over UDP (a U, then a D, per session, each with
a cookie of its own), keeping W commands in flight (1: one at a time, the
round-trip bound; 16: about what a Kamailio with many children offers).
Prints commands/s and sessions/s (U+D) and the relay's CPU per command
(utime+stime of its process group, supervisor and workers). Sessions get no
media: this is the cost of the control plane alone. A few seconds per run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import CLK_TCK, HOST, REPO, CpuMeter, free_udp_port, kill_group, ticks_between


def start_relay(workdir: Path, workers: int, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "relay.toml"
    conf.write_text('[relay]\ndrain_time = 0.0\nkernel = "off"\n[management]\nrelay_listen = ""\n'
                    '[log]\nlevel = "warn"\n')
    low = 20000
    cmd = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", f"--logfile={workdir / 'relay.log'}", "rtp-relay",
        "--config", str(conf), "--control", f"udp:{HOST}:{port}", "--media-address", HOST,
        "--ports", f"{low}-{low + 9999}", "--workers", str(workers),
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_up(sock: socket.socket, addr: tuple[str, int], proc: subprocess.Popen[bytes]) -> None:
    """V is answered once every worker serves."""
    deadline = time.monotonic() + 30
    n = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rtp-relay exited with status {proc.returncode}")
        n += 1
        sock.sendto(f"up{n} V".encode(), addr)
        try:
            if sock.recv(200).endswith(b" 20040107\n"):
                return
        except TimeoutError:
            pass
    raise RuntimeError("rtp-relay did not answer V within 30 s")


def run(sock: socket.socket, addr: tuple[str, int], sessions: int, window: int,
        tag: str) -> tuple[float, int]:
    """(seconds, error replies) for sessions x (U, D) with `window` in flight."""
    commands = [f"u{i} U {tag}-{i}@bench 127.0.0.1 4000 f;1" for i in range(sessions)]
    commands += [f"d{i} D {tag}-{i}@bench f" for i in range(sessions)]
    sent = got = errors = 0
    started = time.perf_counter()
    while got < len(commands):
        while sent < len(commands) and sent - got < window and (sent < sessions or got >= sessions):
            sock.sendto(commands[sent].encode(), addr)
            sent += 1
        reply = sock.recv(200)
        got += 1
        if reply.split()[1].startswith(b"E"):
            errors += 1
    return time.perf_counter() - started, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    p.add_argument("--sessions", type=int, default=1000, help="sessions per run (default 1000)")
    p.add_argument("--window", default="1,16", help="commands in flight (default 1,16)")
    args = p.parse_args(argv)
    workers = [int(x) for x in args.workers.split(",")]
    windows = [int(x) for x in args.window.split(",")]
    print(f"{args.sessions} sessions per run (U then D each), {os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'window':>6} {'commands/s':>10} {'sessions/s':>10}"
          f" {'relay us/command':>16} {'errors':>6}")
    for n in workers:
        with tempfile.TemporaryDirectory(prefix="relay_control_rate.") as tmp:
            port = free_udp_port()
            proc = start_relay(Path(tmp), n, port)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.settimeout(0.5)
            addr = (HOST, port)
            meter = CpuMeter(proc.pid)
            try:
                wait_up(sock, addr, proc)
                sock.settimeout(10)
                for w in windows:
                    before = meter.sample()
                    seconds, errors = run(sock, addr, args.sessions, w, f"w{n}x{w}")
                    cpu = ticks_between(before, meter.sample()) / CLK_TCK
                    count = 2 * args.sessions
                    print(f"{n:>7} {w:>6} {count / seconds:>10.0f} {args.sessions / seconds:>10.0f}"
                          f" {cpu / count * 1e6:>16.0f} {errors:>6}", flush=True)
            finally:
                sock.close()
                kill_group(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
