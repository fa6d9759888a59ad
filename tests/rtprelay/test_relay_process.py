"""`twistd -n rtp-relay` as a real process, driven over UDP like Kamailio
drives rtpproxy, with media through it and sipsuite-ctl reading its tables."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from relaynet import port_range

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
    assert source == addr
    return data.decode().rstrip("\n")


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160


def ctl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("sipsuite-ctl")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "sipsuite.ctl"]
    return subprocess.run([*base, "--url", url, *args], capture_output=True, text=True,
                          timeout=20)


def test_rtp_relay_process(tmp_path: Path) -> None:
    control_port = free_port()
    management_port = free_port(socket.SOCK_STREAM)
    low, high = port_range()
    (tmp_path / "relay.toml").write_text(
        f'[management]\nlisten = "tcp:127.0.0.1:{management_port}"\n'
        "[relay]\ndrain_time = 1.0\n")
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml",
         "--control", f"udp:127.0.0.1:{control_port}", "--ports", f"{low}-{high}",
         "--media-address", "127.0.0.1"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    addr = ("127.0.0.1", control_port)
    client, caller, callee = udp(0.2), udp(), udp()
    try:
        deadline = time.monotonic() + 30
        while True:  # ready once it answers V
            try:
                if command(client, addr, "r V") == "r 20040107":
                    break
            except TimeoutError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "rtp-relay did not answer V"
        client.settimeout(2.0)
        assert command(client, addr, "f VF 20081102") == "f 1"
        offer = command(client, addr, f"u US c1 127.0.0.1 {caller.getsockname()[1]} f;1")
        _, to_callee, address = offer.split()
        assert address == "127.0.0.1" and low <= int(to_callee) <= high
        answer = command(client, addr, f"l L c1 127.0.0.1 {callee.getsockname()[1]} f;1 t;1")
        to_caller = int(answer.split()[1])
        for seq in (1, 2, 3):
            caller.sendto(rtp(seq, 0xAA), ("127.0.0.1", to_caller))
            data, src = callee.recvfrom(2048)
            assert data == rtp(seq, 0xAA) and src == ("127.0.0.1", int(to_callee))
            callee.sendto(rtp(seq, 0xBB), ("127.0.0.1", int(to_callee)))
            data, src = caller.recvfrom(2048)
            assert data == rtp(seq, 0xBB) and src == ("127.0.0.1", to_caller)
        assert command(client, addr, "q Q c1 f;1 t;1").split()[2:] == ["3", "3", "6", "0"]
        assert command(client, addr, "bad Z") == "bad E0"

        url = f"http://127.0.0.1:{management_port}/"
        sessions = ctl(url, "relay", "sessions")
        assert sessions.returncode == 0, sessions.stderr
        lines = sessions.stdout.splitlines()
        assert lines[0].split()[0] == "CALL-ID" and lines[1].split()[:3] == ["c1", "f;1", "t;1"]
        stats = ctl(url, "relay", "stats")
        assert stats.returncode == 0, stats.stderr
        assert any(line.split() == ["packets_relayed", "6"] for line in stats.stdout.splitlines())

        # SIGTERM with a call up: drains for drain_time (1 s), then stops.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), output
        assert 0.8 < time.monotonic() - started < 20
        assert "relay draining: 1 session(s)" in output
        assert "Server Shut Down." in output and "Traceback" not in output
    finally:
        for s in (client, caller, callee):
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sipsuite_runs_proxy_and_relay(tmp_path: Path) -> None:
    """`twistd -n sipsuite` answers relay control commands and serves the relay's
    methods on the proxy's management interface."""
    control_port = free_port()
    management_port = free_port(socket.SOCK_STREAM)
    low, high = port_range()
    (tmp_path / "s.toml").write_text(f'[management]\nlisten = "tcp:127.0.0.1:{management_port}"\n')
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "sipsuite", "-c", "s.toml", "--listen", "udp:127.0.0.1:0",
         "--control", f"udp:127.0.0.1:{control_port}", "--ports", f"{low}-{high}"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    client = udp(0.2)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if command(client, ("127.0.0.1", control_port), "r V") == "r 20040107":
                    break
            except TimeoutError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline
        # Media on 0.0.0.0 (the default): the reply carries the port alone.
        reply = command(client, ("127.0.0.1", control_port), "u U c 127.0.0.1 4000 f;1")
        assert len(reply.split()) == 2
        result = ctl(f"http://127.0.0.1:{management_port}/", "relay", "stats")
        assert result.returncode == 0, result.stderr
        assert any(line.split() == ["sessions_active", "1"] for line in result.stdout.splitlines())
        users = ctl(f"http://127.0.0.1:{management_port}/", "user", "list")
        assert users.returncode == 0 and users.stdout.strip() == "no users"
    finally:
        client.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
