"""RFC 4475 / RFC 5118 torture messages against a running proxy process.

Every file of tests/data/rfc4475/*.dat and rfc5118/wire/*.dat is sent,
unchanged, as ONE UDP datagram to one proxy started for this module, and the
reaction is compared with the exact answer EXPECTED names for that file (or
silence). The expectations follow the files' expected.tsv; where the RFC allows
two answers, the choice is stated next to the row and must agree with
tests/data/choices.tsv, which explains it.

Configuration, chosen so that every answer is deterministic: domains example.com
and sipsuite.test, trusted = [] (a request for any other domain gets 403 Not
relaying), one static user bob (no file calls bob, so example.com requests get
404), timer C 2 s, dns_timeout 1 s, authentication off. REGISTERs for our
domains reach the registrar: the 200s are checked for the bindings the
expected.tsv notes describe.

Where answers go: RFC 3261 18.2.2 sends a response to the top Via's sent-by PORT
(5060 when absent) at the SOURCE IP of the request (the received= parameter) when
the sent-by host is not that IP, which is true of every file here. So each file
is sent from a socket bound to its top Via's port on its own loopback address
127.0.0.N (the whole of 127/8 is loopback on Linux): answers arrive at that
socket, nothing else on the host is disturbed, and a late retransmission of one
file's answer can never be mistaken for the next file's. A TCP listener on the
same address and port catches an answer the proxy might send over TCP for a Via
that names TCP/TLS (the datagram came over UDP, so the answer should too; the
transport used is reported).

Several files are, by RFC 3261 17.2.3, the SAME transaction: same magic-cookie
branch, sent-by and method (cparam01/cparam02, escnull/regescrt, novelsc/unkscm,
ipv6-good/port-ambiguous/port-unambiguous, the two ipv6-*-abnf files). One proxy
would rightly take the second as a retransmission of the first and repeat the
first answer to the first sender. So files are spread over as few proxies as
needed (``SLOTS``): no proxy ever sees two files with one transaction key.
"""

from __future__ import annotations

import csv
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import procs
import pytest
from procs import LOCALHOST, ProxyFactory, SipMessage, via_branch, via_sent_by

ANSWER_WAIT = 5.0  # s to wait for an expected final answer (timer C is 2 s)
SILENCE_WAIT = 1.0  # s of silence that counts as "dropped"


@dataclass(frozen=True)
class Expect:
    code: int | None  # None: no answer at all (dropped)
    why: str
    check: Callable[[SipMessage], str | None] | None = None  # extra check of the answer -> problem


def unsupported_lists_proxy_require(resp: SipMessage) -> str | None:
    values = {v.lower() for v in resp.header_values("unsupported")}
    want = {"noproxiessupportthis", "nordoanyproxiessupportthis"}
    if values != want:
        return f"Unsupported should list exactly the Proxy-Require tags {sorted(want)}, got {sorted(values)}"
    return None


def contacts_are(*wanted: str) -> Callable[[SipMessage], str | None]:
    """The 200 lists exactly these bindings (URIs as inside <>), each with an expires."""

    def check(resp: SipMessage) -> str | None:
        values = resp.header_values("contact")
        uris = sorted(v[v.index("<") + 1 : v.index(">")] for v in values if "<" in v)
        if uris != sorted(wanted) or len(values) != len(wanted):
            return f"Contact values {values}, expected exactly {sorted(wanted)}"
        if not all(";expires=" in v[v.index(">"):] for v in values):
            return f"a Contact without expires in {values}"
        return None

    return check


NOT_400 = "valid; "
FOR_US_404 = "R-URI user@example.com: our domain, no such user -> 404"
NOT_OURS_403 = "R-URI in a domain that is not ours, untrusted source -> 403 Not relaying"

EXPECTED: dict[str, Expect] = {
    # ---- RFC 4475 3.1.1: valid messages, parse and process (never 400)
    "rfc4475/wsinv": Expect(
        503, NOT_400 + "To has a tag (in-dialog) and a Route to services.example.com, so it is "
        "relayed along the Route; that name does not resolve: a transport error, answered 503 "
        "(RFC 3261 16.7/18.4; not turned into 500, which 16.7 step 6 asks for a 503 received "
        "from downstream)"),
    "rfc4475/intmeth": Expect(404, NOT_400 + "unknown method, handled like any non-INVITE; " + FOR_US_404),
    "rfc4475/esc01": Expect(403, NOT_400 + "R-URI host example.net; " + NOT_OURS_403),
    "rfc4475/escnull": Expect(
        200, NOT_400 + "registrar: AOR null-%00-null not cut at the NUL, two distinct contacts",
        contacts_are("sip:%00@host5.example.com", "sip:%00%00@host5.example.com")),
    "rfc4475/esc02": Expect(
        403, NOT_400 + "method RE%47IST%45R is NOT REGISTER; registrar.example.com is not ours -> 403"),
    "rfc4475/lwsdisp": Expect(404, NOT_400 + "accepted as the RFC says; " + FOR_US_404),
    "rfc4475/longreq": Expect(404, NOT_400 + FOR_US_404),
    "rfc4475/dblreq": Expect(
        200, NOT_400 + "the REGISTER only; the INVITE bytes after Content-Length are ignored"
        " (checked: no answer with the INVITE's Call-ID)"),
    "rfc4475/semiuri": Expect(404, NOT_400 + "user 'user;par=u@example.net' at example.com; " + FOR_US_404),
    "rfc4475/transports": Expect(404, NOT_400 + FOR_US_404),
    "rfc4475/mpart01": Expect(
        403, NOT_400 + "MESSAGE to example.org with a preloaded Route to 127.0.0.1:5080 (not us): "
        + NOT_OURS_403),
    "rfc4475/unreason": Expect(None, "a 200 for no transaction of ours -> discarded (RFC 3261 18.1.2)"),
    "rfc4475/noreason": Expect(None, "a 100 for no transaction of ours -> discarded"),
    # ---- RFC 4475 3.1.2: invalid messages
    "rfc4475/badinv01": Expect(400, "empty Via/Contact params"),
    "rfc4475/clerr": Expect(400, "Content-Length larger than the datagram"),
    "rfc4475/ncl": Expect(400, "negative Content-Length"),
    "rfc4475/scalar02": Expect(400, "CSeq > 2**32-1"),
    "rfc4475/scalarlg": Expect(None, "malformed response -> dropped"),
    "rfc4475/quotbal": Expect(400, "unterminated quoted display name"),
    "rfc4475/ltgtruri": Expect(400, "<> around the Request-URI"),
    "rfc4475/lwsruri": Expect(400, "LWS inside the Request-URI"),
    "rfc4475/lwsstart": Expect(400, "CHOICE: strict (RFC allows liberal acceptance): multiple SPs"),
    "rfc4475/trws": Expect(400, "CHOICE: strict (RFC allows liberal acceptance): trailing SPs"),
    "rfc4475/escruri": Expect(400, "CHOICE: strict (RFC allows ignoring them): ?headers in the R-URI"),
    "rfc4475/baddate": Expect(
        404, "CHOICE: processed (RFC allows 400); a proxy does not use Date; " + FOR_US_404),
    "rfc4475/regbadct": Expect(400, "CHOICE: strict (RFC allows inferring <>): '?' in a bare Contact URI"),
    "rfc4475/badaspec": Expect(400, "spaces inside <> around the To URI"),
    "rfc4475/baddn": Expect(
        400, "CHOICE: 400 (drop also defensible: the file lacks the final blank line): "
        "unquoted display name with a comma"),
    "rfc4475/badvers": Expect(505, "SIP/7.0 -> 505 Version Not Supported"),
    "rfc4475/mismatch01": Expect(400, "CSeq method differs from the request method"),
    "rfc4475/mismatch02": Expect(400, "CHOICE: 400 (RFC prefers 501): CSeq method mismatch, unknown method"),
    "rfc4475/bigcode": Expect(None, "status code > 699 -> response dropped"),
    # ---- RFC 4475 3.2 / 3.3 / 3.4
    "rfc4475/badbranch": Expect(
        404, "CHOICE: accepted, RFC 2543 transaction matching for branch=z9hG4bK; " + FOR_US_404),
    "rfc4475/insuf": Expect(400, "no Call-ID, From, To (answered with what could be recovered)"),
    "rfc4475/unkscm": Expect(416, "unknown R-URI scheme -> 416, never routed on To"),
    "rfc4475/novelsc": Expect(416, "CHOICE: 416 (RFC allows 404): soap.beep is never usable here"),
    "rfc4475/unksm2": Expect(
        400, NOT_400 + "a proxy would forward it, but it is for our registrar: To isbn: is not a "
        "SIP AOR -> 400"),
    "rfc4475/bext01": Expect(
        420, "Proxy-Require options unsupported -> 420 listing them (not the Require ones)",
        unsupported_lists_proxy_require),
    "rfc4475/invut": Expect(404, NOT_400 + "unknown body type does not matter to a proxy; " + FOR_US_404),
    "rfc4475/regaut01": Expect(
        200, NOT_400 + "registrar without authentication: the unknown Authorization scheme is "
        "ignored (with [features] auth it gets a Digest challenge: test_registrar.py)"),
    "rfc4475/multi01": Expect(400, "two each of To, From, Call-ID, CSeq, Max-Forwards"),
    "rfc4475/mcl01": Expect(400, "two Content-Length values"),
    "rfc4475/bcast": Expect(None, "response whose top Via is not ours -> dropped, never sent to 255.255.255.255"),
    "rfc4475/zeromf": Expect(483, "Max-Forwards 0 -> 483 Too Many Hops"),
    "rfc4475/cparam01": Expect(
        200, NOT_400 + "unknownparam is a Contact header param: not part of the binding's URI",
        contacts_are("sip:+19725552222@gw1.example.net")),
    "rfc4475/cparam02": Expect(
        200, NOT_400 + "unknownparam is a URI param: kept in the binding",
        contacts_are("sip:+19725552222@gw1.example.net;unknownparam")),
    "rfc4475/regescrt": Expect(
        200, NOT_400 + "the escaped Route header of the contact URI is stored and given back",
        contacts_are("sip:user@example.com?Route=%3Csip:sip.example.com%3E")),
    "rfc4475/sdp01": Expect(404, NOT_400 + FOR_US_404),
    "rfc4475/inv2543": Expect(
        404, "CHOICE: accepted (RFC 2543 syntax: no branch, From tag, Max-Forwards); " + FOR_US_404),
    "rfc4475/test": Expect(
        None, "CHOICE forced: malformed and no Via at all, so no answer can be addressed -> dropped"),
    # ---- RFC 5118 (wire/ copies: CRLF, terminated header section, true Content-Length)
    "rfc5118/ipv6-good": Expect(403, NOT_400 + "REGISTER sip:[2001:db8::10]: " + NOT_OURS_403),
    "rfc5118/ipv6-bad": Expect(400, "unbracketed IPv6 in the Request-URI"),
    "rfc5118/port-ambiguous": Expect(
        403, NOT_400 + "REGISTER sip:[2001:db8::10:5070]: " + NOT_OURS_403),
    "rfc5118/port-unambiguous": Expect(
        403, NOT_400 + "REGISTER sip:[2001:db8::10]:5070: " + NOT_OURS_403),
    "rfc5118/via-received-param-with-delim": Expect(
        404, NOT_400 + "BYE with a To tag, no Route and not for us -> 404 Not here"),
    "rfc5118/via-received-param-no-delim": Expect(403, NOT_400 + "OPTIONS sip:[2001:db8::10]: " + NOT_OURS_403),
    "rfc5118/ipv6-in-sdp": Expect(403, NOT_400 + "INVITE to [2001:db8::10]: " + NOT_OURS_403),
    "rfc5118/mult-ip-in-header": Expect(404, NOT_400 + "BYE with a To tag, no Route -> 404 Not here"),
    "rfc5118/mult-ip-in-sdp": Expect(403, NOT_400 + "INVITE to [2001:db8::10]: " + NOT_OURS_403),
    "rfc5118/ipv4-mapped-ipv6": Expect(404, NOT_400 + FOR_US_404),
    "rfc5118/ipv6-bug-abnf-3-colons": Expect(
        403, "CHOICE: tolerated as RFC 5118 asks (3-colon IPv6 reference); " + NOT_OURS_403),
    "rfc5118/ipv6-correct-abnf-2-colons": Expect(403, NOT_400 + NOT_OURS_403),
}


DATA = procs.REPO / "tests" / "data"


def corpus_files() -> dict[str, Path]:
    root = DATA
    files = sorted((root / "rfc4475").glob("*.dat")) + sorted((root / "rfc5118" / "wire").glob("*.dat"))
    return {f"{'rfc4475' if f.parent.name == 'rfc4475' else 'rfc5118'}/{f.stem}": f for f in files}


FILES = corpus_files()
_VIA = re.compile(
    r"SIP\s*/\s*[\d.]+\s*/\s*[A-Za-z0-9-]+\s+(\[[^\]]*\]|[^\s;:,]+)\s*(?::\s*(\d+))?", re.I
)


def top_via_port(data: bytes) -> int:
    """The port of the first Via value's sent-by (5060 when absent or no Via)."""
    vias = SipMessage.parse(data).vias
    m = _VIA.match(vias[0]) if vias else None
    return int(m.group(2)) if m and m.group(2) else 5060


def call_ids(data: bytes) -> list[str]:
    return [v.decode(errors="replace").strip()
            for v in re.findall(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", data)]


@dataclass
class Outcome:
    answers: list[tuple[str, SipMessage]] = field(default_factory=list)  # (transport, message)
    source: tuple[str, int] = ("", 0)

    @property
    def finals(self) -> list[tuple[str, SipMessage]]:
        return [(t, m) for t, m in self.answers if m.is_response and m.status >= 200]

    def describe(self) -> str:
        if not self.answers:
            return "no answer"
        return "; ".join(f"{m.start_line!r} over {t}" for t, m in self.answers)


class Listener:
    """UDP socket + TCP listener on one loopback address and port."""

    def __init__(self, host: str, port: int) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind((host, port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((host, port))
        self.tcp.listen(4)
        self.conns: list[socket.socket] = []
        self.buffers: dict[socket.socket, bytes] = {}

    def close(self) -> None:
        for s in [self.udp, self.tcp, *self.conns]:
            s.close()

    def poll(self, timeout: float) -> list[tuple[str, SipMessage]]:
        socks = [self.udp, self.tcp, *self.conns]
        ready, _, _ = select.select(socks, [], [], max(0.0, timeout))
        out: list[tuple[str, SipMessage]] = []
        for s in ready:
            if s is self.udp:
                data = self.udp.recv(65535)
                out.append(("UDP", SipMessage.parse(data)))
            elif s is self.tcp:
                conn, _ = self.tcp.accept()
                self.conns.append(conn)
                self.buffers[conn] = b""
            else:
                chunk = s.recv(65535)
                if not chunk:
                    self.conns.remove(s)
                    s.close()
                    continue
                self.buffers[s] += chunk
                buf = self.buffers[s]
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                    n = int(m.group(1)) if m else 0
                    if len(rest) < n:
                        break
                    out.append(("TCP", SipMessage.parse(head + b"\r\n\r\n" + rest[:n])))
                    buf = rest[n:]
                self.buffers[s] = buf
        return out


def exchange(proxy: procs.ProxyProcess, data: bytes, source: tuple[str, int], expect_answer: bool,
             linger: float = 0.0) -> Outcome:
    """Send ``data`` from ``source``; collect answers until the first final one
    (+ ``linger`` s), or for SILENCE_WAIT s when no answer is expected."""
    listener = Listener(*source)
    outcome = Outcome(source=source)
    try:
        listener.udp.sendto(data, proxy.address)
        deadline = time.monotonic() + (ANSWER_WAIT if expect_answer else SILENCE_WAIT)
        while (left := deadline - time.monotonic()) > 0:
            outcome.answers += listener.poll(left)
            if outcome.finals and linger >= 0:
                deadline = min(deadline, time.monotonic() + linger)
                linger = -1.0
    finally:
        listener.close()
    return outcome


def transaction_key(data: bytes) -> tuple[str, str, str] | None:
    """RFC 3261 17.2.3 key of a request with a magic-cookie branch (None otherwise:
    RFC 2543 matching also compares Call-ID, CSeq, From tag, so those never collide)."""
    msg = SipMessage.parse(data)
    if msg.is_response or not msg.vias:
        return None
    branch = via_branch(msg.vias[0])
    if not branch or not branch.startswith("z9hG4bK") or branch == "z9hG4bK":
        return None
    return branch, via_sent_by(msg.vias[0]), "INVITE" if msg.method == "ACK" else msg.method


def assign_slots(names: list[str]) -> dict[str, int]:
    """File -> proxy number, so that no proxy gets two files with one transaction key."""
    used: list[set[tuple[str, str, str]]] = [set()]
    slots: dict[str, int] = {}
    for name in names:
        key = transaction_key(FILES[name].read_bytes()) if name in FILES else None
        slot = next((i for i, keys in enumerate(used) if key not in keys), len(used))
        if slot == len(used):
            used.append(set())
        if key is not None:
            used[slot].add(key)
        slots[name] = slot
    return slots


SLOTS = assign_slots(sorted(EXPECTED))
RESULTS: dict[str, Outcome] = {}


class TortureProxies:
    """Proxies started on first use, all with the same configuration."""

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        self.started: dict[int, procs.ProxyProcess] = {}

    def get(self, slot: int) -> procs.ProxyProcess:
        if slot not in self.started:
            self.started[slot] = self.factory(
                f"torture{slot}", static={"bob": [f"sip:bob@{LOCALHOST}:{procs.free_port()}"]},
                trusted=[], timer_c=2.0, dns_timeout=1.0,
            )
        return self.started[slot]


@pytest.fixture(scope="module")
def torture(proxy_factory: ProxyFactory) -> Iterator[TortureProxies]:
    proxies = TortureProxies(proxy_factory)
    proxies.get(0)
    yield proxies


def test_every_corpus_file_has_an_expectation() -> None:
    assert len(FILES) == 62, f"expected 50 + 12 torture files, found {len(FILES)}: {sorted(FILES)}"
    assert set(FILES) == set(EXPECTED), (
        f"no expectation for {sorted(set(FILES) - set(EXPECTED))}; "
        f"no file for {sorted(set(EXPECTED) - set(FILES))}"
    )


def test_choices_agree_with_the_data_file() -> None:
    """Where the RFC allows two answers, the answer expected here is the one
    tests/data/choices.tsv records (and explains); each is marked CHOICE here."""
    with open(DATA / "choices.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    problems = []
    for row in rows:
        name, want = row["file"], None if row["proxy"] == "none" else int(row["proxy"])
        if name not in EXPECTED or EXPECTED[name].code != want:
            problems.append(f"{name}: choices.tsv says {row['proxy']}, "
                            f"here {EXPECTED[name].code if name in EXPECTED else 'nothing'}")
    assert not problems, "\n".join(problems)
    marked = {name for name, e in EXPECTED.items() if "CHOICE" in e.why}
    assert marked <= {row["file"] for row in rows}, "a CHOICE here that choices.tsv does not explain"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torture_message(torture: TortureProxies, name: str) -> None:
    expect = EXPECTED[name]
    torture_proxy = torture.get(SLOTS[name])
    if name not in FILES:
        pytest.fail(f"{name}.dat not found under {DATA}")
    data = FILES[name].read_bytes()
    index = sorted(EXPECTED).index(name)
    source = (f"127.0.0.{10 + index}", top_via_port(data))
    try:
        outcome = exchange(torture_proxy, data, source, expect.code is not None,
                           linger=0.5 if name == "rfc4475/dblreq" else 0.0)
    except OSError as e:
        pytest.fail(f"{name}: cannot use {source[0]}:{source[1]} to send/receive: {e}")
    RESULTS[name] = outcome
    where = f"{name}.dat sent from {source[0]}:{source[1]} to proxy #{SLOTS[name]}"
    diag = f"\n{where}\nexpected: {expect.code or 'no answer'} ({expect.why})\n" \
           f"got: {outcome.describe()}\n{torture_proxy.diagnostics(30)}"
    assert torture_proxy.alive(), "proxy died" + diag
    if expect.code is None:
        assert not outcome.answers, "expected silence" + diag
        return
    assert outcome.finals, "no final answer" + diag
    transport, resp = outcome.finals[0]
    assert resp.status == expect.code, f"wrong answer\n{resp}" + diag
    if expect.check is not None:
        problem = expect.check(resp)
        assert problem is None, f"{problem}\n{resp}" + diag
    if name == "rfc4475/dblreq":
        ids = call_ids(data)
        invite_id = ids[-1]
        stray = [m for _, m in outcome.answers if m.call_id == invite_id]
        assert not stray, "the INVITE after the REGISTER's Content-Length was processed" + diag
        assert len(outcome.finals) == 1, "more than one final answer" + diag


def test_answers_came_over_udp(torture: TortureProxies) -> None:
    """A datagram that came over UDP is answered over UDP, whatever its Via names
    (the proxy has no connection to answer on; RFC 3261 18.2.2)."""
    tcp = {name: o.describe() for name, o in RESULTS.items() if any(t == "TCP" for t, _ in o.answers)}
    assert not tcp, f"answered over TCP: {tcp}"


def test_answers_carry_received(torture: TortureProxies) -> None:
    """Every answer to a parsed request (not 400/505) has received=<source IP> in
    its top Via: the sent-by host never equals the source address (RFC 3261 18.2.1)."""
    problems = []
    for name, outcome in sorted(RESULTS.items()):
        for _, resp in outcome.finals:
            if resp.status in (400, 505) or not resp.vias:
                continue
            m = re.search(r";\s*received\s*=\s*([^;,\s]+)", resp.vias[0], re.I)
            if not m or m.group(1) != outcome.source[0]:
                problems.append(f"{name}: {resp.status} top Via {resp.vias[0]!r}")
    assert not problems, "missing/wrong received=:\n" + "\n".join(problems)


def test_proxies_survive_the_corpus(torture: TortureProxies) -> None:
    """After every file: still running, still answering OPTIONS, no traceback logged."""
    for proxy in torture.started.values():
        assert proxy.alive(), proxy.diagnostics()
        resp = procs.options_ping(LOCALHOST, proxy.port, timeout=2.0)
        assert resp is not None and resp.status == 200, f"OPTIONS got {resp}\n{proxy.diagnostics()}"
        log = proxy.log_text()
        assert "Traceback" not in log and "Unhandled" not in log, (
            f"proxy {proxy.workdir.name} logged an exception:\n" + log[-6000:]
        )
