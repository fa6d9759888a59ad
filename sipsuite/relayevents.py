"""The in-process relay's events (``twistd sipsuite``): relay.session.created,
.latched and .ended on the proxy's event bus.

Created and ended come from the session table's observer, as they happen.
For this relay the table is the one source: the suite tells the proxy's
media module to raise nothing for it (sipsuite.proxy.media.sessions, which
reports the sessions on relays in other processes).
Latching happens on the packet path, which must stay free of any per-packet
work, so it is found by a scan of the table every LATCH_SCAN seconds, and
only while someone subscribes to ``relay.session.latched``.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import task

from sipsuite.eventbus import EventBus

__all__ = ["LATCH_SCAN", "RelayEvents"]

LATCH_SCAN = 0.5


class RelayEvents(service.Service):
    """Feeds ``bus`` from ``relay`` (a RelayService); a child of the suite."""

    def __init__(self, bus: EventBus, relay: Any, reactor: Any) -> None:
        self.bus = bus
        self.relay = relay
        self.reactor = reactor
        self._reported: dict[int, set[str]] = {}  # id(session) -> legs reported latched
        self._scan: task.LoopingCall | None = None
        relay.table.observer = self._observe
        bus.on_change(self._wanted_changed)

    def _observe(self, what: str, session: Any, why: str) -> None:
        bus = self.bus
        if what == "created":
            bus.emit("relay.session.created", call_id=session.call_id, from_tag=session.from_tag)
        else:
            self._reported.pop(id(session), None)
            bus.emit("relay.session.ended", call_id=session.call_id, from_tag=session.from_tag,
                     reason=why)

    def _wanted_changed(self) -> None:
        wanted = self.bus.wants("relay.session.latched")
        if wanted and self._scan is None and self.running:
            self._start_scan()
        elif not wanted and self._scan is not None:
            self._stop_scan()

    def _start_scan(self) -> None:
        self._scan = task.LoopingCall(self._latches)
        self._scan.clock = self.reactor
        self._scan.start(LATCH_SCAN, now=False)

    def _stop_scan(self) -> None:
        scan, self._scan = self._scan, None
        if scan is not None and scan.running:
            scan.stop()

    def _latches(self) -> None:
        reported = self._reported
        for session in self.relay.table:
            done = reported.setdefault(id(session), set())
            for leg in (session.caller, session.callee):
                if leg.latched is not None and leg.side not in done:
                    done.add(leg.side)
                    self.bus.emit("relay.session.latched", call_id=session.call_id,
                                  from_tag=session.from_tag, leg=str(leg.side),
                                  address=f"{leg.latched[0]}:{leg.latched[1]}")

    def startService(self) -> None:
        super().startService()
        if self.bus.wants("relay.session.latched"):
            self._start_scan()

    def stopService(self) -> Any:
        self._stop_scan()
        return super().stopService()
