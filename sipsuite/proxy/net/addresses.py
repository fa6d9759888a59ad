"""Addresses this proxy puts on the wire or recognises as its own."""

from __future__ import annotations

import ipaddress
import socket

from sipsuite.hosts import unbracket
from sipsuite.proxy.net.listener import Listener
from sipsuite.sip.headers import Via


def split_advertise(value: str) -> tuple[str, int | None]:
    """'' | 'HOST' | 'HOST:PORT' | '[v6]' | '[v6]:PORT' (validated by the config)."""
    if not value:
        return "", None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = value.partition(":")
    return host, int(port) if sep else None


def via_text(via: Via) -> str:
    params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in via.params.items())
    port = f":{via.port}" if via.port is not None else ""
    return f"{via.protocol}/{via.transport} {via.host}{port}{params}"


def record_route_value(listener: Listener, params: str = "", sips: bool = False) -> str:
    """Our Record-Route for a listener; ``params`` (";nat=yes") go after ``lr``;
    ``sips`` (a sips Request-URI) makes a TLS listener's a sips URI."""
    if sips and listener.transport == "tls":
        return f"<sips:{listener.sent_by()};lr{params}>"
    transport = "" if listener.transport == "udp" else f";transport={listener.transport}"
    return f"<sip:{listener.sent_by()}{transport};lr{params}>"


def is_unicast(host: str) -> bool:
    """False for the limited broadcast and multicast addresses a forged Via
    could aim our responses at (RFC 4475 3.3.10). A subnet's directed
    broadcast cannot be told from a host without the netmask, and a
    x.y.z.255 host is legal in wider subnets: those are left to the router,
    which does not forward directed broadcasts by default."""
    try:
        addr = ipaddress.ip_address(unbracket(host))
    except ValueError:
        return True
    if addr.is_multicast or addr.is_unspecified:
        return False
    return not (addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"))


def guess_address(wildcard: str) -> str:
    """The address other hosts most likely reach us on, for Via and
    Record-Route when listening on a wildcard and none is configured."""
    family = socket.AF_INET6 if wildcard == "::" else socket.AF_INET
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))  # no packet is sent: connect() only picks a route
            return str(s.getsockname()[0])
    except OSError:
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def local_addresses() -> set[str]:
    found = {"127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]).lower())
    except OSError:
        pass
    found.add(guess_address("0.0.0.0"))
    return found
