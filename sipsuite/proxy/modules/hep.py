"""HEP export to Homer (``[trace] hep = "udp:IP:PORT"``): every SIP message
in and out, as it crossed the wire, also sent as a HEP3 packet
(sipsuite/trace/hep.py) to a capture server, as Kamailio's siptrace
module does with ``trace_mode=1``.

It has its own wire tap (``core.net.add_tap``), beside the flight
recorder's: it works with the recorder on or off, and with ``hep = ""``
the module is not set up at all (no tap, no socket, no cost).  The socket
is a non-blocking UDP one: a send that would block or fails is counted
(``hep.errors`` in ``stats``) and logged at most once a minute, never
waited for and never raised into the SIP path.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sipsuite.config.specs import parse_hep
from sipsuite.log import get_logger
from sipsuite.startup import StartupError
from sipsuite.trace.hep import call_id, encode

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServiceKey

__all__ = ["SPEC", "HepExport"]

log = get_logger("sipsuite.proxy.hep")

#: Seconds between two log lines about failed sends.
LOG_EVERY = 60.0


class HepExport:
    """The ``hep`` module: one UDP socket, one tap."""

    name = "hep"

    def __init__(self, core: CoreAPI, config: Config) -> None:
        t = config.trace
        family, host, port = parse_hep(t.hep)
        self.core = core
        self.target = (host, port)
        self.capture_id = t.hep_capture_id
        self.password = t.hep_password.encode()
        self.wall = time.time
        try:
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as e:
            raise StartupError(f"trace.hep: cannot open a UDP socket for {t.hep!r}: {e}") from e
        self.sock.setblocking(False)
        self.sent = 0
        self.errors = 0
        self.logged_at = -LOG_EVERY
        self.unlogged = 0
        core.net.add_tap(self.tap)

    def tap(self, incoming: bool, data: bytes, transport: str, listener: Any, host: str,
            port: int) -> None:
        local = (listener.host, listener.port)
        remote = (host, port)
        now = self.wall()
        try:
            packet = encode(data, remote if incoming else local, local if incoming else remote,
                            transport, now, self.capture_id, self.password, call_id(data))
            self.sock.sendto(packet, self.target)
        except (OSError, ValueError) as e:  # EAGAIN (buffer full), EMSGSIZE, over 64 kB...
            self.errors += 1
            self.unlogged += 1
            if now - self.logged_at >= LOG_EVERY:
                log.warn("HEP: cannot send to {h}:{p} ({e}); {n} packet(s) lost since the "
                         "last report", h=self.target[0], p=self.target[1], e=e, n=self.unlogged)
                self.logged_at = now
                self.unlogged = 0
            return
        self.sent += 1

    # -- Module ----------------------------------------------------------------------
    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # the [trace] hep keys are read at start

    def stats(self) -> Mapping[str, object]:
        # Under "hep" of the stats RPC (ops/stats.py), added up over workers.
        return {"hep": {"target": f"{self.target[0]}:{self.target[1]}", "sent": self.sent,
                        "errors": self.errors}}

    def stop(self) -> None:
        self.core.net.remove_tap(self.tap)
        self.sock.close()


class HepSpec:
    """``[trace] hep`` not empty; set at start only."""

    name = "hep"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return bool(config.trace.hep)

    def setup(self, core: CoreAPI, config: Config) -> HepExport:
        return HepExport(core, config)


SPEC = HepSpec()
