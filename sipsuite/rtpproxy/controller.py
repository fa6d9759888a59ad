"""The controller's side of RTPProxy's control protocol: the commands a
proxy sends (``build_*``) and the replies it reads (:func:`parse_reply`).

The relay's side (parsing commands, formatting replies) and the grammar both
share are in :mod:`sipsuite.rtpproxy.protocol`; like it, this module is
sans-IO and imports nothing from Twisted.  The builders take protocol
tokens: a SIP Call-ID or tag becomes one with :mod:`sipsuite.rtpproxy.ids`
(the proxy's relay client does that), and a part that is still not one
token raises ValueError rather than splitting the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from sipsuite.rtpproxy.protocol import _DIGITS, _TEXT_SEPARATORS, DEFAULT_QUERY, _text

__all__ = [
    "Reply", "parse_reply", "parse_query_reply",
    "build_command", "build_modifiers", "build_version", "build_capability_check",
    "build_update", "build_lookup", "build_delete", "build_query", "build_info",
    "build_delete_all",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed reply.  ``port``/``address``/``ipv6`` read it as a U/L answer the
    way Kamailio does; ``number`` as V/VF/D; ``error`` is set for ``E<n>``."""

    cookie: str
    body: str  # without cookie and trailing newline
    raw: bytes
    fields: tuple[str, ...]  # whitespace-split body, up to any "&&"
    error: int | None = None
    number: int | None = None
    port: int | None = None
    address: str | None = None
    ipv6: bool = False


def parse_reply(data: bytes, *, datagram: bool = True) -> Reply:
    """Parse one reply; never raises.  A datagram reply without a space has no
    cookie (rtpproxy answers a cookie-less syntax error that way)."""
    text = _text(data).strip(" \t\r\n")
    cookie = ""
    if datagram:
        head, sep, rest = text.partition(" ")
        if sep:
            cookie, text = head, rest.lstrip(" ")
    tokens = [t for t in _TEXT_SEPARATORS.split(text) if t]
    if "&&" in tokens:
        tokens = tokens[:tokens.index("&&")]
    first = tokens[0] if tokens else ""
    error = number = port = None
    if first[:1] == "E" and _DIGITS.fullmatch(first[1:]) and len(first) <= 10:
        error = int(first[1:])
    elif _DIGITS.fullmatch(first) and len(first) <= 10:
        number = int(first)
        port = number if number <= 65535 else None
    address = tokens[1] if len(tokens) >= 2 and port is not None else None
    ipv6 = address is not None and len(tokens) >= 3 and tokens[2][:1] == "6"
    return Reply(cookie, text, data, tuple(tokens), error, number, port, address, ipv6)


def parse_query_reply(body: str, names: Sequence[str] = DEFAULT_QUERY) -> dict[str, float]:
    """Values of a Q reply by counter name (plain or verbose form); never raises,
    a value that is not a number is left out."""
    values: dict[str, float] = {}
    for i, token in enumerate(t for t in _TEXT_SEPARATORS.split(body) if t):
        name, sep, value = token.partition("=")
        if not sep:
            if i >= len(names):
                break
            name, value = names[i], token
        try:
            values[name] = float(value) if "." in value else int(value)
        except ValueError:
            continue
    return values


def _check_token(text: str, what: str) -> None:
    if not text or text == "&&" or any(c in text for c in " \t\r\n\0"):
        raise ValueError(f"{what} {text!r} is not a single protocol token")


def build_command(cookie: str, verb: str, *args: str | int, modifiers: str = "") -> bytes:
    """``COOKIE VERBMODIFIERS ARG...`` without a newline, as Kamailio sends it.
    An empty cookie builds a stream-socket command.  Raises ValueError for a
    part that would not survive as one token."""
    parts = [verb + modifiers, *(str(a) for a in args)]
    if cookie:
        parts.insert(0, cookie)
    for part in parts:
        _check_token(part, "command part")
    return " ".join(parts).encode("latin-1")


def build_modifiers(*, asymmetric: bool | None = None, bridge: str = "", ipv6: bool = False,
                    weak: bool = False, ptime: int | None = None,
                    codecs: Sequence[int] | None = None, new_port: bool = False) -> str:
    """U/L modifier string in Kamailio's order: flags, then Z, then c."""
    if bridge.strip("IE") or len(bridge) > 2:
        raise ValueError(f"bridge {bridge!r}: at most two of I/E")
    if ptime is not None and not 0 < ptime < 1000:
        raise ValueError(f"ptime {ptime} outside 1..999")
    out = {True: "A", False: "S", None: ""}[asymmetric] + bridge
    out += ("6" if ipv6 else "") + ("W" if weak else "") + ("N" if new_port else "")
    if ptime is not None:
        out += f"Z{ptime}"
    if codecs:
        out += "c" + ",".join(str(int(c)) for c in codecs)
    return out


def build_version(cookie: str) -> bytes:
    return build_command(cookie, "V")


def build_capability_check(cookie: str, capability: str) -> bytes:
    return build_command(cookie, "VF", capability)


def _ul(verb: str, cookie: str, call_id: str, address: str, port: int | str, from_tag: str,
        to_tag: str | None, modifiers: str, extra: Sequence[str] = ()) -> bytes:
    args: list[str | int] = [call_id, address, port, from_tag]
    if to_tag is not None:
        args.append(to_tag)
    return build_command(cookie, verb, *args, *extra, modifiers=modifiers)


def build_update(cookie: str, call_id: str, address: str, port: int | str, from_tag: str,
                 to_tag: str | None = None, *, modifiers: str = "",
                 notify_socket: str | None = None, notify_tag: str | None = None) -> bytes:
    """U: create/update the stream for the party that sent this SDP."""
    extra: list[str] = []
    if notify_socket is not None:
        if to_tag is None:
            raise ValueError("a notify socket needs a to-tag (7 tokens mean TOTAG SOCKET)")
        extra.append(notify_socket)
        if notify_tag is not None:
            extra.append(quote(notify_tag, safe="", encoding="latin-1"))
    elif notify_tag is not None:
        raise ValueError("a notify tag needs a notify socket")
    return _ul("U", cookie, call_id, address, port, from_tag, to_tag, modifiers, extra)


def build_lookup(cookie: str, call_id: str, address: str, port: int | str, from_tag: str,
                 to_tag: str | None = None, *, modifiers: str = "") -> bytes:
    """L: look up the stream an answer belongs to; port 0 in the reply = not found."""
    return _ul("L", cookie, call_id, address, port, from_tag, to_tag, modifiers)


def build_delete(cookie: str, call_id: str, from_tag: str, to_tag: str | None = None, *,
                 weak: bool = False) -> bytes:
    tags = [from_tag] if to_tag is None else [from_tag, to_tag]
    return build_command(cookie, "D", call_id, *tags, modifiers="w" if weak else "")


def build_query(cookie: str, call_id: str, from_tag: str, to_tag: str | None = None, *,
                stats: Sequence[str] = (), verbose: bool = False) -> bytes:
    if stats and to_tag is None:
        raise ValueError("counter names need a to-tag in front of them")
    tags = [from_tag] if to_tag is None else [from_tag, to_tag]
    return build_command(cookie, "Q", call_id, *tags, *stats, modifiers="v" if verbose else "")


def build_info(cookie: str, *, brief: bool = False, load: bool = False) -> bytes:
    return build_command(cookie, "I", modifiers=("b" if brief else "") + ("l" if load else ""))


def build_delete_all(cookie: str) -> bytes:
    return build_command(cookie, "X")
