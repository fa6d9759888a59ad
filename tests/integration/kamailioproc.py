"""Kamailio from Debian's package, for interop tests: ``start_kamailio`` runs
a config from tests/integration/kamailio/ with ``-DD -E`` in its own process
group (its workers are forked children: only ending the group ends them all),
defines given with ``-A``; ``KamailioProcess.stop`` ends the group.

Nothing here imports sipsuite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common import LOCALHOST, tail
from endpoints import options_ping

CONFIGS = Path(__file__).resolve().parent / "kamailio"


def kamailio_binary() -> str:
    """Kamailio's path; raises (tests FAIL, never skip) when it is missing."""
    path = shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.path.exists(p)), None)
    if path is None:
        raise RuntimeError("kamailio is not installed (Debian package kamailio); interop tests need it")
    return path


class KamailioStartError(RuntimeError):
    pass


@dataclass
class KamailioProcess:
    port: int
    log: Path
    command: list[str]
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> tuple[str, int]:
        return LOCALHOST, self.port

    def alive(self) -> bool:
        return self.proc.poll() is None

    def diagnostics(self, lines: int = 60) -> str:
        state = "running" if self.alive() else f"exited rc={self.proc.returncode}"
        return f"--- kamailio ({state}) {' '.join(self.command)}\n{tail(self.log, lines)}\n"

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive the main process for a moment: end the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def start_kamailio(
    workdir: Path, config: str, port: int, defines: dict[str, str], ready_timeout: float = 20.0
) -> KamailioProcess:
    """Start ``CONFIGS/config`` listening on udp 127.0.0.1:``port``; ready once it
    answers an OPTIONS with Max-Forwards 0 (483 from its own request_route)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rundir = workdir / "run"
    rundir.mkdir(exist_ok=True)
    log = workdir / "kamailio.log"
    cmd = [
        kamailio_binary(), "-f", str(CONFIGS / config), "-DD", "-E", "-n", "1",
        "-m", "64", "-M", "8", "-Y", str(rundir),
        "-A", f"LISTEN=udp:{LOCALHOST}:{port}",
    ]  # fmt: skip
    for name, value in defines.items():
        cmd += ["-A", f"{name}={value}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    kam = KamailioProcess(port, log, cmd, proc)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not kam.alive():
            raise KamailioStartError("kamailio exited during start-up\n" + kam.diagnostics())
        if options_ping(LOCALHOST, port, timeout=0.3, max_forwards=0) is not None:
            return kam
    kam.stop()
    raise KamailioStartError(f"kamailio did not answer on udp:{LOCALHOST}:{port}\n" + kam.diagnostics())
