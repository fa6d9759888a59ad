"""examples/sipsuite.tac under ``twistd -ny``: the suite built from Python in
the operator's own application starts, carries a sipp call (its own
service logs the call from the events), and stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import LOCALHOST, REPO, free_port, sipp_dir
from endpoints import options_ping
from sipp import SippProcess, run_sipp

TAC = REPO / "examples" / "sipsuite.tac"


def test_tac_starts_carries_a_call_and_stops_cleanly(sipp_bin: str, tmp_path: Path) -> None:
    port, uas_port = free_port(), free_port("udp")
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO),
        "SIPSUITE_PORT": str(port),
        "SIPSUITE_MANAGEMENT": f"tcp:{LOCALHOST}:{free_port('tcp')}",
        "SIPSUITE_RELAY_CONTROL": f"udp:{LOCALHOST}:{free_port('udp')}",
        "SIPSUITE_CALL_LOG": str(tmp_path / "calls.jsonl"),
        "SIPSUITE_STATIC": f"bob=sip:bob@{LOCALHOST}:{uas_port}",
    })
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-ny", str(TAC), "--pidfile=", f"--logfile={log}"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while options_ping(LOCALHOST, port, timeout=0.3) is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the tac never answered OPTIONS\n" + log.read_text()
        uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=tmp_path,
                          local_port=uas_port, calls=1, timeout_s=20, service="bob")
        uas.wait_bound()
        uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path,
                       remote=(LOCALHOST, port), local_port=free_port("udp"), calls=1,
                       timeout_s=20, service="bob", duration_ms=500)
        res = uas.wait()
        assert (uac.rc, uac.successful, res.successful) == (0, 1, 1), (
            uac.summary() + res.summary() + log.read_text())
        calls = tmp_path / "calls.jsonl"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(_lines(calls)) < 2:
            time.sleep(0.05)
        events = [json.loads(line) for line in _lines(calls)]
        assert [e["event"] for e in events] == ["call.started", "call.ended"], events
        assert events[1]["answered"] is True and events[1]["to"].startswith("sip:bob@")
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(10)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    text = log.read_text()
    # twistd re-raises the signal that stopped it: killed by SIGTERM, after a clean shutdown.
    assert rc == -signal.SIGTERM, text
    assert "Server Shut Down." in text and "Traceback" not in text, text


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
