"""twistd plugins: ``twistd -n sip-proxy``, ``twistd -n rtp-relay`` and ``twistd -n sipsuite``.

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


class ConfigOptions(usage.Options):
    optParameters = [
        [
            "config",
            "c",
            None,
            "TOML configuration file [default: conf/sipsuite.toml in the working directory,"
            " else the documented defaults]",
        ],
        [
            "management",
            None,
            None,
            "Serve the management interface (sipsuite-ctl) on tcp:HOST:PORT, '' for none"
            " (overrides [management] listen; for rtp-relay [management] relay_listen)",
        ],
    ]


class Options(ConfigOptions):
    """sip-proxy's options."""

    optParameters = [
        [
            "redis",
            None,
            None,
            "Keep registrations and subscribers in Redis: redis://[:PASSWORD@]HOST[:PORT][/DB]"
            " (overrides [redis] url)",
        ],
        [
            "workers",
            None,
            None,
            "Run N proxy worker processes sharing the SIP ports (overrides [proxy] workers;"
            " N > 1 needs [redis] url)",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["relay"] = []

    def opt_relay(self, uri: str) -> None:
        """Media relay to drive: udp:HOST:PORT[;weight=N], tls:HOST:PORT, unix:PATH
        (repeatable; overrides [media] relays)"""
        self["relay"].append(uri)

    def opt_listen(self, uri: str) -> None:
        """Listen on URI: udp:HOST:PORT, tcp:HOST:PORT, tls:HOST:PORT, tcp:[::1]:5060
        (repeatable)"""
        self["listen"].append(uri)

    opt_l = opt_listen


class RelayOptions(ConfigOptions):
    """rtp-relay's options."""

    optParameters = [
        [
            "ports",
            None,
            None,
            "Relay media on UDP ports LOW-HIGH, e.g. 35000-65000 (overrides [relay] ports)",
        ],
        [
            "workers",
            None,
            None,
            "Run N relay worker processes, each on its slice of the ports, behind the control"
            " sockets (overrides [relay] workers)",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["control"] = []
        self["media-address"] = []

    def opt_control(self, uri: str) -> None:
        """Control socket URI: udp:HOST:PORT, udp:[::1]:7722, tls:HOST:PORT (mutual TLS), unix:PATH
        (repeatable)"""
        self["control"].append(uri)

    def opt_media_address(self, address: str) -> None:
        """Relay media on ADDR; twice to bridge: internal, then external (repeatable)"""
        self["media-address"].append(address)


class SuiteOptions(Options, RelayOptions):
    """sipsuite's options: the proxy's and the relay's."""


@implementer(IServiceMaker, IPlugin)
class SipsuiteServiceMaker:
    def __init__(self, tapname: str, description: str, build: Callable[[Config], IService],
                 options: type[ConfigOptions] = Options) -> None:
        self.tapname = tapname
        self.description = description
        self.options = options
        self._build = build

    def makeService(self, options: ConfigOptions) -> IService:
        """Validate the config, build the services and, under twistd, bind
        their sockets: all before twistd daemonises and writes its pid file,
        so any reason not to start is one line from the command the operator
        typed, exit status 2, and no pid file (see sipsuite.startup)."""
        from sipsuite import log
        from sipsuite.config import ConfigError, default_config_path, load_config
        from sipsuite.startup import StartupError, check_twistd_files

        path = options["config"] or default_config_path()
        management = options.get("management")
        overrides = dict(
            listen=options.get("listen") or None,
            redis=options.get("redis"),
            control=options.get("control") or None,
            media_addresses=options.get("media-address") or None,
            ports=options.get("ports"),
            relays=options.get("relay") or None,
            management=management if self.tapname != "rtp-relay" else None,
            relay_management=management if self.tapname == "rtp-relay" else None,
            workers=options.get("workers") if self.tapname != "rtp-relay" else None,
            relay_workers=options.get("workers") if self.tapname == "rtp-relay" else None,
        )
        try:
            config = load_config(path, **overrides)
            log.set_level(config.log.level)
            log.get_logger("sipsuite").info(
                "{tapname}: configuration {path}",
                tapname=self.tapname,
                path=path or "<built-in defaults>",
            )
            if config.proxy.workers > 1 and self.tapname != "rtp-relay":
                # A supervisor of worker processes, no SIP core of its own.
                from sipsuite.proxy.workers import make_supervisor_service, refuse_suite

                refuse_suite(self.tapname, config)
                from sipsuite.userservices import check_services

                check_services(config)  # the workers build them: check what can be checked here
                built: IService = make_supervisor_service(config, overrides)
            elif config.relay.workers > 1 and self.tapname != "sip-proxy":
                # The relay's supervisor: the control sockets, media in workers.
                from sipsuite.rtprelay.workers import make_relay_supervisor_service, refuse_suite

                refuse_suite(self.tapname, config)
                built = make_relay_supervisor_service(config, overrides)
            else:
                built = self._build(config)
            twistd = options.parent
            if twistd is not None:
                check_twistd_files(twistd)
                # Bound here, not after twistd forks: a daemon's own error
                # would never reach the launcher (it waits on a status pipe
                # that only an Exception, not our exit, writes to).
                # privilegedStartService binds once; twistd's call is a no-op.
                built.privilegedStartService()
        except (ConfigError, StartupError) as e:
            # One line, no traceback, no usage text: the key and what it wants.
            sys.stderr.write(f"{self.tapname}: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
        # Before any socket is open, for the proxy, the relay and the suite alike.
        from sipsuite.fdlimit import raise_nofile_limit

        raise_nofile_limit()
        return built


def _proxy(config: Config) -> IService:
    from sipsuite.proxy.service import make_proxy_service

    return make_proxy_service(config)


def _relay(config: Config) -> IService:
    from sipsuite.rtprelay.service import make_relay_service

    return make_relay_service(config)


def _suite(config: Config) -> IService:
    from sipsuite.service import make_suite_service

    return make_suite_service(config)


sip_proxy_maker = SipsuiteServiceMaker(
    "sip-proxy", "SIP proxy (stateful, record-routing) on UDP, TCP and TLS", _proxy
)
rtp_relay_maker = SipsuiteServiceMaker(
    "rtp-relay", "RTP media relay driven by RTPProxy's control protocol (UDP, unix)", _relay,
    RelayOptions,
)
sipsuite_maker = SipsuiteServiceMaker(
    "sipsuite", "The whole suite in one process: SIP proxy, registrar and RTP relay",
    _suite, SuiteOptions,
)
