"""Property tests: serialise/parse round trips and robustness on junk input."""

from __future__ import annotations

import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipsuite.sip.headers import (
    TOKEN_CHARS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    parse_params,
    split_values,
)
from sipsuite.sip.message import KeepAlive, Message, ParseError, Request, Response
from sipsuite.sip.parser import StreamParser, parse_datagram
from sipsuite.sip.uri import URI

DATA = Path(__file__).resolve().parents[1] / "data"
TORTURE = sorted((DATA / "rfc4475").glob("*.dat")) + sorted((DATA / "rfc5118" / "wire").glob("*.dat"))
SEEDS = [p.read_bytes() for p in TORTURE]

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

token = st.text(TOKEN_CHARS, min_size=1, max_size=12)
label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
host = st.one_of(hostname, ipv4, ipv6)
port = st.none() | st.integers(0, 65535)
user = st.text(string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/", min_size=1, max_size=12)
param_text = st.text(string.ascii_letters + string.digits + "-_.!~*'()[]/:&+$", min_size=1, max_size=8)
uri_params = st.dictionaries(param_text.map(str.lower), st.none() | param_text, max_size=3)


@st.composite
def sip_uris(draw: st.DrawFn) -> URI:
    return URI(draw(st.sampled_from(["sip", "sips"])), draw(st.none() | user), None,
               draw(host), draw(port), draw(uri_params))


@st.composite
def vias(draw: st.DrawFn) -> str:
    params = {"branch": "z9hG4bK" + draw(token)}
    if draw(st.booleans()):
        params["rport"] = None  # type: ignore[assignment]
    return str(Via(draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"])), draw(host),
                   draw(port), params))


quoted = st.text(st.characters(blacklist_characters='"\\\r\n', blacklist_categories=("Cs",)),
                 max_size=12).map(lambda s: f'"{s}"')
display = st.none() | quoted | st.lists(token, min_size=1, max_size=3).map(" ".join)


@st.composite
def addresses(draw: st.DrawFn, tag: bool = True) -> str:
    params = {"tag": draw(token)} if tag and draw(st.booleans()) else {}
    return str(NameAddr(draw(sip_uris()), draw(display), params))


ext_value = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30,
).map(lambda s: s.strip(" \t"))


@st.composite
def header_lists(draw: st.DrawFn, method: str) -> list[tuple[str, str]]:
    headers = [("Via", draw(vias())) for _ in range(draw(st.integers(1, 3)))]
    headers += [
        (draw(st.sampled_from(["From", "f", "FROM"])), draw(addresses())),
        (draw(st.sampled_from(["To", "t"])), draw(addresses())),
        (draw(st.sampled_from(["Call-ID", "i"])), draw(token) + "@" + draw(hostname)),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"),
    ]
    if draw(st.booleans()):
        headers.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("Contact", draw(addresses(tag=False))))
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("Route", f"<{draw(sip_uris())};lr>"))
    for _ in range(draw(st.integers(0, 4))):
        headers.append(("X-" + draw(token), draw(ext_value)))
    return draw(st.permutations(headers))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER"]) | token)
    return Request(method, draw(sip_uris()), draw(header_lists(method)), draw(st.binary(max_size=64)))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(st.sampled_from(["INVITE", "BYE"]) | token)
    reason = draw(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                          max_size=20))
    return Response(draw(st.integers(100, 699)), reason, draw(header_lists(method)),
                    draw(st.binary(max_size=64)))


def assert_same(a: Message, b: Message) -> None:
    assert type(a) is type(b)
    if isinstance(a, Request):
        assert isinstance(b, Request)
        assert (a.method, str(a.uri)) == (b.method, str(b.uri))
    else:
        assert isinstance(a, Response) and isinstance(b, Response)
        assert (a.status, a.reason) == (b.status, b.reason)
    # The built message has no Content-Length line; serialising adds one.
    assert b.header_items() == [*a.header_items(), ("Content-Length", str(len(a.body)))]
    assert a.body == b.body


@FAST
@given(requests() | responses())
def test_parse_serialise_round_trip(msg: Message) -> None:
    data = msg.to_bytes()
    again = parse_datagram(data)
    assert_same(msg, again)
    assert again.to_bytes() == data
    # Typed views agree with what was built.
    assert [str(v) for v in again.vias] == [str(v) for v in msg.vias]
    assert again.cseq == msg.cseq
    assert str(again.from_) == str(msg.from_) and str(again.to) == str(msg.to)
    # And the stream framing yields the same message from arbitrary chunks.
    parser = StreamParser()
    out: list[object] = []
    for i in range(0, len(data), 37):
        out += parser.feed(data[i : i + 37])
    assert len(out) == 1
    assert_same(msg, out[0])  # type: ignore[arg-type]


@FAST
@given(sip_uris())
def test_uri_round_trip(uri: URI) -> None:
    text = str(uri)
    again = URI.parse(text)
    assert str(again) == text
    assert (again.user, again.host, again.port, again.params) == (
        uri.user, uri.host, uri.port, uri.params)


def _only_parse_errors(data: bytes) -> None:
    try:
        msg = parse_datagram(data)
    except ParseError as err:
        assert isinstance(err.status, int)
        err.response_bytes()
    else:
        # Whatever parsed must serialise and be readable.
        msg.to_bytes()
        msg.header_items()


def _stream(data: bytes, cut: int) -> None:
    parser = StreamParser(max_message=4096)
    for i in range(0, len(data), cut):
        for item in parser.feed(data[i : i + cut]):
            assert isinstance(item, Request | Response | ParseError | KeepAlive)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes, cut: int) -> None:
    _only_parse_errors(data)
    _stream(data, cut)


SPECIALS = [b":", b";", b",", b"\"", b"<", b">", b"\r\n", b"\r\n ", b" ", b"\t", b"%", b"@",
            b"[", b"]", b"=", b"\\", b"\x00", b"\xff", b"/", b"?", b"SIP/2.0", b"\r\n\r\n", b"9" * 12]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 3))
        if kind == 0 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:
            data[pos:pos] = draw(st.sampled_from(SPECIALS))
        elif kind == 2:
            del data[pos : pos + draw(st.integers(1, 20))]
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated(), st.integers(1, 200))
def test_mutated_torture_messages_raise_only_parse_error(data: bytes, cut: int) -> None:
    _only_parse_errors(data)
    _stream(data, cut)


# Text made mostly of the characters SIP grammar cares about.
sip_text = st.lists(st.sampled_from(list(' \t"\\<>;,:@[]=%?/.*-+aZ09\x00\u00e9') + [
    "sip:", "SIP/2.0/UDP ", "tag=", "<sip:a@b>"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(sip_text)
def test_value_parsers_raise_only_value_error(text: str) -> None:
    for parse in (URI.parse, Via.parse, NameAddr.parse, CSeq.parse, split_values, parse_params,
                  canonical_name):
        try:
            parse(text)  # type: ignore[operator]
        except ValueError:
            pass
