"""Wiring of the whole suite (``twistd sipsuite``): every service on one host."""

from __future__ import annotations

import ipaddress

from twisted.application import service

from sipsuite.api import Handle
from sipsuite.config import Config
from sipsuite.config.specs import parse_relay_uri
from sipsuite.drain import SuiteService
from sipsuite.ops.server import ManagementService, RpcRegistry
from sipsuite.proxy.media.local import LOCAL_RELAY_URI, LocalRelayClient
from sipsuite.proxy.media.manager import MediaManager
from sipsuite.proxy.modules.media import add_media
from sipsuite.proxy.service import ProxyService, make_proxy_service
from sipsuite.proxy.services import EVENTS, MEDIA
from sipsuite.relayevents import RelayEvents
from sipsuite.rtprelay.service import RelayService, make_relay_service
from sipsuite.userservices import load_services


def _management_registry(parent: service.MultiService) -> RpcRegistry | None:
    """The registry of the management interface the proxy serves, if any."""
    for child in parent:
        if isinstance(child, ManagementService):
            return child.registry
    return None


def _own_relays(config: Config) -> frozenset[str]:
    """The relays the proxy drives that are this process's relay: the
    in-process client's, and any ``[media] relays`` entry naming one of the
    ``[relay] control`` sockets."""
    own = {LOCAL_RELAY_URI}
    for spec in config.media.relays:
        try:
            address = parse_relay_uri(spec.uri)
        except ValueError:
            continue
        for control in config.relay.control:
            if address.scheme == "unix" or control.transport == "unix":
                same = address.scheme == control.transport and address.path == control.path
            else:
                same = (address.scheme.rstrip("6") == control.transport
                        and address.port == control.port
                        and _same_ip(address.host, control.host))
            if same:
                own.add(spec.uri)
    return frozenset(own)


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


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
    # One source per session: the relay's own table reports the sessions of
    # the relay in this process (it knows latching and its timeouts); the
    # media module reports only those on relays in other processes.
    media = core.modules.get(MEDIA)
    if isinstance(media, MediaManager):
        media.sessions.in_process = _own_relays(config)
    RelayEvents(core.modules.require(EVENTS).bus, relay_service, top.reactor).setServiceParent(top)
    # Last: Twisted starts them after the proxy and the relay, stops them before.
    registry = _management_registry(proxy)
    load_services(top, Handle(core, relay_service, registry), config, registry)
    return top
