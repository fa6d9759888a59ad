"""Adversarial SIP messages for the parser's linear-time guarantee (issue 11).

Each ``Case`` builds one request of exactly ``size`` octets whose extra
header lines, Request-URI, header overrides or body are shaped to hit one
known or suspected super-linear path of sipsuite/sip: long whitespace runs
around folds, many folds, thousands of headers, parameters or
comma-separated values, deep nesting of '<', '"' and '\\', SDP with
thousands of lines, Digest credentials with thousands of params.  The
``plain`` case is the yardstick: a message of the same size made of
ordinary header lines.

Used by tests/sip/test_parse_linear.py (a ratio against ``plain``),
tests/integration/test_parse_dos.py (the same bytes at a running proxy)
and bench/parse_worst.py (the figures).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

from sipsuite.sip import digest, sdp
from sipsuite.sip.message import Message, ParseError, Request, Response
from sipsuite.sip.parser import StreamParser, parse_datagram

SIZE = 64000  # under the UDP datagram limit and StreamParser's 65536 default

# Where the messages claim to come from and go to; the integration test gives
# its own (the proxy's address, the sender's socket) so answers stay local.
RURI = "sip:127.0.0.1:5060"
SENT_BY = "127.0.0.1:5061"


@dataclass(frozen=True)
class Case:
    """One adversarial request: ``lines(room)`` gives extra header lines about
    ``room`` characters long (the message is then padded to the exact size)."""

    name: str
    lines: Callable[[int], list[str]] = lambda room: []
    # Header values replacing the base ones (name -> value, None drops it).
    override: Callable[[int], dict[str, str | None]] = lambda room: {}
    ruri_suffix: Callable[[int], str] = lambda room: ""
    body: Callable[[int], bytes] | None = None
    method: str = "OPTIONS"
    kind: str = "sip"  # "sip", "sdp" (body through sdp), "digest" (Authorization)


def _base(method: str, ruri: str, sent_by: str, transport: str) -> dict[str, str | None]:
    return {
        "Via": f"SIP/2.0/{transport} {sent_by};branch=z9hG4bK-adversarial;rport",
        # 0: a proxy answers 483 and never forwards it anywhere.
        "Max-Forwards": "0",
        "From": "<sip:alice@sipsuite.test>;tag=adv1",
        "To": f"<{ruri}>",
        "Call-ID": "adversarial@sipsuite.test",
        "CSeq": f"1 {method}",
    }


def build(case: Case, size: int = SIZE, *, ruri: str = RURI, sent_by: str = SENT_BY,
          transport: str = "UDP", call_id: str | None = None) -> bytes:
    """The case's request, exactly ``size`` octets long (with a Content-Length)."""
    def assemble(room: int, pad: int) -> bytes:
        headers = _base(case.method, ruri, sent_by, transport)
        if call_id is not None:
            headers["Call-ID"] = call_id
        headers.update(case.override(room))
        body = case.body(room) if case.body is not None else b""
        lines = [f"{case.method} {ruri}{case.ruri_suffix(room)} SIP/2.0"]
        lines += [f"{name}: {value}" for name, value in headers.items() if value is not None]
        lines += case.lines(room)
        if body:
            lines.append("Content-Type: application/sdp")
        if pad:
            lines.append("X-Pad: " + "p" * (pad - len("X-Pad: \r\n")))
        length = len(body)
        lines.append(f"Content-Length: {length:05d}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body

    skeleton = len(assemble(0, 0))
    room = size - skeleton - 200  # the pad line takes up what builders leave
    msg = assemble(room, 0)
    for _ in range(5):  # builders only estimate their length: scale down
        if len(msg) <= size - 100:
            break
        room = room * (size - skeleton - 200) // (len(msg) - skeleton)
        msg = assemble(room, 0)
    pad = size - len(msg)
    if pad < 0 or 0 < pad < 16:
        raise AssertionError(f"case {case.name}: {len(msg)} octets for {size}")
    msg = assemble(room, pad) if pad else msg
    assert len(msg) == size, (case.name, len(msg))
    return msg


def _fill(unit: str, room: int) -> str:
    return unit * max(1, room // len(unit))


def _ordinary(room: int) -> list[str]:
    pool = [
        "Subject: lunch on friday at the usual place",
        "User-Agent: ExamplePhone/1.2.3 (firmware 4.5.6)",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY",
        "Supported: replaces, timer, path, gruu",
        "Accept: application/sdp, application/pidf+xml",
        "Record-Route: <sip:192.0.2.10;lr;ftag=abc123>",
        "Organization: Example Communications Ltd",
        "Date: Sat, 13 Nov 2010 23:29:00 GMT",
    ]
    out: list[str] = []
    used = 0
    i = 0
    while used < room:
        line = pool[i % len(pool)]
        out.append(line)
        used += len(line) + 2
        i += 1
    return out


_URI = "<sip:bob@192.0.2.20:5060>"

_SDP_HEAD = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
)


def _sdp(lines: Callable[[int], bytes]) -> Callable[[int], bytes]:
    return lambda room: _SDP_HEAD + lines(room - len(_SDP_HEAD))


def _sdp_repeat(unit: bytes) -> Callable[[int], bytes]:
    return _sdp(lambda room: unit * max(1, room // len(unit)))


def _digest(value: Callable[[int], str]) -> Callable[[int], list[str]]:
    return lambda room: [f"Authorization: {value(room - 20)}"]


_CREDS = 'Digest username="alice", realm="sipsuite.test", nonce="abc", uri="sip:x", response="0"'

PLAIN = Case("plain", lines=_ordinary)

CASES: list[Case] = [
    # Whitespace runs and folding (the issue's own report).
    Case("ws_run_before_fold", lines=lambda r: ["Subject: a" + " " * (r - 40) + "b\r\n c"]),
    Case("tab_run_before_fold", lines=lambda r: ["Subject: a" + _fill(" \t", r - 40) + "b\r\n c"]),
    Case("ws_run_after_fold", lines=lambda r: ["Subject: a\r\n b" + " " * (r - 40) + "c"]),
    Case("ws_run_then_fold_no_text", lines=lambda r: ["Subject: a" + " " * (r - 40) + "\r\n c"]),
    Case("many_folds", lines=lambda r: ["Subject: a" + _fill("\r\n a", r - 40)]),
    Case("blank_folds", lines=lambda r: ["Subject: a" + _fill("\r\n ", r - 40)]),
    Case("fold_tab_runs", lines=lambda r: ["Subject: a" + _fill("\t \t\r\n\t \tb", r - 40)]),
    Case("many_folded_headers", lines=lambda r: ["Subject: a\r\n b"] * (r // 16)),
    Case("folded_via_ws_run", lines=lambda r: [
        "Via: SIP/2.0/UDP 192.0.2.1" + " " * (r - 80) + "\r\n ;branch=z9hG4bK1"]),
    # The same on the error path (missing Call-ID: the salvage pass runs).
    Case("recover_ws_run_before_fold", override=lambda r: {"Call-ID": None},
         lines=lambda r: ["Subject: a" + " " * (r - 40) + "b\r\n c"]),
    Case("recover_many_folds", override=lambda r: {"Call-ID": None},
         lines=lambda r: ["Subject: a" + _fill("\r\n a", r - 40)]),
    Case("recover_via_folds", override=lambda r: {"Call-ID": None},
         lines=lambda r: ["Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1" + _fill("\r\n ;x", r - 60)]),
    Case("recover_many_vias", override=lambda r: {"CSeq": "1 INVITE"},
         lines=lambda r: ["Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"] * (r // 44)),
    # Thousands of header lines.
    Case("many_header_names", lines=lambda r: [f"X-H{i:05d}: v" for i in range(r // 14)]),
    Case("many_short_headers", lines=lambda r: ["X: v"] * (r // 6)),
    Case("many_via_lines", lines=lambda r: [
        f"Via: SIP/2.0/UDP 192.0.2.{i % 250}:5060;branch=z9hG4bK{i:06d}" for i in range(r // 52)]),
    Case("many_compact_vias", lines=lambda r: ["v:SIP/2.0/UDP h;branch=z9hG4bKx"] * (r // 33)),
    # Thousands of comma-separated values.
    Case("many_via_values", lines=lambda r: [
        "Via: " + ", ".join(["SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"] * (r // 40))]),
    Case("many_via_values_quoted", lines=lambda r: [
        "Via: " + ", ".join(['SIP/2.0/UDP h;x="a,b"'] * (r // 23))]),
    Case("many_contacts", lines=lambda r: ["Contact: " + ", ".join([_URI] * (r // 27))]),
    Case("many_contact_lines", lines=lambda r: [f"Contact: {_URI}"] * (r // 36)),
    Case("many_routes", lines=lambda r: ["Route: " + ", ".join(["<sip:192.0.2.1;lr>"] * (r // 20))]),
    Case("many_record_routes", lines=lambda r: [
        "Record-Route: " + ", ".join(["<sip:192.0.2.1;lr>"] * (r // 20))]),
    Case("many_empty_values", lines=lambda r: ["Contact: " + "," * (r - 20)]),
    Case("many_commas_allow", lines=lambda r: ["Allow: " + "A," * (r // 2 - 10)]),
    # Thousands of ;params.
    Case("via_params", lines=lambda r: [
        "Via: SIP/2.0/UDP 192.0.2.1" + "".join(f";p{i}=v" for i in range(r // 9))]),
    Case("via_params_lws", lines=lambda r: [
        "Via: SIP/2.0/UDP 192.0.2.1" + "".join(f" ; p{i} = v" for i in range(r // 13))]),
    Case("via_params_bad_end", lines=lambda r: [
        "Via: SIP/2.0/UDP 192.0.2.1" + ";p=v" * (r // 4 - 5) + ";;"]),
    Case("via_quoted_params", lines=lambda r: [
        "Via: SIP/2.0/UDP 192.0.2.1" + ';p="a b"' * (r // 8)]),
    Case("top_via_params", override=lambda r: {
        "Via": "SIP/2.0/UDP 127.0.0.1:5061;rport;branch=z9hG4bK1" + ";p=v" * (r // 4)}),
    Case("contact_params", lines=lambda r: [f"Contact: {_URI}" + ";p" * (r // 2 - 20)]),
    Case("to_uri_params", override=lambda r: {"To": "<sip:bob@192.0.2.20" + ";p=v" * (r // 4 - 10) + ">"}),
    Case("to_uri_params_escaped", override=lambda r: {
        "To": "<sip:bob@192.0.2.20" + ";p=%41" * (r // 6 - 10) + ">"}),
    Case("from_header_params", override=lambda r: {
        "From": "<sip:alice@sipsuite.test>;tag=adv1" + ";p=v" * (r // 4 - 10)}),
    Case("bare_addr_params", override=lambda r: {
        "From": "sip:alice@sipsuite.test;tag=adv1" + ";p=v" * (r // 4 - 10)}),
    Case("ruri_params", ruri_suffix=lambda r: ";p=v" * (r // 8)),
    Case("ruri_escapes", ruri_suffix=lambda r: ";p=" + "%41" * (r // 6)),
    Case("ruri_headers", ruri_suffix=lambda r: "?" + "a=b&" * (r // 8) + "a=b"),
    # Deep nesting of '<', quotes, backslashes; long quoted strings.
    Case("deep_angles", override=lambda r: {"To": "<" * (r // 2 - 20) + "sip:b@h" + ">" * (r // 2 - 20)}),
    Case("open_angles", override=lambda r: {"To": "<" * (r - 40)}),
    Case("angles_in_contact", lines=lambda r: ["Contact: " + "<sip:a@h>," * (r // 10 - 2) + "<"]),
    Case("deep_quotes", override=lambda r: {"To": '"' * (r - 40) + " <sip:b@h>"}),
    Case("escaped_quotes", override=lambda r: {"To": '"' + '\\"' * (r // 2 - 20) + '" <sip:b@h>'}),
    Case("backslash_run", override=lambda r: {"To": '"' + "\\" * (r - 40) + '" <sip:b@h>'}),
    Case("backslash_runs_quotes", override=lambda r: {
        "To": '"' + '\\\\\\"' * (r // 4 - 20) + '" <sip:b@h>'}),
    Case("unterminated_quote", override=lambda r: {"To": '"' + "a\\\"" * (r // 3 - 20) + " <sip:b@h>"}),
    Case("many_quoted_contacts", lines=lambda r: ["Contact: " + ", ".join(['"a\\"b" <sip:a@h>'] * (r // 18))]),
    Case("quoted_param_escapes", lines=lambda r: [
        'Contact: <sip:a@h>;p="' + '\\"' * (r // 2 - 20) + '"']),
    Case("token_display", override=lambda r: {"To": "a " * (r // 2 - 10) + "<sip:b@h>"}),
    Case("token_display_no_uri", override=lambda r: {"To": "a " * (r // 2 - 10) + "b"}),
    Case("display_ws_run", override=lambda r: {"To": "a" + " " * (r - 40) + "b <sip:b@h>"}),
    Case("to_ws_run", override=lambda r: {"To": "<sip:b@h>" + " " * (r - 40) + ";tag=x"}),
    Case("cseq_ws_run", override=lambda r: {"CSeq": "1" + " " * (r - 40) + "OPTIONS"}),
    Case("long_user", override=lambda r: {"To": "<sip:" + "a" * (r - 40) + "@h>"}),
    Case("long_user_no_at", override=lambda r: {"To": "<sip:" + "a" * (r - 40) + ">"}),
    Case("user_escapes", override=lambda r: {"To": "<sip:" + "%41" * (r // 3 - 20) + "@h>"}),
    Case("long_host", override=lambda r: {"To": "<sip:b@" + "a." * (r // 2 - 20) + "b>"}),
    Case("ipv6_colons", override=lambda r: {"To": "<sip:b@[" + ":" * (r - 40) + "]>"}),
    # SDP: thousands of lines, attributes, sections; whitespace runs.
    Case("sdp_many_attributes", method="INVITE", kind="sdp", body=_sdp_repeat(b"a=x-attr:value\r\n")),
    Case("sdp_many_rtpmaps", method="INVITE", kind="sdp", body=_sdp(
        lambda r: b"m=audio 4000 RTP/AVP 0\r\n" + b"a=rtpmap:0 PCMU/8000\r\n" * (r // 22 - 2))),
    Case("sdp_many_media", method="INVITE", kind="sdp",
         body=_sdp_repeat(b"m=audio 4000 RTP/AVP 0\r\n")),
    Case("sdp_many_media_c", method="INVITE", kind="sdp",
         body=_sdp_repeat(b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.2\r\na=rtcp:4001\r\n")),
    Case("sdp_many_formats", method="INVITE", kind="sdp",
         body=_sdp(lambda r: b"m=audio 4000 RTP/AVP" + b" 0" * (r // 2 - 20) + b"\r\n")),
    Case("sdp_ws_runs", method="INVITE", kind="sdp",
         body=_sdp(lambda r: b"m=audio" + b" " * (r - 40) + b"4000 RTP/AVP 0\r\n")),
    Case("sdp_long_origin", method="INVITE", kind="sdp", body=lambda r: (
        b"v=0\r\no=" + b"a " * (r // 2 - 40) + b"1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n")),
    Case("sdp_fqdn", method="INVITE", kind="sdp",
         body=_sdp(lambda r: b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 a" + b"-" * (r - 60) + b"!\r\n")),
    Case("sdp_fqdn_digits", method="INVITE", kind="sdp",
         body=_sdp(lambda r: b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 " + b"1." * (r // 2 - 40) + b"\r\n")),
    Case("sdp_bare_lf", method="INVITE", kind="sdp", body=_sdp_repeat(b"a=x\n")),
    Case("sdp_bare_cr", method="INVITE", kind="sdp", body=_sdp(lambda r: b"a=x\r" * (r // 4))),
    # Digest credentials (Authorization read by the auth hook).
    Case("digest_many_params", kind="digest", lines=_digest(
        lambda r: _CREDS + "".join(f', p{i}="v"' for i in range(r // 11)))),
    Case("digest_escapes", kind="digest", lines=_digest(
        lambda r: 'Digest username="' + '\\"' * (r // 2 - 60) + '", realm="r", nonce="n", uri="u", response="0"')),
    Case("digest_unterminated", kind="digest", lines=_digest(
        lambda r: 'Digest username="' + 'a\\"' * (r // 3 - 20))),
    Case("digest_ws_runs", kind="digest", lines=_digest(
        lambda r: "Digest" + " " * (r // 2 - 60) + "username" + " " * (r // 2 - 60) + '="a"')),
    Case("digest_commas", kind="digest", lines=_digest(
        lambda r: 'Digest username="a"' + "," * (r - 80) + ' realm="r"')),
    Case("digest_long_token", kind="digest", lines=_digest(lambda r: "Digest " + "a" * (r - 40))),
]

CASE_BY_NAME = {case.name: case for case in [PLAIN, *CASES]}


# --------------------------------------------------------------------------- the work timed

def _sdp_work(msg: Message) -> object:
    try:
        return sdp.parse(msg.body)
    except sdp.SDPError as err:
        return err


def datagram_work(case: Case) -> Callable[[bytes], object]:
    """What a proxy does with the case's datagram: parse it (and answer a bad
    one), then for SDP and Digest cases parse the body / the credentials as
    the media and auth code do."""
    def work(data: bytes) -> object:
        try:
            msg = parse_datagram(data)
        except ParseError as err:
            return err.response_bytes()
        return _after(case, msg)
    return work


def _after(case: Case, msg: Request | Response) -> object:
    if case.kind == "sdp":
        return _sdp_work(msg)
    if case.kind == "digest":
        value = msg.header("authorization")
        return digest.parse_credentials(value) if value is not None else None
    return msg


CHUNK = 1448  # what one TCP segment carries at a 1500-octet MTU


def stream_work(case: Case) -> Callable[[bytes], object]:
    """The case's message through a StreamParser, fed one TCP segment at a time."""
    def work(data: bytes) -> object:
        parser = StreamParser()
        out: list[object] = []
        for i in range(0, len(data), CHUNK):
            out += parser.feed(data[i : i + CHUNK])
        for item in out:
            if isinstance(item, ParseError):
                item.response_bytes()
            elif isinstance(item, Request | Response):
                _after(case, item)
        return out
    return work


def cpu_time(work: Callable[[bytes], object], data: bytes, repeat: int) -> float:
    """Least process CPU time of ``repeat`` runs of ``work(data)``, in seconds.

    The cyclic collector is off while it runs: late in a full test run a
    collection of the whole heap takes a few hundred milliseconds, which is
    no cost of the parser's, yet was once charged to a single run (CI, many
    Route values: 224x the plain message) and tripped the bound at once."""
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.process_time()
            work(data)
            best = min(best, time.process_time() - start)
    finally:
        if enabled:
            gc.enable()
    return best
