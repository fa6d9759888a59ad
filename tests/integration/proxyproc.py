"""The proxy under test: ``write_config`` (TOML), ``start_proxy`` -> ``ProxyProcess``
(own process group, waits for an OPTIONS answer, SIGTERM then SIGKILL;
``listen=`` for other sockets than udp/tcp 127.0.0.1, IPv6 included).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import LOCALHOST, LOCALHOST6, REPO, Address, free_port, hostport, tail
from endpoints import options_ping

# --------------------------------------------------------------------------- config (TOML)

TomlValue = str | int | float | bool | Sequence[str] | Sequence[int]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(v: TomlValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def toml_dumps(tables: Mapping[str, Mapping[str, TomlValue]]) -> str:
    """Tables of scalars/lists -> TOML text; table names may be dotted ("location.static")."""
    out: list[str] = []
    for table, items in tables.items():
        out.append(f"[{table}]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in items.items())
        out.append("")
    return "\n".join(out)


def default_listen(port: int, host: str = LOCALHOST) -> list[str]:
    """UDP and TCP on one address and port, as the proxy's ``listen`` writes them."""
    return [f"udp:{hostport(host, port)}", f"tcp:{hostport(host, port)}"]


def write_config(
    path: Path,
    *,
    port: int,
    static: Mapping[str, Sequence[str]] | None = None,
    domains: Sequence[str] = ("example.com", "sipsuite.test"),
    trusted: Sequence[str] = (),
    timer_c: float = 2.0,
    dns_timeout: float = 1.0,
    log_level: str = "info",
    extra_proxy: Mapping[str, TomlValue] | None = None,
    listen: Sequence[str] | None = None,
    tables: Mapping[str, Mapping[str, TomlValue]] | None = None,
    management_port: int | None = None,
) -> Path:
    """Write a proxy config listening on UDP and TCP ``127.0.0.1:port``, or on
    ``listen`` ("udp:[::1]:5060", ...) when given. ``tables`` adds or extends
    sections ({"features": {"auth": True}}); the management interface gets
    ``management_port`` (else a free one), never the shared default 7060."""
    extra_tables = tables
    doc: dict[str, dict[str, TomlValue]] = {
        "proxy": {
            "listen": list(listen) if listen is not None else default_listen(port),
            "domains": list(domains),
            "trusted": list(trusted),
            "dns_timeout": dns_timeout,
            **(extra_proxy or {}),
        },
        "timers": {"timer_c": timer_c},
        "location.static": {user: list(uris) for user, uris in (static or {}).items()},
        "log": {"level": log_level},
        "management": {"listen": f"tcp:{LOCALHOST}:{management_port or free_port('tcp')}"},
        # `twistd sipsuite` runs the RTP relay too: its control socket on a
        # free port as well, never the shared default 7722.
        "relay": {"control": [f"udp:{LOCALHOST}:{free_port('udp')}"]},
    }
    for name, items in (extra_tables or {}).items():
        doc.setdefault(name, {}).update(items)
    path.write_text(toml_dumps(doc))
    return path


def management_url(config: Path) -> str:
    """The http:// URL of the management interface ``config`` sets."""
    import tomllib

    listen = tomllib.loads(config.read_text())["management"]["listen"]
    return "http://" + listen.removeprefix("tcp:") + "/"


# --------------------------------------------------------------------------- the proxy


class ProxyStartError(RuntimeError):
    pass


@dataclass
class ProxyProcess:
    """A running proxy: ``python -m twisted sipsuite --config FILE --listen ...``."""

    port: int
    workdir: Path
    config_path: Path
    log_path: Path
    out_path: Path
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    host: str = LOCALHOST  # the address of its first UDP listener (pinged at start)
    nofile: tuple[int, int] | None = None  # RLIMIT_NOFILE (soft, hard) to start it with

    @property
    def address(self) -> Address:
        return self.host, self.port

    @property
    def hostport(self) -> str:
        """'127.0.0.1:5060' / '[::1]:5060': the proxy as Via, Record-Route, URIs write it."""
        return hostport(self.host, self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def management_url(self) -> str:
        return management_url(self.config_path)

    def ctl(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run the real ``sipsuite-ctl`` against this proxy."""
        return run_ctl("--url", self.management_url, *args, timeout=timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self, lines: int = 60) -> str:
        state = "running" if self.alive() else f"exited rc={self.proc.returncode if self.proc else None}"
        return (
            f"--- proxy ({state}) {' '.join(self.command)}\n"
            f"--- config {self.config_path}:\n{self.config_path.read_text(errors='replace')}\n"
            f"--- proxy log tail ({self.log_path}, Twisted chatter left out):\n"
            f"{tail(self.log_path, lines, drop_noise=True)}\n"
            f"--- proxy stdout/stderr tail ({self.out_path}):\n{tail(self.out_path, 30)}\n"
        )

    def start(self, ready_timeout: float = 15.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        nofile = self.nofile

        def limit() -> None:  # in the child, before exec
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, nofile or (-1, -1))

        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=limit if nofile is not None else None,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProxyStartError("proxy exited during start-up\n" + self.diagnostics())
            if options_ping(self.host, self.port, timeout=0.3) is not None:
                return
        self.stop()
        raise ProxyStartError(
            f"proxy did not answer OPTIONS on udp:{self.hostport} within {ready_timeout} s\n"
            + self.diagnostics()
        )

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after ``grace`` s; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


ProxyFactory = Callable[..., ProxyProcess]


def proxy_command(
    config: Path, port: int, log: Path, plugin: str = "sipsuite", listen: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """twistd, as an operator runs it: foreground, no pid file, log to ``log``.

    Not ``python -m twisted`` (twist): it filters every event below its own
    --log-level, so [log] level = "debug" would not show. twisted.scripts.twistd
    has no __main__, hence -c."""
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", f"--logfile={log}",
        plugin, "--config", str(config),
        *(arg for spec in (listen or default_listen(port)) for arg in ("--listen", spec)),
        *extra,
    ]


def _first_udp_host(listen: Sequence[str] | None) -> str:
    """The host of the first "udp:HOST:PORT" of ``listen`` (brackets removed)."""
    for spec in listen or ():
        transport, _, rest = spec.partition(":")
        if transport.lower() == "udp":
            host = rest.rsplit(":", 1)[0].strip("[]")
            # A wildcard listener is pinged on loopback (its own family).
            return {"0.0.0.0": LOCALHOST, "::": LOCALHOST6}.get(host, host)
    return LOCALHOST


def start_proxy(
    workdir: Path,
    config: Path,
    port: int,
    *,
    plugin: str = "sipsuite",
    ready_timeout: float = 15.0,
    listen: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    nofile: tuple[int, int] | None = None,
) -> ProxyProcess:
    """Start the proxy (raises ProxyStartError with its log when it does not come up).

    ``listen`` ("udp:[::1]:PORT", ...) replaces the default UDP and TCP on
    127.0.0.1:``port``; it must name a UDP socket, which the start-up ping uses."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "proxy.log"
    proxy = ProxyProcess(
        port=port, workdir=workdir, config_path=config, log_path=log,
        out_path=workdir / "proxy.out", command=proxy_command(config, port, log, plugin, listen, extra),
        host=_first_udp_host(listen), nofile=nofile,
    )
    proxy.start(ready_timeout)
    return proxy


def ctl_command() -> list[str]:
    """The installed ``sipsuite-ctl`` console script beside this Python."""
    script = Path(sys.executable).with_name("sipsuite-ctl")
    if not script.exists():
        raise RuntimeError(f"sipsuite-ctl not installed beside {sys.executable} (pip install -e .)")
    return [str(script)]


def run_ctl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ctl_command(), *args], capture_output=True, text=True, timeout=timeout)


def proxy_starter(tmp_path_factory: Any, started: list[ProxyProcess]) -> ProxyFactory:
    """``start(name, port=..., listen=[...], nofile=..., plugin=..., **write_config
    kwargs)`` -> a running ProxyProcess, appended to ``started`` for the caller
    to stop. A proxy that does not come up fails the test with its log."""

    def start(
        name: str, *, port: int | None = None, listen: list[str] | None = None,
        nofile: tuple[int, int] | None = None, plugin: str = "sipsuite", **config: Any,
    ) -> ProxyProcess:
        workdir = tmp_path_factory.mktemp(name)
        port = port or free_port()
        cfg = write_config(workdir / "sipsuite.toml", port=port, listen=listen, **config)
        try:
            proxy = start_proxy(workdir, cfg, port, listen=listen, nofile=nofile, plugin=plugin)
        except ProxyStartError as e:
            problem = str(e)
        else:
            started.append(proxy)
            return proxy
        import pytest  # only tests call this

        pytest.fail(problem, pytrace=False)

    return start
