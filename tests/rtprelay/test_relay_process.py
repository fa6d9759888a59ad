"""`twistd -n rtp-relay` as a real process, driven over UDP like Kamailio
drives rtpproxy, with media through it and sipsuite-ctl reading its tables."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
    base = [str(script)] if script.exists() else [sys.executable, "-m", "sipsuite.ops.ctl.cli"]
    return subprocess.run([*base, "--url", url, *args], capture_output=True, text=True,
                          timeout=20)


def start_relay(tmp_path: Path, relay_settings: str, *, capture: bool
                ) -> tuple[subprocess.Popen[str], tuple[str, int], int, int, int]:
    """`twistd -n rtp-relay` on free ports with ``relay_settings`` as its
    [relay] section: (process, control address, management port, low, high)."""
    control_port = free_port()
    management_port = free_port(socket.SOCK_STREAM)
    low, high = port_range()
    (tmp_path / "relay.toml").write_text(
        f'[management]\nrelay_listen = "tcp:127.0.0.1:{management_port}"\n'
        f"[relay]\n{relay_settings}")
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml",
         "--control", f"udp:127.0.0.1:{control_port}", "--ports", f"{low}-{high}",
         "--media-address", "127.0.0.1"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out,
        stderr=subprocess.STDOUT if capture else subprocess.DEVNULL, text=True,
    )
    return proc, ("127.0.0.1", control_port), management_port, low, high


def wait_for_version(client: socket.socket, addr: tuple[str, int],
                     proc: subprocess.Popen[str]) -> None:
    """Ready once it answers V; ``client`` must have a short timeout."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if command(client, addr, "r V") == "r 20040107":
                return
        except TimeoutError:
            pass
        assert proc.poll() is None, proc.communicate()[0] if proc.stdout else "rtp-relay exited"
        assert time.monotonic() < deadline, "rtp-relay did not answer V"


def test_rtp_relay_process(tmp_path: Path) -> None:
    proc, addr, management_port, low, high = start_relay(tmp_path, "drain_time = 1.0\n",
                                                         capture=True)
    client, caller, callee = udp(0.2), udp(), udp()
    try:
        wait_for_version(client, addr, proc)
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


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_ends_the_drain_at_once(tmp_path: Path, second: int) -> None:
    """A second SIGTERM (or ^C) while the relay drains cuts the drain short:
    the process exits at once, as after a drain (twistd ends by the first
    signal: status -SIGTERM), with no traceback (the reactor was asked to
    stop twice: ReactorNotRunning)."""
    proc, addr, _, _, _ = start_relay(tmp_path, "drain_time = 60.0\n", capture=True)
    client = udp(0.2)
    try:
        wait_for_version(client, addr, proc)
        client.settimeout(2.0)
        assert command(client, addr, "u US c1 127.0.0.1 4000 f;1").startswith("u ")
        proc.send_signal(signal.SIGTERM)
        # Draining: new sessions are refused (E99) while the old one is relayed.
        deadline = time.monotonic() + 10
        probe = 0
        while (command(client, addr, f"n{probe} U new{probe} 127.0.0.1 4002 f;1")
               != f"n{probe} E99"):
            assert time.monotonic() < deadline, "the relay did not start draining"
            probe += 1  # a new call each time, and a cookie of its own (not a cached reply)
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(second)
        output, _ = proc.communicate(timeout=20)
        elapsed = time.monotonic() - started
        assert proc.returncode == -signal.SIGTERM, output
        assert elapsed < 10, f"{elapsed:.1f} s to stop after the second SIGTERM\n{output}"
        assert "relay draining: " in output, output
        assert "relay drain ended by a second signal" in output, output
        assert "Server Shut Down." in output, output
        for sign in ("Traceback", "ReactorNotRunning", "Unhandled"):
            assert sign not in output, output
    finally:
        client.close()
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


def test_rtp_relay_process_bleed_malformed_and_media_timeout(tmp_path: Path) -> None:
    """The issue's relay show items against a real `twistd -n rtp-relay`:
    during a call a third socket on another address sprays RTP at the relay's
    ports and gets nothing, none of it reaches the call and every packet is
    counted; malformed commands get E-codes and the relay stays up; when the
    phones stop sending the session ends after the media timeout and its
    ports are free again."""
    proc, addr, management_port, low, high = start_relay(
        tmp_path, "media_timeout = 2.0\nlearn_window = 1.0\ndrain_time = 0\n", capture=False)
    client, caller, callee = udp(0.2), udp(), udp()
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.2", 0))
    attacker.settimeout(0.5)
    url = f"http://127.0.0.1:{management_port}/"
    try:
        wait_for_version(client, addr, proc)
        client.settimeout(2.0)
        to_callee = int(command(client, addr,
                                f"u U c9 127.0.0.1 {caller.getsockname()[1]} f;1").split()[1])
        to_caller = int(command(client, addr,
                                f"l L c9 127.0.0.1 {callee.getsockname()[1]} f;1 t;1").split()[1])
        for seq in (1, 2):  # both parties latched: the call is up
            caller.sendto(rtp(seq, 0xAA), ("127.0.0.1", to_caller))
            assert callee.recvfrom(2048)[0] == rtp(seq, 0xAA)
            callee.sendto(rtp(seq, 0xBB), ("127.0.0.1", to_callee))
            assert caller.recvfrom(2048)[0] == rtp(seq, 0xBB)

        sprayed = 0
        for seq in range(20):
            for port in (to_caller, to_callee):
                attacker.sendto(rtp(seq, 0xBAD), ("127.0.0.1", port))
                sprayed += 1
        for seq in (3, 4):  # the call goes on, and carries no sprayed packet
            caller.sendto(rtp(seq, 0xAA), ("127.0.0.1", to_caller))
            assert callee.recvfrom(2048)[0] == rtp(seq, 0xAA)
            callee.sendto(rtp(seq, 0xBB), ("127.0.0.1", to_callee))
            assert caller.recvfrom(2048)[0] == rtp(seq, 0xBB)
        try:
            got = attacker.recvfrom(2048)
        except TimeoutError:
            got = None
        assert got is None, f"the sprayer received {got!r}"
        stats = ctl(url, "--json", "relay", "stats")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["packets_dropped"] == sprayed, stats.stdout

        for bad in ("x1 U", "x2 L c9", "x3 D", "x4 Uqq c 1.2.3.4 99999 f", "x5 Q", "\x00\xff",
                    "x6 " + "A" * 3000):
            client.sendto(bad.encode("latin-1"), addr)
            reply = client.recvfrom(65535)[0].decode("latin-1")
            assert "E" in reply.split()[-1], (bad, reply)
        assert command(client, addr, "v V") == "v 20040107"

        # Silence from both phones: gone after the media timeout, ports free.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            shown = ctl(url, "--json", "relay", "sessions")
            if shown.returncode == 0 and shown.stdout.strip() in ("[]", ""):
                break
            time.sleep(0.3)
        assert shown.stdout.strip() == "[]", shown.stdout
        for port in (to_caller, to_caller + 1, to_callee, to_callee + 1):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))  # raises if the relay still holds it
    finally:
        for s in (client, caller, callee, attacker):
            s.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
