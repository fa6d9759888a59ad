"""OPTIONS probing of dispatcher destinations (ds_ping_interval): the
part of :class:`sipsuite.proxy.modules.dispatcher.dispatcher.Dispatcher` that sends probes
and weighs their answers.

Probes go out through the proxy's own listeners like the NAT keep-alives
(modules/natping.py): raw requests with a branch prefix of their own, their
answers picked out by it in ``ProxyCore.receive_response``. Over UDP a
probe is retransmitted like any non-INVITE request (T1 doubling up to T2)
until it is answered or ``probe_timeout`` passes.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from sipsuite.hosts import bracket
from sipsuite.log import get_logger
from sipsuite.proxy.net.resolver import Target

if TYPE_CHECKING:
    from sipsuite.config import DispatcherConfig
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.proxy.modules.dispatcher.dispatcher import DsDestination
    from sipsuite.proxy.net.listener import Listener
    from sipsuite.sip.message import Response
    from sipsuite.sip.uri import URI

log = get_logger("sipsuite.proxy.dispatcher")

#: Branch prefix of probe OPTIONS: their answers belong to no transaction.
PROBE_BRANCH = "z9hG4bKspsds"


class _Probe:
    __slots__ = ("uri", "branch", "data", "target", "listener", "interval", "retrans", "timeout")

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.branch = PROBE_BRANCH + secrets.token_hex(8)
        self.data = b""
        self.target: Target | None = None
        self.listener: Listener | None = None
        self.interval = 0.0
        self.retrans: Any = None
        self.timeout: Any = None


class Prober:
    """Probing for the Dispatcher, which provides the attributes below."""

    core: ProxyCore
    clock: Any
    by_uri: dict[str, list[DsDestination]]
    inflight: dict[str, _Probe]  # by URI
    branches: dict[str, _Probe]  # by Via branch
    timer: Any

    @property
    def cfg(self) -> DispatcherConfig:
        raise NotImplementedError

    def _result(self, d: DsDestination, ok: bool, why: str, probe: bool = False) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        for probe in list(self.inflight.values()):
            self._cancel_probe(probe)
        self.inflight.clear()
        self.branches.clear()

    def _schedule(self) -> None:
        interval = self.cfg.probe_interval
        # Probing off: look at the setting again now and then (cfg set may change it).
        self.timer = self.clock.callLater(interval if interval > 0 else 5.0, self._tick)

    def _tick(self) -> None:
        try:
            if self.cfg.probe_interval > 0:
                self.probe_round()
        except Exception:  # noqa: BLE001 - a bug here must not stop probing for good
            log.failure("dispatcher probe round failed")
        self._schedule()

    def probe_round(self) -> None:
        mode = self.cfg.probe_mode
        for uri, dests in list(self.by_uri.items()):
            if uri in self.inflight:
                continue  # the last probe still waits for its answer
            if any(d.state != "disabled" and (mode == "all" or d.probing) for d in dests):
                self._probe(uri, dests[0].parsed)

    def _probe(self, uri: str, parsed: URI) -> None:
        probe = _Probe(uri)
        self.inflight[uri] = probe
        probe.timeout = self.clock.callLater(self.cfg.probe_timeout, self._finish, probe, False,
                                             "timeout")
        host = parsed.params.get("maddr") or parsed.host
        d = self.core.resolver.resolve(host, parsed.port, parsed.transport,
                                       parsed.scheme == "sips")
        d.addCallback(self._send_probe, probe)
        d.addErrback(lambda f: self._finish(probe, False, f"cannot resolve: {f.getErrorMessage()}"))

    def _send_probe(self, targets: list[Target], probe: _Probe) -> None:
        if self.inflight.get(probe.uri) is not probe:
            return  # timed out (or stopped) while resolving
        transport = self.core.transport
        for target in targets:
            listener = transport.pick_listener(target.transport, target.host, None)
            if listener is not None:
                break
        else:
            self._finish(probe, False, "no address or no listener for it" if targets else
                         "cannot resolve")
            return
        cfg = self.cfg
        probe.data = (
            f"OPTIONS {probe.uri} SIP/2.0\r\n"
            f"Via: {listener.via(probe.branch, rport=True)}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <{cfg.probe_from}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <{probe.uri}>\r\n"
            f"Call-ID: {probe.branch[len(PROBE_BRANCH):]}@{bracket(listener.advertise)}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
        probe.target, probe.listener = target, listener
        self.branches[probe.branch] = probe
        self.core.count("dispatcher.probes")
        if not transport.send(probe.data, target.transport, target.host, target.port, listener,
                              target.name):
            self._finish(probe, False, "send failed")
            return
        if target.transport == "udp":
            # Non-INVITE retransmissions (RFC 3261 17.1.2.2): T1 doubling up to T2.
            probe.interval = self.core.config.timers.t1
            probe.retrans = self.clock.callLater(probe.interval, self._retransmit, probe)

    def _retransmit(self, probe: _Probe) -> None:
        target, listener = probe.target, probe.listener
        if self.branches.get(probe.branch) is not probe or target is None or listener is None:
            return
        self.core.transport.send(probe.data, target.transport, target.host, target.port, listener)
        probe.interval = min(probe.interval * 2, self.core.config.timers.t2)
        probe.retrans = self.clock.callLater(probe.interval, self._retransmit, probe)

    def probe_response(self, resp: Response) -> bool:
        """An answer with a probe's branch; False when it is not one (the core goes on)."""
        branch = resp.top_via.branch or ""
        if not branch.startswith(PROBE_BRANCH):
            return False
        probe = self.branches.get(branch)
        if probe is not None and resp.status >= 200:
            cfg = self.cfg
            ok = 200 <= resp.status < 300 or resp.status in cfg.probe_reply_codes
            self._finish(probe, ok, f"{resp.status} {resp.reason}".strip())
        return True

    def _cancel_probe(self, probe: _Probe) -> None:
        for call in (probe.retrans, probe.timeout):
            if call is not None and call.active():
                call.cancel()
        probe.retrans = probe.timeout = None

    def _finish(self, probe: _Probe, ok: bool, why: str) -> None:
        if self.inflight.get(probe.uri) is not probe:
            return
        self._cancel_probe(probe)
        del self.inflight[probe.uri]
        self.branches.pop(probe.branch, None)
        if not ok:
            self.core.count("dispatcher.probe_failures")
        for d in self.by_uri.get(probe.uri, []):
            self._result(d, ok, why, probe=True)
