"""Read by mypy only (scripts/test.sh type-checks this file with sipsuite/):
the real core and the tests' fake both conform to api.CoreAPI, so a module
unit-tested against FakeCore uses nothing the real core lacks."""

from __future__ import annotations

from fakecore import FakeCore

from sipsuite.proxy.api import CoreAPI
from sipsuite.proxy.core.proxy import ProxyCore


def real(core: ProxyCore) -> CoreAPI:
    return core


def fake(core: FakeCore) -> CoreAPI:
    return core
