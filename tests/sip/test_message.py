"""Message parsing, serialisation, mutation, builders and stream framing."""

from __future__ import annotations

import pytest

from sipsuite.sip.builders import make_ack, make_cancel
from sipsuite.sip.headers import Via
from sipsuite.sip.message import REASONS, KeepAlive, ParseError, Request, Response, make_response
from sipsuite.sip.parser import StreamParser, parse_datagram
from sipsuite.sip.uri import URI

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"

INVITE_HEADERS = [
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>",
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com>",
    "Content-Type: application/sdp",
]


def wire(start: str, headers: list[str], body: bytes = b"", length: int | None = -1) -> bytes:
    lines = [start, *headers]
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == -1 else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def invite(headers: list[str] | None = None, body: bytes = SDP) -> bytes:
    return wire("INVITE sip:bob@biloxi.example.com SIP/2.0",
                INVITE_HEADERS if headers is None else headers, body)


def parse_request(data: bytes) -> Request:
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    return msg


def parse_response(data: bytes) -> Response:
    msg = parse_datagram(data)
    assert isinstance(msg, Response)
    return msg


def error_of(data: bytes) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_datagram(data)
    return info.value


def replace(headers: list[str], prefix: str, *new: str) -> list[str]:
    out: list[str] = []
    for h in headers:
        if h.startswith(prefix):
            out.extend(new)
        else:
            out.append(h)
    return out


# --- parsing -----------------------------------------------------------------------


def test_parse_request() -> None:
    data = invite()
    req = parse_request(data)
    assert req.method == "INVITE"
    assert str(req.uri) == "sip:bob@biloxi.example.com"
    assert req.version == "SIP/2.0"
    assert req.body == SDP
    assert req.top_via.branch == "z9hG4bK776asdhds"
    assert len(req.vias) == 1
    assert (req.cseq.number, req.cseq.method) == (314159, "INVITE")
    assert req.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert req.from_tag == "1928301774"
    assert req.to_tag is None
    assert req.from_.display == '"Alice"'
    assert req.to.display == "Bob"
    assert req.max_forwards == 70
    assert req.routes == [] and req.record_routes == []
    assert [str(c.uri) for c in req.contacts] == ["sip:alice@pc33.atlanta.example.com"]
    assert not req.contact_star
    assert req.to_bytes() == data


def test_parse_response() -> None:
    data = wire("SIP/2.0 180 Ringing", [
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1", "Via: SIP/2.0/UDP b.example.com;branch=z9hG4bK2",
        "From: <sip:a@example.com>;tag=1", "To: <sip:b@example.com>;tag=2", "Call-ID: x",
        "CSeq: 1 INVITE",
    ])
    resp = parse_response(data)
    assert (resp.status, resp.reason) == (180, "Ringing")
    assert [v.host for v in resp.vias] == ["a.example.com", "b.example.com"]
    assert resp.to_tag == "2"
    assert resp.to_bytes() == data


def test_empty_and_unusual_reason_phrases() -> None:
    hs = ["Via: SIP/2.0/UDP a;branch=z9hG4bK1", "From: <sip:a@b>;tag=1", "To: <sip:b@c>",
          "Call-ID: x", "CSeq: 1 INVITE"]
    assert parse_response(wire("SIP/2.0 100 ", hs)).reason == ""
    assert parse_response(wire("SIP/2.0 100", hs)).reason == ""
    odd = "SIP/2.0 200 = 2**3 * 5**2 но сто"
    resp = parse_response(wire(odd, hs))
    assert resp.reason == "= 2**3 * 5**2 но сто"
    assert resp.to_bytes().startswith(odd.encode())


def test_compact_and_case_insensitive_names() -> None:
    data = wire("OPTIONS sip:bob@example.com SIP/2.0", [
        "v: SIP/2.0/UDP host;branch=z9hG4bK1", "f: <sip:a@example.com>;tag=1", "t: sip:bob@example.com",
        "i: abc", "CSEQ: 2 OPTIONS", "mAx-FoRwArDs: 0068", "m: <sip:a@h>", "k: path",
        "s:", "e: gzip",
    ], length=None)
    req = parse_request(data)
    assert req.call_id == "abc"
    assert req.header("Call-ID") == req.header("i") == req.header("call-id") == "abc"
    assert req.max_forwards == 68
    assert req.header("Supported") == "path"
    assert req.header("subject") == ""
    assert req.has_header("Content-Encoding")
    assert not req.has_header("Route")
    assert req.header("Route") is None
    assert req.header_all("Route") == []
    assert req.header_all("CONTACT") == ["<sip:a@h>"]


def test_folding_unfolded_for_reading_and_kept_for_writing() -> None:
    data = (
        b"INVITE sip:a@example.com SIP/2.0\r\n"
        b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=z9hG4bK390skdjuw\r\n"
        b"from   : \"J R\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n"
        b"TO :\r\n sip:a@example.com ;   tag    = 1918181833n\r\n"
        b"cseq: 0009\r\n\tINVITE\r\n"
        b"Call-ID: x\r\n"
        b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    req = parse_request(data)
    assert req.header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert req.header("via") == "SIP  /   2.0 /UDP 192.0.2.2;branch=z9hG4bK390skdjuw"
    assert req.top_via.host == "192.0.2.2"
    assert req.from_tag == "98asjd8"
    assert req.to_tag == "1918181833n"
    assert (req.cseq.number, req.cseq.method) == (9, "INVITE")
    assert req.to_bytes() == data


def test_multi_value_headers() -> None:
    hs = replace(INVITE_HEADERS, "Via:",
                 "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1 , SIP/2.0/TCP b.example.com;branch=z9hG4bK2",
                 "v: SIP/2.0/UDP c.example.com;branch=z9hG4bK3")
    hs = replace(hs, "Contact:", 'Contact: "Doe, J" <sip:j@a.example.com>;q=0.5, <sip:k@b.example.com>')
    hs += ["Allow: INVITE, ACK,BYE", "Allow: CANCEL", "Subject: hello, world",
           "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
           "Record-Route: <sip:rr.example.com;lr>"]
    req = parse_request(invite(hs))
    assert [v.host for v in req.vias] == ["a.example.com", "b.example.com", "c.example.com"]
    assert req.top_via.transport == "UDP"
    assert req.header_all("Allow") == ["INVITE", "ACK", "BYE", "CANCEL"]
    assert req.header("Allow") == "INVITE, ACK,BYE"
    # Not a list header: the comma is part of the value.
    assert req.header_all("Subject") == ["hello, world"]
    assert [c.display for c in req.contacts] == ['"Doe, J"', None]
    assert req.contacts[0].params == {"q": "0.5"}
    assert [r.uri.host for r in req.routes] == ["p1.example.com", "p2.example.com"]
    assert [r.uri.host for r in req.record_routes] == ["rr.example.com"]


def test_contact_star() -> None:
    data = wire("REGISTER sip:example.com SIP/2.0", [
        "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "From: <sip:a@example.com>;tag=1",
        "To: <sip:a@example.com>", "Call-ID: c", "CSeq: 2 REGISTER", "Contact: *", "Expires: 0",
    ])
    req = parse_request(data)
    assert req.contact_star
    assert req.contacts == []


def test_body_handling_datagram() -> None:
    # Without Content-Length a datagram's body is the rest (RFC 3261 18.3).
    req = parse_request(invite(body=b"") [:-len(b"Content-Length: 0\r\n\r\n")] + b"\r\nxyz")
    assert req.body == b"xyz"
    assert req.to_bytes().endswith(b"Content-Length: 3\r\n\r\nxyz")
    # Octets beyond Content-Length are ignored.
    assert parse_request(invite(body=SDP) + b"garbage").body == SDP
    # Leading CRLFs are skipped.
    assert parse_request(b"\r\n\r\n\r\n" + invite()).body == SDP
    # Binary bodies stay bytes, NUL octets included.
    blob = bytes(range(256))
    assert parse_request(invite(body=blob)).body == blob


def test_header_section_ended_by_datagram_end() -> None:
    data = invite(body=b"")
    assert parse_request(data[:-2]).body == b""
    assert error_of(data[:-4]).status == 400


def test_untouched_lines_byte_identical_after_edits() -> None:
    weird = [
        "X-Odd :   value with  spaces\t",
        "extensionHeader-!.%*+_`'~: \u8d85\u9ad8\u901f",
        "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    ]
    data = invite(INVITE_HEADERS + weird)
    req = parse_request(data)
    req.add_header("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1")
    req.set_header("Max-Forwards", "69")
    out = req.to_bytes()
    for line in weird:
        assert ("\r\n" + line + "\r\n").encode() in out
    assert out.startswith(b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
                          b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1\r\n"
                          b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
                          b"Max-Forwards: 69\r\n")


def test_non_utf8_octets_round_trip() -> None:
    data = invite(INVITE_HEADERS + ["X-Bin: "]).replace(b"X-Bin: ", b"X-Bin: \xff\xfe\x80")
    req = parse_request(data)
    assert req.to_bytes() == data


# --- mutation ----------------------------------------------------------------------


def test_add_header_positions() -> None:
    req = parse_request(invite())
    req.add_header("Record-Route", "<sip:p1;lr>")          # none yet: right after start line
    assert req.to_bytes().split(b"\r\n")[1] == b"Record-Route: <sip:p1;lr>"
    req.add_header("Record-Route", "<sip:p0;lr>")          # before the first existing one
    assert [r.uri.host for r in req.record_routes] == ["p0", "p1"]
    req.add_header("X-Last", "1", top=False)
    assert req.header_items()[-1] == ("X-Last", "1")
    req.add_header("v", "SIP/2.0/TCP new.example.com;branch=z9hG4bKn")
    assert req.top_via.host == "new.example.com"
    assert len(req.vias) == 2


def test_add_header_rejects_line_breaks() -> None:
    req = parse_request(invite())
    with pytest.raises(ValueError):
        req.add_header("X-Evil", "a\r\nVia: SIP/2.0/UDP evil")
    with pytest.raises(ValueError):
        req.set_header("Bad Name", "x")


def test_set_and_remove_header() -> None:
    hs = INVITE_HEADERS + ["Route: <sip:a;lr>", "X-A: 1", "Route: <sip:b;lr>"]
    req = parse_request(invite(hs))
    req.set_header("route", "<sip:c;lr>")
    assert req.header_all("Route") == ["<sip:c;lr>"]
    assert [n for n, _ in req.header_items()][-4:] == ["Content-Type", "route", "X-A", "Content-Length"]
    req.set_header("X-New", "v")
    assert req.header_items()[-1] == ("X-New", "v")
    req.remove_header("Route")
    assert req.routes == []
    assert not req.has_header("route")
    req.remove_header("X-Nothing")


def test_pop_first_value() -> None:
    hs = INVITE_HEADERS + ["Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
                           "Route: <sip:p3.example.com;lr>"]
    req = parse_request(invite(hs))
    assert req.routes[0].uri.host == "p1.example.com"
    assert req.pop_first_value("Route") == "<sip:p1.example.com;lr>"
    assert [r.uri.host for r in req.routes] == ["p2.example.com", "p3.example.com"]
    assert req.pop_first_value("route") == "<sip:p2.example.com;lr>"
    assert req.header_all("Route") == ["<sip:p3.example.com;lr>"]
    assert req.pop_first_value("Route") == "<sip:p3.example.com;lr>"
    assert req.pop_first_value("Route") is None
    assert not req.has_header("Route")


@pytest.mark.parametrize("name", ["Via", "Route", "Record-Route"])
def test_pop_keeps_the_typed_tail_equal_to_a_fresh_parse(name: str) -> None:
    # pop_first_value keeps the parsed list's tail instead of parsing the
    # remaining values again: what it keeps must be what a parse would give.
    value = ("SIP/2.0/UDP h{}.example.com;branch=z9hG4bK{}" if name == "Via"
             else "<sip:h{}.example.com;lr;x={}>")
    extra = [f"{name}: {value.format(1, 1)}, {value.format(2, 2)}", f"{name}: {value.format(3, 3)}"]
    hs = [h for h in INVITE_HEADERS if not h.lower().startswith("via:")] if name == "Via" else INVITE_HEADERS
    req = parse_request(invite(hs + extra))
    attr = {"Via": "vias", "Route": "routes", "Record-Route": "record_routes"}[name]
    while getattr(req, attr):
        req.pop_first_value(name)
        kept = [str(v) for v in getattr(req, attr)]
        if not kept:
            break  # a message without Via does not parse: nothing to compare
        fresh = parse_request(req.to_bytes())
        assert kept == [str(v) for v in getattr(fresh, attr)]
    assert not req.has_header(name)


def test_set_top_via_keeps_the_rest_parsed_and_equal_to_a_fresh_parse() -> None:
    hs = INVITE_HEADERS + ["Via: SIP/2.0/UDP h1.example.com;branch=z9hG4bK1, "
                           "SIP/2.0/TCP h2.example.com:5070;branch=z9hG4bK2"]
    req = parse_request(invite(hs))
    via = req.top_via.copy()
    via.params["received"] = "198.51.100.7"
    req.set_top_via(via)
    assert req.top_via is via
    fresh = parse_request(req.to_bytes())
    assert [str(v) for v in req.vias] == [str(v) for v in fresh.vias]
    assert fresh.top_via.received == "198.51.100.7" and len(fresh.vias) == 3
    # Written as given when a text is passed.
    req.set_top_via(via, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx")
    assert parse_request(req.to_bytes()).top_via.host == "192.0.2.1"


def test_pop_and_push_top_via() -> None:
    req = parse_request(invite())
    via = req.top_via.copy()
    via.params["received"] = "198.51.100.7"
    via.params["rport"] = "5062"
    req.pop_first_value("Via")
    req.add_header("Via", str(via))
    assert req.top_via.received == "198.51.100.7"
    assert req.top_via.rport == "5062"


def test_mutation_drops_cache() -> None:
    req = parse_request(invite())
    assert req.max_forwards == 70
    req.set_header("Max-Forwards", "5")
    assert req.max_forwards == 5
    req.remove_header("Max-Forwards")
    assert req.max_forwards is None
    assert req.cseq.number == 314159
    req.set_header("CSeq", "7 INVITE")
    assert req.cseq.number == 7
    req.set_header("From", "<sip:x@y>;tag=new")
    assert req.from_tag == "new"


def test_set_to_tag() -> None:
    req = parse_request(invite())
    req.set_to_tag("abc")
    assert req.to_tag == "abc"
    assert req.header("To") == "Bob <sip:bob@biloxi.example.com>;tag=abc"
    req.set_to_tag("def")
    assert req.to_tag == "def"
    assert req.to.display == "Bob"
    # A bare addr-spec gets a header param, not a URI param.
    hs = replace(INVITE_HEADERS, "To:", "t: sip:bob@biloxi.example.com")
    req = parse_request(invite(hs))
    req.set_to_tag("x1")
    assert req.header("to") == "sip:bob@biloxi.example.com;tag=x1"
    assert req.to.uri.params == {}
    assert b"\r\nt: sip:bob@biloxi.example.com;tag=x1\r\n" in req.to_bytes()


def test_content_length_fixed_on_serialisation() -> None:
    req = parse_request(invite())
    req.body = b"hello"
    out = req.to_bytes()
    assert out.endswith(b"\r\nContent-Length: 5\r\n\r\nhello")
    assert out.count(b"Content-Length") == 1
    # Compact form and leading zeros are left alone when they are right.
    data = invite(body=b"").replace(b"Content-Length: 0", b"l: 000")
    assert parse_request(data).to_bytes() == data
    data = data.replace(b"l: 000", b"l: 0")
    req = parse_request(data)
    req.body = b"1234567890"
    assert b"\r\nl: 10\r\n\r\n1234567890" in req.to_bytes()


def test_request_line_regenerated_only_when_uri_changes() -> None:
    data = invite().replace(b"INVITE sip:bob@biloxi.example.com ", b"INVITE sip:bob@BILOXI.example.com;LR ")
    req = parse_request(data)
    assert req.to_bytes() == data
    req.uri.port = 5070
    assert req.to_bytes().startswith(b"INVITE sip:bob@biloxi.example.com:5070;lr SIP/2.0\r\n")
    req.uri = URI.parse("sip:carol@chicago.example.com")
    assert req.to_bytes().startswith(b"INVITE sip:carol@chicago.example.com SIP/2.0\r\n")


def test_copy_is_independent() -> None:
    req = parse_request(invite())
    top = req.top_via
    dup = req.copy()
    assert type(dup) is Request
    dup.add_header("Via", "SIP/2.0/UDP p;branch=z9hG4bKc")
    dup.uri.user = "carol"
    dup.set_header("Max-Forwards", "1")
    assert req.top_via is top
    assert len(req.vias) == 1 and len(dup.vias) == 2
    assert str(req.uri) == "sip:bob@biloxi.example.com"
    assert req.max_forwards == 70 and dup.max_forwards == 1
    assert dup.body is req.body
    resp = make_response(req, 200)
    rdup = resp.copy()
    rdup.status = 202
    assert type(rdup) is Response and resp.status == 200


def test_build_request_and_response() -> None:
    req = Request("OPTIONS", "sip:bob@example.com", [
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("From", "<sip:a@b>;tag=1"),
        ("To", "<sip:bob@example.com>"), ("Call-ID", "x"), ("CSeq", "1 OPTIONS"),
        ("Max-Forwards", "70"),
    ])
    data = req.to_bytes()
    assert data.endswith(b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    again = parse_request(data)
    assert again.header_items() == req.header_items() + [("Content-Length", "0")]
    resp = Response(486, headers=[("Via", "SIP/2.0/UDP h;branch=z9hG4bK1")])
    assert resp.reason == "Busy Here"
    assert resp.to_bytes() == (b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
                               b"Content-Length: 0\r\n\r\n")
    assert bytes(resp) == resp.to_bytes()


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(("data", "reason_part"), [
    (invite().replace(b"INVITE sip", b"INVITE  sip"), "Request-Line"),
    (invite().replace(b" SIP/2.0\r\n", b" SIP/2.0 \r\n", 1), "Request-Line"),
    (invite().replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE sip:bob@biloxi.example.com;\tlr"),
     "Request-URI"),
    (invite().replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE <sip:bob@biloxi.example.com>"),
     "Request-URI"),
    (invite().replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE sip:2001:db8::10"), "Request-URI"),
    (invite().replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE sip:bob@biloxi.example.com?X=y"),
     "Request-URI"),
    (invite().replace(b"INVITE sip:", b"INV(ITE sip:"), "method"),
    (invite().replace(b" SIP/2.0\r\n", b" HTTP/1.1\r\n", 1), "Request-Line"),
    (invite(replace(INVITE_HEADERS, "Via:")), "missing Via"),
    (invite(replace(INVITE_HEADERS, "From:")), "missing From"),
    (invite(replace(INVITE_HEADERS, "To:")), "missing To"),
    (invite(replace(INVITE_HEADERS, "Call-ID:")), "missing Call-ID"),
    (invite(replace(INVITE_HEADERS, "CSeq:")), "missing CSeq"),
    (invite(INVITE_HEADERS + ["f: <sip:x@y>;tag=2"]), "duplicate From"),
    (invite(INVITE_HEADERS + ["t: <sip:x@y>"]), "duplicate To"),
    (invite(INVITE_HEADERS + ["i: other"]), "duplicate Call-ID"),
    (invite(INVITE_HEADERS + ["CSeq: 1 INVITE"]), "duplicate CSeq"),
    (invite(INVITE_HEADERS + ["Max-Forwards: 70"]), "duplicate Max-Forwards"),
    (invite(INVITE_HEADERS + ["c: text/plain"]), "duplicate Content-Type"),
    (invite(INVITE_HEADERS + ["Expires: 1", "Expires: 2"]), "duplicate Expires"),
    (invite(INVITE_HEADERS + ["Content-Length: 0"]), "duplicate Content-Length"),
    (invite(replace(INVITE_HEADERS, "Via:", "Via: SIP/2.0/UDP 192.0.2.15;;,;,,")), "malformed Via"),
    (invite(replace(INVITE_HEADERS, "Via:", "Via: SIP/2.0/UDP a;branch=z9hG4bK1,")), "malformed Via"),
    (invite(replace(INVITE_HEADERS, "From:", "From: Bell, Alexander <sip:a@b>;tag=1")), "malformed From"),
    (invite(replace(INVITE_HEADERS, "To:", 'To: "Mr. J. User <sip:j@b>')), "malformed To"),
    (invite(replace(INVITE_HEADERS, "CSeq:", "CSeq: 4294967296 INVITE")), "malformed CSeq"),
    (invite(replace(INVITE_HEADERS, "CSeq:", "CSeq: 1 OPTIONS")), "CSeq method"),
    (invite(replace(INVITE_HEADERS, "Max-Forwards:", "Max-Forwards: 256")), "malformed Max-Forwards"),
    (invite(replace(INVITE_HEADERS, "Max-Forwards:", "Max-Forwards: seventy")), "malformed Max-Forwards"),
    (invite(replace(INVITE_HEADERS, "Contact:", "Contact: sip:a@b?Route=x")), "malformed Contact"),
    (invite(replace(INVITE_HEADERS, "Contact:", "Contact: *, <sip:a@b>")), "malformed Contact"),
    (invite(INVITE_HEADERS + ["Route: <sip:p;lr"]), "malformed Route"),
    (invite(INVITE_HEADERS + ["Record-Route: sip:p;;lr"]), "malformed Record-Route"),
    (invite().replace(b"Content-Length: ", b"Content-Length: -"), "Content-Length"),
    (invite().replace(b"Content-Length: ", b"Content-Length: x"), "Content-Length"),
    (invite().replace(b"Content-Length: ", b"Content-Length: 9"), "Content-Length"),
    (invite(INVITE_HEADERS + ["No colon here"]), "header line"),
    (invite(INVITE_HEADERS + ["Bad Name: x"]), "header name"),
    (invite(INVITE_HEADERS + [": x"]), "header line"),
    (invite(INVITE_HEADERS + ["X-A: 1\nX-B: 2"]), "bare CR or LF"),
])
def test_request_errors_are_400(data: bytes, reason_part: str) -> None:
    err = error_of(data)
    assert err.status == 400
    assert reason_part in err.reason
    assert err.reason.isascii() and len(err.reason) < 80


def test_ack_and_cancel_cseq_must_match_own_method() -> None:
    for method in ("ACK", "CANCEL"):
        hs = replace(INVITE_HEADERS, "CSeq:", f"CSeq: 314159 {method}")
        assert parse_request(wire(f"{method} sip:bob@b.example.com SIP/2.0", hs)).method == method
        hs = replace(INVITE_HEADERS, "CSeq:", "CSeq: 314159 INVITE")
        assert error_of(wire(f"{method} sip:bob@b.example.com SIP/2.0", hs)).status == 400


def test_version_not_supported() -> None:
    err = error_of(invite().replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1))
    assert (err.status, err.reason) == (505, "Version Not Supported")
    resp = err.response_bytes()
    assert resp is not None and resp.startswith(b"SIP/2.0 505 Version Not Supported\r\n")
    # The version token is case-insensitive.
    assert parse_request(invite().replace(b" SIP/2.0\r\n", b" sip/2.0\r\n", 1)).version == "SIP/2.0"


def test_unknown_scheme_request_uri_is_not_a_parse_error() -> None:
    req = parse_request(invite().replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE urn:service:sos"))
    assert req.uri.scheme == "urn"


@pytest.mark.parametrize("start", [
    "SIP/2.0 99 Too Low", "SIP/2.0 700 Too High", "SIP/2.0 4294967301 Big", "SIP/2.0 20 OK",
    "SIP/2.0 2x0 OK", "SIP/3.0 200 OK", "SIP/2.0", "SIP/2.0 ２００ OK",
])
def test_bad_status_lines_are_dropped(start: str) -> None:
    hs = ["Via: SIP/2.0/UDP a;branch=z9hG4bK1", "From: <sip:a@b>;tag=1", "To: <sip:b@c>",
          "Call-ID: x", "CSeq: 1 INVITE"]
    err = error_of(wire(start, hs))
    assert err.status == 0
    assert err.response_bytes() is None


def test_malformed_response_headers_status_zero() -> None:
    hs = ["Via: SIP/2.0/UDP a;branch=z9hG4bK1", "From: <sip:a@b>;tag=1", "To: <sip:b@c>",
          "Call-ID: x", "CSeq: 92923948347723040 OPTIONS"]
    assert error_of(wire("SIP/2.0 503 Service Unavailable", hs)).status == 0
    assert error_of(wire("SIP/2.0 200 OK", hs[1:])).status == 0


def test_responses_do_not_validate_contact() -> None:
    hs = ["Via: SIP/2.0/UDP a;branch=z9hG4bK1", "From: <sip:a@b>;tag=1", "To: <sip:b@c>",
          "Call-ID: x", "CSeq: 1 INVITE", "Contact: garbage <<<", "Date: not a date", "Expires: x"]
    resp = parse_response(wire("SIP/2.0 200 OK", hs))
    with pytest.raises(ValueError):
        resp.contacts


def test_empty_datagrams() -> None:
    for data in (b"", b"\r\n", b"\r\n\r\n"):
        assert error_of(data).status == 0


def test_response_bytes_for_bad_request() -> None:
    hs = replace(INVITE_HEADERS, "CSeq:", "CSeq: 314159 OPTIONS")
    hs = replace(hs, "Via:", "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport",
                 "Via: SIP/2.0/UDP second.example.com;branch=z9hG4bK2")
    err = error_of(invite(hs))
    assert err.source_via is not None and err.source_via.host == "pc33.atlanta.example.com"
    assert err.source_via.rport == ""
    resp = parse_response(err.response_bytes() or b"")
    assert resp.status == 400
    assert resp.reason == err.reason
    assert [v.host for v in resp.vias] == ["pc33.atlanta.example.com", "second.example.com"]
    assert resp.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert resp.cseq.number == 314159
    assert resp.from_tag == "1928301774"
    # A To tag is added, the same one for a retransmission.
    assert resp.to_tag
    assert error_of(invite(hs)).response_bytes() == err.response_bytes()


def test_response_bytes_recovers_broken_via() -> None:
    err = error_of(invite(replace(INVITE_HEADERS, "Via:", "Via: SIP/2.0/UDP 192.0.2.15;;,;,,")))
    assert err.source_via is not None and err.source_via.host == "192.0.2.15"
    resp = err.response_bytes()
    assert resp is not None and b"\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n" in resp


def test_response_bytes_impossible_without_via() -> None:
    err = error_of(invite(replace(INVITE_HEADERS, "Via:")))
    assert err.source_via is None
    assert err.response_bytes() is None


def test_response_bytes_with_partial_headers() -> None:
    # RFC 4475 insuf: no From/To/Call-ID; answer with what there is.
    hs = ["Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf", "CSeq: 193942 INVITE"]
    err = error_of(invite(hs))
    resp = err.response_bytes()
    assert resp is not None
    assert resp.startswith(b"SIP/2.0 400 Bad Request - missing From\r\nVia: ")
    assert b"CSeq: 193942 INVITE\r\n" in resp


def test_response_bytes_never_copies_stray_line_breaks() -> None:
    hs = INVITE_HEADERS + ["X-A: 1"]
    data = invite(hs).replace(b"Call-ID: a84", b"Call-ID: \nInjected: yes\na84")
    err = error_of(data)
    resp = err.response_bytes()
    assert resp is not None and b"Injected" not in resp


# --- builders --------------------------------------------------------------------------


def test_make_response() -> None:
    hs = INVITE_HEADERS + ["v: SIP/2.0/UDP second.example.com;branch=z9hG4bK2",
                           "Record-Route: <sip:rr;lr>", "Timestamp: 54"]
    req = parse_request(invite(hs))
    resp = make_response(req, 180, to_tag="t1", headers=[("Contact", "<sip:bob@192.0.2.4>")])
    assert (resp.status, resp.reason) == (180, "Ringing")
    assert resp.header_all("via") == [
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
        "SIP/2.0/UDP second.example.com;branch=z9hG4bK2"]
    assert resp.to_tag == "t1"
    assert resp.from_tag == "1928301774"
    assert resp.call_id == req.call_id
    assert resp.cseq == req.cseq
    assert resp.header("Contact") == "<sip:bob@192.0.2.4>"
    assert resp.header("Content-Length") == "0"
    assert not resp.has_header("Record-Route")
    assert not resp.has_header("Timestamp")
    data = resp.to_bytes()
    assert b"\r\nv: SIP/2.0/UDP second.example.com;branch=z9hG4bK2\r\n" in data
    assert parse_response(data).to_bytes() == data
    assert make_response(req, 100).header("Timestamp") == "54"
    assert make_response(req, 100).to_tag is None
    assert make_response(req, 499).reason == "Unknown"
    assert make_response(req, 404, "Nobody Here").reason == "Nobody Here"
    # A To that already has a tag keeps it.
    req.set_to_tag("existing")
    assert make_response(req, 200, to_tag="new").to_tag == "existing"


def test_reasons_table() -> None:
    assert REASONS[200] == "OK"
    assert REASONS[487] == "Request Terminated"
    assert REASONS[416] == "Unsupported URI Scheme"
    assert REASONS[505] == "Version Not Supported"


def test_make_cancel() -> None:
    hs = replace(INVITE_HEADERS, "Via:",
                 "Via: SIP/2.0/UDP top.example.com;branch=z9hG4bKtop, SIP/2.0/UDP x;branch=z9hG4bKx",
                 "Via: SIP/2.0/UDP y;branch=z9hG4bKy")
    hs += ["Route: <sip:p1;lr>", "Route: <sip:p2;lr>", "Supported: timer"]
    inv = parse_request(invite(hs))
    inv.uri.params["x"] = "y"
    cancel = make_cancel(inv)
    assert cancel.method == "CANCEL"
    assert str(cancel.uri) == str(inv.uri)
    assert cancel.uri is not inv.uri
    assert [str(v) for v in cancel.vias] == ["SIP/2.0/UDP top.example.com;branch=z9hG4bKtop"]
    assert [r.uri.host for r in cancel.routes] == ["p1", "p2"]
    assert (cancel.cseq.number, cancel.cseq.method) == (314159, "CANCEL")
    assert cancel.header("From") == inv.header("From")
    assert cancel.header("To") == inv.header("To")
    assert cancel.call_id == inv.call_id
    assert cancel.max_forwards == 70
    assert not cancel.has_header("Supported") and not cancel.has_header("Contact")
    again = parse_request(cancel.to_bytes())
    assert again.to_bytes() == cancel.to_bytes()


def test_make_ack() -> None:
    inv = parse_request(invite(INVITE_HEADERS + ["Route: <sip:p1;lr>"]))
    resp = make_response(inv, 486, to_tag="callee")
    ack = make_ack(inv, resp)
    assert ack.method == "ACK"
    assert str(ack.uri) == str(inv.uri)
    assert [str(v) for v in ack.vias] == [str(inv.top_via)]
    assert (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
    assert ack.to_tag == "callee"
    assert ack.from_tag == inv.from_tag
    assert ack.call_id == inv.call_id
    assert [r.uri.host for r in ack.routes] == ["p1"]
    assert ack.max_forwards == 70
    assert parse_request(ack.to_bytes()).to_bytes() == ack.to_bytes()


# --- stream framing ------------------------------------------------------------------


def test_stream_one_message_per_feed() -> None:
    p = StreamParser()
    out = p.feed(invite())
    assert len(out) == 1 and isinstance(out[0], Request)
    assert out[0].body == SDP


def test_stream_partial_feeds_byte_by_byte() -> None:
    data = invite() + invite(body=b"") + invite(body=b"xy")
    p = StreamParser()
    got: list[object] = []
    for i in range(len(data)):
        got += p.feed(data[i : i + 1])
    assert [m.body for m in got] == [SDP, b"", b"xy"]  # type: ignore[attr-defined]


def test_stream_many_messages_one_feed_and_split_body() -> None:
    data = invite() * 3
    p = StreamParser()
    out = p.feed(data[:-5])
    assert len(out) == 2
    out = p.feed(data[-5:])
    assert len(out) == 1 and out[0].body == SDP  # type: ignore[union-attr]


def test_stream_keepalives() -> None:
    p = StreamParser()
    assert p.feed(b"\r\n\r\n") == [KeepAlive()]
    assert p.feed(b"\r\n") == []          # could be the first half of a ping
    assert p.feed(b"\r\n") == [KeepAlive()]
    assert p.feed(b"\r\n") == []
    out = p.feed(invite())                 # a lone CRLF before a message is ignored
    assert len(out) == 1 and isinstance(out[0], Request)
    out = p.feed(b"\r\n\r\n" + invite() + b"\r\n\r\n")
    assert [type(o) for o in out] == [KeepAlive, Request, KeepAlive]
    assert repr(KeepAlive()) == "KeepAlive()"


def test_stream_missing_content_length() -> None:
    p = StreamParser()
    out = p.feed(wire("OPTIONS sip:a@b SIP/2.0", [
        "Via: SIP/2.0/TCP h;branch=z9hG4bK1", "From: <sip:a@b>;tag=1", "To: <sip:a@b>",
        "Call-ID: x", "CSeq: 1 OPTIONS"], length=None))
    assert len(out) == 1 and isinstance(out[0], ParseError)
    assert out[0].status == 400
    assert out[0].response_bytes() is not None
    # The stream is unusable afterwards.
    assert p.feed(invite()) == []


def test_stream_bad_message_then_nothing() -> None:
    p = StreamParser()
    out = p.feed(invite() + invite().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1) + invite())
    assert isinstance(out[0], Request)
    assert isinstance(out[1], ParseError) and out[1].status == 505
    assert len(out) == 2


def test_stream_response_error_is_silent() -> None:
    p = StreamParser()
    out = p.feed(b"SIP/2.0 999 Nope\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(out[0], ParseError) and out[0].status == 0


def test_stream_size_limits() -> None:
    p = StreamParser(max_message=1000)
    out = p.feed(b"INVITE sip:a@b SIP/2.0\r\nX-Pad: " + b"x" * 1200)
    assert isinstance(out[0], ParseError) and out[0].status == 513
    p = StreamParser(max_message=1000)
    out = p.feed(invite().replace(b"Content-Length: ", b"Content-Length: 99"))
    assert isinstance(out[0], ParseError) and out[0].status == 413
    p = StreamParser(max_message=len(invite()))
    assert isinstance(p.feed(invite())[0], Request)


def test_stream_content_length_waits_for_body() -> None:
    data = invite()
    p = StreamParser()
    assert p.feed(data[:-1]) == []
    assert isinstance(p.feed(data[-1:])[0], Request)


def test_message_types() -> None:
    req = parse_request(invite())
    assert isinstance(req.top_via, Via)
    assert "INVITE" in repr(req)
    assert "200" in repr(make_response(req, 200))


@pytest.mark.parametrize("data", [
    b"O\r\n PTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 0\r\n\r\n",
    b"\n\r\n OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
    b"OPTIONS sip:a@b SIP/2.0\r\n Via: SIP/2.0/UDP h\r\n\r\n",
])
def test_garbled_start_and_continuations(data: bytes) -> None:
    # Found by fuzzing: salvaging lines for the answer must not fail itself.
    assert error_of(data).status == 400
    out = StreamParser().feed(data)
    assert len(out) == 1 and isinstance(out[0], ParseError)


def test_unvalidated_list_header_with_bad_quotes_is_still_readable() -> None:
    req = parse_request(invite(INVITE_HEADERS + ['Accept: "text/x, a/b', "Allow: A, B"]))
    assert req.header_all("Accept") == ['"text/x, a/b']
    assert req.pop_first_value("Accept") == '"text/x, a/b'
    assert not req.has_header("Accept")
    assert req.header_all("Allow") == ["A", "B"]


def test_bad_ack_is_never_answered() -> None:
    hs = replace(INVITE_HEADERS, "CSeq:", "CSeq: 314159 ACK")
    hs = replace(hs, "From:", "From: Bell, Alexander <sip:a@b>;tag=1")
    err = error_of(wire("ACK sip:bob@biloxi.example.com SIP/2.0", hs))
    assert err.status == 400
    assert err.response_bytes() is None
