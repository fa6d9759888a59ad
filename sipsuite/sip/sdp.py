"""SDP (RFC 8866, formerly RFC 4566) as a media relay client needs it, sans-IO.

``parse`` keeps every line exactly as received (its bytes and its own line
ending, CRLF or bare LF) and reads only what anchoring media on a relay
needs: o=, the c= lines, each m= line, and the a=rtcp (RFC 3605), direction,
a=ptime and a=rtpmap attributes.  Anything else, including lines that are not
``x=...`` at all, is kept verbatim and otherwise ignored: a proxy forwards
what it does not understand.  ``to_bytes`` of an unmodified parse gives back
the exact input.

``rewrite`` does what Kamailio's rtpproxy_manage does to the body: the
relay's address in every c=, the relay's ports in the m= and a=rtcp lines,
o= sess-version + 1, and no other byte changed.  It returns a new
``SessionDescription``; parsed objects are never modified, so one parse can
be rewritten differently for several branches.

A typical offer::

    sd = parse(body)                                  # SDPError -> 488 / forward as is
    for address, port in media_addresses(sd): ...     # ask the relay for a port each
    body = rewrite(sd, [(relay_ip, p) for p in relay_ports]).to_bytes()
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Connection",
    "MediaSection",
    "Origin",
    "Rtcp",
    "SDPError",
    "SessionDescription",
    "connection_for",
    "direction_for",
    "has_private_address",
    "is_hold",
    "media_addresses",
    "parse",
    "rewrite",
]


class SDPError(ValueError):
    """The body cannot be read as SDP (or lacks what a relay needs from it)."""


HOLD_ADDRESS = "0.0.0.0"
DIRECTIONS = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))

# RFC 8866 separates fields by exactly one SP; tabs and runs of spaces are
# accepted too because real UAs send them, and splicing by token span keeps
# whatever separators were there.
_TOKEN = re.compile(rb"[^ \t]+")
# Bounded so int() never meets Python's 4300-digit limit (a ValueError that
# is not an SDPError) and a port can be range-checked after int().
_PORT = re.compile(rb"([0-9]{1,5})(?:/([0-9]{1,5}))?")
_VERSION = re.compile(rb"[0-9]{1,64}")
_SMALL_INT = re.compile(r"[0-9]{1,5}")
_PTIME = re.compile(rb"[0-9]{1,6}(?:\.[0-9]{1,6})?")
# An FQDN in c= is allowed (unicast-address includes FQDN); requiring a
# letter keeps a malformed dotted quad such as 192.0.2.999 from passing as one.
# What ipaddress.IPv4Address accepts: four decimal octets 0-255, no leading
# zeros.  Matched here because ipaddress costs microseconds per c= line, the
# bulk of parsing an SDP of thousands of them.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_FQDN = re.compile(r"(?=[0-9.-]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?")

# nathelper's nat_uac_test 8 ranges: RFC 1918, RFC 6598 (carrier-grade NAT),
# link-local, and the IPv6 unique-local and link-local prefixes.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True, slots=True)
class Origin:
    """The o= line (RFC 8866 5.2)."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    address: str
    line: int  # index into SessionDescription.lines


@dataclass(frozen=True, slots=True)
class Connection:
    """A c= line (RFC 8866 5.7); ``address`` is without its /ttl or /count suffix."""

    nettype: str
    addrtype: str  # "IP4" or "IP6"
    address: str  # an IP literal as written, or an FQDN
    ttl: int | None  # IP4 multicast only
    count: int | None  # number of multicast addresses
    line: int

    @property
    def is_hold(self) -> bool:
        """RFC 2543 hold: the peer is told not to send (RFC 3264 8.4 keeps it valid)."""
        return self.address == HOLD_ADDRESS


@dataclass(frozen=True, slots=True)
class Rtcp:
    """An a=rtcp attribute (RFC 3605): a port, and optionally an address."""

    port: int
    nettype: str | None
    addrtype: str | None
    address: str | None
    line: int


@dataclass(frozen=True, slots=True)
class MediaSection:
    """An m= line and the lines after it up to the next m= (``lines[start:end]``)."""

    media: str  # "audio", "video", ...
    port: int
    port_count: int | None  # the "/n" of "m=video 49170/2 ..."
    proto: str
    formats: tuple[str, ...]
    connections: tuple[Connection, ...]  # media-level c= lines
    rtcp: tuple[Rtcp, ...]
    direction: str | None  # media-level direction attribute, if any
    ptime: float | None  # a=ptime in ms; None when absent or unreadable
    rtpmap: tuple[bytes, ...]  # the a=rtpmap lines, raw
    start: int
    end: int

    @property
    def connection(self) -> Connection | None:
        return self.connections[0] if self.connections else None


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP body.  ``lines`` are without their endings, ``endings`` hold them."""

    lines: tuple[bytes, ...]
    endings: tuple[bytes, ...]
    origin: Origin | None
    connections: tuple[Connection, ...]  # session-level c= lines
    direction: str | None  # session-level direction attribute, if any
    media: tuple[MediaSection, ...]

    @property
    def connection(self) -> Connection | None:
        return self.connections[0] if self.connections else None

    @property
    def newline(self) -> bytes:
        """The line ending the sender used, for any line we have to add."""
        for ending in self.endings:
            if ending in (b"\r\n", b"\n"):
                return ending
        return b"\r\n"

    def to_bytes(self) -> bytes:
        return b"".join(
            line + ending for line, ending in zip(self.lines, self.endings, strict=True)
        )


def parse(body: bytes) -> SessionDescription:
    """Parse an SDP body; raise ``SDPError`` (and nothing else) for what cannot be SDP."""
    lines, endings = _split_lines(bytes(body))
    if not lines:
        raise SDPError("empty SDP body")
    if not lines[0].startswith(b"v="):
        raise SDPError("SDP must start with a v= line")
    if lines[0][2:].rstrip(b" \t") != b"0":
        raise SDPError(f"unsupported SDP version {lines[0][2:]!r}")

    origin: Origin | None = None
    session_connections: list[Connection] = []
    session_direction: str | None = None
    sections: list[MediaSection] = []
    current: _SectionBuilder | None = None

    for index, line in enumerate(lines):
        if line[1:2] != b"=":
            continue  # blank or not "x=": kept verbatim, nothing to read
        kind = line[:1]
        value = line[2:]
        if kind == b"m":
            if current is not None:
                sections.append(current.build(index))
            current = _parse_media(value, index)
        elif kind == b"c":
            connection = _parse_connection(value, index)
            (current.connections if current else session_connections).append(connection)
        elif kind == b"o":
            # Only the session-level one is the origin; a stray o= further
            # down is kept verbatim like any line we do not interpret.
            if current is None and origin is None:
                origin = _parse_origin(value, index)
        elif kind == b"a":
            name, colon, attr_value = value.partition(b":")
            if not colon:
                flag = name.rstrip(b" \t").decode("ascii", "replace")
                if flag in DIRECTIONS:
                    if current is None:
                        session_direction = session_direction or flag
                    elif current.direction is None:
                        current.direction = flag
            elif current is None:
                continue  # rtcp, ptime and rtpmap are media-level attributes
            elif name == b"rtcp":
                current.rtcp.append(_parse_rtcp(attr_value, index))
            elif name == b"ptime":
                ptime = attr_value.strip(b" \t")
                if current.ptime is None and _PTIME.fullmatch(ptime):
                    current.ptime = float(ptime)
            elif name == b"rtpmap":
                current.rtpmap.append(line)
    if current is not None:
        sections.append(current.build(len(lines)))

    for number, section in enumerate(sections, 1):
        # A rejected stream without any c= is common enough to tolerate; one
        # that carries media has nowhere to send it.
        if section.port and not section.connections and not session_connections:
            raise SDPError(f"m= line {number} has no c= line and there is no session-level c=")

    return SessionDescription(
        lines=tuple(lines),
        endings=tuple(endings),
        origin=origin,
        connections=tuple(session_connections),
        direction=session_direction,
        media=tuple(sections),
    )


def connection_for(sd: SessionDescription, index: int) -> Connection | None:
    """The c= that applies to m= section ``index``: its own, else the session-level one."""
    return sd.media[index].connection or sd.connection


def direction_for(sd: SessionDescription, index: int) -> str:
    """The direction of m= section ``index``: its own, else the session's, else sendrecv."""
    return sd.media[index].direction or sd.direction or "sendrecv"


def media_addresses(sd: SessionDescription) -> list[tuple[str, int]]:
    """(connection address, port) per m= section, in order.

    The address is "" only for a rejected stream (port 0) that has no c= at
    all, which ``parse`` tolerates.
    """
    result = []
    for index, section in enumerate(sd.media):
        connection = connection_for(sd, index)
        result.append((connection.address if connection else "", section.port))
    return result


def is_hold(sd: SessionDescription, index: int) -> bool:
    """Whether m= section ``index`` is put on hold: c=0.0.0.0, or sendonly / inactive."""
    connection = connection_for(sd, index)
    if connection is not None and connection.is_hold:
        return True
    return direction_for(sd, index) in ("sendonly", "inactive")


def has_private_address(sd: SessionDescription) -> bool:
    """Whether any m= section's connection address is private (nathelper nat_uac_test 8).

    Private means RFC 1918, RFC 6598, IPv4 link-local, IPv6 ULA or link-local,
    also inside an IPv4-mapped IPv6 address.  An FQDN is not private.
    """
    for index in range(len(sd.media)):
        connection = connection_for(sd, index)
        if connection is not None and _is_private(connection.address):
            return True
    return not sd.media and sd.connection is not None and _is_private(sd.connection.address)


def rewrite(
    sd: SessionDescription,
    endpoints: Sequence[tuple[str, int]],
    *,
    rewrite_hold: bool = False,
) -> SessionDescription:
    """Anchor the media on a relay: a new ``SessionDescription``, ``sd`` is left as is.

    ``endpoints`` gives the relay's (IP address, port) for each m= section,
    in order (what the relay answered for each stream).  In every section the
    m= port becomes the new port (a "/n" port count is kept), each a=rtcp port
    becomes the new port + 1 and its address, if it has one, the new
    address, and each media-level c= gets the new address with IP4 or IP6
    following it.  A rejected stream (port 0) keeps port 0 and its a=rtcp
    port; its addresses are still replaced, so no client address leaks.

    The session-level c= gets the address of the first live section that
    relies on it (else the first section's): should another section relying
    on it get a different address, a media-level c= is added to that section,
    the only line ever added.  A c= or a=rtcp address of 0.0.0.0 (RFC 2543
    hold) is kept unless ``rewrite_hold``; multicast /ttl and /count suffixes
    are dropped, since a relay address is unicast.  The o= sess-version is
    increased by one.  No other byte changes.

    Raises ``ValueError`` for a wrong number of endpoints, an address that is
    not an IP literal or a port outside 0-65535 (65534 with a=rtcp).
    """
    if len(endpoints) != len(sd.media):
        raise ValueError(f"{len(endpoints)} endpoints for {len(sd.media)} m= sections")
    targets = [_check_endpoint(address, port) for address, port in endpoints]

    lines = list(sd.lines)
    endings = list(sd.endings)

    session_address = _session_address(sd, targets)
    session_rewritten = False
    if session_address is not None:
        for connection in sd.connections:
            if rewrite_hold or not connection.is_hold:
                lines[connection.line] = _rewrite_connection(
                    lines[connection.line], session_address
                )
                session_rewritten = True

    additions: list[tuple[int, bytes]] = []  # (insert before this line index, new line)
    for section, (address, port) in zip(sd.media, targets, strict=True):
        if section.port and section.rtcp and port == 65535:
            raise ValueError("relay port 65535 leaves no port for a=rtcp")
        if section.port:
            lines[section.start] = _rewrite_media_port(lines[section.start], port)
        for connection in section.connections:
            if rewrite_hold or not connection.is_hold:
                lines[connection.line] = _rewrite_connection(lines[connection.line], address)
        if (
            section.port
            and not section.connections
            and session_rewritten
            and address != session_address
        ):
            additions.append((_connection_slot(sd, section), _connection_line(address)))
        for rtcp in section.rtcp:
            rtcp_port = port + 1 if section.port else rtcp.port
            keep_address = rtcp.address == HOLD_ADDRESS and not rewrite_hold
            lines[rtcp.line] = _rewrite_rtcp(
                lines[rtcp.line], rtcp_port, None if keep_address else address
            )

    if sd.origin is not None:
        lines[sd.origin.line] = _bump_version(lines[sd.origin.line], sd.origin.sess_version)

    if additions:
        lines, endings = _with_additions(lines, endings, additions, sd.newline)
    return parse(b"".join(line + ending for line, ending in zip(lines, endings, strict=True)))


# -- parsing helpers --------------------------------------------------------


@dataclass(slots=True)
class _SectionBuilder:
    """The mutable state of the m= section being read."""

    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    start: int
    connections: list[Connection] = field(default_factory=list)
    rtcp: list[Rtcp] = field(default_factory=list)
    direction: str | None = None
    ptime: float | None = None
    rtpmap: list[bytes] = field(default_factory=list)

    def build(self, end: int) -> MediaSection:
        return MediaSection(
            media=self.media,
            port=self.port,
            port_count=self.port_count,
            proto=self.proto,
            formats=self.formats,
            connections=tuple(self.connections) if self.connections else (),
            rtcp=tuple(self.rtcp) if self.rtcp else (),
            direction=self.direction,
            ptime=self.ptime,
            rtpmap=tuple(self.rtpmap) if self.rtpmap else (),
            start=self.start,
            end=end,
        )


def _split_lines(body: bytes) -> tuple[list[bytes], list[bytes]]:
    pieces = body.split(b"\n")
    tail = pieces.pop()  # what follows the last LF: b"" unless unterminated
    lines: list[bytes] = []
    endings: list[bytes] = []
    for piece in pieces:
        if piece.endswith(b"\r"):
            lines.append(piece[:-1])
            endings.append(b"\r\n")
        else:
            lines.append(piece)
            endings.append(b"\n")
    if tail:
        if tail.endswith(b"\r"):
            lines.append(tail[:-1])
            endings.append(b"\r")
        else:
            lines.append(tail)
            endings.append(b"")
    return lines, endings


def _text(token: bytes) -> str:
    # surrogateescape so a non-UTF-8 token is still a str and encodes back
    # to the same bytes.
    return token.decode("utf-8", "surrogateescape")


def _parse_port(token: bytes, what: str) -> tuple[int, int | None]:
    if token.isdigit() and len(token) <= 5:  # a plain port (bytes: ASCII digits only)
        port = int(token)
        if port > 65535:
            raise SDPError(f"{what}: port {port} out of range")
        return port, None
    match = _PORT.fullmatch(token)
    if match is None:
        raise SDPError(f"{what}: bad port {token!r}")
    port = int(match[1])
    if port > 65535:
        raise SDPError(f"{what}: port {port} out of range")
    count = int(match[2]) if match[2] is not None else None
    if count == 0:
        raise SDPError(f"{what}: port count 0")
    return port, count


def _parse_media(value: bytes, index: int) -> _SectionBuilder:
    tokens = _TOKEN.findall(value)
    if len(tokens) < 3:
        raise SDPError(f"m= line {value!r} needs at least <media> <port> <proto>")
    port, count = _parse_port(tokens[1], "m= line")
    # The formats decoded in one go (no token holds a blank, so splitting
    # the joined text gives them back): a decode call per format was most
    # of the cost of an m= line listing thousands.
    formats = tuple(_text(b" ".join(tokens[3:])).split(" ")) if len(tokens) > 3 else ()
    return _SectionBuilder(_text(tokens[0]), port, count, _text(tokens[2]), formats, index)


def _last_tokens(line: bytes, count: int, start: int = 0) -> list[tuple[int, int]]:
    """(start, end) of the last ``count`` tokens of ``line[start:]``, fewer if
    it has fewer, in order: found from the end, so a line of thousands of
    tokens costs no more than its last few."""
    size = len(line)
    spans = []
    for m in _TOKEN.finditer(line[start:][::-1]):
        spans.append((size - m.end(), size - m.start()))
        if len(spans) == count:
            break
    spans.reverse()
    return spans


def _parse_origin(value: bytes, index: int) -> Origin:
    spans = _last_tokens(value, 6)
    if len(spans) < 6:
        raise SDPError(f"o= line {value!r} needs 6 fields")
    # Some UAs put spaces in the username; the last five fields are still
    # unambiguous, so the username is whatever comes before them.
    sess_id, version, nettype, addrtype, address = (value[a:b] for a, b in spans[1:])
    if not _VERSION.fullmatch(version):
        raise SDPError(f"o= sess-version {version!r} is not a number")
    return Origin(
        username=_text(value[: spans[1][0]].rstrip(b" \t")),
        sess_id=_text(sess_id),
        sess_version=int(version),
        nettype=_text(nettype),
        addrtype=_text(addrtype),
        address=_text(address),
        line=index,
    )


def _parse_address(
    nettype: bytes, addrtype: bytes, token: bytes, what: str
) -> tuple[str, str, str, int | None, int | None]:
    if nettype != b"IN":
        raise SDPError(f"{what}: network type {nettype!r} is not IN")
    if addrtype not in (b"IP4", b"IP6"):
        raise SDPError(f"{what}: address type {addrtype!r} is not IP4 or IP6")
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise SDPError(f"{what}: address {token!r} is not ASCII") from None
    ttl: int | None = None
    count: int | None = None
    if "/" not in text:  # unicast, the usual case: nothing more to split
        address = text
    else:
        address, *suffix = text.split("/")
        if len(suffix) > (2 if addrtype == b"IP4" else 1) or not all(
            _SMALL_INT.fullmatch(s) for s in suffix
        ):
            raise SDPError(f"{what}: bad multicast suffix in {text!r}")
        numbers = [int(s) for s in suffix]
        if addrtype == b"IP4":
            ttl = numbers[0]
            count = numbers[1] if len(numbers) > 1 else None
        else:
            count = numbers[0]
    version = 4 if addrtype == b"IP4" else 6
    found = _ip_version(address)
    if found is None:
        if not _FQDN.fullmatch(address):
            raise SDPError(f"{what}: {address!r} is not an IP{version} address or a domain name")
    elif found != version:
        raise SDPError(f"{what}: {address!r} is not an IP{version} address")
    return "IN", addrtype.decode(), address, ttl, count


def _parse_connection(value: bytes, index: int) -> Connection:
    tokens = _TOKEN.findall(value)
    if len(tokens) != 3:
        raise SDPError(f"c= line {value!r} needs <nettype> <addrtype> <address>")
    nettype, addrtype, address, ttl, count = _parse_address(
        tokens[0], tokens[1], tokens[2], "c= line"
    )
    return Connection(nettype, addrtype, address, ttl, count, index)


def _parse_rtcp(value: bytes, index: int) -> Rtcp:
    tokens = _TOKEN.findall(value)
    if len(tokens) not in (1, 4):
        raise SDPError(f"a=rtcp:{value!r} needs <port> [<nettype> <addrtype> <address>]")
    port, count = _parse_port(tokens[0], "a=rtcp")
    if count is not None:
        raise SDPError(f"a=rtcp:{value!r} cannot have a port count")
    if len(tokens) == 1:
        return Rtcp(port, None, None, None, index)
    nettype, addrtype, address, _, _ = _parse_address(tokens[1], tokens[2], tokens[3], "a=rtcp")
    return Rtcp(port, nettype, addrtype, address, index)


def _ip_version(text: str) -> int | None:
    """4 or 6 for an IP literal (what ``_ip`` accepts), else None."""
    if ":" not in text:
        return 4 if _IPV4.fullmatch(text) else None
    ip = _ip(text)
    return None if ip is None else ip.version


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_private(address: str) -> bool:
    ip = _ip(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in PRIVATE_NETWORKS)


# -- rewriting helpers ------------------------------------------------------


def _check_endpoint(address: str, port: int) -> tuple[str, int]:
    ip = _ip(address)
    if ip is None:
        raise ValueError(f"relay address {address!r} is not an IP address")
    if not 0 <= port <= 65535:
        raise ValueError(f"relay port {port} out of range")
    return str(ip), port


def _addrtype(address: str) -> bytes:
    return b"IP6" if ":" in address else b"IP4"


def _session_address(sd: SessionDescription, targets: list[tuple[str, int]]) -> str | None:
    if not targets:
        return None
    inheriting = [i for i, section in enumerate(sd.media) if not section.connections]
    live = [i for i in inheriting if sd.media[i].port]
    chosen = live or inheriting or [0]
    return targets[chosen[0]][0]


def _connection_slot(sd: SessionDescription, section: MediaSection) -> int:
    # RFC 8866 orders a media description m=, i=, c=: a new c= goes after any i=.
    slot = section.start + 1
    while slot < section.end and sd.lines[slot].startswith(b"i="):
        slot += 1
    return slot


def _connection_line(address: str) -> bytes:
    return b"c=IN " + _addrtype(address) + b" " + address.encode()


def _splice(line: bytes, edits: list[tuple[re.Match[bytes], bytes]]) -> bytes:
    """Replace the matched tokens of ``line`` and keep every other byte."""
    out = []
    position = 0
    for match, replacement in sorted(edits, key=lambda edit: edit[0].start()):
        out.append(line[position : match.start()])
        out.append(replacement)
        position = match.end()
    out.append(line[position:])
    return b"".join(out)


def _rewrite_connection(line: bytes, address: str) -> bytes:
    tokens = list(_TOKEN.finditer(line, 2))
    return _splice(line, [(tokens[1], _addrtype(address)), (tokens[2], address.encode())])


def _with_additions(
    lines: list[bytes], endings: list[bytes], additions: list[tuple[int, bytes]], newline: bytes
) -> tuple[list[bytes], list[bytes]]:
    """``lines`` with each (slot, line) of ``additions`` (slots ascending)
    put before line ``slot``: one pass, where an insert per addition moved
    the rest of the list each time (thousands of m= sections)."""
    out_lines: list[bytes] = []
    out_endings: list[bytes] = []
    position = 0
    for slot, new_line in additions:
        out_lines += lines[position:slot]
        out_endings += endings[position:slot]
        out_lines.append(new_line)
        if slot == len(lines) and endings[-1] not in (b"\r\n", b"\n"):
            # The body ended without a line ending: the old last line needs
            # one now, and the new last line carries the missing one on.
            out_endings[-1] = newline
            out_endings.append(endings[-1])
        else:
            out_endings.append(newline)
        position = slot
    out_lines += lines[position:]
    out_endings += endings[position:]
    return out_lines, out_endings


def _rewrite_media_port(line: bytes, port: int) -> bytes:
    tokens = _TOKEN.finditer(line, 2)
    next(tokens)  # the media; the port is next (an m= line may list thousands of formats)
    token = next(tokens)
    _, slash, count = token[0].partition(b"/")
    return _splice(line, [(token, str(port).encode() + slash + count)])


def _rewrite_rtcp(line: bytes, port: int, address: str | None) -> bytes:
    tokens = list(_TOKEN.finditer(line, len(b"a=rtcp:")))
    edits = [(tokens[0], str(port).encode())]
    if address is not None and len(tokens) == 4:
        edits += [(tokens[2], _addrtype(address)), (tokens[3], address.encode())]
    return _splice(line, edits)


def _bump_version(line: bytes, version: int) -> bytes:
    start, end = _last_tokens(line, 4, 2)[0]
    return line[:start] + str(version + 1).encode() + line[end:]
