"""Wiring: a validated Config becomes the proxy's MultiService."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError

from sipsuite.config import Config
from sipsuite.gcpolicy import GCPolicy
from sipsuite.log import get_logger
from sipsuite.proxy.core import ProxyCore

log = get_logger("sipsuite.proxy.service")


class ProxyService(service.Service):
    """Starts the listeners when twistd starts the application, so a port
    that is taken fails start-up with the address named."""

    def __init__(self, config: Config, reactor: Any | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.core = ProxyCore(config, reactor)
        self.gc = GCPolicy(reactor)

    def startService(self) -> None:
        super().startService()
        try:
            self.core.start()
        except CannotListenError as exc:
            # One line naming the address, not a traceback: the usual cause is
            # another SIP server (or a second sipsuite) on the port.
            reason = getattr(exc.socketError, "strerror", None) or exc.socketError
            sys.stderr.write(f"sipsuite: cannot listen on {exc.interface or '*'}:{exc.port}: {reason}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
        self.gc.start()
        # Logged once the reactor runs (and twistd's signal handlers are in
        # place): the moment the proxy really serves.
        self.reactor.callWhenRunning(
            lambda: log.info("sip proxy ready on {n} listener(s)", n=len(self.core.transport.listeners)))

    def stopService(self) -> Any:
        super().stopService()
        self.gc.stop()
        from twisted.internet import defer

        return defer.DeferredList(self.core.stop())


def make_proxy_service(config: Config) -> service.MultiService:
    """Build the proxy's services (transports, core, routing) from config."""
    top = service.MultiService()
    ProxyService(config).setServiceParent(top)
    return top
