"""twistd plugins: ``twistd -n sip-proxy`` and ``twistd -n sipsuite``.

Options only; the wiring lives in sipsuite/proxy/service.py and
sipsuite/service.py.  This module is imported whenever Twisted lists its
plugins, so it imports sipsuite lazily.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.application.service import IService

    from sipsuite.config import Config


class Options(usage.Options):
    optParameters = [
        [
            "config",
            "c",
            None,
            "TOML configuration file [default: conf/sipsuite.toml in the working directory,"
            " else the documented defaults]",
        ],
    ]

    optParameters.append([
        "redis",
        None,
        None,
        "Keep registrations and subscribers in Redis: redis://[:PASSWORD@]HOST[:PORT][/DB]"
        " (overrides [redis] url)",
    ])

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, uri: str) -> None:
        """Listen on URI: udp:HOST:PORT, tcp:HOST:PORT, tcp:[::1]:5060 (repeatable)"""
        self["listen"].append(uri)

    opt_l = opt_listen


@implementer(IServiceMaker, IPlugin)
class SipsuiteServiceMaker:
    def __init__(self, tapname: str, description: str, build: Callable[[Config], IService]) -> None:
        self.tapname = tapname
        self.description = description
        self.options = Options
        self._build = build

    def makeService(self, options: Options) -> IService:
        from sipsuite import log
        from sipsuite.config import ConfigError, default_config_path, load_config

        path = options["config"] or default_config_path()
        try:
            config = load_config(path, listen=options["listen"] or None, redis=options["redis"])
        except ConfigError as e:
            # One line, no traceback, no usage text: the key and what it wants.
            sys.stderr.write(f"{self.tapname}: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
        log.set_level(config.log.level)
        log.get_logger("sipsuite").info(
            "{tapname}: configuration {path}",
            tapname=self.tapname,
            path=path or "<built-in defaults>",
        )
        return self._build(config)


def _proxy(config: Config) -> IService:
    from sipsuite.proxy.service import make_proxy_service

    return make_proxy_service(config)


def _suite(config: Config) -> IService:
    from sipsuite.service import make_suite_service

    return make_suite_service(config)


sip_proxy_maker = SipsuiteServiceMaker(
    "sip-proxy", "SIP proxy (stateful, record-routing) on UDP and TCP", _proxy
)
sipsuite_maker = SipsuiteServiceMaker(
    "sipsuite", "The whole suite on one host with in-memory stores (today: the SIP proxy)", _suite
)
