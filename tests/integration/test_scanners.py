"""sipvicious (Debian's svmap, svwar, svcrack) against a proxy with
authentication and antiflood: nothing found, no extension enumerated, no
password cracked, while a real phone on another loopback address registers
and calls through the proxy during every scan.

Each tool runs twice: as it comes (User-Agent friendly-scanner, dropped
unanswered by ``drop_user_agents``) and with ``-c``, which sends compact
headers and no User-Agent. Then svmap still names itself in From/To
(dropped as drop.scanner_address); svwar gets the same 401 for every
extension, real or not (REGISTER is challenged before anything is looked
up), so it has nothing to tell apart; svcrack gets a challenge per guess until
antiflood bans it (more than 16 requests in 2 s), which is long before it
reaches the real password at the end of its dictionary. A password among an
attacker's first dozen guesses is not something rate limiting can protect.

Addresses: svwar and svcrack of this version ignore ``-b`` and always send
from 127.0.0.1, and antiflood never bans the proxy's own addresses; so the
proxy listens on 127.0.0.4 (a scanner is never the proxy's own host), the
scanners come from 127.0.0.1 and the phones sit on 127.0.0.2. The ban is
lifted (sipsuite-ctl flood unban) before each scan, so each tool is judged on
its own. Every scanner is a separate process with a hard time limit, killed
with its process group if it overstays.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
from phones import Phone, PhonePair, add_users

PROXY_HOST = "127.0.0.4"
SCANNER_HOST = "127.0.0.1"
CALLER = Phone("200", "kiwi-77-Lx")  # a real extension inside svwar's range
CALLEE = Phone("250", "mango-31-Qz")
HARD_LIMIT = 60.0


@dataclass
class Scan:
    command: list[str]
    rc: int | None
    out: str
    err: str

    def describe(self) -> str:
        return f"$ {' '.join(self.command)}\nrc={self.rc}\n--- stdout:\n{self.out}\n--- stderr:\n{self.err}"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed (Debian package sipvicious)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def proxy(proxy_factory: procs.ProxyFactory) -> Iterator[procs.ProxyProcess]:
    port = procs.free_port(host=PROXY_HOST)
    p = proxy_factory("scanned", port=port, listen=procs.default_listen(port, PROXY_HOST),
                      tables={"features": {"auth": True, "antiflood": True}})
    add_users(p, CALLER, CALLEE)
    yield p


@pytest.fixture(scope="module")
def phones(proxy: procs.ProxyProcess, tmp_path_factory: pytest.TempPathFactory) -> PhonePair:
    """The phones register once, before any scan, and keep their ports."""
    pair = PhonePair(proxy, CALLER, CALLEE, tmp_path_factory.mktemp("phones"))
    problem = pair.register()
    assert problem is None, problem
    return pair


def drops(proxy: procs.ProxyProcess) -> dict[str, int]:
    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout).get("drops", {})


def banned(proxy: procs.ProxyProcess) -> list[str]:
    res = proxy.ctl("--json", "flood", "show")
    assert res.returncode == 0, res.stderr
    return [b["address"] for b in json.loads(res.stdout)["banned"]]


def scan_during_call(proxy: procs.ProxyProcess, phones: PhonePair, workdir: Path, name: str,
                     *args: str) -> Scan:
    """Run a sipvicious tool against the proxy while the phones call each
    other; the phones' call must work."""
    workdir.mkdir(parents=True, exist_ok=True)
    res = proxy.ctl("flood", "unban", SCANNER_HOST)
    assert res.returncode == 0, res.stderr
    local = procs.free_port("udp")
    command = [tool(name), PROXY_HOST, "-p", str(proxy.port), "-P", str(local), *args]
    # HOME: where sipvicious would keep sessions; never the real one.
    env = dict(os.environ, HOME=str(workdir))
    with (workdir / f"{name}.out").open("w+") as out, (workdir / f"{name}.err").open("w+") as err:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, text=True, start_new_session=True)
        try:
            problem = phones.call()
            try:
                rc: int | None = proc.wait(HARD_LIMIT)
            except subprocess.TimeoutExpired:
                rc = None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        out.seek(0)
        err.seek(0)
        scan = Scan(command, rc, out.read(), err.read())
    assert problem is None, f"the phones' call failed during the scan\n{scan.describe()}\n{problem}"
    assert rc is not None, f"{name} still running after {HARD_LIMIT} s\n{scan.describe()}"
    return scan


def found_nothing(scan: Scan) -> None:
    assert "found nothing" in scan.err, scan.describe()
    assert "+----" not in scan.out, "a results table\n" + scan.describe()


@pytest.mark.parametrize("compact", [False, True], ids=["user-agent", "compact-no-ua"])
def test_svmap_finds_nothing(proxy: procs.ProxyProcess, phones: PhonePair, tmp_path: Path,
                             compact: bool) -> None:
    before = drops(proxy)
    scan = scan_during_call(proxy, phones, tmp_path, "svmap", *(["-c"] if compact else []))
    found_nothing(scan)
    assert f"{PROXY_HOST}:{proxy.port}" not in scan.out, scan.describe()
    cause = "scanner_address" if compact else "scanner"
    assert drops(proxy).get(cause, 0) > before.get(cause, 0), (
        f"no drop.{cause} counted\n{scan.describe()}")


@pytest.mark.parametrize("args", [[], ["-c"], ["-c", "--force"], ["-c", "--force", "-m", "INVITE"]],
                         ids=["user-agent", "compact", "compact-force", "compact-force-invite"])
def test_svwar_enumerates_no_extension(proxy: procs.ProxyProcess, phones: PhonePair,
                                       tmp_path: Path, args: list[str]) -> None:
    scan = scan_during_call(proxy, phones, tmp_path, "svwar", "-e", "100-300",
                            "--maximumtime", "5", *args)
    found_nothing(scan)
    for ext in (CALLER.user, CALLEE.user):
        assert f"| {ext} " not in scan.out, scan.describe()


@pytest.mark.parametrize("compact", [False, True], ids=["user-agent", "compact-no-ua"])
def test_svcrack_cracks_nothing(proxy: procs.ProxyProcess, phones: PhonePair, tmp_path: Path,
                                compact: bool) -> None:
    words = tmp_path / "words.txt"
    # 60 wrong guesses, then the real password: in the dictionary, but past
    # what antiflood lets one source try.
    tmp_path.mkdir(parents=True, exist_ok=True)
    words.write_text("".join(f"guess{i:02}\n" for i in range(60)) + CALLER.password + "\n")
    scan = scan_during_call(proxy, phones, tmp_path, "svcrack", "-u", CALLER.user,
                            "-d", str(words), "--maximumtime", "5", *(["-c"] if compact else []))
    found_nothing(scan)
    assert CALLER.password not in scan.out + scan.err, scan.describe()
    if compact:
        assert SCANNER_HOST in banned(proxy), "antiflood did not ban svcrack\n" + scan.describe()
