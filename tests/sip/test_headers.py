"""Typed header values: Via, NameAddr, CSeq, names and value splitting."""

from __future__ import annotations

import pytest

from sipsuite.sip.headers import (
    COMPACT,
    MULTI_VALUE,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    parse_params,
    split_values,
)

# --- names -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key"), [
    ("Via", "via"), ("v", "via"), ("V", "via"), ("vIA", "via"), ("Via  ", "via"),
    ("i", "call-id"), ("CALL-ID", "call-id"), ("m", "contact"), ("l", "content-length"),
    ("c", "content-type"), ("f", "from"), ("t", "to"), ("TO ", "to"), ("k", "supported"),
    ("s", "subject"), ("e", "content-encoding"), ("r", "refer-to"), ("b", "referred-by"),
    ("o", "event"), ("u", "allow-events"), ("x", "session-expires"), ("y", "identity"),
    ("n", "identity-info"), ("a", "accept-contact"), ("j", "reject-contact"),
    ("d", "request-disposition"), ("X-Custom-Header", "x-custom-header"),
    ("extensionHeader-!.%*+_`'~", "extensionheader-!.%*+_`'~"),
])
def test_canonical_name(name: str, key: str) -> None:
    assert canonical_name(name) == key


def test_compact_table_complete() -> None:
    assert len(COMPACT) == 20
    assert {"via", "route", "record-route", "contact", "allow", "supported"} <= MULTI_VALUE
    assert "from" not in MULTI_VALUE and "to" not in MULTI_VALUE


@pytest.mark.parametrize("name", ["", " ", "Bad Name", "Via:", "Ví", "a\x00b", "<x>"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        canonical_name(name)


# --- value splitting -----------------------------------------------------------


def test_split_values_plain() -> None:
    assert split_values("INVITE, ACK ,BYE") == ["INVITE", "ACK", "BYE"]
    assert split_values("a") == ["a"]
    assert split_values("a,,b") == ["a", "", "b"]


def test_split_values_respects_quotes_and_angles() -> None:
    value = '"Doe, John" <sip:j@x;a=1,2>;q=0.5, <sip:k@y>, "a \\" , b" <sip:z@z>'
    assert split_values(value) == [
        '"Doe, John" <sip:j@x;a=1,2>;q=0.5', "<sip:k@y>", '"a \\" , b" <sip:z@z>']


def test_split_values_unterminated() -> None:
    with pytest.raises(ValueError):
        split_values('"abc, def')
    with pytest.raises(ValueError):
        split_values("<sip:a@b, c")


def test_parse_params() -> None:
    assert parse_params(" tag  = 1918181833n") == {"tag": "1918181833n"}
    assert parse_params("lr;Expires=60;q=0.33") == {"lr": None, "expires": "60", "q": "0.33"}
    assert parse_params('x="a;b,c";y') == {"x": '"a;b,c"', "y": None}
    assert parse_params("received=[2001:db8::9:255]") == {"received": "[2001:db8::9:255]"}
    for bad in ("", ";", "a;;b", "=x", "a=", 'a="x', 'a="x"y', "a=b c", "a b"):
        with pytest.raises(ValueError):
            parse_params(bad)


# --- Via ---------------------------------------------------------------------------


def test_via_basic() -> None:
    v = Via.parse("SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport")
    assert v.protocol == "SIP/2.0"
    assert v.transport == "UDP"
    assert v.host == "pc33.atlanta.example.com"
    assert v.port == 5060
    assert v.branch == "z9hG4bK776asdhds"
    assert v.rport == ""
    assert v.received is None and v.maddr is None and v.ttl is None
    assert v.sent_by() == "pc33.atlanta.example.com:5060"
    assert str(v) == "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport"


def test_via_lws_everywhere() -> None:
    # RFC 4475 wsinv after unfolding.
    v = Via.parse("SIP  / 2.0  / tcp     spindle.example.com   ; branch  =   z9hG4bK9ikj8")
    assert (v.protocol, v.transport, v.host, v.port) == ("SIP/2.0", "TCP", "spindle.example.com", None)
    assert v.branch == "z9hG4bK9ikj8"
    v = Via.parse("SIP/2.0/UDP host.example.com : 5080 ;received=192.0.2.1")
    assert (v.host, v.port, v.received) == ("host.example.com", 5080, "192.0.2.1")


def test_via_ipv6_and_received() -> None:
    v = Via.parse("SIP/2.0/UDP [2001:db8::9:1]:6050;received=[2001:db8::9:255];rport=5062;branch=z9hG4bKx")
    assert (v.host, v.port) == ("[2001:db8::9:1]", 6050)
    assert v.received == "[2001:db8::9:255]"
    assert v.rport == "5062"
    assert v.sent_by() == "[2001:db8::9:1]:6050"
    assert Via.parse("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255").received == "2001:db8::9:255"


def test_via_unknown_transport_and_params() -> None:
    v = Via.parse("SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en;maddr=224.0.0.1;ttl=16")
    assert v.transport == "UNKNOWN"
    assert v.maddr == "224.0.0.1" and v.ttl == "16"
    # A valueless parameter is legal syntax (its meaning is not ours to judge).
    assert Via.parse("SIP/2.0/UDP host;branch").params == {"branch": None}


@pytest.mark.parametrize("text", [
    "",
    "SIP/2.0/UDP",
    "SIP/2.0 192.0.2.1",
    "SIP/2.0/UDP 192.0.2.15;;",              # RFC 4475 badinv01
    "SIP/2.0/UDP 192.0.2.15;branch=x;",
    "SIP/2.0/UDP 2001:db8::1",
    "SIP/2.0/UDP host port",
    "SIP/2.0/UDP host:99999",
    "SIP/2.0/U DP host",
    "SIP/2.0/UDP ho st;branch=x",
    "SIP/2.0/UDP host;branch=a b",
])
def test_bad_vias(text: str) -> None:
    with pytest.raises(ValueError):
        Via.parse(text)


def test_via_build_and_copy() -> None:
    v = Via("udp", "192.0.2.1", 5060, {"branch": "z9hG4bK1", "rport": None})
    assert str(v) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport"
    c = v.copy()
    c.params["received"] = "198.51.100.1"
    assert "received" not in v.params
    assert str(c).endswith(";received=198.51.100.1")


# --- NameAddr ------------------------------------------------------------------------


def test_name_addr_quoted_display() -> None:
    a = NameAddr.parse('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8')
    assert a.display == '"J Rosenberg \\\\\\""'
    assert a.display_unquoted == 'J Rosenberg \\"'
    assert str(a.uri) == "sip:jdrosen@example.com"
    assert a.tag == "98asjd8"
    assert a.angle
    assert str(a) == '"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>;tag=98asjd8'


def test_name_addr_token_display() -> None:
    a = NameAddr.parse("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;tag=x")
    assert a.display == "token1~` token2'+_ token3*%!.-"
    assert a.display_unquoted == a.display
    # RFC 4475 lwsdisp: no LWS before '<'.
    a = NameAddr.parse("caller<sip:caller@example.com>;tag=323")
    assert (a.display, str(a.uri), a.tag) == ("caller", "sip:caller@example.com", "323")


def test_name_addr_uri_params_stay_in_uri() -> None:
    # RFC 4475 cparam02: inside <> the param belongs to the URI.
    a = NameAddr.parse("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert a.uri.params == {"unknownparam": None}
    assert a.params == {}
    assert a.display is None


def test_addr_spec_params_are_header_params() -> None:
    # RFC 3261 20.10 / RFC 4475 cparam01.
    a = NameAddr.parse("sip:+19725552222@gw1.example.net;unknownparam")
    assert a.uri.params == {}
    assert a.params == {"unknownparam": None}
    assert not a.angle
    a = NameAddr.parse("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert str(a.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert a.tag == "1918181833n"
    assert str(a) == "sip:vivekg@chair-dnrc.example.com;tag=1918181833n"


def test_name_addr_unknown_schemes() -> None:
    assert NameAddr.parse("isbn:2983792873").uri.scheme == "isbn"
    a = NameAddr.parse("<http://www.example.com>;tag=3234233")
    assert (a.uri.scheme, a.tag) == ("http", "3234233")
    assert NameAddr.parse("<name:John_Smith>").uri.opaque == "John_Smith"


def test_name_addr_escaped_headers_in_angles_ok() -> None:
    # RFC 4475 regescrt.
    a = NameAddr.parse("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")
    assert a.uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_name_addr_quoted_param_value() -> None:
    a = NameAddr.parse('<sip:a@b>;x="some;thing, odd";tag=1')
    assert a.params == {"x": '"some;thing, odd"', "tag": "1"}


@pytest.mark.parametrize("text", [
    "",
    "sip:user@example.com?Route=%3Csip:sip.example.com%3E",   # regbadct
    "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",      # baddn
    '"Mr. J. User <sip:j.user@example.com>',                   # quotbal
    '"Watson, Thomas" < sip:t.watson@example.org >',           # badaspec
    '"Joe" <sip:joe@example.org>;;;;',                          # badinv01
    '"Joe" sip:joe@example.org',
    "<sip:joe@example.org",
    "<sip:joe@example.org> junk",
    "<>",
    "<sip:2001:db8::1>",
    "sip:a@b,c",
    "Joe@home <sip:a@b>",
])
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(ValueError):
        NameAddr.parse(text)


def test_name_addr_str_forms() -> None:
    a = NameAddr.parse("sip:alice@example.com")
    assert str(a) == "sip:alice@example.com"
    a.uri.params["lr"] = None
    # Once the URI has params it can only be written inside <>.
    assert str(a) == "<sip:alice@example.com;lr>"
    b = NameAddr(a.uri.copy(), '"Alice"', {"tag": "1"})
    assert str(b) == '"Alice" <sip:alice@example.com;lr>;tag=1'
    c = b.copy()
    c.params["tag"] = "2"
    assert b.tag == "1" and c.tag == "2"


# --- CSeq ---------------------------------------------------------------------------


def test_cseq() -> None:
    c = CSeq.parse("0009 INVITE")
    assert (c.number, c.method) == (9, "INVITE")
    assert str(c) == "9 INVITE"
    assert CSeq.parse("4294967295\t ACK").number == 2**32 - 1
    assert CSeq.parse("000000000000000001 BYE").number == 1
    assert CSeq(1, "BYE") == CSeq.parse("1 BYE")
    assert hash(CSeq(1, "BYE")) == hash(CSeq(1, "BYE"))


@pytest.mark.parametrize("text", [
    "", "INVITE", "1", "1 INVITE x", "-1 INVITE", "4294967296 INVITE",
    "36893488147419103232 REGISTER", "1x INVITE", "١ INVITE", "1 INV/ITE",
    "9" * 5000 + " INVITE",
])
def test_bad_cseq(text: str) -> None:
    with pytest.raises(ValueError):
        CSeq.parse(text)
