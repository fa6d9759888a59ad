"""Stopping ``twistd -n sipsuite`` with relayed calls up (issue 12 item 6).

The relay drains on stop ([relay] drain_time): its sessions keep flowing
until they end. But a session ends only when the proxy sees the call's BYE,
so the proxy's SIP side must outlive the drain, not close first. The suite's
top service therefore stops in order:

1. the proxy refuses new work: a request outside a dialog (no To tag) gets
   503 Service Unavailable with Retry-After, so RFC 3263 clients and load
   balancers move new calls to another server; requests inside dialogs (BYE,
   re-INVITE, ACK, in-dialog NOTIFY...) are routed as usual;
2. the relay drains: it is done when its last session ends (the BYE's D
   command), at drain_time, or at a second SIGTERM / ^C;
3. the requests still being handled (that BYE, waiting for its 200) get
   their answers, bounded by what is left of drain_time; a further signal
   ends this wait too;
4. the proxy stops.

With no session up (or drain_time 0) everything stops at once. ``twistd -n
sip-proxy`` alone keeps no calls (its relay, if any, is another process that
drains by itself) and stops at once, as Kamailio does.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task

from sipsuite.log import get_logger
from sipsuite.rtprelay.service import RelayService, _redirect_stop_signals

log = get_logger("sipsuite.drain")

# How often the last step checks for requests still being handled.
POLL = 0.05


class SuiteService(service.MultiService):
    """The top service of ``twistd sipsuite``: children "sip-proxy" and
    "rtp-relay"; ``core`` (the proxy's ProxyCore) and ``relay`` (the
    RelayService) are set by make_suite_service."""

    def __init__(self, reactor: Any | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.core: Any = None
        self.relay: RelayService | None = None

    def stopService(self) -> Any:
        relay, core = self.relay, self.core
        if (relay is None or core is None or not len(relay.table)
                or relay.config.drain_time <= 0):
            return super().stopService()
        service.Service.stopService(self)
        relay_top = self.getServiceNamed("rtp-relay")
        others = [s for s in reversed(list(self)) if s is not relay_top]
        deadline = self.reactor.seconds() + relay.config.drain_time
        core.start_drain(deadline)
        log.info("stopping: SIP stays up for the calls of {n} relay session(s),"
                 " new requests outside a dialog get 503", n=len(relay.table))
        d = defer.maybeDeferred(relay_top.stopService)
        d.addErrback(lambda f: log.failure("relay stop failed", f))
        d.addCallback(lambda _: self._finish_requests(deadline))
        d.addCallback(lambda _: defer.DeferredList(
            [defer.maybeDeferred(s.stopService) for s in others]))
        return d

    def _finish_requests(self, deadline: float) -> defer.Deferred[None]:
        """Fires once the proxy handles no request any more (the last BYE
        answered), at ``deadline``, or at a stop signal."""
        done: defer.Deferred[None] = defer.Deferred()
        relay, core = self.relay, self.core
        if relay is not None and relay.drain_cut:
            done.callback(None)  # a second signal: the operator wants out now
            return done
        loop = task.LoopingCall(lambda: check())
        loop.clock = self.reactor

        def finish() -> None:
            if done.called:
                return
            if loop.running:
                loop.stop()
            restore()
            left = core.in_flight()
            if left:
                log.info("stopping with {n} request(s) unanswered", n=left)
            done.callback(None)

        def check() -> None:
            if not core.in_flight() or self.reactor.seconds() >= deadline:
                finish()

        restore = _redirect_stop_signals(self.reactor, finish)
        # Not at once: the routing that sent the last D may still be on its
        # way to forward the BYE (its server transaction is pending already).
        loop.start(POLL, now=False)
        return done
