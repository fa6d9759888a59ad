"""SIP requests and responses (RFC 3261 7), sans-IO.

A message keeps every header line as the raw text it arrived with, so lines
nobody touches go back on the wire byte for byte (folding, compact names,
odd spacing included); typed views (``vias``, ``cseq``, ``from_`` ...) are
parsed on first use and cached until a mutation touches that header.

Header text is ``str`` decoded as UTF-8 with 'surrogateescape', which
round-trips every octet; bodies stay ``bytes``.

The parser (``parse_datagram``, ``StreamParser``) is :mod:`sipsuite.sip.parser`,
which builds these classes; this module does not import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from sipsuite.sip.headers import (
    MULTI_VALUE,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    split_values,
)
from sipsuite.sip.uri import URI

__all__ = [
    "REASONS", "KeepAlive", "Message", "ParseError", "Request", "Response",
    "make_response",
]

REASONS: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}

_MISSING: Any = object()


class KeepAlive:
    """A CRLFCRLF ping on a stream (RFC 5626 3.5.1); answer with one CRLF."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeepAlive)

    def __hash__(self) -> int:
        return hash(KeepAlive)

    def __repr__(self) -> str:
        return "KeepAlive()"


class ParseError(Exception):
    """A message that cannot be accepted.

    ``status`` is the response to send (400, 505, 413, 513) or 0 when the
    input was a response or not a message at all: those are dropped silently.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.source_via: Via | None = None
        # Raw header lines (Via..., From, To, Call-ID, CSeq) salvaged from the
        # bad request, for response_bytes; filled in by the parser.
        self.recovered: list[tuple[str, str, str]] = []

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

    def response_bytes(self) -> bytes | None:
        """A ready response to the bad request, or None when none can be built."""
        if not self.status or not any(e[0] == "via" for e in self.recovered):
            return None
        lines = [f"SIP/2.0 {self.status} {self.reason}"]
        digest = hashlib.sha1()
        for entry in self.recovered:
            digest.update(entry[2].encode("utf-8", "surrogateescape"))
        for key, raw, value in self.recovered:
            if key == "to":
                # RFC 3261 8.2.6.2: a final response carries a To tag.  It is
                # derived from the request so a retransmission gets the same.
                try:
                    has_tag = NameAddr.parse(value).tag is not None
                except ValueError:
                    has_tag = True
                if not has_tag:
                    raw = f"{raw.partition(':')[0].strip()}: {value};tag={digest.hexdigest()[:16]}"
            lines.append(raw)
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


Entry = tuple[str, str, str]  # (canonical name, raw line(s) as received, unfolded value)
_CRLF = "\r\n"
# Key in Message._cache under which the parser notes the value (str) of the
# one Content-Length line it saw, so that to_bytes can skip looking for it.
# Being the header's key, any change of that header drops the note the way
# it drops a typed view; a copy keeps it (same lines).
_LENGTH_KEY = "content-length"


def _entry(name: str, value: str) -> Entry:
    name = name.strip()
    if "\r" in value or "\n" in value:
        raise ValueError(f"line break in value of {name}")
    return (canonical_name(name), f"{name}: {value}", value)


def _written_name(raw: str) -> str:
    return raw[: raw.index(":")].strip()


def _line_values(entries: list[Entry], key: str) -> list[str]:
    return [value for k, _raw, value in entries if k == key]


def _split_all(values: list[str], key: str) -> list[str]:
    """Every comma-separated value of the given lines; an empty one is an error."""
    out: list[str] = []
    for value in values:
        if "," not in value:
            # Line values arrive stripped; most lines hold a single value.
            if not value:
                raise ValueError(f"empty {key}")
            out.append(value)
            continue
        for v in split_values(value):
            if not v:
                raise ValueError(f"empty element in {key}")
            out.append(v)
    return out


# Typed views that are a list with one element per comma value (no empty
# value allowed): pop_first_value can keep their tail.
_LIST_TYPED = frozenset({"via", "route", "record-route"})


def _split_lenient(value: str) -> list[str]:
    # For headers nobody validated: an unbalanced quote must not make a plain
    # read fail, so the whole value then counts as one element.
    try:
        return split_values(value)
    except ValueError:
        return [value]


def _first(entries: list[Entry], key: str) -> str | None:
    for k, _raw, value in entries:
        if k == key:
            return value
    return None


# Parsers for the typed views.  Each takes the values of the header's lines
# (the parser hands them over while validating, the properties collect them)
# and returns what is cached under the header's key.

def parse_vias(values: list[str]) -> list[Via]:
    # One value per line, the usual way with several Vias, needs no split.
    items = values if all(values) and "," not in "".join(values) else _split_all(values, "via")
    if not items:
        return []
    # Below the top Via, params are built on first read (see Via.parse).
    vias = [Via.parse(items[0])]
    vias += [Via.parse(v, lazy_params=True) for v in items[1:]]
    return vias


def parse_addr(values: list[str]) -> NameAddr:
    if not values:
        raise ValueError("address header missing")
    return NameAddr.parse(values[0])


def parse_addr_list(values: list[str]) -> list[NameAddr]:
    if len(values) == 1:
        value = values[0]
        if value and "," not in value:  # one line, one value: the usual case
            return [NameAddr.parse(value)]
    return [NameAddr.parse(v) for v in _split_all(values, "address list")]


def parse_contacts(values: list[str]) -> tuple[list[NameAddr], bool]:
    items = _split_all(values, "contact")
    if "*" in items:
        if len(items) != 1:
            raise ValueError("Contact '*' mixed with addresses")
        return [], True
    return [NameAddr.parse(v) for v in items], False


def parse_cseq(values: list[str]) -> CSeq:
    if not values:
        raise ValueError("no CSeq header")
    return CSeq.parse(values[0])


def parse_call_id(values: list[str]) -> str:
    if not values or not values[0]:
        raise ValueError("no Call-ID header")
    return values[0]


# Max-Forwards as it is usually written (no leading zeros) -> its value:
# one dict hit instead of the checks and int() below.
_MAX_FORWARDS = {str(n): n for n in range(256)}


def parse_max_forwards(value: str) -> int:
    number = _MAX_FORWARDS.get(value)
    if number is not None:
        return number
    if not value.isdigit() or not value.isascii() or len(value.lstrip("0")) > 3:
        raise ValueError(f"bad Max-Forwards {value!r}")
    number = int(value)
    if number > 255:
        raise ValueError(f"Max-Forwards over 255: {value}")
    return number


def _p_max_forwards(values: list[str]) -> int | None:
    return parse_max_forwards(values[0]) if values else None


_TYPED: dict[str, Callable[[list[str]], Any]] = {
    "via": parse_vias,
    "from": parse_addr,
    "to": parse_addr,
    "cseq": parse_cseq,
    "call-id": parse_call_id,
    "max-forwards": _p_max_forwards,
    "route": parse_addr_list,
    "record-route": parse_addr_list,
    "contact": parse_contacts,
}


class Message:
    """Base of Request and Response.

    Typed values (``top_via``, ``to``, ``routes`` ...) are parsed snapshots:
    editing one changes nothing on the wire.  Change a header through
    ``set_header`` / ``add_header`` / ``pop_first_value`` (e.g. copy the top
    Via, add ``received``, pop the old value, add the new one on top).
    """

    __slots__ = ("_headers", "_cache", "body", "version")

    _headers: list[Entry]
    _cache: dict[str, Any]
    body: bytes
    version: str

    def _init_headers(self, headers: Iterable[tuple[str, str]], body: bytes, version: str) -> None:
        self._headers = [_entry(name, value) for name, value in headers]
        self._cache = {}
        self.body = body
        self.version = version

    # --- typed views -------------------------------------------------------

    def _typed(self, key: str) -> Any:
        # The parser fills the cache for what it validated; the properties
        # below try it first (a hit costs one dict lookup) and come here
        # for the rest.
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = self._cache[key] = _TYPED[key](_line_values(self._headers, key))
        return value

    @property
    def vias(self) -> list[Via]:
        try:
            return self._cache["via"]
        except KeyError:
            return self._typed("via")

    @property
    def top_via(self) -> Via:
        try:
            vias = self._cache["via"]
        except KeyError:
            vias = self._typed("via")
        if not vias:
            raise ValueError("no Via header")
        return vias[0]

    @property
    def cseq(self) -> CSeq:
        try:
            return self._cache["cseq"]
        except KeyError:
            return self._typed("cseq")

    @property
    def call_id(self) -> str:
        try:
            return self._cache["call-id"]
        except KeyError:
            return self._typed("call-id")

    @property
    def from_(self) -> NameAddr:
        try:
            return self._cache["from"]
        except KeyError:
            return self._typed("from")

    @property
    def to(self) -> NameAddr:
        try:
            return self._cache["to"]
        except KeyError:
            return self._typed("to")

    @property
    def from_tag(self) -> str | None:
        try:
            addr = self._cache["from"]
        except KeyError:
            if _first(self._headers, "from") is None:
                return None
            addr = self._typed("from")
        return addr.params.get("tag")

    @property
    def to_tag(self) -> str | None:
        try:
            addr = self._cache["to"]
        except KeyError:
            if _first(self._headers, "to") is None:
                return None
            addr = self._typed("to")
        return addr.params.get("tag")

    @property
    def max_forwards(self) -> int | None:
        try:
            return self._cache["max-forwards"]
        except KeyError:
            return self._typed("max-forwards")

    @property
    def routes(self) -> list[NameAddr]:
        try:
            return self._cache["route"]
        except KeyError:
            return self._typed("route")

    @property
    def record_routes(self) -> list[NameAddr]:
        try:
            return self._cache["record-route"]
        except KeyError:
            return self._typed("record-route")

    @property
    def contacts(self) -> list[NameAddr]:
        return self._typed("contact")[0]

    @property
    def contact_star(self) -> bool:
        return self._typed("contact")[1]

    # --- raw header access ---------------------------------------------------

    def header(self, name: str) -> str | None:
        """Unfolded value of the first line named ``name`` (any spelling)."""
        return _first(self._headers, canonical_name(name))

    def header_all(self, name: str) -> list[str]:
        key = canonical_name(name)
        if key in MULTI_VALUE:
            return [v for k, _r, value in self._headers if k == key
                    for v in _split_lenient(value) if v]
        return [value for k, _r, value in self._headers if k == key]

    def has_header(self, name: str) -> bool:
        key = canonical_name(name)
        for entry in self._headers:  # a loop: any() over a generator costs more
            if entry[0] == key:
                return True
        return False

    def header_items(self) -> list[tuple[str, str]]:
        """``(name as written, unfolded value)`` for every line, in order."""
        return [(_written_name(raw), value) for _k, raw, value in self._headers]

    def add_header(self, name: str, value: str, top: bool = True) -> None:
        entry = _entry(name, value)
        key = entry[0]
        headers = self._headers
        if top:
            for i, e in enumerate(headers):
                if e[0] == key:
                    headers.insert(i, entry)
                    break
            else:
                headers.insert(0, entry)
        else:
            headers.append(entry)
        self._cache.pop(key, None)

    def set_header(self, name: str, value: str) -> None:
        entry = _entry(name, value)
        key = entry[0]
        out: list[Entry] = []
        placed = False
        for e in self._headers:
            if e[0] != key:
                out.append(e)
            elif not placed:
                out.append(entry)
                placed = True
        if not placed:
            out.append(entry)
        self._headers = out
        self._cache.pop(key, None)

    def remove_header(self, name: str) -> None:
        key = canonical_name(name)
        self._headers = [e for e in self._headers if e[0] != key]
        self._cache.pop(key, None)

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first comma-value of the first ``name`` line."""
        key = canonical_name(name)
        headers = self._headers
        for i, (k, raw, value) in enumerate(headers):
            if k != key:
                continue
            if "," not in value:
                # One value on the line, the usual case: no split to make.
                first = value
                del headers[i]
            else:
                values = _split_lenient(value)
                first = values[0]
                rest = [v for v in values[1:] if v]
                if rest:
                    joined = ", ".join(rest)
                    headers[i] = (key, f"{_written_name(raw)}: {joined}", joined)
                else:
                    del headers[i]
            typed = self._cache.pop(key, None)
            if typed and first and key in _LIST_TYPED:
                # The typed list holds one element per value, in order, so
                # dropping its head saves parsing the rest again (a proxy pops
                # its own Route and, on a response, the top Via).
                self._cache[key] = typed[1:]
            return first
        return None

    def set_top_via(self, via: Via, text: str | None = None) -> None:
        """Replace the top Via with ``via``, written as ``text`` (default
        ``str(via)``), keeping the parsed list: ``via`` becomes its head and
        the rest stays parsed (a proxy marks received/rport on every request
        it takes)."""
        _ = self.vias  # parsed before the pop, so the pop keeps the tail
        self.pop_first_value("via")
        rest = self._cache.get("via")
        self.add_header("Via", str(via) if text is None else text, top=True)
        if rest is not None:
            self._cache["via"] = [via, *rest]

    def set_to_tag(self, tag: str) -> None:
        headers = self._headers
        for i, (k, raw, value) in enumerate(headers):
            if k == "to":
                to = self.to
                if to.tag is None:
                    # Appending keeps the rest of the line as the peer wrote it;
                    # after a bare addr-spec ';tag' is a header param as well.
                    new_value = f"{value};tag={tag}"
                else:
                    to = to.copy()
                    to.params["tag"] = tag
                    new_value = str(to)
                headers[i] = ("to", f"{_written_name(raw)}: {new_value}", new_value)
                self._cache.pop("to", None)
                return
        raise ValueError("no To header")

    # --- serialisation -------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        body = self.body
        length = len(body)
        headers = self._headers
        if self._cache.get(_LENGTH_KEY) == str(length):
            # The parser vouched for exactly one Content-Length line and its
            # value, no change of that header dropped the note since, and
            # the body kept its length: every line goes out as it is.
            return f"{self.start_line()}\r\n{_CRLF.join([e[1] for e in headers])}\r\n\r\n".encode(
                "utf-8", "surrogateescape") + body
        # One Content-Length line, the usual case: the raw lines are joined
        # as they are (zip/count/join run in C), that line rewritten if it
        # does not match the body.
        keys, lines, values = zip(*headers, strict=True) if headers else ((), (), ())
        if keys.count("content-length") == 1:
            i = keys.index("content-length")
            value = values[i]
            if value != str(length) and not (value.isdigit() and int(value) == length):
                fixed = list(lines)
                fixed[i] = f"{_written_name(lines[i])}: {length}"
                lines = tuple(fixed)
        else:
            lines = tuple(self._lines_fixing_length(length))
        return f"{self.start_line()}\r\n{_CRLF.join(lines)}\r\n\r\n".encode(
            "utf-8", "surrogateescape") + body

    def _lines_fixing_length(self, length: int) -> list[str]:
        """Raw lines with exactly one, correct, Content-Length (none or several)."""
        lines: list[str] = []
        have_length = False
        for key, raw, value in self._headers:
            if key == "content-length":
                if have_length:
                    continue
                have_length = True
                if value != str(length) and not (value.isdigit() and int(value) == length):
                    raw = f"{_written_name(raw)}: {length}"
            lines.append(raw)
        if not have_length:
            lines.append(f"Content-Length: {length}")
        return lines

    __bytes__ = to_bytes

    def _copy_base(self, new: Message) -> None:
        new._headers = list(self._headers)
        # Cached views are mutable objects; a copy re-parses rather than shares.
        # The Content-Length note (a str) holds for the copied lines as well.
        length = self._cache.get(_LENGTH_KEY)
        new._cache = {} if length is None else {_LENGTH_KEY: length}
        new.body = self.body
        new.version = self.version

    def copy(self) -> Message:
        raise NotImplementedError


class Request(Message):
    """``Request(method, uri, [(name, value), ...], body)``; ``uri`` may be replaced."""

    __slots__ = ("method", "uri")

    method: str
    uri: URI

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.method = method
        self.uri = URI.parse(uri) if isinstance(uri, str) else uri
        self._init_headers(headers, body, version)

    def start_line(self) -> str:
        # str(uri) of an unmodified parsed URI is its original text, so the
        # line only changes when the URI did.
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> Request:
        new = Request.__new__(Request)
        self._copy_base(new)
        new.method = self.method
        new.uri = self.uri.copy()
        return new

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """``Response(status, reason=None, [(name, value), ...], body)``; reason from REASONS."""

    __slots__ = ("status", "reason")

    status: int
    reason: str

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.status = status
        self.reason = REASONS.get(status, "Unknown") if reason is None else reason
        self._init_headers(headers, body, version)

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        new = Response.__new__(Response)
        self._copy_base(new)
        new.status = self.status
        new.reason = self.reason
        return new

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --- builders ------------------------------------------------------------------

def make_response(
    req: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A response to ``req`` (RFC 3261 8.2.6): Via lines, From, To, Call-ID and
    CSeq copied as received, To tagged with ``to_tag`` unless it has a tag."""
    resp = Response.__new__(Response)
    resp.status = status
    resp.reason = REASONS.get(status, "Unknown") if reason is None else reason
    resp.version = "SIP/2.0"
    resp.body = b""
    resp._cache = {}
    out: list[Entry] = []
    vias = [e for e in req._headers if e[0] == "via"]
    out.extend(vias)
    for key in ("from", "to", "call-id", "cseq"):
        for e in req._headers:
            if e[0] == key:
                if key == "to" and to_tag is not None and req.to_tag is None:
                    value = f"{e[2]};tag={to_tag}"
                    e = ("to", f"{_written_name(e[1])}: {value}", value)
                out.append(e)
                break
    if status == 100:
        # RFC 3261 8.2.6.1: a 100 echoes the request's Timestamp.
        out.extend(e for e in req._headers if e[0] == "timestamp")
    out.extend(_entry(name, value) for name, value in headers)
    out.append(("content-length", "Content-Length: 0", "0"))
    resp._headers = out
    return resp
