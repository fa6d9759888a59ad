"""The twistd plugins: listed, built from a config, and a bad config stops
start-up with one line and exit status 2.

These run twistd as a subprocess of the installed package (an editable
install, as the README and scripts/test.sh do), from a scratch directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import getPlugins

from sipsuite import log

TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]


def twistd(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def makers() -> dict[str, IServiceMaker]:
    return {p.tapname: p for p in getPlugins(IServiceMaker)}


def test_twistd_help_lists_plugins(tmp_path: Path) -> None:
    result = twistd("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:1] == ["sip-proxy"] for line in lines), result.stdout
    assert any(line.split()[:1] == ["sipsuite"] for line in lines), result.stdout
    assert any(line.split()[:1] == ["rtp-relay"] for line in lines), result.stdout


@pytest.mark.parametrize("tapname", ["sipsuite", "sip-proxy"])
def test_bad_config_one_line_exit_2(tmp_path: Path, tapname: str) -> None:
    (tmp_path / "bad.toml").write_text('[proxy]\nlisten = ["udp:0.0.0.0:5060", "foo"]\n')
    result = twistd("-n", "--pidfile=", tapname, "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"{tapname}: bad.toml: proxy.listen[1]: expected 'udp:HOST:PORT'"
    )
    assert "Traceback" not in result.stderr


def test_unknown_key_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[timers]\ntimer_d = 1\n")
    result = twistd("-n", "--pidfile=", "sipsuite", "--config", "bad.toml", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        "sipsuite: bad.toml: timers.timer_d: unknown key; did you mean 'timer_c'?\n",
    )


def test_bad_listen_option_one_line(tmp_path: Path) -> None:
    result = twistd(
        "-n",
        "--pidfile=",
        "sipsuite",
        "--listen",
        "udp:127.0.0.1:0",
        "--listen",
        "nope",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "sipsuite: --listen: expected "
    )


def test_missing_config_one_line(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "sip-proxy", "-c", "nowhere.toml", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        "sip-proxy: nowhere.toml: cannot read: No such file or directory\n",
    )


def test_twistd_runs_and_stops(tmp_path: Path) -> None:
    """The README's `twistd -n sipsuite` starts (on a free port) and stops on SIGTERM."""
    proc = subprocess.Popen(
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "sipsuite",
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
            # The in-process relay's control socket: a free port, not the
            # default 7722 another sipsuite on this host may hold.
            "--control",
            f"udp:127.0.0.1:{_free_udp_port()}",
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = []
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and not any("sip proxy ready" in line for line in output):
            line = proc.stdout.readline()
            if line:
                output.append(line)
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        text = "".join(output)
        assert proc.poll() is None, text
        assert "sipsuite: configuration " in text and "conf/sipsuite.toml" in text
        # Only once the reactor runs are twistd's signal handlers in place;
        # a SIGTERM before that kills it without a clean shutdown.
        proc.send_signal(signal.SIGTERM)
        # communicate() reads a single pipe with a plain read(), which on the
        # non-blocking fd returns whatever happens to be there already.
        os.set_blocking(proc.stdout.fileno(), True)
        rest, _ = proc.communicate(timeout=30)
        # Twisted re-raises the signal after a clean shutdown, so -SIGTERM here.
        assert proc.returncode in (0, -signal.SIGTERM), text + rest
        assert "Server Shut Down." in rest
        assert "Traceback" not in text + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_plugins_found_in_process() -> None:
    found = makers()
    assert {"sip-proxy", "sipsuite", "rtp-relay"} <= set(found)


@pytest.mark.parametrize("tapname", ["rtp-relay", "sipsuite"])
def test_bad_ports_option_one_line_exit_2(tmp_path: Path, tapname: str) -> None:
    result = twistd("-n", "--pidfile=", tapname, "--ports", "40000-30000", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{tapname}: --ports: expected 'LOW-HIGH' with ")
    assert result.stderr.endswith(", got '40000-30000'\n")


def test_bad_control_and_media_options_one_line_exit_2(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "rtp-relay", "--control", "udp:0.0.0.0:7722",
                    cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("rtp-relay: --control: expected 'udp:HOST:PORT' with HOST")
    result = twistd("-n", "--pidfile=", "rtp-relay", "--media-address", "relay.example.com",
                    cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        "rtp-relay: --media-address: expected an IP address such as '192.0.2.1' or"
        " '2001:db8::1', got 'relay.example.com'\n",
    )


def test_rtp_relay_has_no_proxy_options(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "rtp-relay", "--listen", "udp:127.0.0.1:0", cwd=tmp_path)
    assert result.returncode != 0 and "--listen" in result.stderr + result.stdout


def test_relay_control_port_in_use_one_line_exit_2(tmp_path: Path) -> None:
    import socket

    (tmp_path / "r.toml").write_text('[management]\nlisten = ""\n')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = twistd(
            "-n", "--pidfile=", "--logfile=-", "rtp-relay", "-c", "r.toml",
            "--control", f"udp:127.0.0.1:{port}", cwd=tmp_path,
        )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert result.stderr == (f"rtp-relay: cannot listen on relay control udp 127.0.0.1:{port}:"
                             " Address already in use\n"), out
    assert "Traceback" not in out, out


def test_make_relay_service(tmp_path: Path) -> None:
    maker = makers()["rtp-relay"]
    options = maker.options()
    options.parseOptions(["--control", "udp:127.0.0.1:0", "--control", "unix:/tmp/x.sock",
                          "--media-address", "127.0.0.1", "--ports", "30000-30099"])
    service = maker.makeService(options)
    relay = service.getServiceNamed("relay")
    assert [str(c) for c in relay.config.control] == ["udp:127.0.0.1:0", "unix:/tmp/x.sock"]
    assert relay.config.media_addresses == ["127.0.0.1"]
    assert relay.config.ports == (30000, 30099)


@pytest.mark.parametrize("tapname", ["sipsuite", "sip-proxy"])
def test_make_service(tmp_path: Path, tapname: str) -> None:
    maker = makers()[tapname]
    (tmp_path / "c.toml").write_text('[log]\nlevel = "debug"\n')
    options = maker.options()
    options.parseOptions(["--config", str(tmp_path / "c.toml"), "--listen", "udp:127.0.0.1:0"])
    assert options["listen"] == ["udp:127.0.0.1:0"]
    before = log.get_level()
    try:
        service = maker.makeService(options)
        assert isinstance(service, MultiService)
        assert log.get_level() == "debug"
    finally:
        log.set_level(before)


def test_make_service_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    maker = makers()["sipsuite"]
    (tmp_path / "c.toml").write_text('[log]\nlevel = "loud"\n')
    options = maker.options()
    options.parseOptions(["-c", str(tmp_path / "c.toml")])
    with pytest.raises(SystemExit) as info:
        maker.makeService(options)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"sipsuite: {tmp_path / 'c.toml'}: log.level: expected one of 'debug', 'info', 'warn', 'error', got 'loud'\n"
    )


def test_port_in_use_one_line_exit_2(tmp_path: Path) -> None:
    """A listen address another process holds stops start-up with one line
    naming it, not a traceback, and a non-zero exit."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = twistd(
            "-n", "--pidfile=", "--logfile=-", "sipsuite", "--listen", f"udp:127.0.0.1:{port}",
            cwd=tmp_path,
        )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert result.stderr == f"sipsuite: cannot listen on udp 127.0.0.1:{port}: Address already in use\n", out
    assert "Traceback" not in out, out


def test_bad_redis_option_one_line(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "sip-proxy", "--redis", "127.0.0.1:6379", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        "sip-proxy: --redis: expected '' or 'redis://[:PASSWORD@]HOST[:PORT][/DB]',"
        " got '127.0.0.1:6379'\n",
    )


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sip_proxy_with_redis_option_serves_management(tmp_path: Path, redis_server) -> None:  # type: ignore[no-untyped-def]
    """`twistd -n sip-proxy --redis URL` keeps subscribers and bindings in that
    Redis, and serves the management interface sipsuite-ctl talks to."""
    port = _free_tcp_port()
    (tmp_path / "p.toml").write_text(f'[management]\nlisten = "tcp:127.0.0.1:{port}"\n')
    redis_server.call("FLUSHDB", db=7)
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "sip-proxy", "--config", "p.toml",
         "--listen", "udp:127.0.0.1:0", "--redis", redis_server.url(7)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctl = [str(Path(sys.executable).with_name("sipsuite-ctl")), "--url", f"http://127.0.0.1:{port}"]
    try:
        deadline = time.monotonic() + 30
        while True:
            added = subprocess.run([*ctl, "user", "add", "test", "testpasswd"],
                                   capture_output=True, text=True, timeout=20)
            if added.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert added.returncode == 0, added.stderr
        assert redis_server.call("EXISTS", "sipsuite:sub:test", db=7) == 1
        ul = subprocess.run([*ctl, "ul", "add", "test", "sip:test@192.0.2.5:5060"],
                            capture_output=True, text=True, timeout=20)
        assert ul.returncode == 0, ul.stderr
        assert redis_server.call("EXISTS", "sipsuite:loc:test", db=7) == 1
    finally:
        proc.terminate()
        proc.wait(30)


def test_management_option_and_descriptions() -> None:
    """--management replaces the proxy's [management] listen and, for
    rtp-relay, the relay's own relay_listen (7061 by default, not the
    proxy's 7060); the descriptions say what each plugin runs."""
    from sipsuite.ops.server import ManagementService

    found = makers()
    assert "in-memory" not in found["sipsuite"].description
    for tapname, option, wanted in (("sip-proxy", "tcp:127.0.0.1:7999", 7999),
                                    ("rtp-relay", None, 7061),
                                    ("rtp-relay", "tcp:127.0.0.1:7998", 7998)):
        options = found[tapname].options()
        options.parseOptions(["--management", option] if option else [])
        service = found[tapname].makeService(options)  # no twistd parent: nothing bound
        (management,) = [s for s in service if isinstance(s, ManagementService)]
        assert management.wanted_port == wanted and management.port is None
    def managers(parent: MultiService) -> list[ManagementService]:
        return [s for child in parent for s in
                (managers(child) if isinstance(child, MultiService) else [child])
                if isinstance(s, ManagementService)]

    for option, count in (([], 1), (["--management", ""], 0)):
        options = found["sipsuite"].options()
        options.parseOptions([*option, "--listen", "udp:127.0.0.1:0"])
        assert len(managers(found["sipsuite"].makeService(options))) == count
