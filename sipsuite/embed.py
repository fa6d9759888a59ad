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


def _core(top: service.MultiService) -> Any:
    for child in top:
        if isinstance(child, ProxyService):
            return child.core
        if isinstance(child, service.MultiService):
            core = _core(child)
            if core is not None:
                return core
    return None


def _registry(top: service.MultiService) -> Any:
    for child in top:
        if isinstance(child, ManagementService):
            return child.registry
        if isinstance(child, service.MultiService):
            found = _registry(child)
            if found is not None:
                return found
    return None


def _wrap(built: service.MultiService, name: str, relay: Any = None) -> Embedded:
    embedded = Embedded()
    embedded.setName(name)
    built.setServiceParent(embedded)
    embedded.handle = Handle(_core(built), relay, _registry(built))
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
