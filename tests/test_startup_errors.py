"""Start-up failures in every mode: one line on stderr naming the problem,
exit status 2, within seconds, and no pid file left.

Daemon mode (twistd without -n) is the one that used to hang: the daemon
died after forking and the launcher waited forever on its status pipe.
Each case runs the real twistd from a scratch directory, holding whatever
socket the case needs taken.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
LOCAL = "127.0.0.1"


@contextlib.contextmanager
def held(kind: str) -> Iterator[int]:
    """A loopback port held by this process (UDP bound, or TCP listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    try:
        sock.bind((LOCAL, 0))
        if kind == "tcp":
            sock.listen()
        yield sock.getsockname()[1]
    finally:
        sock.close()


def free_port(kind: str) -> int:
    with held(kind) as port:
        return port


@dataclass
class Case:
    """``args(tmp, port)`` -> the plugin and its options; ``expect(tmp, port)``
    -> the one line on stderr; ``hold`` names the kind of port to keep
    taken while twistd runs ("" for none)."""

    tapname: str
    hold: str
    args: Callable[[Path, int], list[str]]
    expect: Callable[[Path, int], str]


def _quiet(tapname: str) -> list[str]:
    # Every other socket on a free port (management off): only the case's
    # own fault may stop start-up.
    if tapname == "rtp-relay":
        return ["--control", f"udp:{LOCAL}:{free_port('udp')}", "--media-address", LOCAL,
                "--management", ""]
    common = ["--listen", f"udp:{LOCAL}:0", "--management", ""]
    if tapname == "sipsuite":
        common += ["--control", f"udp:{LOCAL}:{free_port('udp')}"]
    return common


def _config(tmp: Path, text: str) -> str:
    (tmp / "c.toml").write_text(text)
    return str(tmp / "c.toml")


def _service_config(tmp: Path) -> str:
    (tmp / "svc_boom.py").write_text("def make(handle, settings):\n    raise OSError('no database')\n")
    return _config(tmp, '[services]\nload = ["svc_boom:make"]\n')


def _tls_config(tmp: Path, port: int) -> list[str]:
    conf = _config(tmp, f'[proxy]\nlisten = ["tls:{LOCAL}:{port}"]\n'
                        f'[tls]\ncertificate = "{tmp}/gone.pem"\nprivate_key = "{tmp}/gone.key"\n')
    return ["-c", conf, "--management", ""]


CASES: dict[str, Case] = {
    "sip udp port taken": Case(
        "sip-proxy", "udp",
        lambda tmp, port: ["--listen", f"udp:{LOCAL}:{port}", "--management", ""],
        lambda tmp, port: f"sip-proxy: cannot listen on udp {LOCAL}:{port}: Address already in use"),
    "sip tcp port taken": Case(
        "sipsuite", "tcp",
        lambda tmp, port: [*_quiet("sipsuite"), "--listen", f"tcp:{LOCAL}:{port}"],
        lambda tmp, port: f"sipsuite: cannot listen on tcp {LOCAL}:{port}: Address already in use"),
    "management port taken": Case(
        "sip-proxy", "tcp",
        lambda tmp, port: [*_quiet("sip-proxy"), "--management", f"tcp:{LOCAL}:{port}"],
        lambda tmp, port: (f"sip-proxy: cannot listen on management tcp {LOCAL}:{port}:"
                           " Address already in use")),
    "bad config": Case(
        "sip-proxy", "",
        lambda tmp, port: ["-c", _config(tmp, "[timers]\ntimer_d = 1\n")],
        lambda tmp, port: f"sip-proxy: {tmp}/c.toml: timers.timer_d: unknown key; did you mean 'timer_c'?"),
    "routing class missing": Case(
        "sip-proxy", "",
        lambda tmp, port: [*_quiet("sip-proxy"), "-c",
                           _config(tmp, '[proxy]\nrouting = "sipsuite.proxy.routing:SiteRoutng"\n')],
        lambda tmp, port: "sip-proxy: no class SiteRoutng in sipsuite.proxy.routing"),
    "user service raises": Case(
        "sipsuite", "",
        lambda tmp, port: [*_quiet("sipsuite"), "-c", _service_config(tmp)],
        lambda tmp, port: (f"sipsuite: services.svc_boom: svc_boom:make failed: OSError: no"
                           f" database (at {tmp}/svc_boom.py:2)")),
    "TLS files missing": Case(
        "sip-proxy", "",
        lambda tmp, port: _tls_config(tmp, free_port("tcp")),
        lambda tmp, port: f"sip-proxy: tls.certificate: cannot read '{tmp}/gone.pem': No such file"),
    "relay TLS files missing": Case(
        "rtp-relay", "",
        lambda tmp, port: [*_quiet("rtp-relay"), "--control", f"tls:{LOCAL}:{free_port('tcp')}",
                           "-c", _config(tmp, f'[tls]\ncertificate = "{tmp}/gone.pem"\n'
                                              f'private_key = "{tmp}/gone.key"\n'
                                              f'ca_list = "{tmp}/gone-ca.pem"\n')],
        lambda tmp, port: f"rtp-relay: tls.certificate: cannot read '{tmp}/gone.pem': No such file"),
    "relay control port taken": Case(
        "rtp-relay", "udp",
        lambda tmp, port: ["--control", f"udp:{LOCAL}:{port}", "--management", ""],
        lambda tmp, port: (f"rtp-relay: cannot listen on relay control udp {LOCAL}:{port}:"
                           " Address already in use")),
    "relay media address not here": Case(
        "rtp-relay", "",
        lambda tmp, port: [*_quiet("rtp-relay"), "--media-address", "192.0.2.1"],  # TEST-NET-1
        lambda tmp, port: "rtp-relay: cannot bind relay media address 192.0.2.1: "),
    "relay management port taken": Case(
        "rtp-relay", "tcp",
        lambda tmp, port: [*_quiet("rtp-relay"), "--management", f"tcp:{LOCAL}:{port}"],
        lambda tmp, port: (f"rtp-relay: cannot listen on management tcp {LOCAL}:{port}:"
                           " Address already in use")),
}


def _run_daemon(tmp: Path, case: Case, port: int) -> subprocess.CompletedProcess[str]:
    """twistd daemonising, as an init script starts it; a launcher that has
    not returned within 10 s is the hang this file is about."""
    pidfile = tmp / "twistd.pid"
    try:
        return subprocess.run(
            [*TWISTD, f"--pidfile={pidfile}", f"--logfile={tmp / 'twistd.log'}", case.tapname,
             *case.args(tmp, port)],
            cwd=tmp, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("twistd's launcher did not return within 10 s")
    finally:
        _kill_daemon(pidfile)


def _kill_daemon(pidfile: Path) -> None:
    # A daemon that started after all must not outlive the test.
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_daemon_start_up_failure_is_one_line_exit_2_no_pid_file(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    with held(case.hold or "udp") as port:
        started = time.monotonic()
        result = _run_daemon(tmp_path, case, port)
    assert time.monotonic() - started < 10
    _assert_one_line(result, case.expect(tmp_path, port))
    assert not (tmp_path / "twistd.pid").exists()


@pytest.mark.parametrize("name", ["sip udp port taken", "relay control port taken",
                                  "routing class missing"])
def test_foreground_start_up_failure_is_one_line_exit_2(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    with held(case.hold or "udp") as port:
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", case.tapname, *case.args(tmp_path, port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    _assert_one_line(result, case.expect(tmp_path, port))


def test_unwritable_default_pid_file_is_one_line(tmp_path: Path) -> None:
    """twistd's default pid file is twistd.pid in the working directory; in
    one nobody may create files in (sysfs refuses even root), one line."""
    result = subprocess.run(
        [*TWISTD, "sip-proxy", "--listen", f"udp:{LOCAL}:0", "--management", ""],
        cwd="/sys", capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    _assert_one_line(result, "sip-proxy: cannot write pid file /sys/twistd.pid: Permission denied"
                             " (--pidfile=PATH, or --pidfile= for none)")


def test_daemon_that_starts_leaves_its_pid_file_and_serves(tmp_path: Path) -> None:
    """The binding before the fork hands working sockets to the daemon."""
    pidfile = tmp_path / "twistd.pid"
    mgmt = free_port("tcp")
    try:
        result = subprocess.run(
            [*TWISTD, f"--pidfile={pidfile}", f"--logfile={tmp_path / 'twistd.log'}", "sip-proxy",
             "--listen", f"udp:{LOCAL}:0", "--management", f"tcp:{LOCAL}:{mgmt}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        assert (result.returncode, result.stderr) == (0, "")
        ctl = [str(Path(sys.executable).with_name("sipsuite-ctl")), "--url", f"http://{LOCAL}:{mgmt}"]
        up = subprocess.run([*ctl, "uptime"], capture_output=True, text=True, timeout=20)
        assert up.returncode == 0 and up.stdout.startswith("up "), up.stderr
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pidfile.exists(), "the daemon did not remove its pid file on SIGTERM"
    finally:
        _kill_daemon(pidfile)


# ----------------------------------------------------------------------------- routing

GOOD_ROUTING = '''
from sipsuite.proxy.routing.default import DefaultRouting


class SiteRouting(DefaultRouting):
    pass
'''

BAD_ROUTING: dict[str, tuple[str, str, str]] = {
    # name: (mysite/routing.py source, [proxy] routing, the line after "sip-proxy: ")
    "no module": ("", "mysite.nowhere:SiteRouting", "no module mysite.nowhere (looked in {conf}, {cwd}"),
    "no package": ("", "othersite.routing:SiteRouting", "no module othersite.routing (looked in"),
    "no class": (GOOD_ROUTING, "mysite.routing:SiteRoutng", "no class SiteRoutng in mysite.routing"),
    "not a Routing": ("class SiteRouting:\n    pass\n", "mysite.routing:SiteRouting",
                      "SiteRouting in mysite.routing is not a Routing (a subclass of"
                      " sipsuite.proxy.routing.Routing)"),
    "raises at import": ("raise RuntimeError('no database')\n", "mysite.routing:SiteRouting",
                         "cannot import mysite.routing: RuntimeError: no database (at {conf}/mysite/"
                         "routing.py:1)"),
    "imports a missing module": ("import nosuchlib\n", "mysite.routing:SiteRouting",
                                 "cannot import mysite.routing: ModuleNotFoundError: No module named"
                                 " 'nosuchlib' (at {conf}/mysite/routing.py:1)"),
    "syntax error": ("def broken(:\n", "mysite.routing:SiteRouting",
                     "cannot import mysite.routing: SyntaxError: invalid syntax"),
    "raises when built": (GOOD_ROUTING + "    def __init__(self, core):\n        raise KeyError('x')\n",
                          "mysite.routing:SiteRouting",
                          "mysite.routing:SiteRouting failed to start: KeyError: 'x' (at {conf}/"
                          "mysite/routing.py:8)"),
}


def _site(conf_dir: Path, source: str, spec: str) -> Path:
    """mysite/routing.py (when ``source``) and a config naming ``spec``, in ``conf_dir``."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    if source:
        (conf_dir / "mysite").mkdir()
        (conf_dir / "mysite" / "__init__.py").write_text("")
        (conf_dir / "mysite" / "routing.py").write_text(source)
    conf = conf_dir / "sipsuite.toml"
    conf.write_text(f'[proxy]\nrouting = "{spec}"\n')
    return conf


@pytest.mark.parametrize("name", list(BAD_ROUTING))
def test_bad_routing_is_one_line_exit_2(tmp_path: Path, name: str) -> None:
    source, spec, expected = BAD_ROUTING[name]
    conf = _site(tmp_path / "etc", source, spec)
    cwd = tmp_path / "run"
    cwd.mkdir()
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "sip-proxy", "-c", str(conf), *_quiet("sip-proxy")],
        cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    _assert_one_line(result, "sip-proxy: " + expected.format(conf=conf.parent, cwd=cwd))


def _routing_comes_up(tmp_path: Path, conf: Path, cwd: Path, source: Path) -> None:
    """twistd -n sip-proxy with ``conf``, from ``cwd``, and no PYTHONPATH:
    it comes up (its log says it serves) and names the routing it loaded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = tmp_path / "proxy.log"
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "sip-proxy", "-c", str(conf),
         *_quiet("sip-proxy")],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and "sip proxy ready" in log.read_text():
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        text = log.read_text()
        assert "sip proxy ready" in text, text
        assert f"routing mysite.routing:SiteRouting from {source}" in text, text
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)


def test_routing_module_beside_the_config_loads(tmp_path: Path) -> None:
    conf = _site(tmp_path / "etc", GOOD_ROUTING, "mysite.routing:SiteRouting")
    (tmp_path / "run").mkdir()
    _routing_comes_up(tmp_path, conf, tmp_path / "run", conf.parent / "mysite" / "routing.py")


def test_routing_module_in_the_working_directory_loads(tmp_path: Path) -> None:
    _site(tmp_path / "run", GOOD_ROUTING, "mysite.routing:SiteRouting")
    conf = tmp_path / "etc" / "sipsuite.toml"
    conf.parent.mkdir()
    conf.write_text('[proxy]\nrouting = "mysite.routing:SiteRouting"\n')
    _routing_comes_up(tmp_path, conf, tmp_path / "run", tmp_path / "run" / "mysite" / "routing.py")
