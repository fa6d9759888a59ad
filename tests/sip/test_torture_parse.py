"""RFC 4475 and RFC 5118 torture messages through parse_datagram.

Each file's outcome is checked against the verdict in its corpus's
expected.tsv (tests/data), and where the RFC allows two answers, against the
choice tests/data/choices.tsv records and explains.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sipsuite.sip.message import ParseError, Request, Response
from sipsuite.sip.parser import parse_datagram

DATA = Path(__file__).resolve().parents[1] / "data"
RFC4475 = DATA / "rfc4475"
RFC5118 = DATA / "rfc5118"

PARSES = "parses"


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "expected.tsv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _choices() -> dict[str, object]:
    """Name -> the parser's answer where the RFC allows two (choices.tsv)."""
    with open(DATA / "choices.tsv", newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {row["file"].split("/")[1]: PARSES if row["parser"] == PARSES else int(row["parser"])
                for row in rows}


CHOICES = _choices()


def expected_outcome(row: dict[str, str]) -> object:
    """PARSES, or the ParseError status the file must produce."""
    name = row["name"]
    if name in CHOICES:
        return CHOICES[name]
    verdict, action = row["verdict"], row["proxy_action"]
    if verdict.startswith("valid"):
        return PARSES
    if verdict == "invalid":
        if "respond 505" in action:
            return 505
        if action.startswith("drop"):
            return 0   # a malformed response: dropped silently
        if action.startswith("respond 400"):
            return 400
    raise AssertionError(f"{name}: no rule for verdict {verdict!r} / {action!r}; "
                         "add a row to tests/data/choices.tsv")


def _cases() -> list[tuple[str, Path, object]]:
    cases = [(row["name"], RFC4475 / f"{row['name']}.dat", expected_outcome(row))
             for row in _rows(RFC4475)]
    cases += [(row["name"], RFC5118 / "wire" / f"{row['name']}.dat", expected_outcome(row))
              for row in _rows(RFC5118)]
    return cases


CASES = _cases()


def test_every_file_has_a_verdict() -> None:
    listed = {path for _name, path, _ in CASES}
    on_disk = set(RFC4475.glob("*.dat")) | set((RFC5118 / "wire").glob("*.dat"))
    assert listed == on_disk
    assert len(listed) == 62


@pytest.mark.parametrize(("name", "path", "expected"), CASES, ids=[c[0] for c in CASES])
def test_torture_file(name: str, path: Path, expected: object) -> None:
    data = path.read_bytes()
    if expected == PARSES:
        msg = parse_datagram(data)
        assert isinstance(msg, Request | Response)
        # Everything the proxy reads must be readable.
        assert msg.vias and msg.cseq and msg.call_id and msg.from_ and msg.to
        again = parse_datagram(msg.to_bytes())
        assert again.to_bytes() == msg.to_bytes()
        return
    with pytest.raises(ParseError) as info:
        parse_datagram(data)
    err = info.value
    assert err.status == expected, err.reason
    if err.status and b"\nVia" in data.replace(b"\nv:", b"\nVia"):
        resp = err.response_bytes()
        # The answer copies the request's lines as they came, broken or not.
        assert resp is not None
        assert resp.startswith(f"SIP/2.0 {err.status} ".encode())
        assert resp.endswith(b"\r\nContent-Length: 0\r\n\r\n")
    else:
        assert err.response_bytes() is None


def load(name: str) -> bytes:
    return (RFC4475 / f"{name}.dat").read_bytes()


def request(name: str) -> Request:
    msg = parse_datagram(load(name))
    assert isinstance(msg, Request)
    return msg


def test_wsinv_details() -> None:
    data = load("wsinv")
    req = request("wsinv")
    assert req.max_forwards == 68
    assert (req.cseq.number, req.cseq.method) == (9, "INVITE")
    assert [v.transport for v in req.vias] == ["UDP", "TCP", "UDP"]
    assert req.header("Subject") == ""
    assert req.header("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert req.contacts[0].params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert req.to_bytes() == data


def test_intmeth_and_esc02_methods() -> None:
    req = request("intmeth")
    assert req.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert req.to.display is not None and "\x00" in req.to.display
    req = request("esc02")
    # The method is not REGISTER, and C%6Fntact is an unknown header.
    assert req.method == "RE%47IST%45R"
    assert len(req.contacts) == 2
    assert req.header("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_escapes_kept_raw() -> None:
    req = request("esc01")
    assert req.uri.user == "sips%3Auser%40example.com"
    assert req.uri.user_unescaped == "sips:user@example.com"
    assert req.contacts[0].uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    req = request("escnull")
    assert [c.uri.aor() for c in req.contacts] == [
        "sip:%00@host5.example.com", "sip:%00%00@host5.example.com"]


def test_semiuri_and_contact_params() -> None:
    req = request("semiuri")
    assert (req.uri.user, req.uri.host) == ("user;par=u%40example.net", "example.com")
    assert len(req.header_all("Accept")) == 6
    assert request("cparam01").contacts[0].params == {"unknownparam": None}
    assert request("cparam01").contacts[0].uri.params == {}
    assert request("cparam02").contacts[0].uri.params == {"unknownparam": None}
    assert request("regescrt").contacts[0].uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_dblreq_only_first_message() -> None:
    req = request("dblreq")
    assert req.method == "REGISTER"
    assert req.body == b""
    assert b"INVITE" not in req.to_bytes()


def test_mpart01_binary_body() -> None:
    req = request("mpart01")
    assert len(req.body) == 553
    assert b"\x00" in req.body
    assert req.to_bytes() == load("mpart01")


def test_inv2543_body_is_rest_of_datagram() -> None:
    data = load("inv2543")
    req = request("inv2543")
    assert req.body == data[data.index(b"\r\n\r\n") + 4 :]
    assert req.max_forwards is None
    assert req.top_via.branch is None
    assert req.from_tag is None


def test_rfc5118_hosts() -> None:
    def uri_of(name: str) -> Request:
        msg = parse_datagram((RFC5118 / "wire" / f"{name}.dat").read_bytes())
        assert isinstance(msg, Request)
        return msg

    assert (uri_of("port-ambiguous").uri.host, uri_of("port-ambiguous").uri.port) == (
        "[2001:db8::10:5070]", None)
    assert (uri_of("port-unambiguous").uri.host, uri_of("port-unambiguous").uri.port) == (
        "[2001:db8::10]", 5070)
    assert uri_of("via-received-param-with-delim").top_via.received == "[2001:db8::9:255]"
    assert uri_of("via-received-param-no-delim").top_via.received == "2001:db8::9:255"
    hosts = [(v.host, v.port, v.received) for v in uri_of("mult-ip-in-header").vias]
    assert hosts == [("[2001:db8::9:1]", 6050, None), ("192.0.2.1", None, None),
                     ("[2001:db8::9:255]", None, "192.0.2.200")]


def test_archived_rfc5118_files_never_crash() -> None:
    # As archived (bare LF, some without the blank line) they are not valid
    # wire messages; all that matters is that nothing but ParseError escapes.
    for path in sorted(RFC5118.glob("*.dat")):
        try:
            parse_datagram(path.read_bytes())
        except ParseError:
            pass
