"""Host text: IP literals, IPv6 brackets and ``host:port``, in one place.

SIP writes IPv6 in brackets (RFC 3261 25.1, ``[2001:db8::1]:5060``); sockets,
the config and the relay want it bare.  Only the standard library is imported,
so sip-independent code (config, relay, TLS) can use this too.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["bracket", "host_port", "ip_literal", "is_ip", "unbracket"]


def unbracket(host: str) -> str:
    """``host`` without one enclosing ``[...]`` pair.  Unlike ``.strip("[]")``
    a lone ``[`` or ``]`` stays, so garbage stays garbage."""
    if len(host) >= 2 and host[0] == "[" and host[-1] == "]":
        return host[1:-1]
    return host


def bracket(host: str) -> str:
    """IPv6 literals carry brackets in Via, Record-Route, URIs and ``host:port``."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def host_port(host: str, port: int | str) -> str:
    """``192.0.2.1:5060``, ``[2001:db8::1]:5060``."""
    return f"{bracket(host)}:{port}"


def ip_literal(text: str) -> str | None:
    """The canonical text of an IP address (brackets optional, IPv6 zone kept),
    or None for a name or anything else."""
    try:
        return str(ipaddress.ip_address(unbracket(text)))
    except ValueError:
        return None


def is_ip(text: str, version: int | None = None) -> bool:
    """Whether ``text`` is an IP address (brackets optional), of ``version``
    (4 or 6) if given."""
    text = unbracket(text)
    if version != 6 and "." in text and ":" not in text:
        # The usual case, an IPv4 literal in a Via or a next hop, checked in
        # C: ipaddress builds an object and parses each octet in Python.
        # glibc's inet_pton takes what ipaddress takes (four decimal octets,
        # no leading zeros); NUL or non-ASCII text is a ValueError.
        try:
            socket.inet_pton(socket.AF_INET, text)
        except (OSError, ValueError):
            return False
        return True
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or ip.version == version
