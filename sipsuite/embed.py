"""sipsuite inside your own Twisted application (docs/embedding.md).

``make_proxy(config)`` and ``make_suite(config)`` build what ``twistd
sip-proxy`` and ``twistd sipsuite`` run, as a MultiService to put under
your ``Application`` beside your own services; ``config_from_dict`` makes
the Config from Python, checked as a file would be.  Each returned service
carries ``.handle``, the public handle (sipsuite.api.Handle) your services
use.  A service parented after it is started after it and stopped before.

``[services] load`` works here too; your own services need no entry there.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service

from sipsuite import log
from sipsuite.api import Handle
from sipsuite.config import Config, config_from_dict, load_config
from sipsuite.ops.server import ManagementService
from sipsuite.proxy.service import ProxyService, make_proxy_service
from sipsuite.service import make_suite_service

__all__ = ["Embedded", "config_from_dict", "load_config", "make_proxy", "make_suite"]


class Embedded(service.MultiService):
    """The proxy (or the suite) as one service of your application."""

    handle: Handle


def _find(top: service.MultiService, kind: type) -> Any:
    """The first service of ``kind`` in the tree under ``top``, or None."""
    for child in top:
        if isinstance(child, kind):
            return child
        if isinstance(child, service.MultiService):
            found = _find(child, kind)
            if found is not None:
                return found
    return None


def _attr(top: service.MultiService, kind: type, name: str) -> Any:
    found = _find(top, kind)
    return None if found is None else getattr(found, name)


def _wrap(built: service.MultiService, name: str, relay: Any = None) -> Embedded:
    embedded = Embedded()
    embedded.setName(name)
    built.setServiceParent(embedded)
    embedded.handle = Handle(_attr(built, ProxyService, "core"), relay,
                             _attr(built, ManagementService, "registry"))
    return embedded


def make_proxy(config: Config) -> Embedded:
    """``twistd sip-proxy``'s services for ``config``."""
    log.set_level(config.log.level)
    return _wrap(make_proxy_service(config), "sip-proxy")


def make_suite(config: Config) -> Embedded:
    """``twistd sipsuite``'s: the proxy and the RTP relay in this process."""
    log.set_level(config.log.level)
    built = make_suite_service(config)
    return _wrap(built, "sipsuite", getattr(built, "relay", None))
