"""sipsuite.hosts: the one parser and formatter of IP literals and brackets."""

from __future__ import annotations

import ast
import ipaddress
import sys
from pathlib import Path

import pytest

from sipsuite import hosts
from sipsuite.hosts import bracket, host_port, ip_literal, is_ip, unbracket


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("[2001:db8:0::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("[fe80::1%eth0]", "fe80::1%eth0"),
        ("::ffff:192.0.2.1", "::ffff:c000:201"),
        ("example.com", None),
        ("", None),
        ("192.0.2.256", None),
        ("[::1", None),
        ("::1]", None),
        ("[[::1]]", None),
        ("not an address", None),
    ],
)
def test_ip_literal(text: str, expected: str | None) -> None:
    assert ip_literal(text) == expected


def test_is_ip_by_version() -> None:
    assert is_ip("192.0.2.1") and is_ip("192.0.2.1", 4) and not is_ip("192.0.2.1", 6)
    assert is_ip("[::1]", 6) and is_ip("::1", 6) and not is_ip("::1", 4)
    assert not is_ip("example.com") and not is_ip("::1]") and not is_ip("")


@pytest.mark.parametrize(
    ("host", "expected"),
    [("[::1]", "::1"), ("::1", "::1"), ("example.com", "example.com"),
     ("::1]", "::1]"), ("[::1", "[::1"), ("[[::1]]", "[::1]"), ("[]", ""), ("[", "[")],
)
def test_unbracket_takes_off_only_one_enclosing_pair(host: str, expected: str) -> None:
    assert unbracket(host) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [("::1", "[::1]"), ("[::1]", "[::1]"), ("fe80::1%eth0", "[fe80::1%eth0]"),
     ("192.0.2.1", "192.0.2.1"), ("example.com", "example.com"), ("", "")],
)
def test_bracket(host: str, expected: str) -> None:
    assert bracket(host) == expected


def test_host_port() -> None:
    assert host_port("192.0.2.1", 5060) == "192.0.2.1:5060"
    assert host_port("2001:db8::1", 5061) == "[2001:db8::1]:5061"
    assert host_port("[2001:db8::1]", "5062") == "[2001:db8::1]:5062"
    assert host_port("sip.example.com", 5060) == "sip.example.com:5060"


def test_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(hosts.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


# is_ip's IPv4 fast path (inet_pton) must agree with ipaddress on every text,
# the tricky ones included: leading zeros, short forms, signs, non-ASCII
# digits, NUL, trailing whitespace, IPv4 inside IPv6, ports.
@pytest.mark.parametrize("text", [
    "1.2.3.4", "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4 ",
    "a.b.c.d", "\u0661.2.3.4", "1.2.3.4\x00", "0.0.0.0", "255.255.255.255", "1..2.3",
    "+1.2.3.4", "1.2.3.-4", "0x1.2.3.4", "1.2.3.4\n", "::1", "[::1]", "fe80::1%eth0",
    "::ffff:1.2.3.4", "1.2.3.4:5060", "[1.2.3.4]", "example.com", "",
])
@pytest.mark.parametrize("version", [None, 4, 6])
def test_is_ip_agrees_with_ipaddress(text: str, version: int | None) -> None:
    text = text.encode().decode("unicode_escape")
    try:
        ip = ipaddress.ip_address(unbracket(text))
        expected = version is None or ip.version == version
    except ValueError:
        expected = False
    assert is_ip(text, version) is expected
