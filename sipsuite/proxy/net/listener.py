"""Where SIP is heard and where a message came from: Listener and Source."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sipsuite.hosts import bracket, host_port
from sipsuite.log import get_logger
from sipsuite.sip.message import (
    Request,
    Response,
)

if TYPE_CHECKING:
    from sipsuite.proxy.net.stream import SIPStreamProtocol


log = get_logger("sipsuite.proxy.transport")

#: The Via a locally made answer carries in place of ours, for the forwarder
#: to pop as it pops ours from a real answer.
PLACEHOLDER_VIA = "SIP/2.0/UDP 0.0.0.0;branch=z9hG4bKlocal"


def log_wire(what: str, transport: str, host: str, port: int, data: bytes) -> None:
    """Whole messages at debug level, as sngrep would show them."""
    text = data.decode("utf-8", "backslashreplace")
    log.debug("{what} {t}:{h}:{p} ({n} bytes):\n{text}", what=what, t=transport, h=bracket(host),
              p=port, n=len(data), text=text)


class Listener:
    """One configured listening socket, and the address it advertises.

    A wildcard one (0.0.0.0, ::) has a child per local address messages
    reach it on (TransportLayer.local_listener): the same socket, that
    address in Via and Record-Route (unless ``pinned``: [proxy] advertise),
    and answers sent from it."""

    __slots__ = ("transport", "host", "port", "advertise", "advertise_port", "family", "port_obj",
                 "pinned", "parent", "via_port")

    def __init__(self, transport: str, host: str, port: int, advertise: str,
                 advertise_port: int | None = None, pinned: bool = False) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.advertise = advertise
        # Behind a port-mapping NAT the port peers reach may differ too.
        self.advertise_port = advertise_port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.port_obj: Any = None
        self.pinned = pinned
        self.parent: Listener | None = None
        # A worker process's private port (net/reuseport.py): in the Via of
        # the requests it sends, never in Record-Route.
        self.via_port: int | None = None

    @property
    def root(self) -> Listener:
        """The configured listener (this one, or the wildcard it is a child of)."""
        return self.parent if self.parent is not None else self

    def child(self, local: str) -> Listener:
        """This wildcard listener as reached on the local address ``local``."""
        # An IPv4 peer of a [::] socket reached ::ffff:a.b.c.d: it knows us as a.b.c.d.
        mapped = ipaddress.IPv6Address(local).ipv4_mapped if ":" in local else None
        shown = self.advertise if self.pinned else str(mapped or local)
        child = Listener(self.transport, local, self.port, shown, self.advertise_port, self.pinned)
        child.family = self.family  # the socket's: a [::] socket reaches v4-mapped peers too
        child.parent = self
        child.port_obj = self.port_obj
        child.via_port = self.via_port
        return child

    def sent_by(self) -> str:
        return host_port(self.advertise, self.advertise_port or self.port)

    def via(self, branch: str, *, rport: bool = False) -> str:
        """The value of the Via this listener puts on a request it sends;
        ``rport`` asks the peer to answer where the request came from (RFC 3581)."""
        sent_by = self.sent_by() if self.via_port is None else host_port(self.advertise, self.via_port)
        return (f"SIP/2.0/{self.transport.upper()} {sent_by};branch={branch}"
                + (";rport" if rport else ""))

    def __repr__(self) -> str:
        return f"{self.transport}:{host_port(self.host, self.port)}"


class Source:
    """Where a message came from: enough to answer it the way RFC 3261 18.2.2
    and RFC 3581 ask, and to reuse its TCP connection."""

    __slots__ = ("transport", "host", "port", "listener", "connection")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        listener: Listener,
        connection: SIPStreamProtocol | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.listener = listener
        self.connection = connection

    def __str__(self) -> str:
        return f"{self.transport}:{host_port(self.host, self.port)}"


Handler = Callable[[Request | Response, Source], None]
