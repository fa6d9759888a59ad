"""The supervisor of the proxy's worker processes ([proxy] workers > 1;
docs/architecture.md "Worker processes").

With N > 1 twistd's process runs no SIP core: it starts N processes of
``python -m sipsuite.proxy.worker`` (same interpreter, same config, same
command-line overrides, a worker index), in its own process group; logs
their lines with their number; restarts one that dies (its number and exit
status or signal logged, after a backoff that grows while it keeps dying);
forwards SIGHUP (routing reload) to all; and on stop sends them SIGTERM and
waits until they have exited (SIGKILL after ``STOP_GRACE``).  It makes the
directory of the workers' channel sockets (net/siblings.py) and the secret
they share, and removes the directory once they have stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from sipsuite.log import get_logger, relay_worker_line
from sipsuite.proxy.worker import SECRET_VARIABLE
from sipsuite.startup import StartupError, cannot_listen, show_address

log = get_logger("sipsuite.proxy.workers")

#: Restart delays (s): the first, and the most a worker dying in a loop waits.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
#: A worker up this long (s) counts as healthy again: its next death restarts at BACKOFF_FIRST.
HEALTHY_AFTER = 10.0
#: How long (s) stop waits for the workers after SIGTERM before SIGKILL.
STOP_GRACE = 10.0


def check_workers(config: Any) -> None:
    """Refuse N > 1 without Redis: registrations and subscribers would live
    in one worker's memory, and a call landing on another would not find
    the phone (no host-local shared store yet)."""
    if config.proxy.workers > 1 and not config.redis.url:
        raise StartupError(
            f"proxy.workers = {config.proxy.workers} needs redis.url (registrations and"
            " subscribers shared by the workers; set [redis] url or --redis, or workers = 1)")
    if config.proxy.workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("proxy.workers > 1 needs SO_REUSEPORT (Linux); set workers = 1")


def refuse_suite(tapname: str, config: Any) -> None:
    """Workers for ``twistd sip-proxy`` only in this step: the suite's proxy
    drives the relay beside it in-process, which worker processes cannot."""
    check_workers(config)
    if tapname != "sip-proxy":
        raise StartupError(
            f"proxy.workers = {config.proxy.workers}: not yet for twistd {tapname}; run twistd"
            " sip-proxy --workers N beside twistd rtp-relay, or workers = 1")


def check_ports_free(config: Any) -> None:
    """Bind (and close) each listener with SO_REUSEPORT, as the workers
    will: a port another program holds is one line at start, not workers
    dying in a loop."""
    for spec in config.proxy.listen:
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        kind = socket.SOCK_DGRAM if spec.transport == "udp" else socket.SOCK_STREAM
        try:
            with socket.socket(family, kind) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((spec.host, spec.port))
        except OSError as exc:
            raise cannot_listen(show_address(spec.transport, spec.host, spec.port), exc) from None


class WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.buffer = b""
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            relay_worker_line(line, self.index)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.warn("worker {n} stderr: {line}", n=self.index, line=line)

    def processEnded(self, reason: Failure) -> None:
        if self.buffer:
            relay_worker_line(self.buffer, self.index)
            self.buffer = b""
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self.supervisor.ended(self, code, sig)
        self.ended.callback(None)


class Supervisor(service.Service):
    """Runs ``config.proxy.workers`` worker processes (see the module text).
    ``overrides``: load_config's keyword arguments from the command line,
    passed on so each worker loads the same configuration."""

    def __init__(self, config: Any, overrides: Mapping[str, Any], reactor: Any | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.reactor = reactor
        self.workers: dict[int, WorkerProcess] = {}
        self.backoff: dict[int, float] = {}
        self.restarts: dict[int, Any] = {}
        self.stopping = False
        self._previous_hup: Any = None
        # The workers' channel (net/siblings.py): made at start, the same
        # directory for a restarted worker; and the secret they share.
        self.channel_dir = ""
        self.secret = secrets.token_hex(32)
        # Chosen once: a restarted worker serves on the same port.
        self.management_ports: dict[int, int] = (
            {i: _free_loopback_port() for i in range(config.proxy.workers)}
            if config.management.listen else {})

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        check_ports_free(self.config)

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        if not self.channel_dir:
            self.channel_dir = _channel_dir()
        for index in range(self.config.proxy.workers):
            self.spawn(index)
        if hasattr(signal, "SIGHUP"):
            reactor: Any = self.reactor
            self._previous_hup = signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(
                self.signal_all, signal.SIGHUP))
        log.info("supervising {n} proxy worker processes", n=self.config.proxy.workers)

    def command(self, index: int) -> list[str]:
        overrides = dict(self.overrides)
        if index in self.management_ports:
            # Its own loopback port: the supervisor serves [management] listen.
            overrides["management"] = f"tcp:127.0.0.1:{self.management_ports[index]}"
        return [sys.executable, "-m", "sipsuite.proxy.worker", "--index", str(index),
                "--config", self.config.path or "", "--channel", self.channel_dir,
                "--overrides", json.dumps(overrides)]

    def live_management_ports(self) -> dict[int, int]:
        """index -> management port of the workers running now."""
        return {i: self.management_ports[i] for i in sorted(self.workers)
                if i in self.management_ports}

    def spawn(self, index: int) -> None:
        self.restarts.pop(index, None)
        if self.stopping:
            return
        proc = WorkerProcess(self, index)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{SECRET_VARIABLE: self.secret})
        args = self.command(index)
        self.reactor.spawnProcess(proc, args[0], args, env=env, childFDs={0: "w", 1: "r", 2: "r"})
        self.workers[index] = proc
        log.info("worker {n} started (pid {pid})", n=index, pid=getattr(proc.transport, "pid", None))

    def ended(self, proc: WorkerProcess, code: int | None, sig: int | None) -> None:
        index = proc.index
        if self.workers.get(index) is proc:
            del self.workers[index]
        why = f"killed by signal {sig} ({_signal_name(sig)})" if sig else f"exited with status {code}"
        if self.stopping:
            log.info("worker {n} {why}", n=index, why=why)
            return
        if self.reactor.seconds() - proc.started >= HEALTHY_AFTER:
            self.backoff[index] = BACKOFF_FIRST
        delay = self.backoff.get(index, BACKOFF_FIRST)
        self.backoff[index] = min(BACKOFF_MAX, delay * 2)
        log.warn("worker {n} {why}; restarting it in {d:g} s", n=index, why=why, d=delay)
        self.restarts[index] = self.reactor.callLater(delay, self.spawn, index)

    def signal_all(self, sig: int) -> None:
        for proc in list(self.workers.values()):
            try:
                if proc.transport is not None:
                    proc.transport.signalProcess(sig)
            except Exception:  # noqa: BLE001,S110 - it may be exiting just now
                pass

    def stopService(self) -> Any:
        super().stopService()
        self.stopping = True
        for call in self.restarts.values():
            if call.active():
                call.cancel()
        self.restarts.clear()
        if hasattr(signal, "SIGHUP") and self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
        waits = [proc.ended for proc in self.workers.values()]
        if not waits:
            self._remove_channel()
            return None
        log.info("stopping {n} worker(s)", n=len(waits))
        self.signal_all(signal.SIGTERM)
        killer = self.reactor.callLater(STOP_GRACE, self.signal_all, signal.SIGKILL)
        done = defer.DeferredList(waits)

        def finished(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            self._remove_channel()
            return result

        return done.addBoth(finished)


    def _remove_channel(self) -> None:
        if self.channel_dir:
            shutil.rmtree(self.channel_dir, ignore_errors=True)
            self.channel_dir = ""


def _channel_dir() -> str:
    """A directory of our own (0700) for the workers' sockets; under /tmp
    when TMPDIR would make a socket path longer than a UNIX address holds."""
    path = tempfile.mkdtemp(prefix="sipsuite-workers-")
    if len(path) > 90:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="sipsuite-workers-", dir="/tmp")
    return path


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_supervisor_service(config: Any, overrides: Mapping[str, Any]) -> service.MultiService:
    """The supervisor, and the management interface it serves for all the
    workers (sipsuite.proxy.workerops)."""
    top = service.MultiService()
    supervisor = Supervisor(config, overrides)
    supervisor.setServiceParent(top)
    if config.management.listen:
        from sipsuite.ops.server import ManagementService
        from sipsuite.proxy.workerops import WorkersMetrics, WorkersRegistry

        registry = WorkersRegistry(supervisor.live_management_ports, config.proxy.workers,
                                   supervisor.reactor)
        ManagementService(config.management.listen, registry,
                          children={b"metrics": WorkersMetrics(registry)}).setServiceParent(top)
    return top
