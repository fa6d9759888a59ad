"""Wiring: a validated Config becomes the proxy's MultiService."""

from __future__ import annotations

from typing import Any

from twisted.application import service

from sipsuite.config import Config
from sipsuite.gcpolicy import GCPolicy
from sipsuite.log import get_logger
from sipsuite.ops.callpages import CallPages
from sipsuite.ops.liveops import LiveOpsService, register_liveops_methods
from sipsuite.ops.routeexplain import register_route_methods
from sipsuite.ops.server import ManagementService, RpcRegistry
from sipsuite.ops.stats import MetricsResource, register_stats_methods
from sipsuite.ops.users import register_store_methods
from sipsuite.proxy import workerlink
from sipsuite.proxy.build import BUILTIN_MODULES, build_core
from sipsuite.proxy.modules.antiflood import register_flood_methods
from sipsuite.proxy.modules.dispatcher.dispatcher import register_dispatcher_methods
from sipsuite.proxy.modules.recorder import register_trace_methods
from sipsuite.proxy.modules.shv import register_shv_methods
from sipsuite.proxy.services import LOCATION, SUBSCRIBERS
from sipsuite.proxy.workerlink import WorkerLink
from sipsuite.tlsctx import register_tls_methods

log = get_logger("sipsuite.proxy.service")

__all__ = ["BUILTIN_MODULES", "ProxyService", "build_core", "make_proxy_service"]

class ProxyService(service.Service):
    """The proxy core under twistd: its listeners, its modules (the Redis
    connection among them) and the garbage-collector policy."""

    def __init__(self, config: Config, reactor: Any | None = None,
                 link: WorkerLink | None = None, channel: str = "") -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.link = link
        self.heartbeat: Any = None
        self.core = build_core(config, reactor, link, channel)
        if link is not None:
            workerlink.follow_siblings(self.core, link)
        # A worker process (proxy/worker.py): SO_REUSEPORT and a private port.
        self.core.transport.workers = config.proxy.workers > 1
        self.tls = self.core.transport.tls
        self.gc = GCPolicy(reactor)

    def privilegedStartService(self) -> None:
        """Bind the SIP listeners: twistd's plugin calls this before it
        daemonises, so a port that is taken is a StartupError the launcher
        reports (see sipsuite.startup), and twistd again before it drops
        privileges (a no-op by then)."""
        super().privilegedStartService()
        self.core.listen()

    def startService(self) -> None:
        super().startService()
        self.core.start()  # binds the listeners unless privilegedStartService did
        if self.core.transport.siblings is not None:
            self.core.transport.siblings.start()
        self.gc.start()
        # Logged once the reactor runs (and twistd's signal handlers are in
        # place): the moment the proxy really serves.
        self.reactor.callWhenRunning(
            lambda: log.info("sip proxy ready on {n} listener(s)", n=len(self.core.transport.listeners)))
        if self.link is not None:
            self.heartbeat = workerlink.start_heartbeat(self.core, self.link, self.reactor)

    def stopService(self) -> Any:
        super().stopService()
        self.gc.stop()
        if self.heartbeat is not None and self.heartbeat.running:
            self.heartbeat.stop()
        from twisted.internet import defer

        return defer.DeferredList(self.core.stop())


def make_proxy_service(config: Config, link: WorkerLink | None = None, channel: str = "", *,
                       user_services: bool = True) -> service.MultiService:
    """Build the proxy's services (transports, core, routing, management) from
    config; ``link``: a worker process's (proxy/worker.py), ``channel`` the
    directory of its sockets to its siblings; then, with ``user_services``,
    those of ``[services] load`` (the suite loads them itself, once the
    relay is there too)."""
    top = service.MultiService()
    proxy = ProxyService(config, link=link, channel=channel)
    proxy.setServiceParent(top)
    tls = proxy.tls
    registry: RpcRegistry | None = None
    if config.management.listen:
        registry = RpcRegistry()
        core = proxy.core
        register_store_methods(registry, core.modules.require(LOCATION).store,
                               core.modules.require(SUBSCRIBERS), config.auth.realm)
        register_dispatcher_methods(registry, core)
        register_flood_methods(registry, core)
        register_shv_methods(registry, core)
        register_liveops_methods(registry, core)
        register_route_methods(registry, core)
        register_stats_methods(registry, core)
        register_trace_methods(registry, core)
        register_tls_methods(registry, tls, core.transport)
        ManagementService(config.management.listen, registry,
                          children={b"metrics": MetricsResource(core, registry),
                                    b"calls": CallPages(registry)},
                          token=config.management.token).setServiceParent(top)
    LiveOpsService(proxy.core).setServiceParent(top)  # SIGHUP: routing reload
    if user_services:
        from sipsuite.api import Handle
        from sipsuite.userservices import load_services

        load_services(top, Handle(proxy.core, registry=registry), config, registry)
    return top
