"""The one loader and validator for sipsuite's TOML configuration.

Every key lives in the schema below: each section is a frozen dataclass whose
fields carry their default (written as it would be in TOML) and a validator
that turns the TOML value into what the code uses.  ``conf/sipsuite.toml``
documents the same keys with the same defaults, and a test checks that the
two agree.

A wrong key or value stops start-up with a :class:`ConfigError` whose message
is one line naming the file, the dotted key and what was expected::

    conf/x.toml: proxy.listen[1]: expected 'udp:HOST:PORT' or 'tcp:HOST:PORT', got 'foo'

Adding a section is a dataclass with one :func:`setting` per key, plus one
field in :class:`Config` naming it with :func:`section`.  This module imports
nothing else from sipsuite: every other layer may import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "ConfigError",
    "ControlSpec",
    "ListenSpec",
    "LogConfig",
    "ProxyConfig",
    "RelayConfig",
    "TimersConfig",
    "default_config_path",
    "load_config",
    "parse_control",
    "parse_listen",
]

#: The documented configuration file in a source checkout (and so in an
#: editable install): ``<repo>/conf/sipsuite.toml``.
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "sipsuite.toml"

#: Where ``twistd ... --config`` looks first, relative to the working directory.
DEFAULT_CONFIG = Path("conf") / "sipsuite.toml"


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is one line naming the key."""


class _Invalid(Exception):
    """Raised by validators: *expected* describes a good value, *where* is a
    suffix of the dotted key such as ``[1]`` for a list item."""

    def __init__(self, expected: str, got: object, where: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got
        self.where = where


Validator = Callable[[Any], Any]


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

    transport: str  # 'udp' | 'tcp'
    host: str
    port: int  # 0: the operating system picks one

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


LISTEN_TRANSPORTS = ("udp", "tcp")
_LISTEN = re.compile(
    r"(?P<transport>[A-Za-z]+):(?:\[(?P<ip6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})"
)


def parse_listen(value: Any) -> ListenSpec:
    """'udp:HOST:PORT' or 'tcp:HOST:PORT'; HOST an IP address, IPv6 as '[::1]'.

    Raises ValueError (the message says what was expected) on anything else.
    """
    try:
        return _listen(value)
    except _Invalid as e:
        raise ValueError(f"expected {e.expected}, got {_show(e.got)}") from None


def _listen(value: Any) -> ListenSpec:
    expected = (
        "'udp:HOST:PORT' or 'tcp:HOST:PORT' with HOST an IP address"
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
    """A control socket of the RTP relay: ``udp`` (host an IP address, IPv6
    without brackets, and a port) or ``unix`` (a filesystem path)."""

    transport: str  # 'udp' | 'unix'
    host: str = ""
    port: int = 0  # udp; 0: the operating system picks one
    path: str = ""  # unix

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp:{host}:{self.port}"


_CONTROL_EXPECTED = (
    "'udp:HOST:PORT' with HOST a specific IP address (IPv6 in brackets, not 0.0.0.0 or ::)"
    " and PORT 0..65535, or 'unix:PATH'"
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
    if spec.transport != "udp" or ipaddress.ip_address(spec.host).is_unspecified:
        raise _Invalid(_CONTROL_EXPECTED, value)
    return ControlSpec("udp", spec.host, spec.port)


def parse_control(value: Any) -> ControlSpec:
    """'udp:HOST:PORT' ('udp:[::1]:7722') or 'unix:PATH'; ValueError otherwise."""
    try:
        return _control(value)
    except _Invalid as e:
        raise ValueError(f"expected {e.expected}, got {_show(e.got)}") from None


_CONTROL_LIST = list_of(_control, non_empty=True, unique=True)


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
# The schema.


def setting(default: Any, validator: Validator) -> Any:
    """A key of a section: *default* is written as in TOML and goes through
    *validator* like any value read from a file."""
    return field(metadata={"default": default, "validator": validator})


def section(name: str, cls: type) -> Any:
    """A [name] table whose keys are the fields of dataclass *cls*."""
    return field(metadata={"section": name, "cls": cls})


def table(name: str, key: Callable[[str], str], value: Validator) -> Any:
    """A [name] table of free keys (each through *key*) and their values."""
    return field(metadata={"section": name, "key": key, "value": value})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    listen: list[ListenSpec] = setting(["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"], _LISTEN_LIST)
    domains: list[str] = setting([], list_of(domain, unique=True))
    advertise: str = setting("", host_port)
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = setting([], list_of(ip_network))
    routing: str = setting("sipsuite.proxy.routing:DefaultRouting", import_spec)
    record_route: bool = setting(True, boolean)
    tcp_idle_timeout: float = setting(600.0, positive_float)
    dns_timeout: float = setting(3.0, positive_float)
    dns_servers: list[tuple[str, int]] = setting([], list_of(dns_server))
    server_header: str = setting("sipsuite", header_value)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimersConfig:
    t1: float = setting(0.5, positive_float)
    t2: float = setting(4.0, positive_float)
    t4: float = setting(5.0, positive_float)
    timer_c: float = setting(180.0, positive_float)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeaturesConfig:
    auth: bool = setting(False, boolean)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    realm: str = setting("sipsuite", realm)
    secret: str = setting("", header_value)
    nonce_expires: float = setting(30.0, positive_float)
    algorithms: list[str] = setting(["MD5"], list_of(digest_algorithm, non_empty=True, unique=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarConfig:
    default_expires: int = setting(3600, int_range(1, 2**31 - 1))
    min_expires: int = setting(60, int_range(0, 2**31 - 1))
    max_expires: int = setting(7200, int_range(1, 2**31 - 1))
    max_contacts: int = setting(0, int_range(0, 10000))
    max_contacts_policy: str = setting("reject", one_of("reject", "drop_oldest"))
    serial_forking: bool = setting(False, boolean)
    retry_after: int = setting(5, int_range(1, 3600))


@dataclass(frozen=True, slots=True, kw_only=True)
class NatConfig:
    keepalive_interval: float = setting(20.0, non_negative_float)
    keepalive_method: str = setting("crlf", one_of("crlf", "options"))
    keepalive_timeout: float = setting(120.0, positive_float)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    url: str = setting("", redis_url)
    timeout: float = setting(1.0, positive_float)
    prefix: str = setting("sipsuite:", header_value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    control: list[ControlSpec] = setting(["udp:127.0.0.1:7722"], _CONTROL_LIST)
    media_addresses: list[str] = setting(["0.0.0.0"], _media_addresses)
    ports: tuple[int, int] = setting("35000-65000", port_range)
    learn_window: float = setting(3.0, positive_float)
    media_timeout: float = setting(60.0, positive_float)
    hold_timeout: float = setting(3600.0, positive_float)
    drain_time: float = setting(30.0, non_negative_float)


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagementConfig:
    listen: str = setting("tcp:127.0.0.1:7060", tcp_listen_or_off)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = setting("info", one_of("debug", "info", "warn", "error"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A validated configuration; build it with :func:`load_config`."""

    proxy: ProxyConfig = section("proxy", ProxyConfig)
    timers: TimersConfig = section("timers", TimersConfig)
    location_static: dict[str, list[str]] = table(
        "location.static", sip_user, list_of(sip_uri, non_empty=True)
    )
    features: FeaturesConfig = section("features", FeaturesConfig)
    auth: AuthConfig = section("auth", AuthConfig)
    registrar: RegistrarConfig = section("registrar", RegistrarConfig)
    nat: NatConfig = section("nat", NatConfig)
    redis: RedisConfig = section("redis", RedisConfig)
    relay: RelayConfig = section("relay", RelayConfig)
    management: ManagementConfig = section("management", ManagementConfig)
    log: LogConfig = section("log", LogConfig)
    path: str | None = None  # the file it came from; None for the built-in defaults


# ---------------------------------------------------------------------------
# Loading.


def default_config_path() -> str | None:
    """The file ``--config`` means when not given.

    ``conf/sipsuite.toml`` in the working directory if there is one, else the
    documented defaults file of the source checkout this package runs from
    (an editable install), else None: the built-in defaults, which are the
    same values.
    """
    if DEFAULT_CONFIG.is_file():
        return str(DEFAULT_CONFIG)
    if PACKAGED_CONFIG.is_file():
        return str(PACKAGED_CONFIG)
    return None


def _sections() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Config) if "section" in f.metadata]


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of " + ", ".join(known)


def load_config(
    path: str | None,
    *,
    listen: list[str] | None = None,
    redis: str | None = None,
    control: list[str] | None = None,
    media_addresses: list[str] | None = None,
    ports: str | None = None,
) -> Config:
    """Read and validate *path* (None: the built-in defaults).

    *listen*, when given, replaces ``proxy.listen`` (the ``--listen`` option),
    *redis* ``redis.url`` (``--redis``), *control* ``relay.control``
    (``--control``), *media_addresses* ``relay.media_addresses``
    (``--media-address``) and *ports* ``relay.ports`` (``--ports``).
    Raises ConfigError with a one-line message on any problem.
    """
    doc: dict[str, Any] = {}
    where = path if path is not None else "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None

    _check_unknown_sections(doc, where)
    values: dict[str, Any] = {}
    for f in _sections():
        name = f.metadata["section"]
        raw = _lookup(doc, name, where)
        if "cls" in f.metadata:
            values[f.name] = _build_section(f.metadata["cls"], name, raw, where)
        else:
            values[f.name] = _build_table(f.metadata, name, raw, where)

    if listen is not None:
        try:
            specs = _LISTEN_LIST(list(listen))
        except _Invalid as e:
            raise ConfigError(f"--listen: expected {e.expected}, got {_show(e.got)}") from None
        values["proxy"] = dataclasses.replace(values["proxy"], listen=specs)

    if redis is not None:
        try:
            url = redis_url(redis)
        except _Invalid as e:
            raise ConfigError(f"--redis: expected {e.expected}, got {_show(e.got)}") from None
        values["redis"] = dataclasses.replace(values["redis"], url=url)

    relay_overrides = {}
    for option, key, raw_value, check in (
        ("--control", "control", control, _CONTROL_LIST),
        ("--media-address", "media_addresses", media_addresses, _media_addresses),
        ("--ports", "ports", ports, port_range),
    ):
        if raw_value is None:
            continue
        try:
            relay_overrides[key] = check(list(raw_value) if isinstance(raw_value, list)
                                         else raw_value)
        except _Invalid as e:
            raise ConfigError(f"{option}: expected {e.expected}, got {_show(e.got)}") from None
    if relay_overrides:
        values["relay"] = dataclasses.replace(values["relay"], **relay_overrides)

    config = Config(**values, path=path)
    _check_consistency(config, where)
    return config


def _check_unknown_sections(doc: Mapping[str, Any], where: str) -> None:
    names = [f.metadata["section"] for f in _sections()]
    prefixes = {n.rsplit(".", i)[0] for n in names for i in range(1, n.count(".") + 1)}

    def walk(table_: Mapping[str, Any], prefix: str) -> None:
        for key, value in table_.items():
            dotted = prefix + key
            if dotted in names:
                continue
            if dotted in prefixes:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: {dotted}: expected a table, got {_show(value)}")
                walk(value, dotted + ".")
                continue
            known = sorted(n for n in [*names, *prefixes] if n.startswith(prefix))
            raise ConfigError(f"{where}: {dotted}: unknown section; {_suggest(dotted, known)}")

    walk(doc, "")


def _lookup(doc: Mapping[str, Any], dotted: str, where: str) -> Mapping[str, Any]:
    node: Any = doc
    for part in dotted.split("."):
        node = node.get(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {dotted}: expected a table [{dotted}], got {_show(node)}")
    return node


def _build_section(cls: type, name: str, raw: Mapping[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{where}: {name}.{key}: unknown key; {_suggest(key, list(fields))}")
    values = {}
    for key, f in fields.items():
        value = raw.get(key, f.metadata["default"])
        try:
            values[key] = f.metadata["validator"](value)
        except _Invalid as e:
            raise ConfigError(
                f"{where}: {name}.{key}{e.where}: expected {e.expected}, got {_show(e.got)}"
            ) from None
    return cls(**values)


def _build_table(
    meta: Mapping[str, Any], name: str, raw: Mapping[str, Any], where: str
) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        dotted = f"{name}.{_toml_key(key)}"
        try:
            meta["key"](key)
        except _Invalid as e:
            raise ConfigError(f"{where}: {dotted}: expected {e.expected} as the key") from None
        try:
            out[key] = meta["value"](value)
        except _Invalid as e:
            raise ConfigError(
                f"{where}: {dotted}{e.where}: expected {e.expected}, got {_show(e.got)}"
            ) from None
    return out


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'


def _check_consistency(config: Config, where: str) -> None:
    """Rules across keys."""
    t = config.timers
    if t.t2 < t.t1:
        raise ConfigError(
            f"{where}: timers.t2: expected a value not below timers.t1 ({t.t1:g}), got {t.t2:g}"
        )
    r = config.registrar
    if r.max_expires < r.min_expires:
        raise ConfigError(
            f"{where}: registrar.max_expires: expected a value not below registrar.min_expires"
            f" ({r.min_expires}), got {r.max_expires}"
        )
    if not r.min_expires <= r.default_expires <= r.max_expires:
        raise ConfigError(
            f"{where}: registrar.default_expires: expected a value from registrar.min_expires"
            f" ({r.min_expires}) to registrar.max_expires ({r.max_expires}), got {r.default_expires}"
        )
    relay = config.relay
    if relay.hold_timeout < relay.media_timeout:
        raise ConfigError(
            f"{where}: relay.hold_timeout: expected a value not below relay.media_timeout"
            f" ({relay.media_timeout:g}), got {relay.hold_timeout:g}"
        )
