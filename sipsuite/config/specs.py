"""The addresses a sipsuite config names: sockets to listen on
(``ListenSpec``: [proxy] listen, --listen), relay control sockets
(``ControlSpec``: [relay] control, --control), media addresses and port
ranges, and the relays a proxy drives (``RelaySpec``: [media] relays,
--relay).  Split from :mod:`sipsuite.config.values`, whose plain validators
these build on; like it, this module imports nothing else from sipsuite but
that one, so the relay client can share the grammar with the config.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from sipsuite.config.values import Invalid, is_ip, list_of, show_value
from sipsuite.hosts import host_port


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One socket to listen on.  *host* is an IP address (IPv6 without brackets)."""

    transport: str  # 'udp' | 'tcp' | 'tls'
    host: str
    port: int  # 0: the operating system picks one

    def __str__(self) -> str:
        return f"{self.transport}:{host_port(self.host, self.port)}"


LISTEN_TRANSPORTS = ("udp", "tcp", "tls")
_LISTEN = re.compile(
    r"(?P<transport>[A-Za-z]+):(?:\[(?P<ip6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})"
)


def parse_listen(value: Any) -> ListenSpec:
    """'udp:HOST:PORT', 'tcp:HOST:PORT' or 'tls:HOST:PORT'; HOST an IP address, IPv6 as '[::1]'.

    Raises ValueError (the message says what was expected) on anything else.
    """
    try:
        return _listen(value)
    except Invalid as e:
        raise ValueError(f"expected {e.expected}, got {show_value(e.got)}") from None


def _listen(value: Any) -> ListenSpec:
    expected = (
        "'udp:HOST:PORT' or 'tcp:HOST:PORT' or 'tls:HOST:PORT' with HOST an IP address"
        " (IPv6 in brackets, as 'tcp:[::1]:5060') and PORT 0..65535"
    )
    m = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    if (
        not m
        or m.group("transport").lower() not in LISTEN_TRANSPORTS
        or int(m.group("port")) > 65535
    ):
        raise Invalid(expected, value)
    if m.group("ip6") is not None:
        if not is_ip(m.group("ip6"), 6):
            raise Invalid(expected, value)
        host = str(ipaddress.ip_address(m.group("ip6")))
    elif is_ip(m.group("host"), 4):
        host = str(ipaddress.ip_address(m.group("host")))
    else:
        raise Invalid(expected, value)
    return ListenSpec(m.group("transport").lower(), host, int(m.group("port")))


LISTEN_LIST = list_of(_listen, non_empty=True, unique=True)


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """A control socket of the RTP relay: ``udp`` or ``tls`` (host an IP
    address, IPv6 without brackets, and a port) or ``unix`` (a filesystem path)."""

    transport: str  # 'udp' | 'tls' | 'unix'
    host: str = ""
    port: int = 0  # udp; 0: the operating system picks one
    path: str = ""  # unix

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix:{self.path}"
        return f"{self.transport}:{host_port(self.host, self.port)}"


_CONTROL_EXPECTED = (
    "'udp:HOST:PORT' with HOST a specific IP address (IPv6 in brackets, not 0.0.0.0 or ::)"
    " and PORT 0..65535, 'tls:HOST:PORT' likewise (mutual TLS), or 'unix:PATH'"
)


def _control(value: Any) -> ControlSpec:
    if isinstance(value, str) and value[:5].lower() == "unix:":
        path = value[5:]
        # sun_path holds 108 bytes with the NUL on Linux: longer paths cannot bind.
        if not path or "\0" in path or len(os.fsencode(path)) > 107:
            raise Invalid(_CONTROL_EXPECTED, value)
        return ControlSpec("unix", path=path)
    try:
        spec = _listen(value)
    except Invalid:
        raise Invalid(_CONTROL_EXPECTED, value) from None
    # Replies must leave from the address the command reached: a wildcard
    # socket would let the kernel pick another source on a multi-homed host.
    if spec.transport not in ("udp", "tls") or ipaddress.ip_address(spec.host).is_unspecified:
        raise Invalid(_CONTROL_EXPECTED, value)
    return ControlSpec(spec.transport, spec.host, spec.port)


def parse_control(value: Any) -> ControlSpec:
    """'udp:HOST:PORT' ('udp:[::1]:7722'), 'tls:HOST:PORT' or 'unix:PATH'; ValueError otherwise."""
    try:
        return _control(value)
    except Invalid as e:
        raise ValueError(f"expected {e.expected}, got {show_value(e.got)}") from None


CONTROL_LIST = list_of(_control, non_empty=True, unique=True)


def _listen_as(transport: str, value: Any, expected: str) -> ListenSpec:
    """A listen spec of one transport, else Invalid saying *expected*."""
    try:
        spec = _listen(value)
    except Invalid:
        raise Invalid(expected, value) from None
    if spec.transport != transport:
        raise Invalid(expected, value)
    return spec


def _tls_listen(value: Any) -> ListenSpec:
    """A 'tls:HOST:PORT' listener, as [proxy] listen writes it."""
    return _listen_as("tls", value, "'tls:HOST:PORT' naming a tls listener of proxy.listen")


TLS_LISTEN_LIST = list_of(_tls_listen, unique=True)


def media_address(value: Any) -> str:
    """An IP address to bind relay ports on and announce in SDP (normalised)."""
    expected = "an IP address such as '192.0.2.1' or '2001:db8::1'"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid(expected, value) from None


def media_address_list(value: Any) -> list[str]:
    addresses: list[str] = list_of(media_address, non_empty=True, unique=True)(value)
    if len(addresses) > 2:
        raise Invalid("one address, or two (internal, external) for bridging", value)
    if len(addresses) == 2:
        for i, address in enumerate(addresses):
            # Bridging hands each party the address of its own side: a
            # wildcard says nothing a phone could send to.
            if ipaddress.ip_address(address).is_unspecified:
                raise Invalid("a specific address when bridging (not 0.0.0.0 or ::)",
                               value[i], f"[{i}]")
    return addresses


def port_range(value: Any) -> tuple[int, int]:
    """'LOW-HIGH' holding at least one RTP/RTCP pair (an even port and the next)."""
    expected = (
        "'LOW-HIGH' with 1 <= LOW < HIGH <= 65535, holding at least one even port"
        " and the odd one after it"
    )
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value) if isinstance(value, str) else None
    if not m:
        raise Invalid(expected, value)
    low, high = int(m.group(1)), int(m.group(2))
    first_even = low + (low & 1)
    if not 1 <= low < high <= 65535 or first_even + 1 > high:
        raise Invalid(expected, value)
    return low, high


# ---------------------------------------------------------------------------
# Media relays the proxy drives ([media] relays, --relay): the grammar the
# relay client (sipsuite.proxy.media.client) uses too, kept here because this
# module may import nothing else from sipsuite.

#: rtpproxy's default control port (CPORT), for a ``udp:HOST`` without one.
DEFAULT_CONTROL_PORT = 22222


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """One configured relay: ``udp:HOST:PORT``, ``udp:[V6]:PORT``, ``tls:HOST:PORT``, ``unix:PATH``
    and its share of new calls (0: takes no new calls, keeps its current ones)."""

    uri: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RelayAddress:
    scheme: str  # "udp", "tls" (mutual TLS, one connection per command) or "unix"
    host: str = ""  # IP literal, no brackets, in ipaddress's canonical form
    port: int = 0
    path: str = ""

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


def parse_relay_uri(uri: str) -> RelayAddress:
    """``udp:HOST[:PORT]``, ``udp6:[V6][:PORT]``, ``tls:HOST[:PORT]`` or ``unix:PATH``; ValueError
    naming what is wrong otherwise.  HOST must be an IP literal: a relay's
    address is configuration, and a DNS lookup per command (or a stale one)
    would be a failure mode with no benefit."""
    scheme, sep, rest = uri.partition(":")
    scheme = scheme.lower()
    if not sep or not rest:
        raise ValueError(f"relay {uri!r}: expected udp:HOST:PORT or unix:PATH")
    if scheme == "unix":
        return RelayAddress("unix", path=rest)
    if scheme not in ("udp", "udp6", "tls"):
        raise ValueError(f"relay {uri!r}: scheme must be udp, udp6, tls or unix")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"relay {uri!r}: malformed [IPv6] address")
        port_text = after[1:] if after else None
    elif rest.count(":") > 1:
        raise ValueError(f"relay {uri!r}: write an IPv6 address in brackets, [addr]:port")
    else:
        host, colon, port_text_ = rest.partition(":")
        port_text = port_text_ if colon else None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"relay {uri!r}: {host!r} is not an IP address") from None
    if rest.startswith("[") and ip.version != 6:
        raise ValueError(f"relay {uri!r}: brackets are for IPv6 addresses")
    if scheme == "udp6" and ip.version != 6:
        raise ValueError(f"relay {uri!r}: udp6 needs an IPv6 address")
    port = DEFAULT_CONTROL_PORT
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"relay {uri!r}: port {port_text!r} is not 1..65535")
        port = int(port_text)
    return RelayAddress("tls" if scheme == "tls" else "udp", str(ip), port)


_RELAY_EXPECTED = (
    "'udp:HOST[:PORT]' (HOST an IP address, IPv6 in brackets), 'tls:HOST[:PORT]' or 'unix:PATH',"
    " optionally followed by ';weight=N' (N >= 0)"
)


def relay_spec(value: Any) -> RelaySpec:
    """'udp:10.0.0.5:7722;weight=2' -> RelaySpec; the URI must pass parse_relay_uri."""
    if not isinstance(value, str):
        raise Invalid(_RELAY_EXPECTED, value)
    uri, sep, params = value.partition(";")
    weight = 1
    if sep:
        name, eq, number = params.partition("=")
        if name.strip().lower() != "weight" or not eq or not number.strip().isdigit():
            raise Invalid(_RELAY_EXPECTED, value)
        weight = int(number)
    try:
        parse_relay_uri(uri.strip())
    except ValueError:
        raise Invalid(_RELAY_EXPECTED, value) from None
    return RelaySpec(uri.strip(), weight)


def relay_list(value: Any) -> list[RelaySpec]:
    specs: list[RelaySpec] = list_of(relay_spec)(value)
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        # The client keys relays by URI: the same one twice with two weights
        # would be ambiguous.
        if spec.uri in seen:
            raise Invalid("each relay only once", value[i], f"[{i}]")
        seen.add(spec.uri)
    return specs


def tcp_listen_or_off(value: Any) -> str:
    """'' (off) or 'tcp:HOST:PORT' with HOST an IP address."""
    expected = "'' or 'tcp:HOST:PORT' with HOST an IP address (IPv6 in brackets)"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    if value == "":
        return value
    _listen_as("tcp", value, expected)
    return value


_HEP = re.compile(r"udp:(\[[^\]]+\]|[^:\[\]]+):(\d{1,5})")


def parse_hep(value: str) -> tuple[int, str, int]:
    """(address family, IP address, port) of a valid ``[trace] hep``."""
    m = _HEP.fullmatch(value)
    if m is None:
        raise ValueError(value)
    host = m.group(1).strip("[]")
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), host, int(m.group(2))


def hep_target(value: Any) -> str:
    """'' (off) or 'udp:IP:PORT', where the HEP packets go: an IP address,
    not a name, so no lookup ever stands in a message's way."""
    expected = "'' or 'udp:IP:PORT' (IPv6 in brackets), e.g. 'udp:10.0.0.5:9060'"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    if value == "":
        return value
    m = _HEP.fullmatch(value)
    if m is None:
        raise Invalid(expected, value)
    host = m.group(1)
    bracketed = host.startswith("[")
    if not (is_ip(host[1:-1], 6) if bracketed else is_ip(host, 4)) or not 0 < int(m.group(2)) < 65536:
        raise Invalid(expected, value)
    return value
