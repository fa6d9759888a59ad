"""The values a sipsuite config file may hold: one validator per kind of
value (TOML value in, typed value out, ``Invalid`` naming what was expected
on a bad one), and the typed values with structure (``ListenSpec``,
``ControlSpec``). ``sipsuite.config`` builds its schema from these; like it,
this module imports nothing else from sipsuite.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipsuite import hosts

Validator = Callable[[Any], Any]


class Invalid(Exception):
    """Raised by validators: *expected* describes a good value, *where* is a
    suffix of the dotted key such as ``[1]`` for a list item."""

    def __init__(self, expected: str, got: object, where: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got
        self.where = where


def show_value(value: object) -> str:
    """A TOML-ish rendering of a value for error messages, kept short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------
# Validators: TOML value in, typed value out, Invalid on a bad value.


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("a string", value)
    return value


def bearer_token(value: Any) -> str:
    """'' (none) or a token to send as ``Authorization: Bearer TOKEN``: 16 or
    more characters of RFC 6750's token68 alphabet (letters, digits, -._~+/=)."""
    expected = "'' or 16+ characters of letters, digits and -._~+/= (e.g. `openssl rand -hex 32`)"
    if not isinstance(value, str) or (
            value and not re.fullmatch(r"[A-Za-z0-9\-._~+/]{16,}=*", value)):
        raise Invalid(expected, value)
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false", value)
    return value


def positive_float(value: Any) -> float:
    """Seconds: a TOML integer or float above zero (TOML's nan and inf are not)."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            or not math.isfinite(value)):
        raise Invalid("a number of seconds above 0", value)
    return float(value)


def non_negative_float(value: Any) -> float:
    """Seconds, where 0 switches the feature off (TOML's nan and inf are not seconds)."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
            or not math.isfinite(value)):
        raise Invalid("a number of seconds, 0 or more", value)
    return float(value)


_SIZE = re.compile(r"\s*([0-9]+)\s*([kKmMgG]?)(i?)[bB]?\s*")
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def byte_size(value: Any) -> int:
    """A size in bytes: a whole number, or text like "64MB", "512kB", "1GiB"
    (binary multiples either way: memory is counted in them)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise Invalid('a size in bytes, e.g. 67108864 or "64MB"', value)
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def int_range(low: int, high: int) -> Validator:
    expected = f"a whole number from {low} to {high}"

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Invalid(expected, value)
        return value

    return check


def redis_url(value: Any) -> str:
    """'' (in-memory stores) or redis://[:PASSWORD@]HOST[:PORT][/DB]."""
    expected = "'' or 'redis://[:PASSWORD@]HOST[:PORT][/DB]'"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    if value and not re.fullmatch(
        r"redis://(?::[^@/]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::\d{1,5})?(?:/\d{1,2})?/?", value
    ):
        raise Invalid(expected, value)
    return value


def digest_algorithm(value: Any) -> str:
    names = {"md5": "MD5", "sha-256": "SHA-256"}
    if not isinstance(value, str) or value.lower() not in names:
        raise Invalid("'MD5' or 'SHA-256'", value)
    return names[value.lower()]


def realm(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", value):
        raise Invalid("a non-empty realm of printable ASCII without spaces, quotes or backslashes",
                       value)
    return value


def one_of(*choices: str) -> Validator:
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: Any) -> str:
        if value not in choices:
            raise Invalid(expected, value)
        return value

    return check


def list_of(item: Validator, *, non_empty: bool = False, unique: bool = False) -> Validator:
    """A TOML array whose items each pass *item*; errors name the index."""

    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid("a list [...]", value)
        if non_empty and not value:
            raise Invalid("a list with at least one entry", value)
        out = []
        for i, v in enumerate(value):
            try:
                converted = item(v)
            except Invalid as e:
                raise Invalid(e.expected, e.got, f"[{i}]{e.where}") from None
            if unique and converted in out:
                raise Invalid("each entry only once", v, f"[{i}]")
            out.append(converted)
        return out

    return check


def is_ip(text: str, version: int) -> bool:
    """An IP address of ``version``, written bare (no brackets)."""
    return not text.startswith("[") and hosts.is_ip(text, version)


# RFC 3261 hostname: labels of letters, digits and '-'; the last one starts with a letter.
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)


def _host(text: str) -> str | None:
    """A SIP host (RFC 3261 25.1): hostname, IPv4, or IPv6 in brackets.

    Returns it lowercased (IPv6 normalised and bracketed), None if invalid.
    """
    if text.startswith("[") and text.endswith("]") and is_ip(text[1:-1], 6):
        return f"[{ipaddress.ip_address(text[1:-1])}]"
    if is_ip(text, 4) or _HOSTNAME.fullmatch(text):
        return text.lower()
    return None


def domain(value: Any) -> str:
    """A domain this proxy is responsible for: a hostname or IP address.

    Stored lowercased; IPv6 (written bare or in brackets) without brackets and
    in its compressed form, as ListenSpec.host has it.
    """
    expected = "a domain name or IP address such as 'example.com'"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    host = _host(f"[{value}]" if is_ip(value, 6) else value)
    if host is None:
        raise Invalid(expected, value)
    return hosts.unbracket(host)


def host_port(value: Any) -> str:
    """'' (derive it), or HOST or HOST:PORT to put in Via and Record-Route."""
    expected = "'' or 'HOST' or 'HOST:PORT' (IPv6 in brackets)"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    if value == "":
        return value
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+)(?::(\d{1,5}))?", value)
    if not m or _host(m.group(1)) is None or (m.group(2) and not 0 < int(m.group(2)) < 65536):
        raise Invalid(expected, value)
    return value


def host_or_empty(value: Any) -> str:
    """'' (off), or a host to send to: an IP address (IPv6 bare or in
    brackets) or a host name. Stored as a SIP URI writes it (IPv6 bracketed)."""
    expected = "'' or an IP address or host name"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    if value == "":
        return value
    host = _host(f"[{value}]" if is_ip(value, 6) else value)
    if host is None:
        raise Invalid(expected, value)
    return host


def regex(value: Any) -> str:
    """A Python regular expression (re syntax), checked to compile."""
    expected = "a regular expression"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    try:
        re.compile(value)
    except re.error as e:
        raise Invalid(f"a regular expression ({e})", value) from None
    return value


def dns_server(value: Any) -> tuple[str, int]:
    """A DNS server to ask: 'IP' or 'IP:PORT' ('[v6]:PORT'); port 53 by default."""
    expected = "a DNS server 'IP' or 'IP:PORT' (IPv6 as '[::1]:53')"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?|([^:\[\]]+)(?::(\d{1,5}))?|([0-9a-fA-F:]+)", value)
    if not m:
        raise Invalid(expected, value)
    host = m.group(1) or m.group(3) or m.group(5)
    port = int(m.group(2) or m.group(4) or 53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(expected, value) from None
    if not 0 < port < 65536:
        raise Invalid(expected, value)
    return (host, port)


def ip_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or network ('192.0.2.0/24'); host bits are masked off."""
    expected = "an IP address or network such as '192.0.2.0/24'"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(expected, value) from None


_DOTTED_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"


def import_spec(value: Any) -> str:
    """'package.module:ClassName' (checked for syntax only: importing is the
    proxy's business, when it builds its routing object)."""
    expected = "'package.module:ClassName'"
    if not isinstance(value, str) or not re.fullmatch(f"{_DOTTED_NAME}:{_DOTTED_NAME}", value):
        raise Invalid(expected, value)
    return value


def header_value(value: Any) -> str:
    """Text for a header value: printable ASCII, no CR/LF ('' allowed)."""
    if not isinstance(value, str) or not re.fullmatch(r"[\x20-\x7e]*", value):
        raise Invalid("printable ASCII text on one line", value)
    return value.strip()


def secret_key(value: Any) -> str:
    """A shared secret: "" (none) or 16 printable ASCII characters or more."""
    text = header_value(value)
    if text and len(text) < 16:
        raise Invalid('"" or a secret of 16 characters or more', value)
    return text


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
        raise Invalid(expected, value)
    m = _SIP_URI.fullmatch(value)
    if (
        not m
        or _host(m.group("host")) is None
        or (m.group("port") and not 0 < int(m.group("port")) < 65536)
    ):
        raise Invalid(expected, value)
    return value


_SIP_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")


def sip_user(value: str) -> str:
    if not _SIP_USER.fullmatch(value):
        raise Invalid("a SIP user part such as 'bob' or '+4930123'", value)
    return value


def pem_path(value: Any) -> str:
    """'' (none) or the path of a PEM file (read, and errors reported, when loaded)."""
    expected = "'' or the path of a PEM file"
    if not isinstance(value, str) or any(c in value for c in "\0\r\n"):
        raise Invalid(expected, value)
    return value.strip()


def text_needle(value: Any) -> str:
    """A non-empty piece of header text to search for (User-Agent scanners):
    printable ASCII on one line, surrounding blanks ignored."""
    expected = "a non-empty string of printable ASCII on one line"
    if not isinstance(value, str) or not re.fullmatch(r"[\x20-\x7e]*", value) or not value.strip():
        raise Invalid(expected, value)
    return value.strip()


def file_path(value: Any) -> str:
    """A file to write: a non-empty path on one line (it is opened, and
    errors reported, when used, not here: the directory may come later)."""
    expected = "a file path"
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\r\n"):
        raise Invalid(expected, value)
    return value


# ---------------------------------------------------------------------------
# Dispatcher destinations (Kamailio's dispatcher.list), shared by the config's
# [dispatcher.sets] and the list file reader in sipsuite.proxy.modules.dispatcher.lists.


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
    except Invalid as e:
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
        raise Invalid("a table of SETID = [destinations]", value)
    out: dict[int, list[DispatcherEntry]] = {}
    for key, entries in value.items():
        if not re.fullmatch(r"\d{1,9}", key):
            raise Invalid("a set id (a whole number) as the key", key, f".{key}")
        if not isinstance(entries, list) or not entries:
            raise Invalid("a non-empty list of destinations", entries, f".{key}")
        parsed = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, str):
                raise Invalid("'URI [FLAGS [PRIORITY [ATTRS]]]'", entry, f".{key}[{i}]")
            try:
                parsed.append(parse_dispatcher_entry(entry))
            except ValueError as e:
                raise Invalid(f"'URI [FLAGS [PRIORITY [ATTRS]]]' ({e})", entry,
                               f".{key}[{i}]") from None
        out[int(key)] = parsed
    return out


def probe_reply_code(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 699:
        raise Invalid("a SIP status code from 100 to 699", value)
    return value


def list_file_path(value: Any) -> str:
    """'' (none) or the path of a dispatcher list file (read when loaded)."""
    if not isinstance(value, str) or any(c in value for c in "\0\r\n"):
        raise Invalid("'' or the path of a dispatcher list file", value)
    return value.strip()
