"""Wiring of the whole suite (``twistd sipsuite``): every service on one host."""

from __future__ import annotations

from twisted.application import service

from sipsuite.config import Config
from sipsuite.proxy.service import make_proxy_service


def make_suite_service(config: Config) -> service.MultiService:
    """The proxy (and, once it exists, the RTP relay) in one MultiService."""
    top = service.MultiService()
    proxy = make_proxy_service(config)
    proxy.setName("sip-proxy")
    proxy.setServiceParent(top)
    return top
