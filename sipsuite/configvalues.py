"""The values a sipsuite config file may hold: one validator per kind of
value (TOML value in, typed value out, ``_Invalid`` naming what was expected
on a bad one), and the typed values with structure (``ListenSpec``,
``ControlSpec``). ``sipsuite.config`` builds its schema from these; like it,
this module imports nothing else from sipsuite.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Validator = Callable[[Any], Any]


class _Invalid(Exception):
    """Raised by validators: *expected* describes a good value, *where* is a
    suffix of the dotted key such as ``[1]`` for a list item."""

    def __init__(self, expected: str, got: object, where: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got
        self.where = where


def _show(value: object) -> str:
    """A TOML-ish rendering of a value for error messages, kept short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------
# Validators: TOML value in, typed value out, _Invalid on a bad value.


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("a string", value)
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false", value)
    return value


def positive_float(value: Any) -> float:
    """Seconds: a TOML integer or float above zero."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _Invalid("a number of seconds above 0", value)
    return float(value)


def non_negative_float(value: Any) -> float:
    """Seconds, where 0 switches the feature off."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _Invalid("a number of seconds, 0 or more", value)
    return float(value)


def int_range(low: int, high: int) -> Validator:
    expected = f"a whole number from {low} to {high}"

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(expected, value)
        return value

    return check


def redis_url(value: Any) -> str:
    """'' (in-memory stores) or redis://[:PASSWORD@]HOST[:PORT][/DB]."""
    expected = "'' or 'redis://[:PASSWORD@]HOST[:PORT][/DB]'"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    if value and not re.fullmatch(
        r"redis://(?::[^@/]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::\d{1,5})?(?:/\d{1,2})?/?", value
    ):
        raise _Invalid(expected, value)
    return value


def tcp_listen_or_off(value: Any) -> str:
    """'' (off) or 'tcp:HOST:PORT' with HOST an IP address."""
    expected = "'' or 'tcp:HOST:PORT' with HOST an IP address (IPv6 in brackets)"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    if value == "":
        return value
    try:
        spec = _listen(value)
    except _Invalid:
        raise _Invalid(expected, value) from None
    if spec.transport != "tcp":
        raise _Invalid(expected, value)
    return value


def digest_algorithm(value: Any) -> str:
    names = {"md5": "MD5", "sha-256": "SHA-256"}
    if not isinstance(value, str) or value.lower() not in names:
        raise _Invalid("'MD5' or 'SHA-256'", value)
    return names[value.lower()]


def realm(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", value):
        raise _Invalid("a non-empty realm of printable ASCII without spaces, quotes or backslashes",
                       value)
    return value


def one_of(*choices: str) -> Validator:
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: Any) -> str:
        if value not in choices:
            raise _Invalid(expected, value)
        return value

    return check


def list_of(item: Validator, *, non_empty: bool = False, unique: bool = False) -> Validator:
    """A TOML array whose items each pass *item*; errors name the index."""

    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _Invalid("a list [...]", value)
        if non_empty and not value:
            raise _Invalid("a list with at least one entry", value)
        out = []
        for i, v in enumerate(value):
            try:
                converted = item(v)
            except _Invalid as e:
                raise _Invalid(e.expected, e.got, f"[{i}]{e.where}") from None
            if unique and converted in out:
                raise _Invalid("each entry only once", v, f"[{i}]")
            out.append(converted)
        return out

    return check


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


# RFC 3261 hostname: labels of letters, digits and '-'; the last one starts with a letter.
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)


def _host(text: str) -> str | None:
    """A SIP host (RFC 3261 25.1): hostname, IPv4, or IPv6 in brackets.

    Returns it lowercased (IPv6 normalised and bracketed), None if invalid.
    """
    if text.startswith("[") and text.endswith("]") and _is_ip(text[1:-1], 6):
        return f"[{ipaddress.ip_address(text[1:-1])}]"
    if _is_ip(text, 4) or _HOSTNAME.fullmatch(text):
        return text.lower()
    return None


def domain(value: Any) -> str:
    """A domain this proxy is responsible for: a hostname or IP address.

    Stored lowercased; IPv6 (written bare or in brackets) without brackets and
    in its compressed form, as ListenSpec.host has it.
    """
    expected = "a domain name or IP address such as 'example.com'"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    host = _host(f"[{value}]" if _is_ip(value, 6) else value)
    if host is None:
        raise _Invalid(expected, value)
    return host.strip("[]")


def host_port(value: Any) -> str:
    """'' (derive it), or HOST or HOST:PORT to put in Via and Record-Route."""
    expected = "'' or 'HOST' or 'HOST:PORT' (IPv6 in brackets)"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    if value == "":
        return value
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+)(?::(\d{1,5}))?", value)
    if not m or _host(m.group(1)) is None or (m.group(2) and not 0 < int(m.group(2)) < 65536):
        raise _Invalid(expected, value)
    return value


def host_or_empty(value: Any) -> str:
    """'' (off), or a host to send to: an IP address (IPv6 bare or in
    brackets) or a host name. Stored as a SIP URI writes it (IPv6 bracketed)."""
    expected = "'' or an IP address or host name"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    if value == "":
        return value
    host = _host(f"[{value}]" if _is_ip(value, 6) else value)
    if host is None:
        raise _Invalid(expected, value)
    return host


def regex(value: Any) -> str:
    """A Python regular expression (re syntax), checked to compile."""
    expected = "a regular expression"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    try:
        re.compile(value)
    except re.error as e:
        raise _Invalid(f"a regular expression ({e})", value) from None
    return value


def dns_server(value: Any) -> tuple[str, int]:
    """A DNS server to ask: 'IP' or 'IP:PORT' ('[v6]:PORT'); port 53 by default."""
    expected = "a DNS server 'IP' or 'IP:PORT' (IPv6 as '[::1]:53')"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?|([^:\[\]]+)(?::(\d{1,5}))?|([0-9a-fA-F:]+)", value)
    if not m:
        raise _Invalid(expected, value)
    host = m.group(1) or m.group(3) or m.group(5)
    port = int(m.group(2) or m.group(4) or 53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise _Invalid(expected, value) from None
    if not 0 < port < 65536:
        raise _Invalid(expected, value)
    return (host, port)


def ip_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or network ('192.0.2.0/24'); host bits are masked off."""
    expected = "an IP address or network such as '192.0.2.0/24'"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Invalid(expected, value) from None


_DOTTED_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"


def import_spec(value: Any) -> str:
    """'package.module:ClassName' (checked for syntax only: importing is the
    proxy's business, when it builds its routing object)."""
    expected = "'package.module:ClassName'"
    if not isinstance(value, str) or not re.fullmatch(f"{_DOTTED_NAME}:{_DOTTED_NAME}", value):
        raise _Invalid(expected, value)
    return value


def header_value(value: Any) -> str:
    """Text for a header value: printable ASCII, no CR/LF ('' allowed)."""
    if not isinstance(value, str) or not re.fullmatch(r"[\x20-\x7e]*", value):
        raise _Invalid("printable ASCII text on one line", value)
    return value.strip()


# sip:/sips: URIs as they may be written in a config file; the full parser
# lives in sipsuite.sip.uri, which this module must not import (layering).
_SIP_URI = re.compile(
    r"sips?:"
    r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+(?::[A-Za-z0-9\-_.!~*'()&=+$,%]*)?@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
    r"(?::(?P<port>\d{1,5}))?"
    r"(?:;[A-Za-z0-9\-_.!~*'()&+$\[\]/:%]+(?:=[A-Za-z0-9\-_.!~*'()&+$\[\]/:%]*)?)*",
    re.IGNORECASE,
)


def sip_uri(value: Any) -> str:
    expected = "a 'sip:' or 'sips:' URI such as 'sip:bob@192.0.2.10:5060'"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    m = _SIP_URI.fullmatch(value)
    if (
        not m
        or _host(m.group("host")) is None
        or (m.group("port") and not 0 < int(m.group("port")) < 65536)
    ):
        raise _Invalid(expected, value)
    return value


_SIP_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")


def sip_user(value: str) -> str:
    if not _SIP_USER.fullmatch(value):
        raise _Invalid("a SIP user part such as 'bob' or '+4930123'", value)
    return value


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One socket to listen on.  *host* is an IP address (IPv6 without brackets)."""

    transport: str  # 'udp' | 'tcp' | 'tls'
    host: str
    port: int  # 0: the operating system picks one

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


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
    except _Invalid as e:
        raise ValueError(f"expected {e.expected}, got {_show(e.got)}") from None


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
        raise _Invalid(expected, value)
    if m.group("ip6") is not None:
        if not _is_ip(m.group("ip6"), 6):
            raise _Invalid(expected, value)
        host = str(ipaddress.ip_address(m.group("ip6")))
    elif _is_ip(m.group("host"), 4):
        host = str(ipaddress.ip_address(m.group("host")))
    else:
        raise _Invalid(expected, value)
    return ListenSpec(m.group("transport").lower(), host, int(m.group("port")))


_LISTEN_LIST = list_of(_listen, non_empty=True, unique=True)


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
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


_CONTROL_EXPECTED = (
    "'udp:HOST:PORT' with HOST a specific IP address (IPv6 in brackets, not 0.0.0.0 or ::)"
    " and PORT 0..65535, 'tls:HOST:PORT' likewise (mutual TLS), or 'unix:PATH'"
)


def _control(value: Any) -> ControlSpec:
    if isinstance(value, str) and value[:5].lower() == "unix:":
        path = value[5:]
        # sun_path holds 108 bytes with the NUL on Linux: longer paths cannot bind.
        if not path or "\0" in path or len(os.fsencode(path)) > 107:
            raise _Invalid(_CONTROL_EXPECTED, value)
        return ControlSpec("unix", path=path)
    try:
        spec = _listen(value)
    except _Invalid:
        raise _Invalid(_CONTROL_EXPECTED, value) from None
    # Replies must leave from the address the command reached: a wildcard
    # socket would let the kernel pick another source on a multi-homed host.
    if spec.transport not in ("udp", "tls") or ipaddress.ip_address(spec.host).is_unspecified:
        raise _Invalid(_CONTROL_EXPECTED, value)
    return ControlSpec(spec.transport, spec.host, spec.port)


def parse_control(value: Any) -> ControlSpec:
    """'udp:HOST:PORT' ('udp:[::1]:7722'), 'tls:HOST:PORT' or 'unix:PATH'; ValueError otherwise."""
    try:
        return _control(value)
    except _Invalid as e:
        raise ValueError(f"expected {e.expected}, got {_show(e.got)}") from None


_CONTROL_LIST = list_of(_control, non_empty=True, unique=True)


def _tls_listen(value: Any) -> ListenSpec:
    """A 'tls:HOST:PORT' listener, as [proxy] listen writes it."""
    expected = "'tls:HOST:PORT' naming a tls listener of proxy.listen"
    try:
        spec = _listen(value)
    except _Invalid:
        raise _Invalid(expected, value) from None
    if spec.transport != "tls":
        raise _Invalid(expected, value)
    return spec


_TLS_LISTEN_LIST = list_of(_tls_listen, unique=True)


def pem_path(value: Any) -> str:
    """'' (none) or the path of a PEM file (read, and errors reported, when loaded)."""
    expected = "'' or the path of a PEM file"
    if not isinstance(value, str) or any(c in value for c in "\0\r\n"):
        raise _Invalid(expected, value)
    return value.strip()


def media_address(value: Any) -> str:
    """An IP address to bind relay ports on and announce in SDP (normalised)."""
    expected = "an IP address such as '192.0.2.1' or '2001:db8::1'"
    if not isinstance(value, str):
        raise _Invalid(expected, value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _Invalid(expected, value) from None


def _media_addresses(value: Any) -> list[str]:
    addresses: list[str] = list_of(media_address, non_empty=True, unique=True)(value)
    if len(addresses) > 2:
        raise _Invalid("one address, or two (internal, external) for bridging", value)
    if len(addresses) == 2:
        for i, address in enumerate(addresses):
            # Bridging hands each party the address of its own side: a
            # wildcard says nothing a phone could send to.
            if ipaddress.ip_address(address).is_unspecified:
                raise _Invalid("a specific address when bridging (not 0.0.0.0 or ::)",
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
        raise _Invalid(expected, value)
    low, high = int(m.group(1)), int(m.group(2))
    first_even = low + (low & 1)
    if not 1 <= low < high <= 65535 or first_even + 1 > high:
        raise _Invalid(expected, value)
    return low, high


# ---------------------------------------------------------------------------
# Media relays the proxy drives ([media] relays, --relay): the grammar the
# relay client (sipsuite.proxy.relayclient) uses too, kept here because this
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
        raise _Invalid(_RELAY_EXPECTED, value)
    uri, sep, params = value.partition(";")
    weight = 1
    if sep:
        name, eq, number = params.partition("=")
        if name.strip().lower() != "weight" or not eq or not number.strip().isdigit():
            raise _Invalid(_RELAY_EXPECTED, value)
        weight = int(number)
    try:
        parse_relay_uri(uri.strip())
    except ValueError:
        raise _Invalid(_RELAY_EXPECTED, value) from None
    return RelaySpec(uri.strip(), weight)


def _relay_list(value: Any) -> list[RelaySpec]:
    specs: list[RelaySpec] = list_of(relay_spec)(value)
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        # The client keys relays by URI: the same one twice with two weights
        # would be ambiguous.
        if spec.uri in seen:
            raise _Invalid("each relay only once", value[i], f"[{i}]")
        seen.add(spec.uri)
    return specs


def text_needle(value: Any) -> str:
    """A non-empty piece of header text to search for (User-Agent scanners):
    printable ASCII on one line, surrounding blanks ignored."""
    expected = "a non-empty string of printable ASCII on one line"
    if not isinstance(value, str) or not re.fullmatch(r"[\x20-\x7e]*", value) or not value.strip():
        raise _Invalid(expected, value)
    return value.strip()


def file_path(value: Any) -> str:
    """A file to write: a non-empty path on one line (it is opened, and
    errors reported, when used, not here: the directory may come later)."""
    expected = "a file path"
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\r\n"):
        raise _Invalid(expected, value)
    return value


# ---------------------------------------------------------------------------
# Dispatcher destinations (Kamailio's dispatcher.list), shared by the config's
# [dispatcher.sets] and the list file reader in sipsuite.proxy.dispatcher_list.


@dataclass(frozen=True, slots=True)
class DispatcherEntry:
    """One destination as written: ``URI [FLAGS [PRIORITY [ATTRS]]]``."""

    uri: str
    flags: int = 0
    priority: int = 0
    attrs: tuple[tuple[str, str], ...] = ()  # ("weight", "50"), ... in file order

    def attr(self, name: str) -> str | None:
        return next((v for k, v in self.attrs if k == name), None)


def parse_dispatcher_entry(text: str) -> DispatcherEntry:
    """'sip:192.0.2.1:5060 0 10 weight=50;duid=gw1' -> DispatcherEntry;
    ValueError saying what is wrong otherwise."""
    fields = text.split()
    if not fields:
        raise ValueError("expected a destination URI, got nothing")
    if len(fields) > 4:
        raise ValueError(f"expected 'URI [FLAGS [PRIORITY [ATTRS]]]', got {len(fields)} fields")
    try:
        uri = sip_uri(fields[0])
    except _Invalid as e:
        raise ValueError(f"expected {e.expected}, got {fields[0]!r}") from None
    numbers = []
    for name, word in zip(("flags", "priority"), fields[1:3], strict=False):
        if not re.fullmatch(r"-?\d{1,9}", word):
            raise ValueError(f"{name}: expected a whole number, got {word!r}")
        numbers.append(int(word))
    flags, priority = (numbers + [0, 0])[:2]
    if not 0 <= flags <= 15:
        raise ValueError(f"flags: expected 0 to 15 (1 inactive, 2 probing, 4 disabled), got {flags}")
    attrs: list[tuple[str, str]] = []
    if len(fields) == 4:
        for part in fields[3].strip(";").split(";"):
            key, eq, val = part.partition("=")
            if not eq or not re.fullmatch(r"[A-Za-z][\w.-]*", key):
                raise ValueError(f"attrs: expected 'name=value;...', got {fields[3]!r}")
            if key == "weight" and not re.fullmatch(r"\d{1,4}", val):
                raise ValueError(f"attrs: weight: expected a whole number from 0 to 9999, got {val!r}")
            if key in ("maxload", "rweight") and not re.fullmatch(r"\d{1,6}", val):
                raise ValueError(f"attrs: {key}: expected a whole number, got {val!r}")
            attrs.append((key, val))
    return DispatcherEntry(uri, flags, priority, tuple(attrs))


def dispatcher_sets(value: Any) -> dict[int, list[DispatcherEntry]]:
    """[dispatcher.sets]: SETID = ["URI [FLAGS [PRIORITY [ATTRS]]]", ...]."""
    if not isinstance(value, dict):
        raise _Invalid("a table of SETID = [destinations]", value)
    out: dict[int, list[DispatcherEntry]] = {}
    for key, entries in value.items():
        if not re.fullmatch(r"\d{1,9}", key):
            raise _Invalid("a set id (a whole number) as the key", key, f".{key}")
        if not isinstance(entries, list) or not entries:
            raise _Invalid("a non-empty list of destinations", entries, f".{key}")
        parsed = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, str):
                raise _Invalid("'URI [FLAGS [PRIORITY [ATTRS]]]'", entry, f".{key}[{i}]")
            try:
                parsed.append(parse_dispatcher_entry(entry))
            except ValueError as e:
                raise _Invalid(f"'URI [FLAGS [PRIORITY [ATTRS]]]' ({e})", entry,
                               f".{key}[{i}]") from None
        out[int(key)] = parsed
    return out


def probe_reply_code(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 699:
        raise _Invalid("a SIP status code from 100 to 699", value)
    return value


def list_file_path(value: Any) -> str:
    """'' (none) or the path of a dispatcher list file (read when loaded)."""
    if not isinstance(value, str) or any(c in value for c in "\0\r\n"):
        raise _Invalid("'' or the path of a dispatcher list file", value)
    return value.strip()
