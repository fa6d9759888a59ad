"""OPTIONS probing of dispatcher destinations (ds_ping_interval): the
part of :class:`sipsuite.proxy.modules.dispatcher.dispatcher.LoadBalancer` that sends probes
and weighs their answers.

Probes go out through the core's local UAC (``core.uac``, proxy/core/uac.py)
after the same RFC 3263 resolution a call to the destination takes
(``core.resolve``): a client transaction of the core, so over UDP a probe is
retransmitted like any non-INVITE request (T1 doubling up to T2, ``[timers]``)
until it is answered or ``probe_timeout`` passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipsuite.log import get_logger
from sipsuite.proxy.api import UAC_BRANCH
from sipsuite.proxy.modules.dispatcher.lists import DsState

if TYPE_CHECKING:
    from sipsuite.config import DispatcherConfig
    from sipsuite.proxy.api import CoreAPI
    from sipsuite.proxy.modules.dispatcher.dispatcher import DsDestination
    from sipsuite.proxy.net.resolver import Target
    from sipsuite.sip.message import Response
    from sipsuite.sip.uri import URI

log = get_logger("sipsuite.proxy.dispatcher")

#: Branch prefix of probe OPTIONS: the local UAC's.
PROBE_BRANCH = UAC_BRANCH


class _Probe:
    """One destination URI's probe in flight."""

    __slots__ = ("uri", "timeout", "sending")

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.timeout: Any = None  # probe_timeout from the start, resolution included
        self.sending = False  # inside uac.request: a None now is a failed send


class Prober:
    """Probing for the LoadBalancer, which provides the attributes below;
    uses nothing of the core but api.CoreAPI (resolve, net, uac, stats)."""

    core: CoreAPI
    clock: Any
    by_uri: dict[str, list[DsDestination]]
    inflight: dict[str, _Probe]  # by URI
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
            if any(d.state != DsState.DISABLED and (mode == "all" or d.probing) for d in dests):
                self._probe(uri, dests[0].parsed)

    def _probe(self, uri: str, parsed: URI) -> None:
        probe = _Probe(uri)
        self.inflight[uri] = probe
        probe.timeout = self.clock.callLater(self.cfg.probe_timeout, self._finish, probe, False,
                                             "timeout")
        self.core.resolve(parsed).addCallback(self._send_probe, probe)

    def _send_probe(self, targets: list[Target], probe: _Probe) -> None:
        if self.inflight.get(probe.uri) is not probe:
            return  # timed out (or stopped) while resolving
        net = self.core.net
        for target in targets:
            listener = net.pick_listener(target.transport, target.host, None)
            if listener is not None:
                break
        else:
            self._finish(probe, False, "no address or no listener for it" if targets else
                         "cannot resolve")
            return
        cfg = self.cfg
        self.core.stats.count("dispatcher.probes")
        # What is left of probe_timeout after the resolution.
        left = max(probe.timeout.getTime() - self.clock.seconds(), 0.0)
        probe.sending = True
        d = self.core.uac.request("OPTIONS", probe.uri, target, listener=listener,
                                  from_uri=cfg.probe_from, timeout=left, rport=True)
        d.addCallback(self._answer, probe)  # at once if the send failed
        probe.sending = False

    def _answer(self, resp: Response | None, probe: _Probe) -> None:
        if resp is None:
            self._finish(probe, False, "send failed" if probe.sending else "timeout")
            return
        ok = 200 <= resp.status < 300 or resp.status in self.cfg.probe_reply_codes
        self._finish(probe, ok, f"{resp.status} {resp.reason}".strip())

    def _cancel_probe(self, probe: _Probe) -> None:
        if probe.timeout is not None and probe.timeout.active():
            probe.timeout.cancel()
        probe.timeout = None

    def _finish(self, probe: _Probe, ok: bool, why: str) -> None:
        if self.inflight.get(probe.uri) is not probe:
            return
        self._cancel_probe(probe)
        del self.inflight[probe.uri]
        if not ok:
            self.core.stats.count("dispatcher.probe_failures")
        for d in self.by_uri.get(probe.uri, []):
            self._result(d, ok, why, probe=True)
