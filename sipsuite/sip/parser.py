"""Bytes -> Request/Response: datagram and stream framing plus validation.

One pass over the header lines builds the raw entry list and notes the
first value of every name (and all values of a name on several lines); the
headers the RFC makes mandatory or single-valued and those the contract
validates are parsed here (their typed values go straight into the
message's cache, so the properties the proxy reads next cost nothing).
Everything else stays raw.

Speed: the typed parsers take a precompiled-regex fast path for the common
shape of a value and their general path for anything else, so verdicts are
the same either way (tests/sip/test_fast_paths.py); header names, status
codes, Content-Length and port texts are looked up in small dicts instead
of being validated and converted each time.

Anything wrong raises (datagrams) or yields (streams) ParseError, never
another exception, whatever the input.
"""

from __future__ import annotations

from sipsuite.sip.headers import TOKEN_CHARS, CSeq, NameAddr, Via, canonical_name, split_values
from sipsuite.sip.message import (
    _LENGTH_KEY,
    Entry,
    KeepAlive,
    ParseError,
    Request,
    Response,
    parse_addr_list,
    parse_contacts,
    parse_max_forwards,
    parse_vias,
)
from sipsuite.sip.uri import URI

__all__ = ["StreamParser", "parse_datagram"]


_SINGLE = frozenset((
    "from", "to", "call-id", "cseq", "max-forwards", "content-length",
    "content-type", "expires",
))
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_REQUIRED_SET = frozenset(_REQUIRED)
_PRETTY = {
    "via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
    "max-forwards": "Max-Forwards", "content-length": "Content-Length",
    "content-type": "Content-Type", "expires": "Expires", "contact": "Contact",
    "route": "Route", "record-route": "Record-Route",
}
_SIP_SCHEMES = ("sip", "sips")
# Methods known to be tokens: a set hit skips the character check.
_METHODS = frozenset((
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "INFO", "PUBLISH",
))


def _request_line(start: str) -> Request:
    parts = start.split(" ")
    # Exactly single SPs, nothing trailing (RFC 4475 lwsstart, trws).
    if len(parts) != 3 or "" in parts:
        raise ParseError(400, "Bad Request - malformed Request-Line")
    method, uri_text, version = parts
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if version[:4].upper() == "SIP/":
            raise ParseError(505, "Version Not Supported")
        raise ParseError(400, "Bad Request - malformed Request-Line")
    if method not in _METHODS and method.strip(TOKEN_CHARS):
        raise ParseError(400, "Bad Request - malformed method")
    try:
        uri = URI.parse(uri_text)
    except ValueError:
        raise ParseError(400, "Bad Request - malformed Request-URI") from None
    if uri.headers is not None and uri.scheme in _SIP_SCHEMES:
        # RFC 4475 escruri: headers are never allowed in a Request-URI.
        raise ParseError(400, "Bad Request - headers in Request-URI")
    req = Request.__new__(Request)
    req.method = method
    req.uri = uri
    req.version = "SIP/2.0"
    req.body = b""
    return req


# Every valid status code text (3 ASCII digits, 100..699) -> its number.
_STATUS_CODES = {str(n): n for n in range(100, 700)}


def _status_line(start: str) -> Response:
    parts = start.split(" ", 2)
    if len(parts) < 2 or (parts[0] != "SIP/2.0" and parts[0].upper() != "SIP/2.0"):
        raise ParseError(0, "malformed Status-Line")
    code = _STATUS_CODES.get(parts[1])
    if code is None:
        raise ParseError(0, "bad status code")
    resp = Response.__new__(Response)
    resp.status = code
    # A missing SP before an empty reason is tolerated.
    resp.reason = parts[2] if len(parts) == 3 else ""
    resp.version = "SIP/2.0"
    resp.body = b""
    return resp


def _unfold(lines: list[str], status: int | None) -> list[str]:
    """Header lines with each continuation line joined (by CRLF) to its header.

    ``status`` None: a continuation of nothing is dropped (salvage), else
    it is a ParseError.  Each header's lines are collected and joined once:
    appending to a growing string instead costs the square of the number
    of folds (issue 11).
    """
    merged: list[str] = []
    group: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if group:
                group.append(line)
            elif status is not None:
                raise ParseError(status, "Bad Request - continuation of nothing")
        else:
            if group:
                merged.append(group[0] if len(group) == 1 else "\r\n".join(group))
            group = [line]
    if group:
        merged.append(group[0] if len(group) == 1 else "\r\n".join(group))
    return merged


def _unfolded(value: str) -> str:
    """A folded value with every fold (LWS around each CRLF) made one SP.

    Every CRLF in ``value`` starts a continuation line, so splitting on it
    and stripping the blanks each side of every cut gives what replacing
    ``[ \\t]*\\r\\n[ \\t]+`` does; a regex doing that retries at every
    blank of a long run and costs the square of its length (issue 11).
    """
    pieces = value.split("\r\n")
    last = len(pieces) - 1
    if not last:
        return value
    return " ".join([
        piece.rstrip(" \t") if i == 0 else piece.lstrip(" \t") if i == last else piece.strip(" \t")
        for i, piece in enumerate(pieces)
    ])


# Content-Length texts seen -> value (int() of a str is costly, and a peer
# sends the same few lengths); bounded against endless novel values.
_LENGTHS: dict[str, int] = {}
_LENGTHS_MAX = 1024


def _parse_content_length(value: str, status: int) -> int:
    length = _LENGTHS.get(value)
    if length is not None:
        return length
    if not value.isdigit() or not value.isascii() or len(value.lstrip("0")) > 9:
        raise ParseError(status, "Bad Request - malformed Content-Length")
    length = int(value)
    if len(value) > 16:
        return length  # leading zeros: not cached, or 1024 of 60 KB each
    if len(_LENGTHS) >= _LENGTHS_MAX:
        _LENGTHS.clear()
    _LENGTHS[value] = length
    return length


# Header names as they stand before the colon of a line ('Via', 'TO ', 'v'),
# mapped to the canonical key: one dict hit per line replaces validation
# and lowercasing.  Separate from headers._NAME_CACHE, which also holds
# names given with leading whitespace: only the parser fills this one, and
# never with such a name, so a continuation line (folding) can never hit.
# Bounded like headers._NAME_CACHE.
_LINE_NAMES: dict[str, str] = {}
_LINE_NAMES_MAX = 4096


def _line_name(raw: str, status: int) -> str:
    """Canonical key of a header line's name (cache miss); ParseError if bad."""
    colon = raw.find(":")
    if colon <= 0:
        raise ParseError(status, "Bad Request - malformed header line")
    try:
        key = canonical_name(raw[:colon])
    except ValueError:
        raise ParseError(status, "Bad Request - malformed header name") from None
    if colon > 64:
        return key  # not cached: 4096 names of 60 KB each would be 250 MB
    if len(_LINE_NAMES) >= _LINE_NAMES_MAX:
        _LINE_NAMES.clear()
    _LINE_NAMES[raw[:colon]] = key
    return key


# What the two line splitters return: the entries; the first value of every
# header name; the values of each name that has more than one line (None if
# there is none, the usual case apart from Via).
_Split = tuple[list[Entry], dict[str, str], dict[str, list[str]] | None]


def _entries_folded(lines: list[str], status: int) -> _Split:
    """Header lines of a head with folded lines (rare): unfold, then split."""
    entries: list[Entry] = []
    first: dict[str, str] = {}
    more: dict[str, list[str]] = {}
    for raw in _unfold(lines, status):
        colon = raw.find(":")
        key = _line_name(raw, status)
        value = raw[colon + 1 :]
        if "\r\n" in value:
            value = _unfolded(value)
        value = value.strip(" \t")
        entries.append((key, raw, value))
        if key not in first:
            first[key] = value
        elif key in more:
            more[key].append(value)
        else:
            more[key] = [first[key], value]
    return entries, first, more or None


def _entries_plain(lines: list[str], status: int, head: str) -> _Split | None:
    """Header lines of a head without folding: the hot loop, one pass.

    None when the head turns out to be folded after all (the caller then
    takes _entries_folded); that is only looked for on a name-cache miss,
    since a continuation line never hits the cache.
    """
    entries: list[Entry] = []
    append = entries.append
    names_get = _LINE_NAMES.get
    first: dict[str, str] = {}
    more: dict[str, list[str]] | None = None
    # Looked for once: a scan of the head per novel name would make a head
    # of thousands of novel names cost the square of its size (issue 11).
    unfolded_checked = False
    for raw in lines:
        name, colon, value = raw.partition(":")
        key = names_get(name)
        if key is None or not colon:
            if not unfolded_checked:
                if "\r\n " in head or "\r\n\t" in head:
                    return None
                unfolded_checked = True
            key = _line_name(raw, status)
        value = value.strip(" \t")
        append((key, raw, value))
        # Every name, not only the validated ones: that saves a set test per
        # line, and names repeat rarely (Via aside).
        if key not in first:
            first[key] = value
        elif more is None:
            more = {key: [first[key], value]}
        elif key in more:
            more[key].append(value)
        else:
            more[key] = [first[key], value]
    return entries, first, more


def _addr_list(first: dict[str, str], more: dict[str, list[str]] | None, key: str) -> list[NameAddr]:
    """Route / Record-Route values (the header is present), validated."""
    return parse_addr_list(more[key] if more is not None and key in more else [first[key]])


def parse_head(head: str) -> tuple[Request | Response, int | None]:
    """Start line + header lines (no final blank line) -> (message, Content-Length)."""
    is_response = head[:4].upper() == "SIP/"
    status = 0 if is_response else 400
    lines = head.split("\r\n")
    # A CR or LF left over once the head is split on CRLF is a bare one.
    # (Joining and two memchr scans beat counting CR, LF and CRLF.)
    rest = "".join(lines)
    if "\r" in rest or "\n" in rest:
        raise ParseError(status, "Bad Request - bare CR or LF")
    msg: Request | Response = _status_line(lines[0]) if is_response else _request_line(lines[0])
    del lines[0]

    split = _entries_plain(lines, status, head)
    entries, first, more = _entries_folded(lines, status) if split is None else split
    msg._headers = entries
    cache: dict[str, object] = {}
    msg._cache = cache

    if more is not None and not _SINGLE.isdisjoint(more):
        for key in first:  # in order of appearance: which error is reported
            if key in more and key in _SINGLE:
                raise ParseError(status, f"Bad Request - duplicate {_PRETTY[key]}")
    if not first.keys() >= _REQUIRED_SET:
        for key in _REQUIRED:
            if key not in first:
                raise ParseError(status, f"Bad Request - missing {_PRETTY[key]}")

    # The mandatory and validated headers, in a fixed order (which error a
    # message with several bad headers gets).  Single values, the usual
    # case, go straight to the type's parser; lists take the general helper.
    key = "via"
    try:
        value = first["via"]
        if more is not None and "via" in more:
            cache["via"] = parse_vias(more["via"])
        elif value and "," not in value:
            cache["via"] = [Via.parse(value)]
        else:
            cache["via"] = parse_vias([value])
        key = "from"
        cache["from"] = NameAddr.parse(first["from"])
        key = "to"
        cache["to"] = NameAddr.parse(first["to"])
        key = "call-id"
        value = first["call-id"]
        if not value:
            raise ValueError("empty Call-ID")
        cache["call-id"] = value
        key = "cseq"
        cseq = cache["cseq"] = CSeq.parse(first["cseq"])
        if not is_response:
            key = "max-forwards"
            present = first.get("max-forwards")
            cache["max-forwards"] = None if present is None else parse_max_forwards(present)
            key = "contact"
            present = first.get("contact")
            if present is None:
                cache["contact"] = ([], False)
            elif more is not None and "contact" in more:
                cache["contact"] = parse_contacts(more["contact"])
            elif present and present != "*" and "," not in present:
                cache["contact"] = ([NameAddr.parse(present)], False)
            else:
                cache["contact"] = parse_contacts([present])
            key = "route"
            cache["route"] = _addr_list(first, more, "route") if "route" in first else []
            key = "record-route"
            cache["record-route"] = (
                _addr_list(first, more, "record-route") if "record-route" in first else [])
        else:
            # Not validated in responses (parsed on first read), but what is
            # absent is known now and saves a scan of the lines later.
            if "max-forwards" not in first:
                cache["max-forwards"] = None
            if "contact" not in first:
                cache["contact"] = ([], False)
            if "route" not in first:
                cache["route"] = []
            if "record-route" not in first:
                cache["record-route"] = []
    except ValueError:
        raise ParseError(status, f"Bad Request - malformed {_PRETTY[key]}") from None

    if not is_response and cseq.method != msg.method:  # type: ignore[union-attr]
        raise ParseError(400, "Bad Request - CSeq method does not match")
    cl = first.get("content-length")
    if cl is None:
        return msg, None
    # Exactly one such line (a second is an error above): to_bytes may send
    # the lines as they are while the body keeps this length.
    cache[_LENGTH_KEY] = cl
    return msg, _parse_content_length(cl, status)


def _recover(err: ParseError, head: str) -> None:
    """Salvage Via/From/To/Call-ID/CSeq lines so the caller can answer."""
    if not err.status or head.startswith("ACK "):
        # An ACK is never answered (RFC 3261 17.1.1.3): no lines, no response.
        return
    lines = _unfold(head.split("\r\n")[1:], None)
    vias: list[Entry] = []
    others: dict[str, Entry] = {}
    for raw in lines:
        # A stray CR/LF copied into our answer would inject header lines.
        if "\r" in raw.replace("\r\n ", "").replace("\r\n\t", "") or "\n" in raw.replace("\r\n", ""):
            continue
        name, colon, value = raw.partition(":")
        if not colon:
            continue
        try:
            key = canonical_name(name)
        except ValueError:
            continue
        value = (_unfolded(value) if "\r\n" in value else value).strip(" \t")
        if key == "via":
            vias.append((key, raw, value))
        elif key in ("from", "to", "call-id", "cseq") and key not in others:
            others[key] = (key, raw, value)
    err.recovered = vias + [others[k] for k in ("from", "to", "call-id", "cseq") if k in others]
    if vias:
        try:
            top = split_values(vias[0][2])[0]
        except ValueError:
            top = vias[0][2]
        err.source_via = _lenient_via(top)


def _lenient_via(text: str) -> Via | None:
    try:
        return Via.parse(text)
    except ValueError:
        pass
    # Empty parameters (';;') are the usual damage; drop them and retry.
    cleaned = ";".join(p for p in text.split(";") if p.strip())
    try:
        return Via.parse(cleaned)
    except ValueError:
        return None


def _status_for(data: bytes, start: int) -> int:
    """The ParseError status for a message starting at ``start``: 0 (drop) for
    a response, 400 for anything else."""
    return 0 if data[start : start + 4].upper() == b"SIP/" else 400


def parse_datagram(data: bytes) -> Request | Response:
    """Parse one UDP datagram (RFC 3261 18.3); raises ParseError."""
    n = len(data)
    i = 0
    while data.startswith(b"\r\n", i):
        i += 2
    if i >= n:
        raise ParseError(0, "empty datagram")
    end = data.find(b"\r\n\r\n", i)
    if end >= 0:
        body_start = end + 4
    elif data.endswith(b"\r\n"):
        # The datagram ends the header section (RFC 4475 baddn lacks the
        # blank line); the message is then judged on its content.
        end = body_start = n - 2
    else:
        head = data[i:].decode("utf-8", "surrogateescape")
        err = ParseError(_status_for(data, i), "Bad Request - truncated header section")
        _recover(err, head)
        raise err
    head = data[i:end].decode("utf-8", "surrogateescape")
    try:
        msg, length = parse_head(head)
        if length is None:
            msg.body = data[body_start:]
        elif length > n - body_start:
            raise ParseError(_status_for(data, i), "Bad Request - Content-Length larger than message")
        else:
            # Octets after Content-Length are ignored (RFC 4475 dblreq).
            msg.body = data[body_start : body_start + length]
    except ParseError as err:
        _recover(err, head)
        raise
    return msg


class StreamParser:
    """Frames messages out of a TCP/TLS byte stream (RFC 3261 18.3).

    After a ParseError is returned the stream has lost framing; later feeds
    return nothing and the transport is expected to close the connection.
    """

    __slots__ = ("max_message", "_buf", "_pending", "_scan", "_dead")

    def __init__(self, max_message: int = 65536) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._pending: tuple[Request | Response, int] | None = None
        self._scan = 0
        self._dead = False

    def feed(self, data: bytes) -> list[Request | Response | ParseError | KeepAlive]:
        if self._dead:
            return []
        buf = self._buf
        buf += data
        out: list[Request | Response | ParseError | KeepAlive] = []
        length: int | None  # a pending body's (int), or a new head's (maybe None)
        while True:
            pending = self._pending
            if pending is not None:
                msg, length = pending
                if len(buf) < length:
                    break
                msg.body = bytes(buf[:length])
                del buf[:length]
                self._pending = None
                out.append(msg)
                continue
            if buf[:2] == b"\r\n":
                if buf[:4] == b"\r\n\r\n":
                    out.append(KeepAlive())
                    del buf[:4]
                    continue
                if len(buf) < 4 and b"\r\n\r\n".startswith(buf):
                    break  # may still become a CRLFCRLF ping
                del buf[:2]  # a lone CRLF (a pong, or padding) is ignored
                continue
            if not buf:
                break
            end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
            if end < 0:
                self._scan = len(buf)
                if len(buf) > self.max_message:
                    status = 0 if buf[:4].upper() == b"SIP/" else 513
                    self._fail(out, ParseError(status, "Message Too Large"), buf)
                break
            self._scan = 0
            head = buf[:end].decode("utf-8", "surrogateescape")
            del buf[: end + 4]
            is_response = head[:4].upper() == "SIP/"
            try:
                if end + 4 > self.max_message:
                    raise ParseError(0 if is_response else 513, "Message Too Large")
                msg, length = parse_head(head)
                if length is None:
                    raise ParseError(0 if is_response else 400, "Bad Request - missing Content-Length")
                if end + 4 + length > self.max_message:
                    raise ParseError(0 if is_response else 413, "Request Entity Too Large")
            except ParseError as err:
                _recover(err, head)
                self._fail(out, err, buf)
                break
            self._pending = (msg, length)
        return out

    def _fail(self, out: list[Request | Response | ParseError | KeepAlive],
              err: ParseError, buf: bytearray) -> None:
        out.append(err)
        self._dead = True
        buf.clear()

