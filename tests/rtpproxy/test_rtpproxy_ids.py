"""Call-IDs and tags as RTPProxy tokens (sipsuite.rtpproxy.ids), and the
proxy's relay client carrying every one the SIP parser accepts to a relay
session that later commands find (issue 11, defect 2)."""

from __future__ import annotations

import pytest
from memoryrelay import MemoryPorts, result_of

from sipsuite.proxy.media.local import LocalRelayClient
from sipsuite.rtpproxy import protocol as rp
from sipsuite.rtpproxy.ids import (
    MAX_TOKEN,
    decode_call_id,
    decode_id,
    encode_call_id,
    encode_id,
    is_raw,
)
from sipsuite.rtprelay.control import ControlHandler
from sipsuite.rtprelay.table import SessionTable
from sipsuite.sip.message import ParseError, Request
from sipsuite.sip.parser import parse_datagram

# What breaks a raw command: whitespace, the sub-command token, ";N" look-alikes,
# text Latin-1 cannot hold, bytes UTF-8 cannot decode (surrogateescape), NUL.
ODD = [
    "a b@host", "a\tb", "&&", "a && b", "x&&y", "Grüße-東京@例え.jp", "caf\udcff",
    "\udcff", "a;2", "tag;1", "#already", "##deadbeef", "a%20b c", "\x00", "nul\x00x",
    "\x7f", "\"quoted tag\"", "", " ", "é",
]


def assert_one_token(token: str) -> None:
    assert token and token.isascii() and token.isprintable(), token
    assert not any(c in token for c in " \t\r\n;&\0"), token
    # And the codec on both sides reads it back as one argument.
    cmd = rp.parse_command(f"c1 D {token} {token}".encode("latin-1"))
    assert (cmd.call_id, cmd.from_tag, cmd.to_tag) == (token, token, None)


@pytest.mark.parametrize("value", [
    "a84b4c76e66710@pc33.atlanta.com", "1928301774", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6@foo",
    "x!%*_+`'~()<>:\\\"/[]?{}.y", "-", "a" * MAX_TOKEN,
])
def test_rfc3261_values_go_as_they_are(value: str) -> None:
    # Byte for byte what Kamailio's rtpproxy module sends.
    assert is_raw(value) and encode_id(value) == value and decode_id(value) == value


@pytest.mark.parametrize("value", ODD)
def test_odd_values_become_one_reversible_token(value: str) -> None:
    token = encode_id(value)
    assert_one_token(token)
    assert token.startswith("#") and not token.startswith("##")
    assert decode_id(token) == value
    assert encode_id(value) == token  # deterministic


def test_escape_spelled_out() -> None:
    assert encode_id("a b@h") == "#a%20b@h"
    assert encode_id("a%b c") == "#a%25b%20c"  # % escaped inside, so decoding is unambiguous
    assert encode_id("\udcff") == "#%FF"  # the raw byte the parser could not decode
    assert encode_id("ü") == "#%C3%BC"


def test_tokens_never_collide() -> None:
    values = ODD + ["a%20b", "#a%20b", "a b", "%23", "#", "##", "a%25b%20c"]
    values += [f"x{chr(c)}y" for c in range(256)] + [f"x{chr(0xDC00 + c)}y" for c in range(0x80, 0x100)]
    tokens = [encode_id(v) for v in values]
    assert len(set(tokens)) == len(set(values))


def test_long_values_go_as_a_digest() -> None:
    long_odd = "é" * 200  # 400 bytes, 1201 characters escaped
    token = encode_id(long_odd)
    assert token.startswith("##") and len(token) == 34
    assert_one_token(token)
    assert encode_id(long_odd) == token and encode_id(long_odd + "x") != token
    assert encode_id("a" * (MAX_TOKEN + 1)).startswith("##")
    assert decode_id(token) == token  # not reversible, and said so
    for size in range(MAX_TOKEN - 4, MAX_TOKEN + 4):  # around the edge: always <= MAX_TOKEN
        assert len(encode_id(" " * size)) <= MAX_TOKEN


def test_call_id_keeps_kamailios_branch_suffix() -> None:
    assert encode_call_id("abc@h;z9hG4bK1") == "abc@h;z9hG4bK1"
    assert encode_call_id("a b;br x") == "#a%20b;#br%20x"
    for value in ("a b;br x", "a;b;c", ";", "x;", "plain"):
        assert decode_call_id(encode_call_id(value)) == value


def test_decode_leaves_foreign_tokens_alone() -> None:
    # Raw tokens another controller (Kamailio) sent that merely start with "#".
    for token in ("#", "#a%zz", "#a%2", "#50%", "#ü"):
        assert decode_id(token) in (token, "")
    assert decode_id("#") == ""


# -- through the SIP parser, the relay client and a real relay dispatcher --------------


def sip_invite(call_id: bytes, from_tag: bytes) -> Request:
    data = (b"INVITE sip:bob@example.com SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
            b"From: <sip:alice@example.com>;tag=" + from_tag + b"\r\n"
            b"To: <sip:bob@example.com>\r\nCall-ID: " + call_id + b"\r\n"
            b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    msg = parse_datagram(data)
    assert isinstance(msg, Request)
    return msg


def accepted(values: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """(Call-ID, From tag) of each message the parser takes."""
    out = []
    for call_id, tag in values:
        try:
            req = sip_invite(call_id, tag)
        except ParseError:
            continue
        assert req.from_tag is not None
        out.append((req.call_id, req.from_tag))
    return out


def odd_inputs() -> list[tuple[str, str]]:
    raw: list[tuple[bytes, bytes]] = []
    for b in range(256):
        raw.append((b"c" + bytes([b]) + b"d@h", b"ft"))
        raw.append((b"call-1", b"t" + bytes([b]) + b"u"))
        raw.append((b"call-1", b'"q' + bytes([b]) + b'"'))
    raw += [(b"a b", b"ft"), (b"a\tb", b"ft"), (b"x && y", b"ft"), (b"&&", b"&&"),
            ("Grüße 東京".encode(), b'"t\xffu"'), (b"\xff\xfe", b"ft"),
            (b"c" + b"\xc3\xa9" * 300, b'"' + b" " * 300 + b'"')]
    values = accepted(raw)
    # The parser takes most of these: a test of nothing would not notice.
    assert len(values) > 500
    return values


def test_every_call_id_and_tag_the_parser_takes_reaches_its_session() -> None:
    table = SessionTable(MemoryPorts(30000, 30099))
    dispatcher = ControlHandler(table, table.ports, ["127.0.0.1"])  # type: ignore[arg-type]
    client = LocalRelayClient(lambda: dispatcher)
    for call_id, from_tag in odd_inputs():
        what = f"call-id {call_id!r} tag {from_tag!r}"
        host, port = result_of(client.offer(call_id, from_tag, None, "192.0.2.1", 4000))
        assert (host, len(table)) == ("127.0.0.1", 1), what
        # A retransmitted INVITE (or a re-INVITE) names the same session: same port.
        assert result_of(client.offer(call_id, from_tag, None, "192.0.2.1", 4000))[1] == port
        _, answer_port = result_of(client.answer(call_id, from_tag, "tt", "192.0.2.2", 5000))
        assert answer_port not in (0, port), what
        # The callee's re-INVITE, tags reversed, finds it too.
        assert result_of(client.offer(call_id, "tt", from_tag, "192.0.2.2", 5000))[1] == answer_port
        assert result_of(client.query(call_id, from_tag, "tt"))["ttl"] > 0, what
        (session,) = list(table)
        assert session.call_id == encode_call_id(call_id), what
        if not session.call_id.startswith("##"):
            assert decode_call_id(session.call_id) == call_id, what
        assert dispatcher.errors == 0, what
        assert result_of(client.delete(call_id, from_tag, "tt")) is True, what
        assert len(table) == 0 and table.ports.used_count == 0, what
        assert client.relay_of(call_id) is None
