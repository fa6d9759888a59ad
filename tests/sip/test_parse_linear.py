"""Parsing costs time linear in the message size, whatever its shape (issue 11).

Every adversarial 64 KB request of tests/adversarial.py (long whitespace
runs around folds, thousands of folds, headers, parameters, comma values,
deep '<' / '"' / '\\' nesting, SDP of thousands of lines, Digest of thousands
of params) must parse, through parse_datagram and through a StreamParser fed
TCP-segment-sized chunks, in at most RATIO times the CPU time of a plain
message of the same size (ordinary header lines).  A ratio of process CPU
times, the least of a few runs, so other load on the machine barely moves
it; a quadratic path costs hundreds to thousands of times the plain message.

The replacements of the quadratic code are checked against what they
replaced on small inputs, so the verdicts stay the same.
"""

from __future__ import annotations

import ipaddress
import re

import adversarial
import pytest
from adversarial import CASES, PLAIN, Case, build, cpu_time, datagram_work, stream_work
from hypothesis import given, settings
from hypothesis import strategies as st

from sipsuite.sip import digest, parser, sdp
from sipsuite.sip.headers import NameAddr, _quote_end
from sipsuite.sip.message import ParseError
from sipsuite.sip.parser import StreamParser, parse_datagram
from sipsuite.sip.uri import URI

RATIO = 20.0
REPEAT = 3  # rounds when within the bound
ROUNDS = 12  # at most, while over it
WORK = {"datagram": datagram_work, "stream": stream_work}


def _ratio(case: Case, path: str) -> tuple[float, float, float]:
    """(case CPU time, plain CPU time, ratio), each the least of its runs.

    The two are run in turn, so a busy spell on the machine slows both; more
    rounds are run while the ratio is over the bound (load only ever adds
    time), up to ROUNDS.  Ten times over the bound no load explains, and a
    quadratic path takes seconds a run: no further round then.
    """
    data = build(case)
    plain_data = build(PLAIN)
    plain_work = WORK[path](PLAIN)
    work = WORK[path](case)
    plain = best = float("inf")
    for done in range(1, ROUNDS + 1):
        plain = min(plain, cpu_time(plain_work, plain_data, 1))
        best = min(best, cpu_time(work, data, 1))
        if (done >= REPEAT and best <= RATIO * plain) or best > 10 * RATIO * plain:
            break
    return best, plain, best / plain


@pytest.mark.parametrize("path", sorted(WORK))
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_adversarial_message_costs_at_most_ratio_of_plain(case: Case, path: str) -> None:
    spent, plain, ratio = _ratio(case, path)
    assert ratio <= RATIO, (
        f"{case.name} through {path}: {spent * 1e3:.2f} ms CPU, {ratio:.1f}x a plain "
        f"{adversarial.SIZE}-octet message ({plain * 1e3:.2f} ms)")


def _stream_floods() -> dict[str, bytes]:
    small = build(PLAIN, 600)
    return {
        # Thousands of CRLFCRLF keep-alives (RFC 5626) ahead of one message.
        "keepalives": b"\r\n\r\n" * ((adversarial.SIZE - len(small)) // 4) + small,
        # A hundred small messages in one read.
        "pipelined": small * (adversarial.SIZE // len(small)),
    }


@pytest.mark.parametrize("name", sorted(_stream_floods()))
def test_stream_floods_cost_at_most_ratio_of_plain(name: str) -> None:
    data = _stream_floods()[name]
    work = stream_work(PLAIN)
    plain = cpu_time(work, build(PLAIN), ROUNDS)
    spent = cpu_time(work, data, ROUNDS)
    out = StreamParser().feed(data)
    assert not any(isinstance(item, ParseError) for item in out) and len(out) > 100
    assert spent <= RATIO * plain, f"{name}: {spent * 1e3:.2f} ms, {spent / plain:.1f}x plain"


def test_cases_are_the_size_and_reach_the_code_they_aim_at() -> None:
    """Each input is 64 KB and parses (or fails) as its case means it to."""
    outcomes = {}
    for case in [PLAIN, *CASES]:
        data = build(case)
        assert len(data) == adversarial.SIZE
        try:
            outcomes[case.name] = parse_datagram(data)
        except ParseError as err:
            outcomes[case.name] = err
    assert not isinstance(outcomes["plain"], ParseError)
    # The issue's own report parses, and its error-path twin is answered.
    folded = outcomes["ws_run_before_fold"]
    assert not isinstance(folded, ParseError)
    subject = folded.header("subject")
    assert subject[:2] == "a " and subject[-3:] == "b c" and not subject[1:-3].strip(" ")
    recovered = outcomes["recover_ws_run_before_fold"]
    assert isinstance(recovered, ParseError) and recovered.status == 400
    assert recovered.response_bytes() is not None
    assert len(outcomes["many_via_lines"].vias) > 1000
    assert len(outcomes["many_contacts"].contacts) > 1000
    assert len(outcomes["via_params"].vias[1].params) > 5000
    assert len(outcomes["many_quoted_contacts"].contacts) > 1000
    sd = sdp.parse(outcomes["sdp_many_media"].body)
    assert len(sd.media) > 2000
    creds = outcomes["digest_many_params"].header("authorization")
    assert digest.parse_credentials(creds) is not None


# --------------------------------------------------------------------------- same verdicts

_FOLD = re.compile(r"[ \t]*\r\n[ \t]+")  # what parser._unfolded replaced


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(" \tab", max_size=5), min_size=1, max_size=6))
def test_unfolded_is_the_fold_regex(pieces: list[str]) -> None:
    # Every CRLF of a folded value starts a continuation line (blank first).
    value = "\r\n".join([pieces[0], *(" " + p if p[:1] not in (" ", "\t") else p for p in pieces[1:])])
    assert parser._unfolded(value) == _FOLD.sub(" ", value)


def _quote_end_reference(text: str, start: int) -> int:
    """The loop _quote_end replaced: count the backslashes before each '"'."""
    i = start + 1
    while True:
        j = text.find('"', i)
        if j < 0:
            raise ValueError("unterminated")
        k = j - 1
        while text[k] == "\\" and k > start:
            k -= 1
        if (j - 1 - k) % 2 == 0:
            return j
        i = j + 1


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except ValueError:
        return "ValueError"


@settings(max_examples=600, deadline=None)
@given(st.text('ab"\\ \n', max_size=16))
def test_quote_end_matches_reference(rest: str) -> None:
    text = '"' + rest
    assert _outcome(_quote_end, text, 0) == _outcome(_quote_end_reference, text, 0)


@settings(max_examples=400, deadline=None)
@given(st.text('a"\\,= ', max_size=16))
def test_digest_unescape_matches_sub(inner: str) -> None:
    value = f'Digest realm="{inner}", nonce="n"'
    got = digest.parse_challenge(value)
    m = re.fullmatch(r'Digest realm="((?:[^"\\]|\\.)*)", nonce="n"', value, re.DOTALL)
    if m is None:
        return
    assert got.get("realm") == re.sub(r"\\(.)", r"\1", m.group(1), flags=re.DOTALL)


@settings(max_examples=400, deadline=None)
@given(st.text("0123456789.:abf%/ ", max_size=20))
def test_ip_version_matches_ipaddress(text: str) -> None:
    try:
        expected: int | None = ipaddress.ip_address(text).version
    except ValueError:
        expected = None
    assert sdp._ip_version(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), st.integers(1, 7), st.integers(0, 3))
def test_last_tokens_are_the_last_of_finditer(line: bytes, count: int, start: int) -> None:
    spans = [m.span() for m in sdp._TOKEN.finditer(line, start)][-count:]
    assert sdp._last_tokens(line, count, start) == spans


def _display_unquoted_reference(inner: str) -> str:
    """The character loop display_unquoted replaced."""
    out = []
    i = 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            i += 1
        out.append(inner[i])
        i += 1
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(st.text('ab\\" ', max_size=12))
def test_display_unquoted_matches_reference(inner: str) -> None:
    addr = NameAddr(URI.parse("sip:a@b"), display=f'"{inner}"')
    assert addr.display_unquoted == _display_unquoted_reference(inner)
