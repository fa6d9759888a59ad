"""``[management] token`` on `twistd rtp-relay`'s own listener
(``relay_listen``): refused beyond loopback without one; with workers, the
supervisor sends it to its workers' listeners, which require it too."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from relaynet import port_range

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
TOKEN = "relay-token-0123456789abcdef"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rpc(port: int, method: str, token: str | None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", body, headers)
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_relay_listen_beyond_loopback_without_token_is_refused(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text(
        f'[management]\nrelay_listen = "tcp:0.0.0.0:{free_port(socket.SOCK_STREAM)}"\n')
    low, high = port_range(4)
    done = subprocess.run([*TWISTD, "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml",
                           "--control", f"udp:127.0.0.1:{free_port()}", "--ports", f"{low}-{high}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "[management] relay_listen = '0.0.0.0' is not a loopback address" in done.stderr, (
        done.stdout + done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_relay_workers_with_a_token(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_STREAM)
    low, high = port_range(20)
    (tmp_path / "relay.toml").write_text(
        f'[management]\nrelay_listen = "tcp:127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
        "[relay]\ndrain_time = 0\n")
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml", "--workers", "2",
         "--control", f"udp:127.0.0.1:{free_port()}", "--ports", f"{low}-{high}"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        workers: dict[str, Any] = {}
        while True:
            try:
                status, reply = rpc(port, "relay.stats", TOKEN)
                workers = (reply or {}).get("result", {}).get("workers", {})
                if status == 200 and workers and all("down" not in w for w in workers.values()):
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, f"workers not up: {workers}"
            time.sleep(0.2)
        assert set(workers) == {"0", "1"}
        assert rpc(port, "relay.stats", None)[0] == 401
        assert rpc(port, "relay.stats", "x" * 20)[0] == 401
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
