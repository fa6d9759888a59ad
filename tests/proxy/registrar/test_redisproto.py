"""The lean Redis wire codec: commands out, replies in, in pieces too."""

from __future__ import annotations

import pytest
import txredisapi

from sipsuite.proxy.registrar.redis.connection import Incomplete, encode_command, parse_reply


def test_encode_command() -> None:
    assert encode_command(("GET", b"k\x00y", 3, "\udcff")) == (
        b"*4\r\n$3\r\nGET\r\n$3\r\nk\x00y\r\n$1\r\n3\r\n$1\r\n\xff\r\n")


@pytest.mark.parametrize(("wire", "value"), [
    (b"$3\r\nabc\r\n", b"abc"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b":42\r\n", 42),
    (b"+OK\r\n", "OK"),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*2\r\n:0\r\n$2\r\nhi\r\n", [0, b"hi"]),
    (b"*2\r\n*1\r\n:1\r\n$-1\r\n", [[1], None]),
])
def test_parse_reply(wire: bytes, value: object) -> None:
    assert parse_reply(wire + b"+NEXT\r\n", 0) == (value, len(wire))
    for cut in range(len(wire)):
        with pytest.raises(Incomplete):
            parse_reply(wire[:cut], 0)


def test_errors_are_values() -> None:
    err, pos = parse_reply(b"-ERR unknown command\r\n", 0)
    assert isinstance(err, txredisapi.ResponseError) and str(err) == "unknown command"
    err, _ = parse_reply(b"-NOSCRIPT No matching script\r\n", 0)
    assert err.args[0].startswith("NOSCRIPT")


def test_garbage_is_an_error() -> None:
    with pytest.raises(txredisapi.InvalidResponse):
        parse_reply(b"?what\r\n", 0)
    with pytest.raises(ValueError):
        parse_reply(b"$x\r\n", 0)
