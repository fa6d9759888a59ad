"""Wiring: a validated Config becomes the relay's MultiService.

:class:`RelayService` owns the relay: the SessionTable, its MediaPorts, the
control listeners and a once-a-second tick (session timeouts, ports held by
other programs coming back, load).  Stopping it drains: new sessions are
refused (E99), existing ones keep being relayed and controlled (L, D, Q)
until they end or ``[relay] drain_time`` passes, then everything closes.

:func:`register_relay_methods` adds ``relay.sessions`` and ``relay.stats`` to
a management RpcRegistry: the proxy's inside ``twistd -n sipsuite``, the
relay's own ManagementService for ``twistd -n rtp-relay``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from sipsuite.config import Config, RelayConfig
from sipsuite.config.specs import ControlSpec
from sipsuite.gcpolicy import GCPolicy
from sipsuite.hosts import host_port
from sipsuite.log import get_logger
from sipsuite.ops.errors import INVALID_PARAMS, RpcError
from sipsuite.ops.server import ManagementService, RpcRegistry
from sipsuite.rtpproxy.ids import encode_call_id
from sipsuite.rtprelay.control import ControlHandler, ReplyCache, listen_control
from sipsuite.rtprelay.kernel import KernelUnavailable, open_kernel_plane
from sipsuite.rtprelay.media import MediaPorts, check_media_address
from sipsuite.rtprelay.session import Addr, Leg, Session
from sipsuite.rtprelay.table import SessionTable
from sipsuite.startup import BindsEarly, StartupError, cannot_listen, show_address

__all__ = ["RelayService", "make_relay_service", "register_relay_methods"]

log = get_logger("sipsuite.rtprelay.service")

TICK = 1.0


def _redirect_stop_signals(reactor: Any, action: Callable[[], None]) -> Callable[[], None]:
    """Make SIGTERM and SIGINT run ``action`` in the reactor thread until the
    returned function puts the previous handlers back.

    During a drain the reactor is already stopping: its own handlers would
    ask it to stop again, which raises ReactorNotRunning, logged as a
    critical traceback. Only handlers set from Python are replaced (the
    reactor's under twistd), so a process that never installed any keeps
    the default behaviour.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal.signal works in the main thread only
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(action)

    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if callable(current) and current is not signal.default_int_handler:
            previous[sig] = current
            signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
        previous.clear()

    return restore


class RelayService(BindsEarly):
    """The RTP relay: control listeners, media ports, expiry, drain."""

    def __init__(self, config: RelayConfig, reactor: Any | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.clock = clock
        low, high = config.ports
        self.media = MediaPorts(low, high, reactor, clock, address=config.media_addresses[0])
        self.table = SessionTable(
            self.media,
            learn_window=config.learn_window,
            timeout=config.media_timeout,
            hold_timeout=config.hold_timeout,
            max_sessions_per_call=config.max_sessions_per_call,
        )
        # The rtpproxy command handler: the control sockets and the proxy's
        # in-process client (sipsuite.proxy.media.local) hand it commands.
        self.commands = ControlHandler(self.table, self.media, config.media_addresses, clock)
        self.commands.on_drain_progress = self._check_drained
        self.cache = ReplyCache()
        self.listeners: list[Any] = []
        self._loop: task.LoopingCall | None = None
        self._cpu = (time.process_time(), clock())
        self._drained: defer.Deferred[None] | None = None
        self._drain_timer: Any = None
        self._restore_signals: Callable[[], None] | None = None
        # The last drain was ended by a second signal (the suite stops at once then).
        self.drain_cut = False
        self.tls: Any = None  # sipsuite.tlsctx.TLSContexts, for tls: control sockets
        # Which packet path the relay uses and why, for the log and relay.stats.
        self.forwarding = "userspace"
        self.forwarding_reason = ""
        # What names this relay's nftables table, when not its own control
        # sockets: a relay worker's (rtprelay/worker.py) are in a directory
        # made afresh at each start, so it is named after its supervisor's
        # control sockets and its number, which a restart finds again.
        self.kernel_identity: list[str] | None = None

    # -- start ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # binds (BindsEarly) unless twistd's plugin did
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(TICK, now=False)
        self.reactor.callWhenRunning(lambda: log.info(
            "rtp relay ready: control {c}, media on {m}, ports {lo}-{hi}",
            c=", ".join(str(s) for s in self.config.control),
            m=", ".join(self.config.media_addresses), lo=self.config.ports[0],
            hi=self.config.ports[1]))
        self.reactor.callWhenRunning(lambda: log.info(
            "rtp relay forwarding: {f} ({r})", f=self.forwarding, r=self.forwarding_reason))

    def _bind(self) -> None:
        """Check the media addresses and bind the control sockets, once:
        before twistd daemonises (see sipsuite.startup), or at start.  The
        usual failures, a second relay on the control port or a media
        address not on this host, are a StartupError naming it."""
        if self.listeners:
            return
        for address in self.config.media_addresses:
            try:
                check_media_address(address)
            except OSError as exc:
                raise StartupError(f"cannot bind relay media address {address}:"
                                   f" {exc.strerror or exc}") from None
        for spec in self.config.control:
            try:
                self.listeners.append(
                    listen_control(spec, self.commands, self.cache, self.reactor, self.clock,
                                   self.tls))
            except (CannotListenError, OSError) as exc:
                self._close_listeners()
                raise cannot_listen(f"relay control {_show_control(spec)}", exc) from None
        try:
            self._open_kernel()
        except StartupError:
            self._close_listeners()
            raise

    def _open_kernel(self) -> None:
        """Pick the packet path ([relay] kernel), once the control sockets are
        bound: holding them proves no live relay owns the table named after
        them, so a table found by that name is a crashed one's, and goes."""
        mode = self.config.kernel
        if mode == "off":
            self.forwarding_reason = '[relay] kernel = "off"'
            return
        controls = self.kernel_identity or bound_controls(self.config.control, self.listeners)
        try:
            plane, note = open_kernel_plane(self.config.media_addresses, controls,
                                            self.media.address_of, self.clock)
        except KernelUnavailable as exc:
            if mode == "on":
                raise StartupError(f'[relay] kernel = "on": {exc}') from None
            self.forwarding_reason = f"kernel forwarding unavailable: {exc}"
            return
        self.media.kernel = plane
        self.forwarding = "kernel"
        self.forwarding_reason = f"nftables, {note}"

    @property
    def control_ports(self) -> list[int]:
        """The bound UDP control ports (the OS's picks for port 0), in config order."""
        return [p.getHost().port for p in self.listeners if hasattr(p.getHost(), "port")]

    @property
    def dispatcher(self) -> ControlHandler:
        """The command handler's name before issue 13 (``commands`` now);
        kept one release for code written against it."""
        return self.commands

    # -- the tick ---------------------------------------------------------------

    def tick(self) -> None:
        """Once a second: end idle sessions, retry held ports, measure load."""
        try:
            self._tick()
        except Exception:
            # A LoopingCall whose function raises stops for good, and then no
            # session would ever time out: log the bug and keep ticking.
            log.failure("relay tick failed", Failure())

    def _tick(self) -> None:
        now = self.clock()
        kernel = self.media.kernel
        if kernel is not None and kernel.poll_due():
            # Before expiry: a session the kernel forwards is active while
            # its counters rise.
            kernel.poll()
        gone = self.table.expire(now)
        for session in gone:
            log.info("relay session {c} ended: no media for {t:g} s", c=session.call_id,
                     t=self.table.hold_timeout if session.on_hold else self.table.timeout)
        self.media.release_held(now)
        cpu = time.process_time()
        last_cpu, last_now = self._cpu
        if now > last_now:
            self.commands.load = min(1.0, max(0.0, (cpu - last_cpu) / (now - last_now)))
        self._cpu = (cpu, now)
        self._check_drained()

    # -- stop: drain ------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        table = self.table
        table.draining = True
        active = len(table)
        if active == 0 or self.config.drain_time <= 0:
            return self._close()
        log.info("relay draining: {n} session(s), at most {t:g} s", n=active,
                 t=self.config.drain_time)
        self._drained = defer.Deferred()
        self._drain_timer = self.reactor.callLater(self.config.drain_time, self._drain_over)
        # A second SIGTERM or ^C is the operator saying "now": it ends the drain.
        self._restore_signals = _redirect_stop_signals(self.reactor, self._cut_drain)
        return self._drained

    def stop_now(self) -> defer.Deferred[None]:
        """Close everything at once, sessions and all, without draining
        (ends a drain in progress too); fires when the listeners are closed."""
        if self.running:
            super().stopService()
        self.table.draining = True
        if self._drained is None:
            return self._close()
        done = self._drained
        self._finish_drain()
        return done

    def _check_drained(self) -> None:
        if self._drained is not None and self.table.drained:
            log.info("relay drained: every session ended")
            self._finish_drain()

    def _cut_drain(self) -> None:
        if self._drained is not None:
            self.drain_cut = True
            log.info("relay drain ended by a second signal: {n} session(s) cut",
                     n=len(self.table))
            self._finish_drain()

    def _drain_over(self) -> None:
        self._drain_timer = None
        log.info("relay drain time over: {n} session(s) cut", n=len(self.table))
        self._finish_drain()

    def _finish_drain(self) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
        if self._restore_signals is not None:
            self._restore_signals()
            self._restore_signals = None
        drained, self._drained = self._drained, None
        closed = self._close()
        if drained is not None:
            closed.chainDeferred(drained)

    def _close(self) -> defer.Deferred[None]:
        """Stop the tick, close the control listeners and every relay port;
        fires once the listeners are closed (a unix socket file removed)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.media.close()
        return self._close_listeners()

    def _close_listeners(self) -> defer.Deferred[None]:
        listeners, self.listeners = self.listeners, []
        waits = [defer.maybeDeferred(port.stopListening) for port in listeners]
        return defer.gatherResults(waits).addCallback(lambda _: None)

    # -- management views -------------------------------------------------------

    def sessions_view(self, call_id: str | None = None) -> list[dict[str, Any]]:
        """Sessions (of one call: named by the token the relay holds, or by
        the SIP Call-ID a sipsuite proxy encoded into it, sipsuite.rtpproxy.ids)."""
        if self.media.kernel is not None:
            self.media.kernel.poll()
        now = self.clock()
        wanted = None if call_id is None else {call_id, encode_call_id(call_id)}
        return [self._session_info(s, now) for s in self.table
                if wanted is None or s.call_id in wanted]

    def _session_info(self, session: Session, now: float) -> dict[str, Any]:
        kernel = self.media.kernel
        in_kernel = kernel.kernel_ports(session) if kernel is not None else set()
        return {
            "call_id": session.call_id,
            "from_tag": session.from_tag,
            "to_tag": session.to_tag,
            "age": round(now - session.created, 3),
            "idle": round(now - session.last_activity, 3),
            "on_hold": session.on_hold,
            "packets": session.packets_relayed,
            "bytes": session.bytes_relayed,
            "dropped": session.packets_dropped,
            "caller": self._leg_info(session.caller, in_kernel),
            "callee": self._leg_info(session.callee, in_kernel),
        }

    def _leg_info(self, leg: Leg, in_kernel: set[int]) -> dict[str, Any]:
        s = leg.stats
        return {
            "port": leg.port,
            "address": self.media.address_of(leg),
            "interface": leg.interface,
            "signalled": _show_addr(leg.signalled),
            "latched": _show_addr(leg.latched),
            "rtcp_latched": _show_addr(leg.rtcp_latched),
            "asymmetric": leg.asymmetric,
            "on_hold": leg.on_hold,
            # What this party sent through the relay.
            "packets": s.packets,
            "bytes": s.bytes,
            "rtcp_packets": s.rtcp_packets,
            "rtcp_bytes": s.rtcp_bytes,
            "dropped": s.dropped,
            "drops": dict(s.drops),
            # Whether the kernel forwards what this party sends (RTP, RTCP).
            "kernel": leg.port is not None and leg.port in in_kernel,
            "kernel_rtcp": leg.port is not None and leg.port + 1 in in_kernel,
        }

    def stats_view(self) -> dict[str, Any]:
        media = self.media
        kernel = media.kernel
        if kernel is not None:
            kernel.poll()
        s = self.table.stats()
        return {
            "sessions_active": s.sessions_active,
            "sessions_created": s.sessions_created,
            "sessions_deleted": s.sessions_deleted,
            "sessions_expired": s.sessions_expired,
            "sessions_refused": self.table.sessions_refused,
            "packets_relayed": s.packets_relayed,
            "bytes_relayed": s.bytes_relayed,
            "packets_dropped": s.packets_dropped,
            "drops": s.drops,
            "send_errors": media.counters.send_errors,
            "ports_total": media.capacity * 2,
            "ports_free": media.free_count * 2,
            "ports_held": media.held_count * 2,
            "commands": self.commands.commands,
            "command_errors": self.commands.errors,
            "retransmissions": self.cache.hits,
            "draining": self.table.draining,
            "load": round(self.commands.load, 3),
            "forwarding": self.forwarding,
            "forwarding_reason": self.forwarding_reason,
            # Datagrams the relay process read itself; packets_relayed
            # counts the kernel's too.
            "packets_userspace": media.counters.received,
            "packets_kernel": kernel.packets if kernel is not None else 0,
            "kernel_flows": len(kernel.flows) if kernel is not None else 0,
            "kernel_errors": kernel.errors if kernel is not None else 0,
            # Times the table was deleted under the relay and re-made.
            "kernel_tables_lost": kernel.tables_lost if kernel is not None else 0,
            # Mean cost of one session's rule batch (set-up, removal), in us.
            "kernel_install_us": _mean_us(kernel.install_time, kernel.installs)
            if kernel is not None else 0.0,
            "kernel_remove_us": _mean_us(kernel.removal_time, kernel.removals)
            if kernel is not None else 0.0,
        }


def _show_control(spec: ControlSpec) -> str:
    if spec.transport == "unix":
        return f"unix {spec.path}"
    return show_address(spec.transport, spec.host, spec.port)


def bound_controls(specs: list[ControlSpec], listeners: list[Any]) -> list[str]:
    """The control sockets as bound (the OS's pick for port 0): what a
    relay's nftables table is named after."""
    return [_show_control(spec) if spec.transport == "unix" else f"{spec.transport}:{_bound(port)}"
            for spec, port in zip(specs, listeners, strict=True)]


def _bound(port: Any) -> str:
    host = port.getHost()
    return f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}"


def _mean_us(total: float, count: int) -> float:
    return round(total / count * 1e6, 1) if count else 0.0


def _show_addr(addr: Addr | None) -> str | None:
    if addr is None:
        return None
    return host_port(*addr)


def register_relay_methods(registry: RpcRegistry, relay: RelayService) -> None:
    """``relay.sessions`` and ``relay.stats`` on a management registry."""

    def sessions(call_id: str | None = None) -> list[dict[str, Any]]:
        if call_id is not None and not isinstance(call_id, str):
            raise RpcError(INVALID_PARAMS, "call_id must be a string")
        return relay.sessions_view(call_id)

    def stats() -> dict[str, Any]:
        return relay.stats_view()

    registry.register("relay.sessions", sessions,
                      "relay.sessions(call_id=null): the relayed sessions (of one call),"
                      " with each party's ports, addresses and counters")
    registry.register("relay.stats", stats,
                      "relay.stats(): relay totals: sessions, packets, drops by cause, ports")


class _GCService(service.Service):
    def __init__(self, reactor: Any | None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.policy = GCPolicy(reactor)

    def startService(self) -> None:
        super().startService()
        self.policy.start()

    def stopService(self) -> Any:
        super().stopService()
        self.policy.stop()


def make_relay_service(config: Config, registry: RpcRegistry | None = None, *,
                       serve_management: bool = True,
                       reactor: Any | None = None) -> service.MultiService:
    """The relay's services.  With ``registry`` (the proxy's, in one process)
    its methods go there; without, and with ``serve_management``, the relay
    serves its own management interface on ``[management] relay_listen``
    (unless that is ""), apart from the proxy's port."""
    top = service.MultiService()
    relay = RelayService(config.relay, reactor)
    relay.setName("relay")
    relay.setServiceParent(top)
    if any(spec.transport == "tls" for spec in config.relay.control):
        from sipsuite.tlsctx import load_at_start

        relay.tls = load_at_start(lambda: config)
    if registry is None:
        # On its own (twistd -n rtp-relay) the relay owns the process and so
        # its garbage-collector policy: without it a full collection while
        # many sessions are set up stalls every stream for tens of ms.
        _GCService(reactor).setServiceParent(top)
    if registry is None and serve_management and config.management.relay_listen:
        registry = RpcRegistry()
        ManagementService(config.management.relay_listen, registry, reactor,
                          token=config.management.token,
                          key="[management] relay_listen").setServiceParent(top)
    if registry is not None:
        register_relay_methods(registry, relay)
        from sipsuite.tlsctx import register_tls_methods

        register_tls_methods(registry, relay.tls)
    return top
