"""Requests the proxy writes itself: CANCEL and ACK for a branch (RFC 3261
9.1, 17.1.1.3) and its own out-of-dialog requests (keep-alive and probe
OPTIONS), built straight from header entries, without a parse."""

from __future__ import annotations

from collections.abc import Iterable

from sipsuite.sip.headers import split_values
from sipsuite.sip.message import Entry, Message, Request, Response, _entry
from sipsuite.sip.uri import URI

__all__ = ["make_ack", "make_cancel", "make_request"]


def _new_request(method: str, uri: URI, entries: list[Entry]) -> Request:
    req = Request.__new__(Request)
    req.method = method
    req.uri = uri
    req.version = "SIP/2.0"
    req.body = b""
    req._cache = {}
    req._headers = entries
    return req


def _top_via_entry(req: Request) -> Entry:
    for key, raw, value in req._headers:
        if key == "via":
            values = split_values(value)
            if len(values) == 1:
                return (key, raw, value)
            return ("via", f"Via: {values[0]}", values[0])
    raise ValueError("request without Via")


def _copied(msg: Message, key: str) -> Entry:
    for e in msg._headers:
        if e[0] == key:
            return e
    raise ValueError(f"request without {key}")


def make_cancel(invite: Request) -> Request:
    """CANCEL for ``invite`` (RFC 3261 9.1)."""
    return _same_transaction(invite, "CANCEL", _copied(invite, "to"))


def make_ack(invite: Request, response: Response) -> Request:
    """ACK for a non-2xx final response to ``invite`` (RFC 3261 17.1.1.3)."""
    return _same_transaction(invite, "ACK", _copied(response, "to"))


def _same_transaction(invite: Request, method: str, to: Entry) -> Request:
    # CANCEL and ACK (for a non-2xx) share the INVITE's top Via, Route set,
    # From, Call-ID and CSeq number; only the To may differ (the answer's tag).
    entries = [_top_via_entry(invite)]
    entries.extend(e for e in invite._headers if e[0] == "route")
    entries += [_copied(invite, "from"), to, _copied(invite, "call-id")]
    number = invite.cseq.number
    entries += [
        ("cseq", f"CSeq: {number} {method}", f"{number} {method}"),
        ("max-forwards", "Max-Forwards: 70", "70"),
        ("content-length", "Content-Length: 0", "0"),
    ]
    return _new_request(method, invite.uri.copy(), entries)


def make_request(method: str, uri: URI, *, via: str, from_: str, to: str, call_id: str,
                 cseq: int = 1, headers: Iterable[tuple[str, str]] = ()) -> Request:
    """A request of the proxy's own, outside any dialog and without a body
    (a keep-alive or probe OPTIONS): Max-Forwards 70, ``headers`` before
    Content-Length."""
    entries = [
        _entry("Via", via),
        ("max-forwards", "Max-Forwards: 70", "70"),
        _entry("From", from_),
        _entry("To", to),
        _entry("Call-ID", call_id),
        ("cseq", f"CSeq: {cseq} {method}", f"{cseq} {method}"),
    ]
    entries += [_entry(name, value) for name, value in headers]
    entries.append(("content-length", "Content-Length: 0", "0"))
    return _new_request(method, uri, entries)
