"""HTTP Digest for SIP (RFC 2617, RFC 7616, RFC 3261 22.4): vectors, parsing, nonces."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipsuite.sip.digest import (
    ALGORITHMS,
    Credentials,
    NonceCounter,
    NonceFactory,
    authorization,
    challenge,
    compute_ha1,
    compute_response,
    parse_challenge,
    parse_credentials,
    verify,
)

# RFC 7616 3.9.1 inputs (the same for the SHA-256 and the MD5 example).
RFC7616_USER = "Mufasa"
RFC7616_REALM = "http-auth@example.org"
RFC7616_PASSWORD = "Circle of Life"
RFC7616_URI = "/dir/index.html"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


# --- vectors -------------------------------------------------------------------


def test_rfc2617_example() -> None:
    ha1 = compute_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response(
        "MD5", ha1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "GET", "/dir/index.html",
        qop="auth", nc="00000001", cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_examples(algorithm: str, expected: str) -> None:
    ha1 = compute_ha1(algorithm, RFC7616_USER, RFC7616_REALM, RFC7616_PASSWORD)
    response = compute_response(
        algorithm, ha1, RFC7616_NONCE, "GET", RFC7616_URI,
        qop="auth", nc="00000001", cnonce=RFC7616_CNONCE,
    )
    assert response == expected


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_header_verifies(algorithm: str, expected: str) -> None:
    value = (
        f'Digest username="{RFC7616_USER}",\r\n    realm="{RFC7616_REALM}",\r\n'
        f'    uri="{RFC7616_URI}",\r\n    algorithm={algorithm},\r\n'
        f'    nonce="{RFC7616_NONCE}",\r\n    nc=00000001,\r\n'
        f'    cnonce="{RFC7616_CNONCE}",\r\n    qop=auth,\r\n'
        f'    response="{expected}",\r\n    opaque="{RFC7616_OPAQUE}"'
    )
    creds = parse_credentials(value)
    assert creds is not None
    assert creds.algorithm == algorithm
    assert creds.opaque == RFC7616_OPAQUE
    ha1 = compute_ha1(algorithm, RFC7616_USER, RFC7616_REALM, RFC7616_PASSWORD)
    assert verify(creds, "GET", ha1)
    assert not verify(creds, "POST", ha1)


def test_rfc2069_style_without_qop() -> None:
    ha1 = compute_ha1("MD5", "alice", "example.com", "secret")
    value = authorization("alice", "secret", "example.com", "abc", "INVITE", "sip:bob@example.com",
                          qop=None)
    assert "qop" not in value and "nc=" not in value and "cnonce" not in value
    creds = parse_credentials(value)
    assert creds is not None and creds.qop is None
    assert verify(creds, "INVITE", ha1)
    assert creds.response == compute_response("MD5", ha1, "abc", "INVITE", "sip:bob@example.com")


def test_ha1_algorithms() -> None:
    assert ALGORITHMS == ("MD5", "SHA-256")
    assert len(compute_ha1("MD5", "u", "r", "p")) == 32
    assert len(compute_ha1("SHA-256", "u", "r", "p")) == 64
    assert compute_ha1("sha-256", "u", "r", "p") == compute_ha1("SHA-256", "u", "r", "p")
    with pytest.raises(ValueError):
        compute_ha1("SHA-1", "u", "r", "p")


def test_compute_response_errors() -> None:
    with pytest.raises(ValueError):
        compute_response("MD5", "x", "n", "GET", "/", qop="auth")  # no nc/cnonce
    with pytest.raises(ValueError):
        compute_response("MD5", "x", "n", "GET", "/", qop="bogus", nc="00000001", cnonce="c")
    with pytest.raises(ValueError):
        compute_response("MD5", "x", "n", "GET", "/", qop="auth-int", nc="00000001", cnonce="c")


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip(algorithm: str) -> None:
    value = authorization("alice", "s3cret", "example.com", "nonce-1", "REGISTER",
                          "sip:example.com", algorithm=algorithm, nc=7, opaque="op")
    creds = parse_credentials(value)
    assert creds is not None
    assert (creds.username, creds.realm, creds.nonce, creds.uri) == (
        "alice", "example.com", "nonce-1", "sip:example.com")
    assert (creds.algorithm, creds.qop, creds.nc, creds.opaque) == (algorithm, "auth", "00000007", "op")
    assert creds.cnonce
    ha1 = compute_ha1(algorithm, "alice", "example.com", "s3cret")
    assert verify(creds, "REGISTER", ha1)
    assert verify(creds, "REGISTER", ha1.upper())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_password_fails(algorithm: str) -> None:
    value = authorization("alice", "wrong", "example.com", "n", "REGISTER", "sip:example.com",
                          algorithm=algorithm)
    creds = parse_credentials(value)
    assert creds is not None
    assert not verify(creds, "REGISTER", compute_ha1(algorithm, "alice", "example.com", "s3cret"))


def test_verify_rejects_tampering() -> None:
    ha1 = compute_ha1("MD5", "alice", "example.com", "pw")
    creds = parse_credentials(authorization("alice", "pw", "example.com", "n", "INVITE", "sip:b@x"))
    assert creds is not None and verify(creds, "INVITE", ha1)
    for changes in (
        {"uri": "sip:c@x"}, {"nonce": "m"}, {"nc": "00000002"}, {"cnonce": "other"},
        {"qop": "auth-conf"}, {"nc": None}, {"cnonce": None}, {"nc": "1"}, {"cnonce": ""},
        {"algorithm": "SHA-256"}, {"algorithm": "MD5-sess"}, {"response": "zz"},
        {"response": creds.response + "0"},
    ):
        fields = {name: getattr(creds, name) for name in Credentials.__slots__}
        fields.update(changes)
        assert not verify(Credentials(**fields), "INVITE", ha1), changes
    assert not verify(creds, "INVITE", compute_ha1("SHA-256", "alice", "example.com", "pw"))


def test_verify_uppercase_response() -> None:
    ha1 = compute_ha1("MD5", "alice", "example.com", "pw")
    creds = parse_credentials(authorization("alice", "pw", "example.com", "n", "INVITE", "sip:b@x"))
    assert creds is not None
    creds.response = creds.response.upper()
    assert verify(creds, "INVITE", ha1)


def test_auth_int() -> None:
    ha1 = compute_ha1("SHA-256", "alice", "example.com", "pw")
    value = authorization("alice", "pw", "example.com", "n", "INVITE", "sip:b@x",
                          algorithm="SHA-256", qop="auth-int", body=b"v=0\r\n")
    creds = parse_credentials(value)
    assert creds is not None and creds.qop == "auth-int"
    assert verify(creds, "INVITE", ha1, body=b"v=0\r\n")
    assert not verify(creds, "INVITE", ha1, body=b"v=1\r\n")
    assert not verify(creds, "INVITE", ha1)  # no body to check against


def test_non_ascii_username() -> None:
    value = authorization("jörg", "pässword", "example.com", "n", "REGISTER", "sip:example.com")
    creds = parse_credentials(value)
    assert creds is not None and creds.username == "jörg"
    assert verify(creds, "REGISTER", compute_ha1("MD5", "jörg", "example.com", "pässword"))


# --- challenge ----------------------------------------------------------------------


def test_challenge_md5() -> None:
    value = challenge("example.com", "abc")
    assert value.startswith("Digest ")
    assert 'realm="example.com"' in value and 'nonce="abc"' in value and 'qop="auth"' in value
    assert "stale" not in value
    params = parse_challenge(value)
    assert params["realm"] == "example.com" and params["nonce"] == "abc"
    assert params.get("algorithm", "MD5") == "MD5"
    assert params["qop"] == "auth"


def test_challenge_sha256_stale_opaque() -> None:
    value = challenge('ex"am\\ple', "abc", "sha-256", stale=True, opaque="o1", qop=None)
    assert "algorithm=SHA-256" in value and "stale=true" in value and "qop" not in value
    assert parse_challenge(value) == {
        "realm": 'ex"am\\ple', "nonce": "abc", "opaque": "o1", "algorithm": "SHA-256",
        "stale": "true",
    }


def test_challenge_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        challenge("example.com", "abc", "SHA-1")
    with pytest.raises(ValueError):
        challenge("example.com\r\nX-Injected: 1", "abc")


def test_parse_challenge_not_digest() -> None:
    assert parse_challenge('Basic realm="x"') == {}
    assert parse_challenge("") == {}
    assert parse_challenge('Digest realm="x') == {}


# --- parsing --------------------------------------------------------------------------


def test_parse_escaped_quotes_and_backslashes() -> None:
    creds = parse_credentials(
        r'Digest username="al\"ice\\", realm="a\,b", nonce="n", uri="sip:x", response="r"')
    assert creds is not None
    assert creds.username == 'al"ice\\'
    assert creds.realm == "a,b"


def test_parse_extra_spaces_and_any_order() -> None:
    creds = parse_credentials(
        '  digest   response = "r" ,uri="sip:x"  ,\t NONCE= "n",,  Realm ="R",username="u" ,  ')
    assert creds is not None
    assert (creds.username, creds.realm, creds.nonce, creds.uri, creds.response) == (
        "u", "R", "n", "sip:x", "r")
    assert creds.algorithm == "MD5"
    assert creds.params["nonce"] == "n"


def test_parse_line_folding() -> None:
    creds = parse_credentials('Digest username="u",\r\n realm="r",\r\n\tnonce="n", uri="sip:x",'
                              ' response="r"')
    assert creds is not None and creds.nonce == "n"


def test_parse_unquoted_and_quoted_tokens() -> None:
    creds = parse_credentials('DIGEST username="u", realm="r", nonce="n", uri="sip:x", '
                              'response="r", algorithm=md5, qop="auth", nc=0000000a, '
                              'cnonce="c", stale=false')
    assert creds is not None
    assert (creds.algorithm, creds.qop, creds.nc, creds.cnonce) == ("MD5", "auth", "0000000a", "c")
    assert creds.params["stale"] == "false"
    creds = parse_credentials('Digest username="u", realm="r", nonce="n", uri="sip:x", '
                              'response="r", algorithm="sha-256"')
    assert creds is not None and creds.algorithm == "SHA-256"


def test_parse_unknown_algorithm_kept() -> None:
    creds = parse_credentials('Digest username="u", realm="r", nonce="n", uri="sip:x", '
                              'response="r", algorithm=Foo')
    assert creds is not None and creds.algorithm == "Foo"
    assert not verify(creds, "GET", "0" * 32)


def test_regaut01_unknown_scheme() -> None:
    # RFC 4475 3.1.2.10
    assert parse_credentials("NoOneKnowsThisScheme opaque-data=here") is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest",
        "Digest ",
        'Basic dXNlcjpwYXNz',
        'Digest username="u", realm="r", nonce="n", uri="sip:x"',  # no response
        'Digest username="u" realm="r", nonce="n", uri="sip:x", response="r"',  # no comma
        'Digest username="u, realm="r", nonce="n", uri="sip:x", response="r"',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="r", x',
        'Digest username="u", username="v", realm="r", nonce="n", uri="sip:x", response="r"',
        'Digestusername="u", realm="r", nonce="n", uri="sip:x", response="r"',
        'Digest =x',
        'Digest username=, realm="r"',
        '"Digest" username="u"',
        'Digest username="u\\',
    ],
)
def test_parse_garbage_is_none(value: str) -> None:
    assert parse_credentials(value) is None


@given(st.text())
def test_parse_credentials_never_raises(value: str) -> None:
    creds = parse_credentials(value)
    assert creds is None or isinstance(creds, Credentials)
    assert isinstance(parse_challenge(value), dict)


@given(st.text(alphabet='Digest =,"\\\r\n\tauthrnc0'))
def test_parse_digest_shaped_text_never_raises(tail: str) -> None:
    for value in ("Digest " + tail, 'Digest username="u", ' + tail):
        creds = parse_credentials(value)
        assert creds is None or isinstance(creds, Credentials)


@given(st.text(alphabet=st.characters(blacklist_characters="\r\n\x00"), min_size=0))
def test_quoting_round_trips(value: str) -> None:
    params = parse_challenge(challenge(value, "n"))
    assert params["realm"] == value


# --- nonces ---------------------------------------------------------------------------


SECRET = b"shared-secret"


def test_nonce_valid_and_stale() -> None:
    f = NonceFactory(SECRET, 30.0)
    nonce = f.make(1000.0, "example.com")
    assert f.check(nonce, 1000.0, "example.com") == "valid"
    assert f.check(nonce, 1030.0, "example.com") == "valid"
    assert f.check(nonce, 1030.5, "example.com") == "stale"
    assert f.check(nonce, 99999.0, "example.com") == "stale"
    assert f.expires_at(nonce, "example.com") == 1030.0
    assert f.expires_at(nonce, "other") is None


def test_nonce_is_quoted_string_safe() -> None:
    f = NonceFactory(SECRET, 30.0)
    for now in (0.0, 1.5, 1.7e9, -5.0):
        nonce = f.make(now)
        assert "=" not in nonce
        assert set(nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert f.check(nonce, now) == "valid"


def test_nonce_shared_between_nodes() -> None:
    nonce = NonceFactory(SECRET, 30.0).make(50.0)
    assert NonceFactory(SECRET, 30.0).check(nonce, 51.0) == "valid"


def test_nonce_other_secret_or_realm_invalid() -> None:
    nonce = NonceFactory(SECRET, 30.0).make(50.0, "a.example")
    assert NonceFactory(b"another-secret", 30.0).check(nonce, 50.0, "a.example") == "invalid"
    assert NonceFactory(SECRET, 30.0).check(nonce, 50.0, "b.example") == "invalid"
    assert NonceFactory(SECRET, 30.0).check(nonce, 50.0) == "invalid"


def test_nonces_at_same_time_differ() -> None:
    f = NonceFactory(SECRET, 30.0)
    nonces = {f.make(10.0) for _ in range(50)}
    assert len(nonces) == 50


def test_nonce_tampered() -> None:
    f = NonceFactory(SECRET, 30.0)
    nonce = f.make(100.0)
    for i in range(len(nonce)):
        c = "A" if nonce[i] != "A" else "B"
        assert f.check(nonce[:i] + c + nonce[i + 1:], 100.0) == "invalid"
    # A forged later issue time (to escape staleness) breaks the MAC.
    raw = bytearray(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
    raw[7] ^= 1
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert f.check(forged, 100.0) == "invalid"


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "!!!!", "not base64 at all", "a" * 200, "é" * 40, "AAAA====", "+/+/" * 10],
)
def test_nonce_garbage(bad: str) -> None:
    assert NonceFactory(SECRET, 30.0).check(bad, 0.0) == "invalid"


def test_nonce_truncated_or_extended() -> None:
    f = NonceFactory(SECRET, 30.0)
    nonce = f.make(100.0)
    assert f.check(nonce[:-1], 100.0) == "invalid"
    assert f.check(nonce[:-4], 100.0) == "invalid"
    assert f.check(nonce + "A", 100.0) == "invalid"
    assert f.check(nonce + "=", 100.0) == "invalid"


def test_nonce_from_the_future() -> None:
    f = NonceFactory(SECRET, 30.0)
    nonce = f.make(1000.0)
    assert f.check(nonce, 998.0) == "valid"  # small clock skew between nodes
    assert f.check(nonce, 900.0) == "invalid"


def test_nonce_factory_arguments() -> None:
    with pytest.raises(ValueError):
        NonceFactory(b"", 30.0)
    with pytest.raises(ValueError):
        NonceFactory(SECRET, 0.0)


# --- nonce counter --------------------------------------------------------------------


def test_counter_replay() -> None:
    c = NonceCounter()
    assert c.accept("n1", "00000001", 100.0, 0.0)
    assert not c.accept("n1", "00000001", 100.0, 1.0)  # same nc
    assert c.accept("n1", "00000003", 100.0, 2.0)
    assert not c.accept("n1", "00000002", 100.0, 3.0)  # lower
    assert c.accept("n1", "0000000A", 100.0, 4.0)  # higher (hex, any case)
    assert c.accept("n2", "00000001", 100.0, 4.0)  # per nonce


@pytest.mark.parametrize("nc", ["", "1", "0000001", "000000001", "0000000g", " 0000001", "-0000001",
                                "00000000"])
def test_counter_malformed_nc(nc: str) -> None:
    assert not NonceCounter().accept("n", nc, 100.0, 0.0)


def test_counter_forgets_expired() -> None:
    c = NonceCounter()
    assert c.accept("n1", "00000005", 10.0, 0.0)
    assert c.accept("n2", "00000001", 50.0, 0.0)
    assert len(c) == 2
    assert not c.accept("n1", "00000006", 10.0, 10.0)  # expired: stale, not accepted
    assert len(c) == 1
    assert c.accept("n1", "00000001", 30.0, 11.0)  # a fresh expiry: remembered anew
    assert not c.accept("n1", "00000001", 30.0, 12.0)


def test_counter_bound() -> None:
    c = NonceCounter(max_entries=3)
    for i in range(3):
        assert c.accept(f"n{i}", "00000001", 100.0 + i, 0.0)
    assert c.accept("n3", "00000001", 200.0, 1.0)
    assert len(c) == 3
    # n0 expired soonest, so it was dropped; the rest are still remembered.
    assert c.accept("n0", "00000001", 100.0, 2.0)
    assert not c.accept("n3", "00000001", 200.0, 2.0)
    for i in range(1000):
        c.accept(f"m{i}", "00000001", 500.0 + i, 3.0)
    assert len(c) == 3
    with pytest.raises(ValueError):
        NonceCounter(max_entries=0)


def test_counter_with_factory() -> None:
    f = NonceFactory(SECRET, 30.0)
    c = NonceCounter()
    nonce = f.make(0.0, "r")
    expires = f.expires_at(nonce, "r")
    assert expires is not None
    assert c.accept(nonce, "00000001", expires, 5.0)
    assert not c.accept(nonce, "00000001", expires, 6.0)
    assert not c.accept(nonce, "00000002", expires, 31.0)
