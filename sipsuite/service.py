"""Wiring of the whole suite (``twistd sipsuite``): every service on one host."""

from __future__ import annotations

from twisted.application import service

from sipsuite.api import Handle
from sipsuite.config import Config
from sipsuite.drain import SuiteService
from sipsuite.ops.server import ManagementService, RpcRegistry
from sipsuite.proxy.media.local import LocalRelayClient
from sipsuite.proxy.modules.media import add_media
from sipsuite.proxy.service import ProxyService, make_proxy_service
from sipsuite.proxy.services import EVENTS
from sipsuite.relayevents import RelayEvents
from sipsuite.rtprelay.service import RelayService, make_relay_service
from sipsuite.userservices import load_services


def _management_registry(parent: service.MultiService) -> RpcRegistry | None:
    """The registry of the management interface the proxy serves, if any."""
    for child in parent:
        if isinstance(child, ManagementService):
            return child.registry
    return None


def make_suite_service(config: Config) -> service.MultiService:
    """The proxy and the RTP relay in one MultiService.

    One management interface serves both: the relay's methods go on the
    proxy's registry (``[management] listen = ""`` turns it off for both).
    The relay is the child named "rtp-relay", its RelayService named "relay"
    inside, for the proxy to reach in-process.
    """
    top = SuiteService()  # stops in order: see sipsuite.drain
    proxy = make_proxy_service(config, user_services=False)
    proxy.setName("sip-proxy")
    proxy.setServiceParent(top)
    relay = make_relay_service(config, _management_registry(proxy), serve_management=False)
    relay.setName("rtp-relay")
    relay.setServiceParent(top)
    relay_service = relay.getServiceNamed("relay")
    assert isinstance(relay_service, RelayService)
    core = next(s for s in proxy if isinstance(s, ProxyService)).core
    top.relay, top.core = relay_service, core
    if config.features.nat and not config.media.relays:
        # The proxy drives the relay beside it without a socket (see
        # sipsuite.proxy.media.local.LocalRelayClient); named relays take over.
        # The command handler works from construction on: the proxy
        # (started first) may check it before the relay's own startService.
        client = LocalRelayClient(lambda: relay_service.commands,
                                  command_timeout=config.media.command_timeout,
                                  disable_time=config.media.disable_time)
        add_media(core, client)  # the media module, started and stopped with the core
    RelayEvents(core.modules.require(EVENTS).bus, relay_service, top.reactor).setServiceParent(top)
    # Last: Twisted starts them after the proxy and the relay, stops them before.
    registry = _management_registry(proxy)
    load_services(top, Handle(core, relay_service, registry), config, registry)
    return top
