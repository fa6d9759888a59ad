"""The ``media`` module (Kamailio's rtpproxy + rtpproxy_manage): media
anchored on relays, for ``[features] nat`` with a relay to drive.

Set up from :data:`SPEC` when ``[media] relays`` (or ``--relay``) names
relays: the module is a :class:`~sipsuite.proxy.media.manager.MediaManager`
over a :class:`~sipsuite.proxy.media.client.RelayClient` built from
``[media]``, and provides the MEDIA service the script calls.  ``twistd
sipsuite`` with no relays named adds it by hand (:func:`add_media`) over a
LocalRelayClient, the relay in its own process.  Either way the module owns
its client: the client's pings start with the module and its sockets close
with it.

Like the nat module it is set at start only (``features.nat`` is in
liveops' start-up-only list): a relay client made later would see calls
whose offers it never relayed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipsuite.proxy.media.client import RelayClient
from sipsuite.proxy.media.manager import MediaManager
from sipsuite.proxy.services import MEDIA, NAT

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey

__all__ = ["SPEC", "MediaSpec", "add_media", "relay_client"]


def relay_client(core: CoreAPI, config: Config) -> RelayClient:
    """The client of the ``[media] relays``.  ``tls:`` relays are reached
    with the TLS contexts the wiring gave the transport (sipsuite.tlsctx
    attach_tls), the ones ``tls.reload`` reloads."""
    media = config.media
    return RelayClient(media.relays, command_timeout=media.command_timeout,
                       disable_time=media.disable_time, tls=getattr(core.net, "tls", None))


def add_media(core: Any, client: RelayClient) -> MediaManager:
    """Add the media module built over ``client`` to a core whose modules
    are set up (the suite's in-process relay; tests' fake clients)."""
    module = MediaManager(core, client)
    core.modules.add(module)
    core.modules.provide(MEDIA, module)
    return module


class MediaSpec:
    """``[features] nat`` with ``[media] relays``."""

    name = "media"
    requires: tuple[ServiceKey[Any], ...] = (NAT,)
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return bool(config.features.nat and config.media.relays)

    def setup(self, core: CoreAPI, config: Config) -> MediaManager:
        module = MediaManager(core, relay_client(core, config))
        core.modules.provide(MEDIA, module)
        return module


SPEC = MediaSpec()
