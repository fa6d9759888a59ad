"""URI parsing and serialisation (RFC 3261 19.1, RFC 3966, RFC 5118)."""

from __future__ import annotations

import pytest

from sipsuite.sip.uri import URI


def test_full_sip_uri() -> None:
    u = URI.parse("sips:Alice:secret@Atlanta.Example.COM:5061;transport=TLS;lr?subject=x&h=y")
    assert u.scheme == "sips"
    assert u.user == "Alice"
    assert u.password == "secret"
    assert u.host == "atlanta.example.com"
    assert u.port == 5061
    assert u.params == {"transport": "TLS", "lr": None}
    assert u.headers == "subject=x&h=y"
    assert u.transport == "tls"
    assert u.host_port() == "atlanta.example.com:5061"


def test_minimal_sip_uri() -> None:
    u = URI.parse("sip:example.com")
    assert (u.user, u.password, u.host, u.port, u.params, u.headers) == (
        None, None, "example.com", None, {}, None)
    assert u.host_port() == "example.com"
    assert u.opaque == ""


def test_scheme_and_param_names_lowercased_but_text_kept() -> None:
    text = "SIP:user@EXAMPLE.com;Transport=UDP;LR"
    u = URI.parse(text)
    assert u.scheme == "sip"
    assert u.host == "example.com"
    assert u.params == {"transport": "UDP", "lr": None}
    assert str(u) == text


@pytest.mark.parametrize("text", [
    "sip:vivekg@chair-dnrc.example.com;unknownparam",
    "sip:user;par=u%40example.net@example.com",
    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
    "(doesn't-it)@example.com",
    "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31",
    "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
    "sip:[2001:db8::10]:5070",
    "sip:[2001:db8:::192.0.2.1]",
    "tel:+1-201-555-0123;phone-context=example.com",
    "nobodyKnowsThisScheme:totallyopaquecontent",
    "soap.beep://192.0.2.103:3002",
])
def test_unmodified_uri_round_trips_exactly(text: str) -> None:
    assert str(URI.parse(text)) == text


def test_semicolon_user_part() -> None:
    # RFC 4475 semiuri: the ';' belongs to the user part, not to params.
    u = URI.parse("sip:user;par=u%40example.net@example.com")
    assert u.user == "user;par=u%40example.net"
    assert u.host == "example.com"
    assert u.params == {}
    assert u.user_unescaped == "user;par=u@example.net"


def test_wide_range_user_and_password() -> None:
    # RFC 4475 intmeth: '?' and ',' in the user part, a password.
    u = URI.parse("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:"
                  "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com")
    assert u.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert u.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert u.host == "example.com"
    assert u.headers is None


def test_ipv6_references() -> None:
    u = URI.parse("sip:[2001:db8::10]:5070")
    assert (u.host, u.port) == ("[2001:db8::10]", 5070)
    # RFC 5118 4.3: the last group is part of the address, not a port.
    u = URI.parse("sip:[2001:db8::10:5070]")
    assert (u.host, u.port) == ("[2001:db8::10:5070]", None)
    assert URI.parse("sip:user@[::ffff:192.0.2.2]").host == "[::ffff:192.0.2.2]"
    assert URI.parse("sip:[2001:DB8::A]").host == "[2001:db8::a]"


def test_tel_uri() -> None:
    u = URI.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert u.scheme == "tel"
    assert u.user == "+1-201-555-0123"
    assert u.host == ""
    assert u.params == {"phone-context": "example.com"}
    assert u.opaque == "+1-201-555-0123;phone-context=example.com"


def test_unknown_scheme_is_opaque() -> None:
    u = URI.parse("isbn:2983792873")
    assert (u.scheme, u.opaque, u.host, u.user) == ("isbn", "2983792873", "", None)
    assert URI.parse("http://www.example.com").opaque == "//www.example.com"


@pytest.mark.parametrize("text", [
    "",
    "example.com",
    ":foo",
    "1sip:host",
    "sip:",
    "sip:2001:db8::10",          # RFC 5118 4.2: IPv6 without brackets
    "sip:user@example.com; lr",  # LWS
    "sip:user@exa mple.com",
    "<sip:user@example.com>",
    "sip:user@example.com>",
    "sip:host:",
    "sip:host:99999",
    "sip:host:12a",
    "sip:host:+5",
    "sip:@host",
    "sip:user@",
    "sip:user@host;;lr",
    "sip:user@host;=x",
    "sip:user@host;a=",
    "sip:user@host?",
    "sip:us%zzer@host",
    "sip:us%4@host",
    "sip:user@[2001:db8::1",
    "sip:user@[2001:db8::1]x",
    "sip:user@[]",
    "sip:user@[1.2.3.4]",
    "sip:user@ho_st",
    "sip:us\"er@host",
    "sip:user@host\x00",
    "tel:",
    "tel:;x=y",
    "foo:bar baz",
])
def test_invalid_uris(text: str) -> None:
    with pytest.raises(ValueError):
        URI.parse(text)


def test_mutating_attributes_invalidates_text() -> None:
    u = URI.parse("sip:Bob@Biloxi.example.com;LR")
    u.port = 5070
    assert str(u) == "sip:Bob@biloxi.example.com:5070;lr"
    u = URI.parse("sip:bob@biloxi.example.com;lr")
    u.params["transport"] = "tcp"
    assert str(u) == "sip:bob@biloxi.example.com;lr;transport=tcp"
    del u.params["transport"]
    # Back to the parsed state: the original spelling comes back.
    assert str(u) == "sip:bob@biloxi.example.com;lr"
    u.user = None
    assert str(u) == "sip:biloxi.example.com;lr"


def test_built_uri() -> None:
    u = URI(host="192.0.2.1", port=5060, params={"lr": None})
    assert str(u) == "sip:192.0.2.1:5060;lr"
    assert str(URI("sips", "alice", host="[::1]", headers="a=b")) == "sips:alice@[::1]?a=b"


def test_copy_is_independent() -> None:
    u = URI.parse("sip:alice@example.com;lr")
    c = u.copy()
    c.params["maddr"] = "192.0.2.1"
    c.host = "other.example.com"
    assert str(u) == "sip:alice@example.com;lr"
    assert str(c) == "sip:alice@other.example.com;lr;maddr=192.0.2.1"
    w = u.with_params(transport="tcp", lr=None)
    assert str(w) == "sip:alice@example.com;lr;transport=tcp"
    assert u.params == {"lr": None}


def test_user_unescaped() -> None:
    assert URI.parse("sip:%75se%72@example.com").user_unescaped == "user"
    assert URI.parse("sip:%00@example.com").user_unescaped == "\x00"
    assert URI.parse("sip:example.com").user_unescaped == ""


def test_aor() -> None:
    assert URI.parse("sip:alice@Example.com:5070;transport=tcp?x=y").aor() == "sip:alice@example.com"
    assert URI.parse("sips:alice@example.com").aor() == "sips:alice@example.com"
    assert URI.parse("sip:example.com;lr").aor() == "sip:example.com"
    # Escapes are normalised: equal URIs give equal keys (RFC 3261 19.1.4) ...
    assert URI.parse("sip:%75se%72@example.com").aor() == "sip:user@example.com"
    # ... but never into characters that change the structure or vanish.
    assert URI.parse("sip:u%40x@example.com").aor() == "sip:u%40x@example.com"
    assert URI.parse("sip:%00@example.com").aor() != URI.parse("sip:%00%00@example.com").aor()
    assert URI.parse("sip:a%2fb@h").aor() == "sip:a/b@h"
    assert URI.parse("sip:a%c3%a9@h").aor() == "sip:a%C3%A9@h"
