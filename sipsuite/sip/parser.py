"""Bytes -> Request/Response: datagram and stream framing plus validation.

One pass over the header lines builds the raw entry list and collects the
headers the RFC makes mandatory or single-valued; only those are parsed
here (their typed values go straight into the message's cache, so the
properties the proxy reads next cost nothing).  Everything else stays raw.

Anything wrong raises (datagrams) or yields (streams) ParseError, never
another exception, whatever the input.
"""

from __future__ import annotations

import re

from sipsuite.sip.headers import _NAME_CACHE, TOKEN_CHARS, Via, canonical_name, split_values
from sipsuite.sip.message import (
    Entry,
    KeepAlive,
    ParseError,
    Request,
    Response,
    parse_addr,
    parse_addr_list,
    parse_call_id,
    parse_contacts,
    parse_cseq,
    parse_max_forwards,
    parse_vias,
)
from sipsuite.sip.uri import URI

__all__ = ["StreamParser", "parse_datagram"]

_FOLD = re.compile(r"[ \t]*\r\n[ \t]+")

_SINGLE = frozenset((
    "from", "to", "call-id", "cseq", "max-forwards", "content-length",
    "content-type", "expires",
))
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_TRACKED = _SINGLE | {"via", "contact", "route", "record-route"}
_PRETTY = {
    "via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq",
    "max-forwards": "Max-Forwards", "content-length": "Content-Length",
    "content-type": "Content-Type", "expires": "Expires", "contact": "Contact",
    "route": "Route", "record-route": "Record-Route",
}
_SIP_SCHEMES = ("sip", "sips")


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
    if method.strip(TOKEN_CHARS):
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


def _status_line(start: str) -> Response:
    parts = start.split(" ", 2)
    if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
        raise ParseError(0, "malformed Status-Line")
    code = parts[1]
    if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
        raise ParseError(0, "bad status code")
    resp = Response.__new__(Response)
    resp.status = int(code)
    # A missing SP before an empty reason is tolerated.
    resp.reason = parts[2] if len(parts) == 3 else ""
    resp.version = "SIP/2.0"
    resp.body = b""
    return resp


def _unfold(lines: list[str], status: int) -> list[str]:
    merged: list[str] = []
    for line in lines:
        if line and line[0] in " \t":
            if not merged:
                raise ParseError(status, "Bad Request - continuation of nothing")
            merged[-1] = f"{merged[-1]}\r\n{line}"
        else:
            merged.append(line)
    return merged


def _parse_content_length(value: str, status: int) -> int:
    if not value.isdigit() or not value.isascii() or len(value.lstrip("0")) > 9:
        raise ParseError(status, "Bad Request - malformed Content-Length")
    return int(value)


def parse_head(head: str) -> tuple[Request | Response, int | None]:
    """Start line + header lines (no final blank line) -> (message, Content-Length)."""
    is_response = head[:4].upper() == "SIP/"
    status = 0 if is_response else 400
    crlf = head.count("\r\n")
    if head.count("\r") != crlf or head.count("\n") != crlf:
        raise ParseError(status, "Bad Request - bare CR or LF")
    lines = head.split("\r\n")
    msg: Request | Response = _status_line(lines[0]) if is_response else _request_line(lines[0])
    folded = "\r\n " in head or "\r\n\t" in head
    if folded:
        lines = _unfold(lines[1:], status)
    else:
        del lines[0]

    entries: list[Entry] = []
    append = entries.append
    name_cache_get = _NAME_CACHE.get
    tracked: dict[str, list[str]] = {}
    for raw in lines:
        colon = raw.find(":")
        if colon <= 0:
            raise ParseError(status, "Bad Request - malformed header line")
        name = raw[:colon]
        key = name_cache_get(name)
        if key is None:
            try:
                key = canonical_name(name)
            except ValueError:
                raise ParseError(status, "Bad Request - malformed header name") from None
        if folded and "\r\n" in raw:
            value = _FOLD.sub(" ", raw[colon + 1 :]).strip(" \t")
        else:
            value = raw[colon + 1 :].strip(" \t")
        append((key, raw, value))
        if key in _TRACKED:
            seen = tracked.get(key)
            if seen is None:
                tracked[key] = [value]
            else:
                seen.append(value)
    msg._headers = entries
    cache: dict[str, object] = {}
    msg._cache = cache

    for key, values in tracked.items():
        if len(values) > 1 and key in _SINGLE:
            raise ParseError(status, f"Bad Request - duplicate {_PRETTY[key]}")
    for key in _REQUIRED:
        if key not in tracked:
            raise ParseError(status, f"Bad Request - missing {_PRETTY[key]}")

    key = "via"
    try:
        cache["via"] = parse_vias(tracked["via"])
        key = "from"
        cache["from"] = parse_addr(tracked["from"])
        key = "to"
        cache["to"] = parse_addr(tracked["to"])
        key = "call-id"
        cache["call-id"] = parse_call_id(tracked["call-id"])
        key = "cseq"
        cseq = cache["cseq"] = parse_cseq(tracked["cseq"])
        if not is_response:
            key = "max-forwards"
            mf = tracked.get("max-forwards")
            cache["max-forwards"] = None if mf is None else parse_max_forwards(mf[0])
            for key in ("contact", "route", "record-route"):
                values = tracked.get(key)
                if values is None:
                    cache[key] = ([], False) if key == "contact" else []
                elif key == "contact":
                    cache[key] = parse_contacts(values)
                else:
                    cache[key] = parse_addr_list(values)
    except ValueError:
        raise ParseError(status, f"Bad Request - malformed {_PRETTY[key]}") from None

    if not is_response and cseq.method != msg.method:  # type: ignore[union-attr]
        raise ParseError(400, "Bad Request - CSeq method does not match")
    cl = tracked.get("content-length")
    return msg, None if cl is None else _parse_content_length(cl[0], status)


def _recover(err: ParseError, head: str) -> None:
    """Salvage Via/From/To/Call-ID/CSeq lines so the caller can answer."""
    if not err.status or head.startswith("ACK "):
        # An ACK is never answered (RFC 3261 17.1.1.3): no lines, no response.
        return
    lines: list[str] = []
    for line in head.split("\r\n")[1:]:
        if line[:1] in (" ", "\t"):
            if lines:
                lines[-1] = f"{lines[-1]}\r\n{line}"
        else:
            lines.append(line)
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
        value = _FOLD.sub(" ", value).strip(" \t")
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


def parse_datagram(data: bytes) -> Request | Response:
    """Parse one UDP datagram (RFC 3261 18.3); raises ParseError."""
    n = len(data)
    i = 0
    while data.startswith(b"\r\n", i):
        i += 2
    if i >= n:
        raise ParseError(0, "empty datagram")
    status = 0 if data[i : i + 4].upper() == b"SIP/" else 400
    end = data.find(b"\r\n\r\n", i)
    if end >= 0:
        body_start = end + 4
    elif data.endswith(b"\r\n"):
        # The datagram ends the header section (RFC 4475 baddn lacks the
        # blank line); the message is then judged on its content.
        end = body_start = n - 2
    else:
        head = data[i:].decode("utf-8", "surrogateescape")
        err = ParseError(status, "Bad Request - truncated header section")
        _recover(err, head)
        raise err
    head = data[i:end].decode("utf-8", "surrogateescape")
    try:
        msg, length = parse_head(head)
        if length is None:
            msg.body = data[body_start:]
        elif length > n - body_start:
            raise ParseError(status, "Bad Request - Content-Length larger than message")
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

