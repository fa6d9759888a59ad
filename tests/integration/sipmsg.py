"""Raw SIP for the integration tests: ``SipMessage`` (a small independent parser),
Via and URI helpers, ``build_request`` / ``build_response`` / ``build_invite`` and
the ACK builders.

Nothing here imports sipsuite (see procs.py).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- SIP messages

COMPACT = {
    "v": "via", "i": "call-id", "f": "from", "t": "to", "m": "contact",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
    "e": "content-encoding", "o": "event", "u": "allow-events", "r": "refer-to",
}


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and <...>."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = angle = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle = True
        elif not quoted and ch == ">":
            angle = False
        elif ch == "," and not quoted and not angle:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


@dataclass
class SipMessage:
    """A SIP message as the tests see it: start line, (name, value) headers in
    order with names lower-cased and compact forms expanded, body bytes."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        """Lenient parse; raises ValueError only when there is no start line."""
        data = data.lstrip(b"\r\n")
        for sep in (b"\r\n\r\n", b"\n\n"):
            head, found, body = data.partition(sep)
            if found:
                break
        else:
            head, body = data, b""
        lines = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
        if not lines or not lines[0].strip():
            raise ValueError("no start line")
        unfolded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip()
            elif line:
                unfolded.append(line)
        headers: list[tuple[str, str]] = []
        for line in unfolded:
            name, colon, value = line.partition(":")
            if not colon:
                continue
            key = name.strip().lower()
            headers.append((COMPACT.get(key, key), value.strip()))
        return cls(lines[0], headers, body, data)

    # start line
    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("SIP/")

    @property
    def status(self) -> int:
        if not self.is_response:
            return 0
        try:
            return int(self.start_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            return 0

    @property
    def reason(self) -> str:
        parts = self.start_line.split(" ", 2)
        return parts[2] if self.is_response and len(parts) > 2 else ""

    @property
    def method(self) -> str:
        return "" if self.is_response else self.start_line.split(" ", 1)[0]

    @property
    def request_uri(self) -> str:
        parts = self.start_line.split(" ")
        return parts[1] if not self.is_response and len(parts) > 1 else ""

    # headers
    def header(self, name: str) -> str | None:
        name = COMPACT.get(name.lower(), name.lower())
        return next((v for n, v in self.headers if n == name), None)

    def header_lines(self, name: str) -> list[str]:
        name = COMPACT.get(name.lower(), name.lower())
        return [v for n, v in self.headers if n == name]

    def header_values(self, name: str) -> list[str]:
        return [p for line in self.header_lines(name) for p in split_commas(line)]

    @property
    def vias(self) -> list[str]:
        return self.header_values("via")

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.header("cseq") or ""
        num, _, method = value.partition(" ")
        try:
            return int(num), method.strip()
        except ValueError:
            return -1, method.strip()

    def __str__(self) -> str:
        text = self.raw.decode("utf-8", "replace") if self.raw else self.start_line
        return text if len(text) < 3000 else text[:3000] + "...(cut)"


def via_branch(via: str) -> str | None:
    m = re.search(r";\s*branch\s*=\s*([^;,\s]+)", via, re.I)
    return m.group(1) if m else None


def via_sent_by(via: str) -> str:
    """'SIP/2.0/UDP host:port;params' -> 'host:port' (lower-cased)."""
    m = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*\S+\s+([^;\s]+)", via, re.I)
    return m.group(1).lower() if m else ""


def via_transport(via: str) -> str:
    """'SIP/2.0/TCP host;...' -> 'TCP'."""
    m = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*(\w+)", via, re.I)
    return m.group(1).upper() if m else ""


def uri_of(name_addr: str) -> str:
    """The URI of a name-addr ('"Bob" <sip:b@h;lr>;p=1' -> 'sip:b@h;lr') or of a
    bare addr-spec (its header parameters cut off)."""
    m = re.search(r"<([^>]*)>", name_addr)
    return m.group(1) if m else name_addr.split(";", 1)[0].strip()


def is_final(msg: SipMessage) -> bool:
    return msg.is_response and msg.status >= 200


def new_branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:16]


def new_tag() -> str:
    return uuid.uuid4().hex[:10]


def build_request(
    method: str,
    ruri: str,
    *,
    sent_by: str,
    branch: str | None = None,
    call_id: str | None = None,
    from_uri: str = "sip:alice@sipsuite.test",
    from_tag: str | None = None,
    to_uri: str | None = None,
    to_tag: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    transport: str = "UDP",
    max_forwards: int | None = 70,
    contact: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """A well-formed request; defaults give a fresh transaction and dialog."""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sent_by};branch={branch or new_branch()};rport",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.append(f"From: <{from_uri}>;tag={from_tag or new_tag()}")
    lines.append(f"To: <{to_uri or ruri}>" + (f";tag={to_tag}" if to_tag else ""))
    lines.append(f"Call-ID: {call_id or uuid.uuid4().hex}@sipsuite.test")
    lines.append(f"CSeq: {cseq} {cseq_method or method}")
    if contact:
        lines.append(f"Contact: <{contact}>")
    lines.extend(f"{n}: {v}" for n, v in extra)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A response copying every Via line, From, To (+ tag), Call-ID, CSeq (RFC 3261 8.2.6.2)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines.extend(f"Via: {v}" for v in request.header_lines("via"))
    to = request.header("to") or ""
    if to_tag and not re.search(r";\s*tag\s*=", to, re.I):
        to += f";tag={to_tag}"
    lines += [
        f"From: {request.header('from') or ''}",
        f"To: {to}",
        f"Call-ID: {request.call_id or ''}",
        f"CSeq: {request.header('cseq') or ''}",
    ]
    lines.extend(f"{n}: {v}" for n, v in extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SDP_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 9 RTP/AVP 0\r\n"
)


def build_invite(
    ruri: str, *, sent_by: str, transport: str = "UDP", extra: Sequence[tuple[str, str]] = (),
    **kwargs: Any,
) -> bytes:
    """An INVITE with a Contact at ``sent_by`` and a small SDP offer (other
    keywords as for build_request)."""
    contact = f"sip:alice@{sent_by}" + (";transport=tcp" if transport.upper() == "TCP" else "")
    return build_request(
        "INVITE", ruri, sent_by=sent_by, transport=transport, contact=contact,
        extra=[("Content-Type", "application/sdp"), *extra], body=SDP_OFFER, **kwargs,
    )


def build_ack_for(invite: bytes | SipMessage, response: SipMessage) -> bytes:
    """Hop-by-hop ACK for a non-2xx final (RFC 3261 17.1.1.3): same R-URI, top Via,
    From, Call-ID, CSeq number as the INVITE; To of the response."""
    inv = invite if isinstance(invite, SipMessage) else SipMessage.parse(invite)
    lines = [
        f"ACK {inv.request_uri} SIP/2.0",
        f"Via: {inv.vias[0]}",
        "Max-Forwards: 70",
        f"From: {inv.header('from')}",
        f"To: {response.header('to')}",
        f"Call-ID: {inv.call_id}",
        f"CSeq: {inv.cseq[0]} ACK",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def build_ack_for_2xx(
    invite: bytes | SipMessage, response: SipMessage, *, sent_by: str, transport: str = "UDP"
) -> bytes:
    """End-to-end ACK for a 2xx (RFC 3261 13.2.2.4, 12.1.2): to the response's
    Contact, with the route set its Record-Route gives (reversed), a new branch."""
    inv = invite if isinstance(invite, SipMessage) else SipMessage.parse(invite)
    lines = [
        f"ACK {uri_of(response.header('contact') or inv.request_uri)} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sent_by};branch={new_branch()};rport",
        "Max-Forwards: 70",
        f"From: {inv.header('from')}",
        f"To: {response.header('to')}",
        f"Call-ID: {inv.call_id}",
        f"CSeq: {inv.cseq[0]} ACK",
    ]
    lines += [f"Route: {r}" for r in reversed(response.header_values("record-route"))]
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
