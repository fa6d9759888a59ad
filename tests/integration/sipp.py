"""sipp for the integration tests: ``SippProcess`` / ``run_sipp`` (always bounded:
``-m``, ``-timeout``, an outer wall-clock limit) -> ``SippResult`` with exit code,
call counts from the ``-trace_stat`` csv and the error/screen logs for assertion
messages; ``parse_sipp_messages`` reads a ``-trace_msg`` file back into messages.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common import LOCALHOST, Address, Transport, free_port_range, tail
from sipmsg import SipMessage

# --------------------------------------------------------------------------- sipp


def sipp_binary() -> str:
    """Path of sipp; raises (so tests FAIL, never skip) when it is missing."""
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester); the integration tests need it")
    return path


@dataclass
class SippResult:
    name: str
    rc: int | None  # None: killed by the outer time limit
    workdir: Path
    stats: dict[str, str] = field(default_factory=dict)

    def _int(self, key: str) -> int | None:
        try:
            return int(float(self.stats[key]))
        except (KeyError, ValueError):
            return None

    @property
    def successful(self) -> int | None:
        return self._int("SuccessfulCall(C)")

    @property
    def failed(self) -> int | None:
        return self._int("FailedCall(C)")

    @property
    def created(self) -> int | None:
        return self._int("TotalCallCreated")

    def file(self, suffix: str) -> Path:
        return self.workdir / f"{self.name}{suffix}"

    @property
    def messages_path(self) -> Path:
        return self.file(".msg.log")

    def summary(self, lines: int = 40) -> str:
        parts = [
            f"--- sipp {self.name}: rc={self.rc} successful={self.successful} failed={self.failed}"
            f" created={self.created} (files in {self.workdir})",
            f"--- {self.name} command: {tail(self.file('.cmd'), 1)}",
            f"--- {self.name} error log tail:\n{tail(self.file('.err.log'), lines)}",
            f"--- {self.name} screen tail:\n{_screen_summary(self.file('.screen.log'))}",
            f"--- {self.name} stdout/stderr tail:\n{tail(self.file('.out'), 10)}",
        ]
        return "\n".join(parts)


def _screen_summary(path: Path) -> str:
    """The scenario screen (message counts table) of a -trace_screen file."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    block = text.split("Statistics Screen")[0]
    return "\n".join(line.rstrip() for line in block.splitlines()[-30:])


def read_sipp_stats(path: Path) -> dict[str, str]:
    """The last row of a ``-trace_stat`` csv (';'-separated) as {column: value}."""
    try:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    except OSError:
        return {}
    rows = [r for r in rows if r]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _bound_by(pid: int, port: int, kind: str) -> bool:
    """Whether process ``pid`` itself holds ``port`` (UDP bound, TCP
    listening): not merely someone, who might be why sipp is dying."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if (int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes
                        and (kind == "udp" or fields[3] == "0A")):
                    return True
    return False


#: Every sipp started and not yet reaped: kill_leftover_sipps() ends them
#: after each test, so a test that fails half-way leaves none for the next.
_started: weakref.WeakSet[SippProcess] = weakref.WeakSet()


def kill_leftover_sipps() -> list[str]:
    """Kill every sipp still running; the names of those killed."""
    killed = []
    for sipp in list(_started):
        if sipp.proc.poll() is None:
            sipp.kill()
            killed.append(sipp.name)
        _started.discard(sipp)
    return killed


class SippProcess:
    """One sipp run, started in the background; ``wait()`` gives a SippResult.

    Always bounded: ``-m calls``, ``-timeout``, and an outer wall-clock limit
    (``timeout_s + 15`` s) after which the process group is killed; and
    killed after the test that started it in any case (integration conftest).
    """

    def __init__(
        self,
        scenario: Path,
        *,
        name: str,
        workdir: Path,
        local_port: int,
        calls: int,
        timeout_s: float,
        remote: Address | None = None,
        transport: Transport = "udp",
        service: str | None = None,
        rate: float | None = None,
        duration_ms: int | None = None,
        trace_msg: bool = False,
        timeout_error: bool = True,
        extra: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.local_port = local_port
        self.transport: Transport = transport
        self.outer_timeout = timeout_s + 15
        workdir.mkdir(parents=True, exist_ok=True)
        f = lambda suffix: str(workdir / f"{name}{suffix}")  # noqa: E731
        cmd = [sipp_binary()]
        if remote is not None:
            cmd.append(f"{remote[0]}:{remote[1]}")
        cmd += [
            "-sf", str(scenario), "-i", LOCALHOST, "-p", str(local_port),
            "-t", "t1" if transport == "tcp" else "u1",
            # sipp binds -mp and the three ports after it (RTP, RTCP, video):
            # four free ones in a region below the ephemeral range.
            "-mi", LOCALHOST, "-mp", str(free_port_range(4, (12000, 20000))[0]),
            "-m", str(calls), "-timeout", f"{int(timeout_s)}s",
            "-nostdin", "-buff_size", "4194304",
            "-trace_err", "-error_file", f(".err.log"),
            "-trace_screen", "-screen_file", f(".screen.log"),
            "-trace_stat", "-stf", f(".stat.csv"),
        ]
        if timeout_error:
            cmd.append("-timeout_error")
        if service:
            cmd += ["-s", service]
        if rate is not None:
            cmd += ["-r", str(rate)]
        if duration_ms is not None:
            cmd += ["-d", str(duration_ms)]
        if trace_msg:
            cmd += ["-trace_msg", "-message_file", f(".msg.log")]
        cmd += list(extra)
        self.command = cmd
        Path(f(".cmd")).write_text(" ".join(cmd) + "\n")
        self.started = time.monotonic()
        with open(f(".out"), "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _started.add(self)

    def wait_bound(self, timeout: float = 5.0) -> None:
        """Wait until sipp listens on its port.  A sipp that exits first (a
        port taken, a scenario it refuses) or never binds fails the test with
        what it printed, and is not left running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if _bound_by(self.proc.pid, self.local_port, self.transport):
                return
            time.sleep(0.05)
        state = ("exited" if self.proc.poll() is not None
                 else f"did not bind {self.transport} port {self.local_port} within {timeout:g} s")
        self.kill()
        raise AssertionError(f"sipp {self.name} {state}\n{self.wait().summary()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def wait(self) -> SippResult:
        left = max(1.0, self.outer_timeout - (time.monotonic() - self.started))
        rc: int | None
        try:
            rc = self.proc.wait(left)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        result = SippResult(self.name, rc, self.workdir)
        result.stats = read_sipp_stats(result.file(".stat.csv"))
        return result


def run_sipp(scenario: Path, **kwargs: Any) -> SippResult:
    """Run sipp in the foreground (see SippProcess for the arguments)."""
    return SippProcess(scenario, **kwargs).wait()


@dataclass
class TracedMessage:
    direction: Literal["received", "sent"]
    transport: str
    msg: SipMessage


_TRACE_SEP = re.compile(r"^-{20,} \d{4}-\d\d-\d\d[^\n]*\n", re.M)
_TRACE_HEAD = re.compile(r"^(\w+) message (received|sent)", re.I)


def parse_sipp_messages(path: Path) -> list[TracedMessage]:
    """Messages of a sipp ``-trace_msg`` file, in order."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    out: list[TracedMessage] = []
    for block in _TRACE_SEP.split(text):
        head, _, rest = block.partition("\n")
        m = _TRACE_HEAD.match(head.strip())
        if not m:
            continue
        body = rest.lstrip("\n")
        with contextlib.suppress(ValueError):
            msg = SipMessage.parse(body.encode("utf-8", "surrogateescape"))
            out.append(TracedMessage(m.group(2).lower(), m.group(1).upper(), msg))  # type: ignore[arg-type]
    return out
