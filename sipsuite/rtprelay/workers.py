"""The relay's worker processes ([relay] workers > 1, ``twistd rtp-relay
--workers N``; docs/architecture.md "Media").

The process twistd runs relays no media: it binds the control sockets of
``[relay] control`` (so the proxy, or Kamailio, sees one relay at one
address), starts N worker processes (sipsuite.rtprelay.worker), each today's
relay on the N-th part of ``[relay] ports``, and hands each command to the
worker that holds its call (router.py).  The process machinery is the
proxy's supervisor (sipsuite.proxy.workers.Supervisor): workers' log lines
with their number, a dead worker restarted after a backoff that grows while
it keeps dying, SIGTERM to all on stop and SIGKILL after a grace (here the
drain time and a margin: a worker drains its calls as the single relay
does, and the control sockets stay open meanwhile so those calls can be
ended).  What is the relay's own: the port slices, the control sockets,
the sessions a dead worker held (counted as lost), and the management
interface (``relay.stats`` added up, ``relay.sessions`` of all workers).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.ops.errors import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from sipsuite.ops.server import ManagementService, RpcRegistry
from sipsuite.proxy.workerops import WorkersRegistry, _sum
from sipsuite.proxy.workers import Supervisor, WorkerProcess, _free_loopback_port
from sipsuite.rtprelay.control import ReplyCache, listen_control
from sipsuite.rtprelay.media import check_media_address
from sipsuite.rtprelay.router import WorkerRouter
from sipsuite.startup import StartupError, cannot_listen

__all__ = ["RelaySupervisor", "make_relay_supervisor_service", "split_ports"]

log = get_logger("sipsuite.rtprelay.workers")

#: Seconds past ``[relay] drain_time`` the workers get before SIGKILL.
STOP_MARGIN = 5.0


def split_ports(low: int, high: int, workers: int) -> list[tuple[int, int]]:
    """``low-high`` in ``workers`` contiguous slices of whole RTP/RTCP pairs
    (even port, odd port), as equal as the pairs allow.  Raises StartupError
    when there are fewer pairs than workers."""
    first = low + (low & 1)
    pairs = list(range(first, high, 2))
    if len(pairs) < workers:
        raise StartupError(
            f"relay.workers = {workers}: relay.ports {low}-{high} holds {len(pairs)} port"
            f" pair(s), fewer than one per worker; widen relay.ports or lower relay.workers")
    slices = []
    for i in range(workers):
        part = pairs[i * len(pairs) // workers:(i + 1) * len(pairs) // workers]
        slices.append((part[0], part[-1] + 1))
    return slices


def refuse_suite(tapname: str, config: Any) -> None:
    """Relay workers for ``twistd rtp-relay`` only: inside ``sipsuite`` the
    proxy drives its relay in-process, which worker processes cannot be."""
    if config.relay.workers > 1 and tapname != "rtp-relay":
        raise StartupError(
            f"relay.workers = {config.relay.workers}: only for twistd rtp-relay; run twistd"
            " rtp-relay --workers N beside twistd sip-proxy, or relay.workers = 1")


class RelaySupervisor(Supervisor):
    """Runs ``config.relay.workers`` relay workers behind the control sockets."""

    def __init__(self, config: Any, overrides: Mapping[str, Any], reactor: Any | None = None) -> None:
        super().__init__(config, overrides, reactor)
        self.count = config.relay.workers
        low, high = config.relay.ports
        self.slices = split_ports(low, high, self.count)
        # The proxy's: not for relay workers (no auth, no management of
        # the proxy's kind, no siblings).
        self.secret = ""
        self.management_ports = (
            {i: _free_loopback_port() for i in range(self.count)}
            if config.management.relay_listen else {})
        self.stop_grace = config.relay.drain_time + STOP_MARGIN
        self.router = WorkerRouter(self.count, self.reactor)
        self.cache = ReplyCache()
        self.listeners: list[Any] = []
        self.tls: Any = None
        # Sessions each worker held at its last report; the ones lost with
        # workers that died.
        self.sessions: dict[int, int] = {}
        self.sessions_lost = 0
        self.worker_deaths = 0

    # -- sockets ----------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)  # not the proxy's port check
        self._bind()

    def _bind(self) -> None:
        """The control sockets, before twistd daemonises: a port in use is
        one line at start (sipsuite.startup), as for the single relay."""
        if self.listeners:
            return
        from sipsuite.rtprelay.service import _show_control

        for address in self.config.relay.media_addresses:
            try:
                check_media_address(address)
            except OSError as exc:
                raise StartupError(f"cannot bind relay media address {address}:"
                                   f" {exc.strerror or exc}") from None
        for spec in self.config.relay.control:
            try:
                self.listeners.append(listen_control(spec, self.router, self.cache, self.reactor,
                                                     tls=self.tls))
            except (CannotListenError, OSError) as exc:
                for port in self.listeners:
                    port.stopListening()
                self.listeners = []
                raise cannot_listen(f"relay control {_show_control(spec)}", exc) from None

    def channel_of(self, index: int) -> str:
        """Worker ``index``'s channel socket (router.py), in the private directory."""
        return os.path.join(self.channel_dir, f"relay-{index}.chan")

    # -- workers ----------------------------------------------------------------------

    def startService(self) -> None:
        self._bind()
        service.Service.startService(self)  # not the proxy's: no SIGHUP to forward
        self.stopping = False
        if not self.channel_dir:
            from sipsuite.proxy.workers import _channel_dir

            self.channel_dir = _channel_dir()
        self.router.start()
        for index in range(self.count):
            self.spawn(index)
        log.info("relay: {n} worker processes, ports {s}", n=self.count,
                 s=", ".join(f"{lo}-{hi}" for lo, hi in self.slices))

    def command(self, index: int) -> list[str]:
        low, high = self.slices[index]
        overrides = dict(self.overrides)
        overrides.update(
            control=[f"unix:{os.path.join(self.channel_dir, f'relay-{index}.sock')}"],
            ports=f"{low}-{high}",
            relay_management=(f"tcp:127.0.0.1:{self.management_ports[index]}"
                              if index in self.management_ports else ""),
        )
        # A file's workers = N must not make the worker a supervisor too.
        # Its own control socket is rtpproxy's unix: one, which the
        # supervisor does not use (it has the channel), but an operator may
        # use to ask one worker: `echo -n I | socat - UNIX:.../relay-0.sock`.
        overrides["relay_workers"] = 1
        # Its kernel table's name: the supervisor's control sockets (held,
        # so no live relay has them) and its number; the same after a restart
        # of either, so the new worker removes what a killed one left.
        from sipsuite.rtprelay.service import bound_controls

        identity = [*bound_controls(self.config.relay.control, self.listeners), f"worker {index}"]
        return [sys.executable, "-m", "sipsuite.rtprelay.worker", "--index", str(index),
                "--config", self.config.path or "", "--overrides", json.dumps(overrides),
                "--channel", self.channel_of(index), "--identity", json.dumps(identity)]

    def send_siblings(self, only: int | None = None) -> None:
        """Relay workers have no siblings to reach (and do not read stdin)."""

    def link_message(self, proc: WorkerProcess, msg: dict[str, Any]) -> None:
        if self.workers.get(proc.index) is not proc:
            return
        kind = msg.get("sipsuite_link")
        if kind == "ready":
            index = proc.index

            def serving(_: None) -> None:
                self.ready.add(index)
                if len(self.ready) == self.count and not self.router.up:
                    log.info("relay: every worker is serving")
                    self.router.all_up()

            def failed(failure: Failure) -> None:
                log.warn("relay worker {n}: cannot reach its channel: {e}", n=index,
                         e=failure.getErrorMessage())

            self.router.connect(index, self.channel_of(index),
                                lambda: self.workers.get(index) is proc).addCallbacks(serving, failed)
        elif kind == "sessions":
            active = msg.get("active")
            if isinstance(active, int) and not isinstance(active, bool):
                self.sessions[proc.index] = active

    def ended(self, proc: WorkerProcess, code: int | None, sig: int | None) -> None:
        if self.workers.get(proc.index) is proc:
            self.router.drop(proc.index, f"worker {proc.index} ended")
        if self.workers.get(proc.index) is proc and not self.stopping:
            self.worker_deaths += 1
            lost = self.sessions.pop(proc.index, 0)
            if lost:
                self.sessions_lost += lost
                log.warn("relay worker {n} died with {k} session(s): their media is not"
                         " relayed any more", n=proc.index, k=lost)
        super().ended(proc, code, sig)

    def stopService(self) -> Any:
        self.router.draining = True
        waited = super().stopService()
        d = defer.maybeDeferred(lambda: waited)
        # The workers drain (up to drain_time); a second SIGTERM or ^C is the
        # operator saying "now", as for the single relay: their calls are cut.
        from sipsuite.rtprelay.service import _redirect_stop_signals

        restore = _redirect_stop_signals(self.reactor, self._cut_drain) if self.workers \
            else (lambda: None)

        def close(result: Any) -> Any:
            restore()
            listeners, self.listeners = self.listeners, []
            closing = [defer.maybeDeferred(port.stopListening) for port in listeners]
            self.router.close()
            return defer.gatherResults(closing).addCallback(lambda _: result)

        return d.addBoth(close)

    def _cut_drain(self) -> None:
        if self.workers:
            log.info("relay drain ended by a second signal: {n} worker(s) still draining"
                     " stopped, their calls cut", n=len(self.workers))
            self.signal_all(signal.SIGKILL)

    # -- management ---------------------------------------------------------------------

    def live_management_ports(self) -> dict[int, int]:
        return {i: port for i, port in self.management_ports.items() if i in self.workers}

    def own_stats(self) -> dict[str, Any]:
        router = self.router
        return {
            "commands": router.commands,
            "command_errors": router.errors,
            "retransmissions": self.cache.hits,
            "worker_deaths": self.worker_deaths,
            "sessions_lost": self.sessions_lost,
        }


class RelayWorkersRegistry(RpcRegistry):
    """``relay.stats`` and ``relay.sessions`` over the workers' management
    ports (the proxy's WorkersRegistry asks them)."""

    def __init__(self, supervisor: RelaySupervisor) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.asker = WorkersRegistry(supervisor.live_management_ports, supervisor.count,
                                     supervisor.reactor)
        self.register("relay.stats", self._stats,
                      "relay.stats(): every relay worker's totals added up, each under 'workers'")
        self.register("relay.sessions", self._sessions,
                      "relay.sessions(call_id=null): the relayed sessions (of one call) of every"
                      " worker, each with its worker's number")

    async def _ask_all(self, name: str, params: Any) -> dict[int, Any]:
        ports = self.supervisor.live_management_ports()
        order = sorted(ports)
        answers = await defer.gatherResults(
            [defer.ensureDeferred(self.asker.ask(ports[i], name, params)).addErrback(
                lambda _f: None) for i in order])
        return {i: a for i, a in zip(order, answers, strict=True) if a is not None}

    async def _stats(self) -> dict[str, Any]:
        per_worker = await self._ask_all("relay.stats", None)
        if not per_worker:
            raise RpcError(INTERNAL_ERROR, "relay.stats: no worker is up; try again")
        figures = [per_worker[i] for i in sorted(per_worker)]
        total: dict[str, Any] = {k: _sum([f.get(k) for f in figures]) for k in figures[0]}
        total["draining"] = any(f.get("draining") for f in figures)
        loads = [f.get("load", 0) for f in figures]
        total["load"] = round(sum(loads) / len(loads), 3)
        total.update(self.supervisor.own_stats())
        total["workers"] = {
            str(i): ({"sessions_active": per_worker[i].get("sessions_active"),
                      "packets_relayed": per_worker[i].get("packets_relayed"),
                      "ports": "{}-{}".format(*self.supervisor.slices[i]),
                      "load": per_worker[i].get("load")} if i in per_worker
                     else {"down": True})
            for i in range(self.supervisor.count)}
        return total

    async def _sessions(self, call_id: str | None = None) -> list[dict[str, Any]]:
        if call_id is not None and not isinstance(call_id, str):
            raise RpcError(INVALID_PARAMS, "call_id must be a string")
        per_worker = await self._ask_all("relay.sessions",
                                         None if call_id is None else [call_id])
        return [dict(s, worker=i) for i in sorted(per_worker) for s in per_worker[i]]


def make_relay_supervisor_service(config: Any, overrides: Mapping[str, Any]
                                  ) -> service.MultiService:
    """The supervisor and the management interface it serves for all the
    relay workers on ``[management] relay_listen``."""
    top = service.MultiService()
    supervisor = RelaySupervisor(config, overrides)
    if any(spec.transport == "tls" for spec in config.relay.control):
        from sipsuite.tlsctx import load_at_start

        supervisor.tls = load_at_start(lambda: config)
    supervisor.setName("relay-supervisor")
    supervisor.setServiceParent(top)
    if config.management.relay_listen:
        registry = RelayWorkersRegistry(supervisor)
        from sipsuite.tlsctx import register_tls_methods

        register_tls_methods(registry, supervisor.tls)
        registry.asker.token = config.management.token  # the workers' listeners want it too
        ManagementService(config.management.relay_listen, registry, token=config.management.token,
                          key="[management] relay_listen").setServiceParent(top)
    return top
