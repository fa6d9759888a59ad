"""The README and docs/ say only what works: their commands run, their
configs load, their links resolve, their unit files parse.

Conventions the pages follow (and this file enforces):

- a fenced ``sh`` block is run, line by line, top to bottom per page, in a
  scratch folder holding links to the checkout's ``.venv``, ``examples``,
  ``conf`` and ``bench``.  A line ending in ``&`` is a long-running program
  (a proxy, a sipp callee): it is started in its own session, the ports it
  names (on its line or in a file it names) must get bound, and it is
  stopped when the page ends; if it ended by itself, it must have exited 0.
  Any other line must exit 0, or the status its trailing ``# exits N``
  comment names.
- the documented fixed ports (5060, 5070, 5080, 7060, 7722) are rewritten to
  free loopback ports picked at run time, in the commands and in the files
  the page writes; a named config that leaves ``[management] listen`` or
  ``[relay] control`` at its fixed default gets the rewritten one added, and
  ``SIPSUITE_CTL_URL`` points ``sipsuite-ctl`` at it: the only changes made
  to what a reader types.
- a fenced block named ``toml FILE`` (or ``python FILE``) is written to FILE
  before the page's commands run; every ``toml`` block must load with
  sipsuite's config loader, or follow ``<!-- fragment: SECTION -->`` and load
  as that section's body.
- a block that cannot run here (another host, systemd, root, a production
  transcript) follows ``<!-- not run: REASON -->``; any other fenced block of
  shell commands (``sh``, ``console``, ``bash``, ``shell``) fails the test.
  The ``sipsuite-ctl`` commands of not-run blocks must still parse, and the
  bench scripts they name must answer ``--help``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipsuite.config import load_config
from sipsuite.ops.ctl.cli import build_parser

sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))

from common import free_port, port_bound  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOC_PORTS = (5060, 5070, 5080, 7060, 7722)
SHELLS = {"sh", "console", "bash", "shell"}
FOREGROUND_TIMEOUT = 60.0
READY_TIMEOUT = 30.0
SETUP_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install --config-settings editable_mode=compat"
    " -e . && .venv/bin/twistd -n sipsuite",
    "bash scripts/test.sh",
)


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    name: str  # the word after the language: a file name, or ""
    text: str
    marker: str  # the HTML comment just before the fence, or ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    out: list[Block] = []
    lines = page.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j] != "```":
            j += 1
        assert j < len(lines), f"{page}:{start + 1}: fence never closed"
        prev = lines[start - 1].strip() if start else ""
        marker = prev if prev.startswith("<!--") and prev.endswith("-->") else ""
        out.append(Block(page, start + 1, m.group(1), m.group(2), "\n".join(lines[start + 1:j]), marker))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def not_run(block: Block) -> bool:
    return block.marker.startswith("<!-- not run:")


def commands(text: str) -> list[str]:
    """Lines of a shell block, continuations joined, blank lines and
    comment-only lines left out."""
    joined = text.replace("\\\n", " ")
    return [ln.strip() for ln in joined.split("\n") if ln.strip() and not ln.strip().startswith("#")]


# --------------------------------------------------------------------------- static checks


def test_pages_exist_and_readme_is_short() -> None:
    names = {p.name for p in PAGES}
    for want in ("routing.md", "kamailio.md", "deployment.md", "operations.md",
                 "benchmarks.md", "configuration.md", "architecture.md"):
        assert want in names, f"docs/{want} missing"
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 150, "the README grew long again: move detail into docs/"
    for command in SETUP_COMMANDS:
        assert f"\n{command}\n" in readme, f"set-up command changed: {command}"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_every_shell_block_runs_or_says_why_not() -> None:
    unmarked = [b.where for b in all_blocks()
                if b.lang in SHELLS and b.lang != "sh" and not not_run(b)]
    assert not unmarked, f"shell blocks neither `sh` nor marked <!-- not run: ... -->: {unmarked}"
    runnable = [b for b in all_blocks() if b.lang == "sh" and not not_run(b)]
    assert {b.page.name for b in runnable} >= {"README.md", "operations.md", "routing.md"}


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for m in re.finditer(r"\]\(([^)\s]+)\)", page.read_text()):
            target = m.group(1).split("#", 1)[0]
            if not target or re.match(r"^[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {m.group(1)}")
    assert not broken, broken


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.lang == "toml"],
                         ids=lambda b: b.where)
def test_toml_block_loads(block: Block, tmp_path: Path) -> None:
    m = re.fullmatch(r"<!-- fragment: ([\w.]+) -->", block.marker)
    text = f"[{m.group(1)}]\n{block.text}\n" if m else block.text + "\n"
    path = tmp_path / (block.name or "block.toml")
    path.write_text(text)
    load_config(str(path))  # raises ConfigError naming the key


def test_not_run_ctl_commands_parse() -> None:
    parser = build_parser()
    seen = 0
    for block in all_blocks():
        if not not_run(block) or block.lang not in SHELLS:
            continue
        for line in commands(block.text):
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line.removeprefix("$ ")
            words = shlex.split(line.split("  #")[0], comments=True)
            while words and words[0] in ("sudo",):
                words = words[1:]
            if words and words[0].endswith("sipsuite-ctl"):
                seen += 1
                try:
                    parser.parse_args(words[1:])
                except SystemExit:
                    pytest.fail(f"{block.where}: sipsuite-ctl does not accept: {line}")
    assert seen > 5


def test_not_run_bench_commands_exist() -> None:
    scripts = set()
    for block in all_blocks():
        if not_run(block):
            scripts.update(re.findall(r"\bbench/\w+\.py\b", block.text))
    assert scripts, "no bench command found in the docs"
    for script in sorted(scripts):
        result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True,
                                text=True, timeout=60, cwd=REPO)
        assert result.returncode == 0, f"{script} --help: {result.stderr[-500:]}"


def test_systemd_units_verify(tmp_path: Path) -> None:
    units = sorted((REPO / "contrib" / "systemd").glob("*.service"))
    assert len(units) >= 3, units
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd)"
    for unit in units:
        text = unit.read_text()
        # The units name the documented install path; verify checks that
        # ExecStart's program exists, so point it at this checkout.
        copy = tmp_path / unit.name
        copy.write_text(text.replace("/opt/sipsuite", str(REPO)))
        result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                                timeout=60)
        problems = [ln for ln in (result.stdout + result.stderr).splitlines()
                    if unit.name in ln or "Unknown" in ln or "Invalid" in ln]
        assert result.returncode == 0 and not problems, f"{unit.name}: {result.stdout}{result.stderr}"
        assert "twistd -n" in text or "twistd --nodaemon" in text, f"{unit.name}: not in the foreground"
        assert re.search(r"^LimitNOFILE=\d+", text, re.M), f"{unit.name}: no LimitNOFILE"
        assert re.search(r"^StandardOutput=journal", text, re.M), f"{unit.name}: not logging to journald"
        assert "--pidfile=" in text


# --------------------------------------------------------------------------- running the pages


class PageRun:
    """One page's runnable blocks in one scratch folder, with its background jobs."""

    def __init__(self, page: Path, workdir: Path) -> None:
        self.page = page
        self.workdir = workdir
        self.ports = {p: free_port() for p in DOC_PORTS}
        self.jobs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        for name in (".venv", "examples", "conf", "bench"):
            (workdir / name).symlink_to(REPO / name)
        self.env = dict(os.environ)
        self.env["SIPSUITE_CTL_URL"] = f"http://127.0.0.1:{self.ports[7060]}/"
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.pop("PYTHONPATH", None)

    def rewrite(self, text: str) -> str:
        for doc_port, port in self.ports.items():
            text = re.sub(rf"(?<![\d.]){doc_port}(?!\d)", str(port), text)
        return text

    def write_file(self, block: Block) -> None:
        path = self.workdir / block.name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.rewrite(block.text) + "\n"
        if block.lang == "toml":
            doc = tomllib.loads(text)
            for section, key, value in (
                ("management", "listen", f'"tcp:127.0.0.1:{self.ports[7060]}"'),
                ("relay", "control", f'["udp:127.0.0.1:{self.ports[7722]}"]'),
            ):
                assert key in doc.get(section, {key: 1}), \
                    f"{block.where}: [{section}] without {key}: the test cannot move its port"
                if section not in doc:
                    text += f"\n[{section}]\n{key} = {value}\n"
        path.write_text(text)

    def named_ports(self, line: str) -> set[int]:
        """The rewritten ports a background job binds: on its line, and in the
        listen/control keys of a file it names."""
        mapped = set(self.ports.values())
        found = {int(p) for p in re.findall(r"\d+", line) if int(p) in mapped}
        for word in shlex.split(line):
            path = self.workdir / word
            if word and path.is_file() and path.stat().st_size < 100_000:
                # The sockets it binds, not the addresses it sends to.
                bound = [ln for ln in path.read_text().splitlines() if re.match(r"\s*(listen|control)\b", ln)]
                found |= {int(p) for ln in bound for p in re.findall(r"\d+", ln) if int(p) in mapped}
        return found

    def run_line(self, where: str, line: str) -> None:
        m = re.search(r"\s+#\s*exits (\d+)\s*$", line)
        expected = int(m.group(1)) if m else 0
        command = self.rewrite(line[: m.start()] if m else line).rstrip()
        if command.endswith("&"):
            self.start(where, command[:-1].rstrip())
            return
        proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], cwd=self.workdir,
                                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=FOREGROUND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            pytest.fail(f"{where}: still running after {FOREGROUND_TIMEOUT} s: {command}")
        text = out.decode(errors="replace")
        assert proc.returncode == expected, (
            f"{where}: exit {proc.returncode}, expected {expected}: {command}\n{text[-3000:]}"
            + self.job_logs())

    def start(self, where: str, command: str) -> None:
        log = self.workdir / f"job{len(self.jobs) + 1}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", command], cwd=self.workdir,
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.jobs.append((command, proc, log))
        ports = self.named_ports(command)
        assert ports, f"{where}: a background job that names no port cannot be waited for: {command}"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if all(port_bound(p, "udp") or port_bound(p, "tcp") for p in ports):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{where}: {command} did not bind {sorted(ports)} (exit {proc.poll()})"
                    + self.job_logs())

    def job_logs(self) -> str:
        return "".join(f"\n--- {cmd} (exit {p.poll()}):\n{log.read_text(errors='replace')[-2000:]}"
                       for cmd, p, log in self.jobs)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue

    def finish(self) -> list[str]:
        """Stop what still runs; the jobs that ended by themselves and failed."""
        failed = []
        for command, proc, log in self.jobs:
            status = proc.poll()
            if status is None:
                self.kill(proc)
            elif status != 0:
                failed.append(f"{command}: exit {status}\n{log.read_text(errors='replace')[-2000:]}")
            # Nothing of the job's session may outlive the page.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return failed


RUN_PAGES = [p for p in PAGES if any(b.lang == "sh" and not not_run(b) for b in blocks(p))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: p.name)
def test_page_commands_run(page: Path, tmp_path: Path) -> None:
    assert shutil.which("sipp"), "sipp is needed (Debian package sip-tester)"
    run = PageRun(page, tmp_path)
    page_blocks = blocks(page)
    for block in page_blocks:
        if block.name and block.lang in ("toml", "python"):
            run.write_file(block)
    ran = 0
    try:
        for block in page_blocks:
            if block.lang != "sh" or not_run(block):
                continue
            for line in commands(block.text):
                run.run_line(block.where, line)
                ran += 1
    finally:
        failed = run.finish()
    assert ran, f"{page.name}: no command ran"
    assert not failed, "background jobs failed:\n" + "\n".join(failed)
