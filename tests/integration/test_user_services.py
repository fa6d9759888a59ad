"""``[services] load`` with real twistd processes (issue 18).

A broken factory (its module missing or failing to import, the factory
raising or returning no IService, an unknown key in its section, a section
for no loaded service) stops start-up with one line on stderr and exit
status 2; a good one runs after the proxy, ``sipsuite-ctl services`` lists
it, and it is stopped before the proxy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from common import REPO, free_port
from proxyproc import start_proxy, write_config

GOOD = '''
from dataclasses import dataclass

from twisted.application import service
from twisted.logger import Logger

from sipsuite.api import API_VERSION, Handle, service_factory


@dataclass(frozen=True)
class Settings:
    out: str
    greeting: str = "hello"
    retries: int = 3


class Probe(service.Service):
    def __init__(self, handle, settings):
        self.handle, self.settings = handle, settings

    def _write(self, line):
        with open(self.settings.out, "a") as f:
            f.write(line + "\\n")

    def startService(self):
        super().startService()
        # The proxy started first: its listeners are bound by now.
        self._write(f"start {self.settings.greeting} api={API_VERSION}"
                    f" realm={self.handle.config.auth.realm}")

    def stopService(self):
        Logger().info("probe stopping")
        self._write("stop")
        return super().stopService()


@service_factory("probe", Settings)
def make(handle: Handle, settings: Settings):
    return Probe(handle, settings)


def raises(handle, settings):
    raise RuntimeError("no database")


def not_a_service(handle, settings):
    return 42
'''

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
          "--nodaemon", "--pidfile="]


def _run(tmp: Path, plugin: str, toml: str) -> subprocess.CompletedProcess[str]:
    (tmp / "svc_probe.py").write_text(GOOD)
    (tmp / "svc_broken.py").write_text("import json\nraise ValueError('typo in the module')\n")
    conf = tmp / "c.toml"
    conf.write_text(textwrap.dedent(toml))
    quiet = ["--listen", f"udp:127.0.0.1:{free_port('udp')}", "--management", ""]
    if plugin == "sipsuite":
        quiet += ["--control", f"udp:127.0.0.1:{free_port('udp')}"]
    # The working directory is not the config's: the factory is found beside the config.
    return subprocess.run([*TWISTD, f"--logfile={tmp / 'twistd.log'}", plugin, "-c", str(conf),
                           *quiet], cwd=REPO, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


BROKEN = {
    "module missing": (
        '[services]\nload = ["svc_nowhere:make"]\n',
        "services.load: no module svc_nowhere (looked in {tmp}, {repo} and the Python path)"),
    "import error": (
        '[services]\nload = ["svc_broken:make"]\n',
        "services.load: cannot import svc_broken: ValueError: typo in the module"
        " (at {tmp}/svc_broken.py:2)"),
    "no such factory": (
        '[services]\nload = ["svc_probe:nothing"]\n',
        "services.load: no nothing in svc_probe"),
    "factory raises": (
        '[services]\nload = ["svc_probe:raises"]\n',
        "services.svc_probe: svc_probe:raises failed: RuntimeError: no database"
        " (at {tmp}/svc_probe.py:{line})"),
    "not an IService": (
        '[services]\nload = ["svc_probe:not_a_service"]\n',
        "services.svc_probe: svc_probe:not_a_service returned int, not an IService"
        " (twisted.application.service)"),
    "unknown key": (
        '[services]\nload = ["svc_probe:make"]\n[services.probe]\nout = "x"\ngreting = "hi"\n',
        "{tmp}/c.toml: services.probe.greting: unknown key; did you mean 'greeting'?"),
    "wrong type": (
        '[services]\nload = ["svc_probe:make"]\n[services.probe]\nout = "x"\nretries = "3"\n',
        "{tmp}/c.toml: services.probe.retries: expected a whole number, got '3'"),
    "required key missing": (
        '[services]\nload = ["svc_probe:make"]\n',
        "{tmp}/c.toml: services.probe.out: required, not set"),
    "section of no service": (
        '[services]\nload = []\n[services.billing]\nurl = "x"\n',
        "{tmp}/c.toml: services.billing: no service of services.load is named 'billing'"
        " (none loaded)"),
}


@pytest.mark.parametrize("plugin", ["sip-proxy", "sipsuite"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_factory_is_one_line_exit_2(tmp_path: Path, case: str, plugin: str) -> None:
    if plugin == "sipsuite" and case not in ("factory raises", "unknown key"):
        return  # the loader is the same; two cases show the suite goes through it too
    toml, expected = BROKEN[case]
    result = _run(tmp_path, plugin, toml)
    line = next(i + 1 for i, text in enumerate(GOOD.splitlines()) if "no database" in text)
    want = f"{plugin}: " + expected.format(tmp=tmp_path, repo=REPO, line=line)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [want], result.stderr


@pytest.mark.parametrize("plugin", ["sip-proxy", "sipsuite"])
def test_service_runs_after_the_proxy_and_ctl_lists_it(tmp_path: Path, plugin: str) -> None:
    (tmp_path / "svc_probe.py").write_text(GOOD)
    out = tmp_path / "probe.out"
    port = free_port()
    conf = write_config(tmp_path / "sipsuite.toml", port=port, tables={
        "services": {"load": ["svc_probe:make"]},
        "services.probe": {"out": str(out), "greeting": "hi"},
    })
    proxy = start_proxy(tmp_path / "run", conf, port, plugin=plugin)
    try:
        # start_proxy returned on an OPTIONS answer; the service had started by then.
        assert out.read_text().splitlines() == ["start hi api=1 realm=sipsuite"]
        shown = proxy.ctl("services")
        assert shown.returncode == 0, shown.stderr
        rows = shown.stdout.splitlines()
        assert rows[0].split() == ["NAME", "STATE", "LOAD", "SERVICE"]
        assert rows[1].split() == ["probe", "running", "svc_probe:make", "Probe"]
    finally:
        proxy.stop()
    assert "Server Shut Down." in proxy.log_text(), proxy.diagnostics()
    assert out.read_text().splitlines() == ["start hi api=1 realm=sipsuite", "stop"]
    log = proxy.log_text()
    assert "service probe loaded from svc_probe:make" in log
    # Stopped before the proxy: its SIP sockets were still open then.
    assert log.index("probe stopping") < log.index(f"(TCP Port {port} Closed)"), log


def test_ctl_services_with_none_loaded(tmp_path: Path) -> None:
    port = free_port()
    conf = write_config(tmp_path / "sipsuite.toml", port=port)
    proxy = start_proxy(tmp_path / "run", conf, port, plugin="sip-proxy")
    try:
        shown = proxy.ctl("services")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == "no user services ([services] load is empty)"
    finally:
        proxy.stop()


HANDLE_USER = '''
import json

from twisted.application import service
from twisted.internet import defer

from sipsuite.api import service_factory


class Exercise(service.Service):
    def __init__(self, handle, out, target, dead):
        self.handle, self.out, self.target, self.dead = handle, out, target, dead

    def startService(self):
        super().startService()
        self.handle.reactor.callLater(0.2, lambda: defer.ensureDeferred(self.run()))

    async def run(self):
        h = self.handle
        r = {"api": h.api_version}
        r["user_add"] = await h.users.add("dave", "secret")
        r["user_again"] = await h.users.add("dave", "other")
        r["users"] = await h.users.list()
        r["replaced"] = await h.bindings.add("dave", "sip:dave@127.0.0.1:5999", expires=60)
        r["lookup"] = [(b["contact"], b["expires"]) for b in await h.bindings.lookup("dave")]
        options = await h.send_request("OPTIONS", self.target, timeout=2)
        r["options"] = None if options is None else options.status
        dead = await h.send_request("OPTIONS", self.dead, timeout=1)
        r["dead"] = dead
        r["removed"] = await h.bindings.remove("dave")
        r["relay_sessions"] = h.relay_sessions()
        stats = await h.stats()
        r["stats_requests"] = stats["requests_by_method"].get("OPTIONS", 0)
        with open(self.out, "w") as f:
            json.dump(r, f)


@service_factory("exercise")
def make(handle, settings):
    import os
    return Exercise(handle, os.environ["EXERCISE_OUT"], os.environ["EXERCISE_TARGET"],
                    os.environ["EXERCISE_DEAD"])
'''


def test_the_handle_reaches_stores_uac_and_stats(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "svc_exercise.py").write_text(HANDLE_USER)
    out = tmp_path / "exercise.json"
    port = free_port()
    monkeypatch.setenv("EXERCISE_OUT", str(out))
    monkeypatch.setenv("EXERCISE_TARGET", f"sip:127.0.0.1:{port}")
    monkeypatch.setenv("EXERCISE_DEAD", f"sip:127.0.0.1:{free_port('udp')}")
    conf = write_config(tmp_path / "sipsuite.toml", port=port,
                        tables={"services": {"load": ["svc_exercise:make"]}})
    proxy = start_proxy(tmp_path / "run", conf, port, plugin="sipsuite")
    try:
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert out.exists(), proxy.diagnostics()
        r = json.loads(out.read_text())
    finally:
        proxy.stop()
    assert r == {
        "api": 1, "user_add": True, "user_again": False, "users": ["dave"], "replaced": False,
        "lookup": [["sip:dave@127.0.0.1:5999", 60]], "options": 200, "dead": None,
        "removed": 1, "relay_sessions": [], "stats_requests": r["stats_requests"]}
    assert r["stats_requests"] >= 2  # the start-up ping and the handle's own OPTIONS


TAP = '''
import json
import os

from twisted.application import service

from sipsuite.api import service_factory


class Tap(service.Service):
    def __init__(self, handle):
        self.handle = handle

    def startService(self):
        super().startService()
        self.handle.events.subscribe("registration.*", self.write)

    def write(self, event):
        with open(os.environ["TAP_OUT"], "a") as f:
            f.write(json.dumps(event.to_dict()) + "\\n")


@service_factory("tap")
def make(handle, settings):
    return Tap(handle)
'''


def test_a_registration_that_runs_out_is_an_expired_event(tmp_path: Path, monkeypatch: Any) -> None:
    import socket

    (tmp_path / "svc_tap.py").write_text(TAP)
    out = tmp_path / "tap.jsonl"
    monkeypatch.setenv("TAP_OUT", str(out))
    port = free_port()
    conf = write_config(tmp_path / "sipsuite.toml", port=port, tables={
        "services": {"load": ["svc_tap:make"]}, "registrar": {"min_expires": 1}})
    proxy = start_proxy(tmp_path / "run", conf, port, plugin="sip-proxy")
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        phone.bind(("127.0.0.1", 0))
        phone.settimeout(5)
        me = phone.getsockname()[1]
        phone.sendto((
            f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKtap1;rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:erin@127.0.0.1:{port}>;tag=t1\r\nTo: <sip:erin@127.0.0.1:{port}>\r\n"
            "Call-ID: tap-reg-1\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:erin@127.0.0.1:{me}>;expires=1\r\nContent-Length: 0\r\n\r\n"
        ).encode(), ("127.0.0.1", port))
        answers = []
        while not answers or answers[-1].startswith("SIP/2.0 1"):
            answers.append(phone.recv(65535).decode())
        assert answers[-1].startswith("SIP/2.0 200"), answers
        deadline = time.monotonic() + 6
        names: list[str] = []
        while time.monotonic() < deadline and "registration.expired" not in names:
            time.sleep(0.1)
            names = [json.loads(ln)["event"] for ln in
                     (out.read_text().splitlines() if out.exists() else [])]
    finally:
        phone.close()
        proxy.stop()
    assert names == ["registration.added", "registration.expired"], names


def test_worker_supervisor_checks_the_services_first(tmp_path: Path) -> None:
    """With [proxy] workers the workers build the services; the supervisor
    still refuses an import error or a wrong key with one line, exit 2."""
    for toml, expected in (BROKEN["import error"], BROKEN["unknown key"]):
        toml = toml + '[proxy]\nworkers = 2\n[redis]\nurl = "redis://127.0.0.1:1"\n'
        result = _run(tmp_path, "sip-proxy", toml)
        want = "sip-proxy: " + expected.format(tmp=tmp_path, repo=REPO, line=0)
        assert (result.returncode, result.stderr.splitlines()) == (2, [want]), result.stderr
