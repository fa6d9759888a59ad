"""The scanner drop of kamailio.cfg's route[REQINIT]: a request whose
User-Agent names a known scanner (``[proxy] drop_user_agents``) is dropped
unanswered; here the display name and user of From, To and Contact are
looked at too, for scanners that send no User-Agent.

A feature module on the core's ``request_in`` hook, set up while the list
is not empty (``cfg set proxy.drop_user_agents []`` removes it, a list set
again brings it back) and right after antiflood, so a scanner that floods is
still banned.  The drop is silent: no answer, not even a 100 Trying to an
INVITE, so the scanner learns nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.net.listener import Source
    from sipsuite.sip.message import Request

_ADDRESS_HEADERS = ("from", "to", "contact")


def _contains(text: str, needles: tuple[str, ...]) -> bool:
    # A plain loop: any() over a generator costs more, on every request.
    for needle in needles:
        if needle in text:
            return True
    return False


class Scanners:
    """``admit()`` is False for a request from a scanner.  The list is read
    from ``core.config`` on every request (it changes at run time)."""

    name: ClassVar[str] = "scanners"

    __slots__ = ("core", "_stats", "_agents_src", "_agents")

    def __init__(self, core: CoreAPI) -> None:
        self.core = core
        self._stats = core.stats  # the core's for its whole life: looked up once
        self._agents_src: Any = None
        self._agents: tuple[str, ...] = ()

    def admit(self, req: Request, source: Source) -> bool:
        agents = self.core.config.proxy.drop_user_agents
        if not agents:
            return True  # an empty list drops nothing, even before the registry removes us
        if agents is not self._agents_src:
            # Lower-cased once per config object, not per request.
            self._agents = tuple(a.lower() for a in agents)
            self._agents_src = agents
        needles = self._agents
        ua = req.header("user-agent")
        if ua and _contains(ua.lower(), needles):
            self._stats.count("drop.scanner")
            return False
        # sipvicious with -c sends no User-Agent, but svmap still names
        # itself in From/To ("sipvicious"<sip:100@1.1.1.1>).  Only the
        # part before the "@" (display name, scheme, user) is looked at:
        # a host such as sipclient.example.net is someone's real domain.
        for name in _ADDRESS_HEADERS:
            value = req.header(name)
            if value and _contains(value.partition("@")[0].lower(), needles):
                self._stats.count("drop.scanner_address")
                return False
        return True

    # -- the module's life -----------------------------------------------------------
    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # the list is read at use

    def stats(self) -> Mapping[str, object]:
        return {"user_agents": len(self.core.config.proxy.drop_user_agents)}

    def stop(self) -> None:
        pass


class ScannersSpec:
    """``[proxy] drop_user_agents`` not empty: a run-time switch (``cfg set
    proxy.drop_user_agents``)."""

    name = "scanners"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = True

    def enabled(self, config: Config) -> bool:
        return bool(config.proxy.drop_user_agents)

    def setup(self, core: CoreAPI, config: Config) -> Scanners:
        module = Scanners(core)
        core.hooks.on_request_in(module.admit)
        return module


SPEC = ScannersSpec()
