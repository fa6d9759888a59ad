"""The parser's fast paths against its general paths.

URI, Via, NameAddr and CSeq take a regex / str-method fast path for the
common shape of a value and fall back to the general parser for anything
else.  The fast path must never change a verdict or a result: for any text
either both accept with identical objects or both raise.  The same holds for
the lazy parts (NameAddr.uri, Via.params below the top Via) and for the
shortcuts in parse_head / to_bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipsuite.sip import parser
from sipsuite.sip.headers import CSeq, NameAddr, Via, _quote_end, _split_outside_quotes
from sipsuite.sip.message import Request
from sipsuite.sip.parser import parse_datagram
from sipsuite.sip.uri import URI

MANY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _uri(u: URI) -> tuple[object, ...]:
    return (u.scheme, u.user, u.password, u.host, u.port, list(u.params.items()), u.headers,
            u.opaque, str(u), u.aor())


def _via(v: Via) -> tuple[object, ...]:
    return (v.protocol, v.transport, v.host, v.port, list(v.params.items()), str(v))


def _addr(a: NameAddr) -> tuple[object, ...]:
    return (a.display, _uri(a.uri), list(a.params.items()), a.angle, str(a))


def _outcome(fn, norm, text: str) -> object:  # type: ignore[no-untyped-def]
    try:
        return norm(fn(text))
    except ValueError:
        return "ValueError"


# Near-valid values: pieces of common header values glued with characters
# that sit on the edges of the fast paths' character classes.
PIECES = [
    "sip:", "sips:", "SIP:", "tel:", "bob", "alice", "@", "127.0.0.1", "example.com", "HOST.Com",
    "[2001:db8::1]", "[::1", ":", "5060", "65535", "65536", "0", "99999", ";", ";lr", ";tag=",
    "tag", "=", "x", "Y", ";transport=udp", ";branch=z9hG4bK776", ";rport", ";received=[::1]",
    "<", ">", '"', '"A B"', "\\", " ", "  ", "\t", ",", "?", "%", "%41", "&", "+", "$", "/",
    "SIP/2.0/", "UDP", "TCP", " SIP/2.0/UDP ", "-", ".", "!", "~", "*", "'", "`", "(", ")",
    "[", "]", "é", "\x00", "1", "INVITE", "ACK", "4294967295", "4294967296",
]
texts = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map("".join)
COMMON = [
    "sip:bob@biloxi.example.com", "sip:127.0.0.1:5060;lr", "sips:u@[2001:db8::1]:5061;maddr=x",
    "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
    "SIP/2.0/TCP [2001:db8::9]:5060;received=[2001:db8::9:255];branch=z9hG4bK1",
    '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774', "Bob <sip:bob@x>",
    "<sip:127.0.0.1:5060;lr>", "sip:a@b;tag=x", "A  B\t<sip:a@b:65535;x=y>;Q=0.5;lr",
    "sip:a@b:65536", "<sip:a@b:99999>", "sip:,a@b;tag=x", "<sip:a@b>;x=", "sip:a@b ;tag=x",
    "314159 INVITE", "4294967296 ACK", "01 BYE", "1  INVITE",
]


# Structured values around the fast paths' edges: each part drawn from an
# alphabet a little wider than the fast path's class (so both paths run).
def _text(common: str, edge: str, min_size: int = 0, max_size: int = 6) -> st.SearchStrategy[str]:
    # Mostly the common characters (fast path), sometimes the edge ones too.
    plain = st.text(common, min_size=min_size, max_size=max_size)
    return st.one_of(plain, plain, plain, st.text(common + edge, min_size=min_size, max_size=max_size))


_USER = _text("abcXYZ019-_.!~*'()&=+$,/", "%;?@: ")
_HOST = st.one_of(_text("abcXYZ019-.", ":_ ", 1, 8),
                  _text("abcdef0129:.", "]g ", 0, 8).map(lambda h: f"[{h}]"))
_PORT = st.one_of(st.just(""), st.integers(0, 99999).map(lambda p: f":{p}"),
                  _text("0123456789", "a ").map(lambda p: f":{p}"))
_PNAME = _text("abcXYZ019-.!*_+~", "%`'[]/:&$ \"", 1, 5)
_PVALUE = _text("abcXYZ019-.!*_+~", "%`'[]/:&$=@ \"", 1, 5)
# Quoted values: the fast path takes those without '"', '\\' or ';' inside.
_QVALUE = _text("ab ,=<>@:", '";\\', 0, 5).map(lambda v: f'"{v}"')
_PARAMS = st.lists(st.tuples(_PNAME, st.none() | _PVALUE | _QVALUE), max_size=3).map(
    lambda ps: "".join(f";{n}" if v is None else f";{n}={v}" for n, v in ps))
_SCHEME = st.sampled_from(["sip", "sip", "sips", "SIP", "tel", "urn"])


@st.composite
def _uri_texts(draw: st.DrawFn) -> str:
    user = draw(_USER)
    return (f"{draw(_SCHEME)}:{user + '@' if user or draw(st.booleans()) else ''}"
            f"{draw(_HOST)}{draw(_PORT)}{draw(_PARAMS)}")


@st.composite
def _values(draw: st.DrawFn) -> str:
    uri = draw(_uri_texts())
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return uri
    if kind == 1:
        sp = draw(st.sampled_from([" ", " ", "  ", "\t", ""]))
        transport = draw(st.sampled_from(["UDP", "UDP", "tcp", "TLS", "W S", "", "UDP/"]))
        return f"SIP/2.0/{transport}{sp}{draw(_HOST)}{draw(_PORT)}{draw(_PARAMS)}"
    display = draw(st.sampled_from(["", "", '"A"', '"A \\" B"', "Bob", "Bob  Smith", "B,b", '"x',
                                    '"\\\\"', '"a\\\\\\"b"', '"\\"', '"\\\\\\"']))
    sp = draw(st.sampled_from(["", " ", "\t"]))
    if kind == 2:
        return f"{display}{sp}<{uri}>{draw(_PARAMS)}"
    if kind == 3:
        return f"{uri}{draw(_PARAMS)}"
    return f"{draw(st.text('0123456789x ', min_size=0, max_size=11))} {draw(_PNAME)}"


@MANY
@given(_values())
def test_structured_values_agree(text: str) -> None:
    assert _outcome(URI.parse, _uri, text) == _outcome(URI._parse_general, _uri, text)
    assert _outcome(Via.parse, _via, text) == _outcome(Via._parse_general, _via, text)
    assert _outcome(lambda t: Via.parse(t, lazy_params=True), _via, text) == _outcome(
        Via._parse_general, _via, text)
    assert _outcome(NameAddr.parse, _addr, text) == _outcome(
        NameAddr._parse_general, _addr, text.strip(" \t"))
    assert _outcome(CSeq.parse, repr, text) == _outcome(CSeq._parse_general, repr, text)


@pytest.mark.parametrize("text", COMMON)
def test_common_values(text: str) -> None:
    assert _outcome(URI.parse, _uri, text) == _outcome(URI._parse_general, _uri, text)
    assert _outcome(Via.parse, _via, text) == _outcome(Via._parse_general, _via, text)
    assert _outcome(NameAddr.parse, _addr, text) == _outcome(
        NameAddr._parse_general, _addr, text.strip(" \t"))
    assert _outcome(CSeq.parse, repr, text) == _outcome(CSeq._parse_general, repr, text)


@MANY
@given(st.one_of(texts, st.sampled_from(COMMON).flatmap(
    lambda base: st.tuples(st.integers(0, len(base)), texts).map(
        lambda t: base[: t[0]] + t[1] + base[t[0]:]))))
def test_fast_paths_agree_with_general(text: str) -> None:
    assert _outcome(URI.parse, _uri, text) == _outcome(URI._parse_general, _uri, text)
    assert _outcome(Via.parse, _via, text) == _outcome(Via._parse_general, _via, text)
    assert _outcome(lambda t: Via.parse(t, lazy_params=True), _via, text) == _outcome(
        Via._parse_general, _via, text)
    assert _outcome(NameAddr.parse, _addr, text) == _outcome(
        NameAddr._parse_general, _addr, text.strip(" \t"))
    assert _outcome(CSeq.parse, repr, text) == _outcome(CSeq._parse_general, repr, text)


def test_lazy_parts_are_built_on_first_use() -> None:
    addr = NameAddr.parse('"A" <sip:a@b:5060;lr>;tag=t')
    assert addr.params == {"tag": "t"}
    uri = addr.uri  # built now, then a plain attribute
    assert addr.uri is uri and str(uri) == "sip:a@b:5060;lr" and uri.params == {"lr": None}
    addr.uri = URI.parse("sip:c@d")
    assert str(addr) == '"A" <sip:c@d>;tag=t'
    via = Via.parse("SIP/2.0/UDP h;branch=z9hG4bK1;rport", lazy_params=True)
    assert via.branch == "z9hG4bK1" and via.rport == "" and via.params is via.params
    with pytest.raises(AttributeError):
        NameAddr.__new__(NameAddr).uri  # noqa: B018 - nothing to build from
    with pytest.raises(AttributeError):
        Via.__new__(Via).params  # noqa: B018


def test_below_top_vias_lazy_but_equal() -> None:
    data = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"
            b"Via: SIP/2.0/UDP b:5062;branch=z9hG4bK2;received=192.0.2.9;rport=9\r\n"
            b"v: SIP/2.0/TCP c;branch=z9hG4bK3, SIP/2.0/UDP d;branch=z9hG4bK4\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n")
    vias = parse_datagram(data).vias
    assert [v.branch for v in vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3", "z9hG4bK4"]
    assert (vias[1].received, vias[1].rport, vias[1].port) == ("192.0.2.9", "9", 5062)
    assert [str(v) for v in vias] == [str(Via._parse_general(str(v))) for v in vias]


def test_header_name_cache_never_hides_folding() -> None:
    # A continuation line must be seen as such even when its text looks
    # like a known header name with a colon.
    head = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            b"Subject: one\r\n To: two\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
            b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    msg = parse_datagram(head)
    assert msg.header("subject") == "one To: two"
    assert msg.to_bytes() == head
    # A line without a colon is malformed even if it spells a known name.
    with pytest.raises(parser.ParseError):
        parse_datagram(head.replace(b"Subject: one\r\n To: two", b"Via"))


def test_content_length_note_survives_only_while_valid() -> None:
    data = (b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\n"
            b"l: 4\r\nMax-Forwards: 70\r\n\r\nbody")
    msg = parse_datagram(data)
    assert isinstance(msg, Request) and msg.to_bytes() == data
    copy = msg.copy()
    copy.add_header("Via", "SIP/2.0/UDP p;branch=z9hG4bK2")
    assert copy.to_bytes() == data.replace(b"Via:", b"Via: SIP/2.0/UDP p;branch=z9hG4bK2\r\nVia:", 1)
    copy.body = b"longer body"
    assert b"\r\nl: 11\r\n" in copy.to_bytes()
    other = msg.copy()
    other.add_header("Content-Length", "4", top=False)  # now two lines: one goes
    assert other.to_bytes().count(b": 4\r\n") == 1
    other.set_header("Content-Length", "9")  # a lie: corrected
    assert other.to_bytes().endswith(b"\r\nContent-Length: 4\r\nMax-Forwards: 70\r\n\r\nbody")
    other.remove_header("l")
    assert other.to_bytes().endswith(b"Max-Forwards: 70\r\nContent-Length: 4\r\n\r\nbody")


def _split_reference(text: str, sep: str, angles: bool) -> list[str]:
    """The character-by-character splitter _split_outside_quotes replaced."""
    parts: list[str] = []
    begin = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i = _quote_end(text, i)
        elif ch == "<" and angles:
            j = text.find(">", i)
            if j < 0:
                raise ValueError("unterminated '<'")
            i = j
        elif ch == sep:
            parts.append(text[begin:i])
            begin = i + 1
        i += 1
    parts.append(text[begin:])
    return parts


@MANY
@given(st.text('ab,;<>"\\ =', max_size=24), st.sampled_from([",", ";"]), st.booleans())
def test_split_outside_quotes_matches_reference(text: str, sep: str, angles: bool) -> None:
    assert _outcome(lambda t: _split_outside_quotes(t, sep, angles), repr, text) == _outcome(
        lambda t: _split_reference(t, sep, angles), repr, text)
