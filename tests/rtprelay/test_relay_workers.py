"""`twistd -n rtp-relay --workers 2` as real processes: one control address,
two worker processes each relaying on its half of the ports, driven over UDP
as Kamailio drives rtpproxy, with media through both and one worker killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from relaynet import port_range

from sipsuite.rtprelay.router import worker_of
from sipsuite.rtprelay.workers import split_ports

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp(timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def command(sock: socket.socket, addr: tuple[str, int], text: str) -> str:
    sock.sendto(text.encode(), addr)
    data, source = sock.recvfrom(65535)
    assert source == addr  # the reply leaves from the address the command reached
    return data.decode().rstrip("\n")


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160


def rpc(port: int, method: str, params: Any = None, check: bool = True) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        reply = json.loads(response.read())
    assert not check or "error" not in reply, reply
    return reply.get("result")


def ctl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipsuite.ops.ctl.cli", "--url", url, *args],
                          capture_output=True, text=True, timeout=20)


def call_ids(workers: int) -> dict[int, str]:
    """A Call-ID for each worker (the supervisor routes by its hash)."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < workers:
        found.setdefault(worker_of(f"call-{n}@test", workers), f"call-{n}@test")
        n += 1
    return found


def workers_of(pid: int) -> dict[int, int]:
    """index -> pid of the supervisor's worker processes (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == pid and b"sipsuite.rtprelay.worker" in argv:
            found[int(argv[argv.index(b"--index") + 1])] = int(entry)
    return found


class Call:
    """One call through the relay: a caller and a callee socket, latched."""

    def __init__(self, client: socket.socket, addr: tuple[str, int], call_id: str,
                 cookie: str) -> None:
        self.client, self.addr, self.call_id = client, addr, call_id
        self.caller, self.callee = udp(), udp()
        self.offer_cmd = (f"{cookie}u U {call_id} 127.0.0.1 {self.caller.getsockname()[1]}"
                          " f;1")
        self.offer = command(client, addr, self.offer_cmd)
        self.to_callee = int(self.offer.split()[1])
        answer = command(client, addr, f"{cookie}l L {call_id} 127.0.0.1"
                                       f" {self.callee.getsockname()[1]} f;1 t;1")
        self.to_caller = int(answer.split()[1])

    def media(self, seqs: range) -> None:
        for seq in seqs:
            self.caller.sendto(rtp(seq, 0xAA), ("127.0.0.1", self.to_caller))
            data, src = self.callee.recvfrom(2048)
            assert data == rtp(seq, 0xAA) and src == ("127.0.0.1", self.to_callee)
            self.callee.sendto(rtp(seq, 0xBB), ("127.0.0.1", self.to_callee))
            data, src = self.caller.recvfrom(2048)
            assert data == rtp(seq, 0xBB) and src == ("127.0.0.1", self.to_caller)

    def close(self) -> None:
        self.caller.close()
        self.callee.close()


def test_two_relay_workers_behind_one_control_address(tmp_path: Path) -> None:
    control_port = free_port()
    management_port = free_port(socket.SOCK_STREAM)
    low, high = port_range(40)
    slices = split_ports(low, high, 2)
    (tmp_path / "relay.toml").write_text(
        f'[management]\nrelay_listen = "tcp:127.0.0.1:{management_port}"\n'
        "[relay]\ndrain_time = 1.0\n")
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml", "--workers", "2",
         "--control", f"udp:127.0.0.1:{control_port}", "--ports", f"{low}-{high}",
         "--media-address", "127.0.0.1"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    addr = ("127.0.0.1", control_port)
    client = udp(0.3)
    calls: list[Call] = []
    try:
        # Ready when both workers answer (V is the supervisor's own answer);
        # their management port is up after their control socket.
        ids = call_ids(2)
        deadline = time.monotonic() + 30
        while True:
            try:
                if all("down" not in w for w in rpc(management_port, "relay.stats",
                                                    check=False)["workers"].values()):
                    break
            except (OSError, KeyError, TypeError):
                pass
            assert proc.poll() is None, proc.communicate()[0]
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the relay's workers did not answer\n{proc.communicate()[0]}")
            time.sleep(0.2)
        client.settimeout(3.0)
        assert len(workers_of(proc.pid)) == 2
        assert command(client, addr, "v V") == "v 20040107"

        # A call on each worker: its ports are in that worker's slice.
        for index in (0, 1):
            call = Call(client, addr, ids[index], f"w{index}")
            calls.append(call)
            lo, hi = slices[index]
            assert lo <= call.to_callee <= hi and lo <= call.to_caller <= hi, (index, slices)
        # A retransmitted U (same cookie) gets the identical reply, no new session.
        assert command(client, addr, calls[1].offer_cmd) == calls[1].offer
        for call in calls:
            call.media(range(1, 4))
        assert command(client, addr, "i I").splitlines()[:2] == [
            "i sessions created: 2", "active sessions: 2"]
        assert command(client, addr, "g Gv nsess_created npkts_relayed") == \
            "g nsess_created=2 npkts_relayed=12"
        stats = rpc(management_port, "relay.stats")
        assert stats["sessions_active"] == 2 and stats["sessions_created"] == 2
        assert stats["packets_relayed"] == 12 and stats["retransmissions"] >= 1
        assert stats["workers"]["0"]["sessions_active"] == 1
        assert stats["workers"]["1"]["sessions_active"] == 1
        sessions = rpc(management_port, "relay.sessions")
        assert sorted((s["call_id"], s["worker"]) for s in sessions) == \
            sorted((ids[i], i) for i in (0, 1))
        # sipsuite-ctl shows each worker's rows, and which worker holds a call.
        url = f"http://127.0.0.1:{management_port}/"
        shown = ctl(url, "relay", "stats")
        assert ["workers.1.sessions_active", "1"] in [line.split() for line in
                                                      shown.stdout.splitlines()], shown
        shown = ctl(url, "relay", "sessions", ids[1])
        lines = shown.stdout.splitlines()
        assert lines[0].split()[-1] == "WORKER" and lines[1].split()[0] == ids[1], shown
        assert lines[1].split()[-1] == "1" and len(lines) == 2, shown

        # SIGKILL worker 1 (after its once-a-second session report): it comes
        # back, its call is gone, worker 0's call keeps relaying meanwhile.
        time.sleep(1.5)
        old = workers_of(proc.pid)
        os.kill(old[1], signal.SIGKILL)
        calls[0].media(range(4, 7))
        deadline = time.monotonic() + 20
        while True:
            new = workers_of(proc.pid)
            reply = command(client, addr, f"q{time.monotonic()} Q {ids[1]} f;1 t;1")
            if 1 in new and new[1] != old[1] and reply.split()[1] == "E50":
                break
            assert time.monotonic() < deadline, (old, new, reply)
            time.sleep(0.2)
        assert new[0] == old[0]
        # The restarted worker takes new calls on its slice again.
        deadline = time.monotonic() + 20
        while True:
            again = command(client, addr, f"a{time.monotonic()} U {ids[1]}-2 127.0.0.1 4000 f;1")
            if not again.split()[1].startswith("E"):
                break
            assert time.monotonic() < deadline, again
            time.sleep(0.2)
        stats = rpc(management_port, "relay.stats")
        assert stats["worker_deaths"] == 1 and stats["sessions_lost"] == 1, stats

        # D reaches the worker that holds the call; a retransmitted D gets
        # the same answer (cached), not E50.
        delete = f"d D {ids[0]} f;1"
        assert command(client, addr, delete) == "d 0"
        assert command(client, addr, delete) == "d 0"
        assert command(client, addr, f"q2 Q {ids[0]} f;1 t;1") == "q2 E50"
        calls[0].caller.sendto(rtp(9, 0xAA), ("127.0.0.1", calls[0].to_caller))
        calls[0].callee.settimeout(0.5)
        try:
            calls[0].callee.recvfrom(2048)
            raise AssertionError("media relayed after D")
        except TimeoutError:
            pass

        workers = workers_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=40)
        assert proc.returncode in (0, -signal.SIGTERM), output
        assert "relay worker 1 died with 1 session(s)" in output, output
        # The call made after the restart drains in worker 1 (drain_time 1 s).
        assert "worker 1: relay draining: 1 session(s)" in output, output
        assert "worker 1 killed by signal 9 (SIGKILL); restarting it" in output, output
        assert "Traceback" not in output, output
        for pid in workers.values():
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
    finally:
        client.close()
        for call in calls:
            call.close()
        if proc.poll() is None:
            for pid in workers_of(proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def unix_command(path: Path, text: str) -> str:
    """One command over a unix stream socket, as Kamailio's ``unix:`` sends it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(text.encode())
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return reply.decode().rstrip("\n")


def test_relay_workers_behind_a_unix_control_socket(tmp_path: Path) -> None:
    """Kamailio's default, `rtpproxy_sock = "unix:..."`: no cookie; U, L, Q
    and D reach the worker of the call, I adds both up."""
    low, high = port_range(40)
    slices = split_ports(low, high, 2)
    path = tmp_path / "relay.sock"
    (tmp_path / "relay.toml").write_text(
        '[management]\nrelay_listen = ""\n[relay]\nworkers = 2\ndrain_time = 60.0\n')
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml",
         "--control", f"unix:{path}", "--ports", f"{low}-{high}", "--media-address", "127.0.0.1"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Answered once both workers serve (commands wait for them at start).
        assert unix_command(path, "V") == "20040107"
        ids = call_ids(2)
        for index in (0, 1):
            port, address = unix_command(path, f"U {ids[index]} 127.0.0.1 4000 f;1").split()
            assert address == "127.0.0.1"
            assert slices[index][0] <= int(port) <= slices[index][1]
            assert unix_command(path, f"L {ids[index]} 127.0.0.1 4002 f;1 t;1").split()[0] != "0"
            assert unix_command(path, f"Q {ids[index]} f;1 t;1").split()[1:] == ["0"] * 4
        assert unix_command(path, "I").splitlines()[1] == "active sessions: 2"
        assert unix_command(path, f"D {ids[1]} f") == "0"
        assert unix_command(path, f"D {ids[1]} f") == "E50"  # no cookie, no cache: gone
        assert unix_command(path, "I").splitlines()[1] == "active sessions: 1"
        # SIGTERM: the workers drain; the supervisor's socket still takes
        # commands (new sessions are refused, E99, the old one stays) ...
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        probe = 0
        # A new call each time: one set up before the SIGTERM arrived is an
        # existing session, which a U updates even while draining.
        while unix_command(path, f"U {ids[1]}-new{probe} 127.0.0.1 4000 f;1") != "E99":
            assert time.monotonic() < deadline, "the workers did not start draining"
            probe += 1
            time.sleep(0.1)
        assert unix_command(path, f"Q {ids[0]} f;1 t;1").split()[1:] == ["0"] * 4
        # ... until a second SIGTERM cuts the drain short.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert time.monotonic() - started < 15, output
        assert proc.returncode in (0, -signal.SIGTERM), output
        assert "relay drain ended by a second signal: " in output, output
        for sign in ("Traceback", "ReactorNotRunning", "Unhandled"):
            assert sign not in output, output
        assert not path.exists()  # the supervisor's socket, removed on stop
    finally:
        if proc.poll() is None:
            for pid in workers_of(proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()


def test_relay_workers_refused_with_one_line(tmp_path: Path) -> None:
    """Bad worker counts, too small a port range, and `twistd sipsuite`
    (whose proxy drives its relay in-process): exit status 2, one line."""
    (tmp_path / "two.toml").write_text("[relay]\nworkers = 2\n")
    cases = [
        (["rtp-relay", "--workers", "0"], "--workers: expected a whole number from 1 to 64"),
        (["rtp-relay", "--workers", "3", "--ports", "20000-20003"],
         "relay.workers = 3: relay.ports 20000-20003 holds 2 port pair(s)"),
        (["sipsuite", "--config", "two.toml"], "relay.workers = 2: only for twistd rtp-relay"),
    ]
    for args, message in cases:
        done = subprocess.run([*TWISTD, "-n", "--pidfile=", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_relay_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the supervisor leaves no orphan relaying media: each
    worker sees its parent gone and stops by itself."""
    control_port = free_port()
    low, high = port_range(40)
    (tmp_path / "relay.toml").write_text('[management]\nrelay_listen = ""\n[relay]\ndrain_time = 0\n')
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml", "--workers", "2",
         "--control", f"udp:127.0.0.1:{control_port}", "--ports", f"{low}-{high}",
         "--media-address", "127.0.0.1"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    client = udp(0.5)
    workers: dict[int, int] = {}
    try:
        # V is answered once both workers serve (tried until twistd listens).
        deadline = time.monotonic() + 30
        while True:
            try:
                if command(client, ("127.0.0.1", control_port),
                           f"v{time.monotonic()} V").endswith(" 20040107"):
                    break
            except TimeoutError:
                assert time.monotonic() < deadline, "rtp-relay did not answer V"
        workers = workers_of(proc.pid)
        assert len(workers) == 2
        with open(f"/proc/{workers[0]}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        private = Path(argv[argv.index(b"--channel") + 1].decode()).parent
        assert private.is_dir()
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while any(os.path.exists(f"/proc/{pid}") and not _zombie(pid)
                  for pid in workers.values()):
            assert time.monotonic() < deadline, "relay workers outlived their supervisor"
            time.sleep(0.1)
        # The last one out removed the supervisor's private directory.
        assert not private.exists(), list(private.iterdir())
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers.values():
            if os.path.exists(f"/proc/{pid}") and not _zombie(pid):
                os.kill(pid, signal.SIGKILL)
