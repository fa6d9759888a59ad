"""The fuzzer's seeds and its mutator.

Seeds are this project's own messages (built here with sipmsg's builders, the
way the integration tests build theirs): every method the proxy routes, digest
credentials, SDP offers and answers, compact forms, folding, IPv6, responses.

``Mutator(seed).case(i)`` is a pure function of (seed, i): a failing case is
reproduced from the two numbers alone. Each case is either one radamsa pass
(pyradamsa: generic byte-level mutations) or one to four SIP-aware edits of
our own (bit flips, byte inserts and deletes, header duplication and
splicing, huge values, delimiter runs, edge numbers, broken line ends,
Content-Length lies).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

import pyradamsa
from sipmsg import build_request

MAX_CASE = 64_000  # one UDP datagram (after the markers are replaced); the proxy's limit is 65536

SDP_AV = (
    "v=0\r\no=fuzz 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:49171\r\na=sendrecv\r\n"
    "a=candidate:1 1 UDP 2130706431 127.0.0.1 49170 typ host\r\n"
    "m=video 51372 RTP/AVP 31\r\na=rtpmap:31 H261/90000\r\n"
)
SDP_V6 = (
    "v=0\r\no=fuzz 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n"
    "m=audio 5004 RTP/AVP 8\r\na=inactive\r\n"
)
SDP_HOLD = (
    "v=0\r\no=fuzz 3 4 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 8\r\na=sendonly\r\nm=audio 0 RTP/AVP 0\r\n"
)
MULTIPART = (
    "--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\n" + SDP_AV
    + "--unique-boundary-1\r\nContent-Type: application/isup\r\n\r\n\x01\x02\x03\r\n"
    "--unique-boundary-1--\r\n").encode()


@dataclass(frozen=True)
class Target:
    """What the seeds address: the proxy, its domain, a user it routes (a
    static location entry), where the sender claims to be. The proxy and the
    sender are markers the sender replaces after mutation (``PROXY_MARK``,
    ``SENDER_MARK``), so a case's bytes do not depend on a run's ports."""

    proxy: str = "proxy.invalid:5060"
    domain: str = "sipsuite.test"
    user: str = "fuzzbob"
    sent_by: str = "sender.invalid:5999"


PROXY_MARK = Target.proxy.encode()
SENDER_MARK = Target.sent_by.encode()
# Branch, Call-ID and From tag: the sender makes each case's its own, else
# most cases would be retransmissions of the first with the same seed.
ID_MARK = b"XIDX"
IDS = {"branch": "z9hG4bKXIDX", "call_id": "XIDX", "from_tag": "XIDX"}


def _digest(kind: str, user: str, uri: str) -> tuple[str, str]:
    return (kind, f'Digest username="{user}", realm="sipsuite", nonce="MTIzNDU2Nzg5MA==.abc", '
                  f'uri="{uri}", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, '
                  'qop=auth, nc=00000001, cnonce="0a4f113b", opaque="5ccc069c403ebaf9"')


def seeds(t: Target = Target()) -> list[bytes]:  # noqa: B008
    req = functools.partial(build_request, **IDS)
    user_uri = f"sip:{t.user}@{t.domain}"
    rr = f"<sip:{t.proxy};lr>"
    sdp = ("Content-Type", "application/sdp")
    out = [
        req("REGISTER", f"sip:{t.domain}", sent_by=t.sent_by,
                      from_uri=f"sip:carol@{t.domain}", to_uri=f"sip:carol@{t.domain}",
                      contact=f"sip:carol@{t.sent_by};transport=udp",
                      extra=[("Expires", "600"), ("User-Agent", "fuzz-phone/1.0")]),
        req("REGISTER", f"sip:{t.domain}", sent_by=t.sent_by, cseq=2,
                      from_uri=f"sip:carol@{t.domain}", to_uri=f"sip:carol@{t.domain}",
                      contact=f"sip:carol@{t.sent_by};ob;expires=60",
                      extra=[_digest("Authorization", "carol", f"sip:{t.domain}"),
                             ("Supported", "path, outbound"), ("Path", rr),
                             ("Contact", '"Carol" <sip:carol@[::1]:5070>;q=0.5;+sip.instance='
                                         '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1')]),
        req("REGISTER", f"sip:{t.domain}", sent_by=t.sent_by, cseq=3,
                      from_uri=f"sip:carol@{t.domain}", to_uri=f"sip:carol@{t.domain}",
                      extra=[("Contact", "*"), ("Expires", "0")]),
        req("INVITE", user_uri, sent_by=t.sent_by, contact=f"sip:alice@{t.sent_by}",
                      extra=[sdp, ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"),
                             ("Supported", "timer, 100rel"), ("Session-Expires", "1800;refresher=uac")],
                      body=SDP_AV.encode()),
        req("INVITE", user_uri, sent_by=t.sent_by, contact=f"sip:alice@{t.sent_by}",
                      extra=[sdp, _digest("Proxy-Authorization", "alice", user_uri),
                             ("P-Asserted-Identity", f"<sip:alice@{t.domain}>")],
                      body=SDP_V6.encode()),
        req("INVITE", f"sip:{t.user}@{t.proxy};transport=udp", sent_by=t.sent_by,
                      to_tag="callee1", cseq=5, contact=f"sip:alice@{t.sent_by}",
                      extra=[sdp, ("Route", rr)], body=SDP_HOLD.encode()),
        req("ACK", f"sip:{t.user}@127.0.0.1:5099", sent_by=t.sent_by, to_tag="callee1",
                      extra=[("Route", rr)]),
        req("BYE", f"sip:{t.user}@127.0.0.1:5099", sent_by=t.sent_by, to_tag="callee1",
                      cseq=6, extra=[("Route", rr), ("Reason", 'Q.850;cause=16;text="Normal"')]),
        req("CANCEL", user_uri, sent_by=t.sent_by),
        req("OPTIONS", f"sip:{t.proxy}", sent_by=t.sent_by,
                      extra=[("Accept", "application/sdp")]),
        req("MESSAGE", user_uri, sent_by=t.sent_by,
                      extra=[("Content-Type", "text/plain;charset=utf-8")],
                      body="héllo ☎ \x01".encode()),
        req("SUBSCRIBE", user_uri, sent_by=t.sent_by, contact=f"sip:alice@{t.sent_by}",
                      extra=[("Event", "presence;id=1"), ("Accept", "application/pidf+xml"),
                             ("Expires", "3600")]),
        req("NOTIFY", f"sip:alice@{t.sent_by}", sent_by=t.sent_by, to_tag="s1",
                      extra=[("Event", "message-summary"), ("Subscription-State", "active;expires=10"),
                             ("Content-Type", "application/simple-message-summary")],
                      body=b"Messages-Waiting: yes\r\nVoice-Message: 2/8 (0/2)\r\n"),
        req("REFER", user_uri, sent_by=t.sent_by, to_tag="callee1",
                      extra=[("Refer-To", f"<sip:bob@{t.domain}?Replaces=abc%40x%3Bto-tag%3D1>"),
                             ("Referred-By", f"<sip:alice@{t.domain}>"), ("Route", rr)]),
        req("PRACK", user_uri, sent_by=t.sent_by, to_tag="callee1",
                      extra=[("RAck", "1 1 INVITE"), ("Route", rr)]),
        req("UPDATE", user_uri, sent_by=t.sent_by, to_tag="callee1",
                      extra=[sdp, ("Route", rr)], body=SDP_AV.encode()),
        req("INFO", user_uri, sent_by=t.sent_by, to_tag="callee1",
                      extra=[("Content-Type", "application/dtmf-relay"), ("Route", rr)],
                      body=b"Signal=5\r\nDuration=160\r\n"),
        req("PUBLISH", user_uri, sent_by="[::1]:5070", transport="TCP",
                      extra=[("Event", "presence"), ("SIP-If-Match", "dx200xyz")]),
        # Compact forms, folding, odd but legal spacing.
        (f"INVITE {user_uri} SIP/2.0\r\n"
         f"v: SIP/2.0/UDP {t.sent_by};branch=z9hG4bKXIDX;rport\r\n"
         f"v  : SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKx;received=192.0.2.5\r\n"
         f"f: \"A \\\"quoted\\\" name\" <sip:alice@{t.domain}>;tag=XIDX\r\n"
         f"t: {user_uri}\r\ni: XIDX@h\r\nCSeq: 7 INVITE\r\nMax-Forwards: 70\r\n"
         f"m: <sip:alice@{t.sent_by}>;expires=30\r\nSubject: a folded\r\n  subject line\r\n"
         f"k: timer\r\nc: application/sdp\r\nl: {len(SDP_AV)}\r\n\r\n{SDP_AV}").encode(),
        (f"INVITE {user_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {t.sent_by};branch=z9hG4bKXIDX;rport\r\n"
         f"From: <sip:alice@{t.domain}>;tag=XIDX\r\nTo: <{user_uri}>\r\nCall-ID: XIDX@h\r\n"
         "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
         "Content-Type: multipart/mixed;boundary=unique-boundary-1\r\n"
         f"MIME-Version: 1.0\r\nContent-Length: {len(MULTIPART)}\r\n\r\n").encode() + MULTIPART,
        # Responses: stray (no transaction), as a callee would send them.
        (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {t.proxy};branch=z9hG4bKstray;rport\r\n"
         f"Via: SIP/2.0/UDP {t.sent_by};branch=z9hG4bK1;received=127.0.0.1\r\n"
         f"Record-Route: {rr}\r\nFrom: <sip:alice@{t.domain}>;tag=a\r\n"
         f"To: <{user_uri}>;tag=b\r\nCall-ID: XIDX@h\r\nCSeq: 1 INVITE\r\n"
         f"Contact: <sip:{t.user}@127.0.0.1:5099>\r\nContent-Type: application/sdp\r\n"
         f"Content-Length: {len(SDP_AV)}\r\n\r\n{SDP_AV}").encode(),
        (f"SIP/2.0 407 Proxy Authentication Required\r\n"
         f"Via: SIP/2.0/UDP {t.proxy};branch=z9hG4bKstray2\r\n"
         f"From: <sip:alice@{t.domain}>;tag=a\r\nTo: <{user_uri}>;tag=c\r\nCall-ID: XIDX@h\r\n"
         'CSeq: 1 INVITE\r\nProxy-Authenticate: Digest realm="x", nonce="y", qop="auth"\r\n'
         "Content-Length: 0\r\n\r\n").encode(),
        f"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP {t.proxy};branch=z9hG4bK3\r\nCSeq: 1 INVITE\r\n\r\n"
        .encode(),
        b"\r\n\r\n",
    ]
    return out


# --------------------------------------------------------------------------- mutations

DELIMS = [b";", b",", b"<", b">", b'"', b":", b"@", b"=", b"\\", b"%", b"%00", b"[", b"]",
          b" ", b"\t", b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b"\xc3\x28", b"?", b"&", b"/"]
EDGE_NUMBERS = [b"0", b"-1", b"00000000000000000001", b"4294967295", b"4294967296",
                b"18446744073709551616", b"9" * 400, b"1e9", b"0x10", b"", b" 1 ", b"+1",
                b"1.5", b"\xd9\xa3"]
HUGE = [b"A", b";", b",", b"<", b"%41", b"\"", b";a=b", b",<sip:x@y>", b"\\\"", b"\r\n "]


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body if sep else b""


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def flip_bits(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def insert_bytes(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    i = rng.randrange(len(data) + 1)
    piece = rng.choice(DELIMS) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 16))
    return data[:i] + piece * rng.choice((1, 1, 2, 8, 100)) + data[i:]


def delete_span(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 64):]


def duplicate_header(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    lines, body = _lines(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    lines[i + 1:i + 1] = [lines[i]] * rng.choice((1, 2, 10, 70, 400))
    return _join(lines, body)


def splice_header(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    lines, body = _lines(data)
    other, _ = _lines(rng.choice(seeds))
    if len(other) < 2:
        return data
    lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(other[1:]))
    if rng.random() < 0.3:
        # ... or a whole other message's body under this one's head.
        body = _lines(rng.choice(seeds))[1]
    return _join(lines, body)


def huge_value(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    lines, body = _lines(data)
    i = rng.randrange(len(lines))
    name, colon, value = lines[i].partition(b":")
    size = rng.choice((300, 4000, 20000, 60000))
    filler = rng.choice(HUGE) * (size // 2)
    cut = rng.randrange(len(value) + 1)
    lines[i] = name + colon + value[:cut] + filler[:size] + value[cut:] if colon else \
        lines[i][:cut] + filler[:size] + lines[i][cut:]
    return _join(lines, body)


def delimiter_run(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    lines, body = _lines(data)
    i = rng.randrange(len(lines))
    line = lines[i]
    for _ in range(rng.randint(1, 6)):
        cut = rng.randrange(len(line) + 1)
        line = line[:cut] + rng.choice(DELIMS) * rng.randint(1, 5) + line[cut:]
    lines[i] = line
    return _join(lines, body)


def edge_number(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    digits = [i for i, b in enumerate(data) if 0x30 <= b <= 0x39]
    if not digits:
        return data
    i = rng.choice(digits)
    j = i
    while j < len(data) and 0x30 <= data[j] <= 0x39:
        j += 1
    while i > 0 and 0x30 <= data[i - 1] <= 0x39:
        i -= 1
    return data[:i] + rng.choice(EDGE_NUMBERS) + data[j:]


def drop_header(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    lines, body = _lines(data)
    if len(lines) > 1:
        del lines[rng.randrange(1, len(lines))]
    return _join(lines, body)


def start_line(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    lines, body = _lines(data)
    choices = [b"INVITE sip:x SIP/2.0", b"FOO sip:bob@example.com SIP/2.0", b"SIP/2.0 99 X",
               b"SIP/2.0 700 Big", b"SIP/3.0 200 OK", b"INVITE  sip:a@b  SIP/2.0",
               b"INVITE <sip:a@b> SIP/2.0", b"INVITE sip:a@b", b"SIP/2.0 200",
               b"OPTIONS * SIP/2.0", b"INVITE sips:[::1 SIP/2.0", b"GET / HTTP/1.1",
               b"INVITE tel:+1-555;phone-context=x SIP/2.0", b"ACK sip:%00@h SIP/2.0"]
    lines[0] = rng.choice(choices)
    return _join(lines, body)


def content_length(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    lines, body = _lines(data)
    value = rng.choice([b"0", b"-5", b"1", str(len(body) + rng.randint(1, 5000)).encode(),
                        b"99999999999", b"abc", str(max(0, len(body) - 3)).encode()])
    lines = [ln for ln in lines if not ln.lower().startswith((b"content-length", b"l:"))]
    lines.append(b"Content-Length: " + value)
    return _join(lines, body)


def line_ends(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    sep = rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\t", b"\r\n "))
    parts = data.split(b"\r\n")
    if len(parts) < 2:
        return data
    i = rng.randrange(len(parts) - 1)
    return b"\r\n".join(parts[:i]) + (b"\r\n" if i else b"") + parts[i] + sep + \
        b"\r\n".join(parts[i + 1:])


def truncate(rng: random.Random, data: bytes, _seeds: list[bytes]) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


Op = Callable[[random.Random, bytes, list[bytes]], bytes]
OPS: list[Op] = [flip_bits, insert_bytes, delete_span, duplicate_header, splice_header,
                 huge_value, delimiter_run, edge_number, drop_header, start_line,
                 content_length, line_ends, truncate]


class Mutator:
    """``case(i)``: the i-th mutated message of this seed (a pure function)."""

    def __init__(self, seed: int, corpus: list[bytes], radamsa_share: float = 0.3) -> None:
        self.seed = seed
        self.corpus = corpus
        self.radamsa_share = radamsa_share
        self.radamsa = pyradamsa.Radamsa()

    def rng(self, i: int) -> random.Random:
        return random.Random(f"{self.seed}:{i}")

    def case(self, i: int) -> bytes:
        rng = self.rng(i)
        data = rng.choice(self.corpus)
        if rng.random() < self.radamsa_share:
            data = self.radamsa.fuzz(data, seed=rng.getrandbits(32), max_mut=MAX_CASE)
        else:
            for op in rng.choices(OPS, k=rng.randint(1, 4)):
                data = op(rng, data, self.corpus)
        return data[:MAX_CASE]
