"""The supervisor of the proxy's worker processes ([proxy] workers > 1;
docs/architecture.md "Worker processes").

With N > 1 twistd's process runs no SIP core: it starts N processes of
``python -m sipsuite.proxy.worker`` (same interpreter, same config, same
command-line overrides, a worker index), in its own process group; logs
their lines with their number; restarts one that dies (its number and exit
status or signal logged, after a backoff that grows while it keeps dying);
forwards SIGHUP (routing reload) to all; and on stop sends them SIGTERM and
waits until they have exited (SIGKILL after ``STOP_GRACE``).

It also keeps what belongs to the host (hoststate.py), over a line to each
worker on its stdin and stdout (workerlink.py): antiflood counts added up
and bans sent to all, dispatcher states passed on, the live operations
replayed to a worker started again before it counts in, its siblings'
private ports, the requests a dead worker left unanswered and the answered
calls it held for accounting, accounting's BYEs passed to the worker
holding their call, and one random auth secret when the file has none.  And it makes the directory of the
workers' sockets to each other (net/siblings.py: a request for a phone
whose TCP/TLS connection another worker holds), removed once they have
stopped.
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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from sipsuite.log import get_logger, relay_worker_line
from sipsuite.proxy.hoststate import HostState
from sipsuite.proxy.worker import SECRET_ENV
from sipsuite.proxy.workerlink import LINK_KEY, LineSplitter, encode
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
        # Its stdout: link messages (workerlink.py) and log events.
        self.lines = LineSplitter(lambda msg: supervisor.link_message(self, msg),
                                  lambda line: relay_worker_line(line, index))
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.lines.feed(data)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.warn("worker {n} stderr: {line}", n=self.index, line=line)

    def processEnded(self, reason: Failure) -> None:
        self.lines.flush()
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self.supervisor.ended(self, code, sig)
        self.ended.callback(None)


class Supervisor(service.Service):
    """Runs ``config.proxy.workers`` worker processes (see the module text).
    ``overrides``: load_config's keyword arguments from the command line,
    passed on so each worker loads the same configuration."""

    #: Seconds stop waits after SIGTERM before SIGKILL (the relay's
    #: supervisor, rtprelay/workers.py, waits out its workers' drain).
    stop_grace = STOP_GRACE

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
        # directory for a restarted worker.
        self.channel_dir = ""
        # The workers that are serving, their live state replayed (workerops
        # passes calls to these only), and their private UDP ports.
        self.ready: set[int] = set()
        self.private_ports: dict[int, list[int]] = {}
        self.host = HostState()
        # Set by make_supervisor_service with management: one JSON-RPC call
        # to a worker (index, method, params), to replay live operations.
        self.ask: Callable[[int, str, Any], Awaitable[Any]] | None = None
        # One random [auth] secret for every worker when the file sets none:
        # a nonce one worker issued must be good at the others.
        self.secret = "" if config.auth.secret else secrets.token_hex(32)
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
        """index -> management port of the workers serving now (started and
        given the live state)."""
        return {i: self.management_ports[i] for i in sorted(self.ready)
                if i in self.management_ports and i in self.workers}

    def spawn(self, index: int) -> None:
        self.restarts.pop(index, None)
        if self.stopping:
            return
        proc = WorkerProcess(self, index)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.secret:
            env[SECRET_ENV] = self.secret
        args = self.command(index)
        self.reactor.spawnProcess(proc, args[0], args, env=env, childFDs={0: "w", 1: "r", 2: "r"})
        self.workers[index] = proc
        # Waiting in its stdin when it starts reading, ahead of the datagrams
        # its shared sockets take: the answers it must steer to the others.
        self.send_siblings(index)
        log.info("worker {n} started (pid {pid})", n=index, pid=getattr(proc.transport, "pid", None))

    def ended(self, proc: WorkerProcess, code: int | None, sig: int | None) -> None:
        index = proc.index
        if self.workers.get(index) is proc:
            del self.workers[index]
            self.ready.discard(index)
            self.private_ports.pop(index, None)
        why = f"killed by signal {sig} ({_signal_name(sig)})" if sig else f"exited with status {code}"
        if self.stopping:
            log.info("worker {n} {why}", n=index, why=why)
            return
        lost, calls = self.host.died(index)
        if lost:
            log.warn("worker {n} had {k} transaction(s) in progress: lost with it", n=index, k=lost)
        if calls:
            log.warn("worker {n} held {k} answered call(s) for accounting: their records are"
                     " lost with it", n=index, k=calls)
        self.send_siblings()
        if self.reactor.seconds() - proc.started >= HEALTHY_AFTER:
            self.backoff[index] = BACKOFF_FIRST
        delay = self.backoff.get(index, BACKOFF_FIRST)
        self.backoff[index] = min(BACKOFF_MAX, delay * 2)
        log.warn("worker {n} {why}; restarting it in {d:g} s", n=index, why=why, d=delay)
        self.restarts[index] = self.reactor.callLater(delay, self.spawn, index)

    # -- the link (workerlink.py) -------------------------------------------------------
    def send(self, index: int, kind: str, **fields: Any) -> None:
        proc = self.workers.get(index)
        if proc is not None and proc.transport is not None:
            try:
                proc.transport.write(encode(kind, **fields))
            except Exception:  # noqa: BLE001,S110 - it may be exiting just now
                pass

    def send_siblings(self, only: int | None = None) -> None:
        for index in self.workers if only is None else [only]:
            ports = sorted(p for i, ps in self.private_ports.items() if i != index for p in ps)
            self.send(index, "siblings", ports=ports)

    def link_message(self, proc: WorkerProcess, msg: dict[str, Any]) -> None:
        index = proc.index
        if self.workers.get(index) is not proc:
            return  # a dead worker's last words
        kind = msg[LINK_KEY]
        if kind == "load":
            self.host.heartbeat(index, msg)
        elif kind in ("acc_bye", "ev_bye"):
            # Whoever holds the call writes its record (modules/accounting.py)
            # or raises its call.ended (modules/events.py); the worker checks
            # the fields.
            fields = {k: msg.get(k) for k in ("call_id", "from_tag", "to_tag", "end", "code")}
            for other in self.workers:
                if other != index:
                    self.send(other, kind, **fields, by=index)
        elif kind == "flood":
            for address, seconds in self.host.flood_batch(msg, self.reactor.seconds()):
                for other in self.workers:
                    self.send(other, "flood_ban", address=address, seconds=seconds)
        elif kind == "ds":
            if self.host.dispatcher_state(msg.get("setid"), msg.get("uri"), msg.get("state")):
                for other in self.workers:
                    if other != index:
                        self.send(other, "ds", setid=msg["setid"], uri=msg["uri"],
                                  state=msg["state"], by=index)
        elif kind == "ready":
            ports = msg.get("private_ports")
            self.private_ports[index] = [p for p in ports if isinstance(p, int)] \
                if isinstance(ports, list) else []
            defer.ensureDeferred(self.bring_up(proc))

    def live_operation(self, name: str, params: Any, result: Any) -> None:
        """A live operation every worker up took (workerops): remembered
        for a worker started again.  A worker starting now may hold a ban
        sent before it counted in: an unban goes to it over the link."""
        self.host.remember(name, params, result)
        if name == "flood.unban" and isinstance(result, dict):
            for index in self.workers:
                if index not in self.ready:
                    self.send(index, "flood_unban", address=result.get("address"))

    async def bring_up(self, proc: WorkerProcess) -> None:
        """A worker (re)started: give it the host's state, the live
        operations made since the file was read replayed in their order,
        then count it in (and tell every worker its siblings' ports)."""
        index = proc.index
        now = self.reactor.seconds()
        for address, left in self.host.flood.banned(now):
            self.send(index, "flood_ban", address=address, seconds=round(left, 3))
        for (setid, uri), word in self.host.ds.items():
            self.send(index, "ds", setid=setid, uri=uri, state=word, by=-1)
        done, replayed = 0, 0
        while self.ask is not None and self.workers.get(index) is proc:
            pending = self.host.ops_after(done)
            if not pending:
                break
            for seq, name, params in pending:
                done = seq
                try:
                    await self.ask(index, name, params)
                    replayed += 1
                except Exception as exc:  # noqa: BLE001 - logged; the worker serves anyway
                    log.warn("worker {n}: replaying {m} failed: {e}", n=index, m=name, e=exc)
        if self.workers.get(index) is not proc:
            return
        self.ready.add(index)
        self.send_siblings()
        if replayed:
            log.info("worker {n}: {k} live operation(s) replayed", n=index, k=replayed)

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
        killer = self.reactor.callLater(self.stop_grace, self.signal_all, signal.SIGKILL)
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
                                   supervisor.reactor, supervisor.host, supervisor.live_operation)
        registry.token = config.management.token  # the workers' listeners want it too
        supervisor.ask = registry.ask_worker(supervisor.management_ports)
        from sipsuite.ops.callpages import CallPages

        ManagementService(config.management.listen, registry,
                          children={b"metrics": WorkersMetrics(registry),
                                    b"calls": CallPages(registry)},
                          token=config.management.token).setServiceParent(top)
    return top
