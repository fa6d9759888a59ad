"""The registrar and digest authentication in a real proxy process, driven by
sipp, by raw UDP peers and by the real ``sipsuite-ctl``.

Two proxies (in-memory stores): ``auth`` with ``[features] auth = true``
(MD5 and SHA-256 offered, nonces live 3 s so the stale case is quick) and
``plain`` without authentication, where sipp's call scenario (which cannot
answer a 407) calls registered phones. Digest answers in this file are
computed by digestclient.py, independently of sipsuite's own digest module.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
from digestclient import challenges, credentials
from procs import (
    LOCALHOST,
    CalleeBehaviour,
    ProxyFactory,
    ProxyProcess,
    RawCallee,
    SippProcess,
    UdpEndpoint,
    build_ack_for,
    build_request,
    is_final,
    run_sipp,
    sipp_dir,
)

DOMAIN = "sipsuite.test"
REALM = "sipsuite"
NONCE_LIFE = 3.0
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


@dataclass
class Proxies:
    auth: ProxyProcess
    plain: ProxyProcess


@pytest.fixture(scope="module")
def proxies(proxy_factory: ProxyFactory) -> Iterator[Proxies]:
    auth = proxy_factory("auth", tables={
        "features": {"auth": True},
        "auth": {"realm": REALM, "algorithms": ["MD5", "SHA-256"], "nonce_expires": NONCE_LIFE},
    })
    plain = proxy_factory("plain", tables={"registrar": {"min_expires": 0}})
    yield Proxies(auth, plain)


def ctl_ok(proxy: ProxyProcess, *args: str) -> str:
    res = proxy.ctl(*args)
    assert res.returncode == 0, f"sipsuite-ctl {' '.join(args)}: rc={res.returncode}\n{res.stderr}"
    return res.stdout


def bindings(proxy: ProxyProcess, aor: str) -> list[dict]:
    shown = json.loads(ctl_ok(proxy, "--json", "ul", "show", aor))
    return [b for entry in shown for b in entry["bindings"]]


# --------------------------------------------------------------------------- digest, by hand


def transact(ep: UdpEndpoint, proxy: ProxyProcess, req: bytes, wait: float = 5.0) -> procs.SipMessage:
    ep.send(req, proxy.address)
    got = ep.recv_until(is_final, wait)
    assert got is not None, f"no final answer within {wait} s\n{proxy.diagnostics()}"
    return got.msg


def register_req(ep: UdpEndpoint, proxy: ProxyProcess, user: str, *, cseq: int = 1,
                 call_id: str | None = None, contact: str | None = None, expires: int = 300,
                 extra: list[tuple[str, str]] | None = None) -> bytes:
    return build_request(
        "REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by, from_uri=f"sip:{user}@{DOMAIN}",
        to_uri=f"sip:{user}@{DOMAIN}", cseq=cseq, call_id=call_id,
        contact=contact or f"sip:{user}@{ep.sent_by}",
        extra=[("Expires", str(expires)), *(extra or [])],
    )


# --------------------------------------------------------------------------- sipp


def test_sipp_register_with_digest(sipp_bin: str, proxies: Proxies, tmp_path: Path) -> None:
    """register_auth_uac.xml: 401, then a REGISTER with MD5 credentials gets 200 and
    the binding is stored; with a wrong password the proxy challenges again (the
    scenario fails) and stores nothing."""
    proxy = proxies.auth
    ctl_ok(proxy, "user", "add", "alice", "secret")
    ctl_ok(proxy, "user", "add", "mallory", "right")
    port = procs.free_port()
    ok = run_sipp(sipp_dir() / "register_auth_uac.xml", name="reg", workdir=tmp_path / "ok",
                  remote=proxy.address, local_port=port, calls=1, timeout_s=10, service="alice",
                  extra=["-au", "alice", "-ap", "secret"])
    diag = f"\n{ok.summary()}\n{proxy.diagnostics()}"
    assert (ok.rc, ok.successful) == (0, 1), "registration with the right password failed" + diag
    got = bindings(proxy, "alice")
    assert [b["contact"] for b in got] == [f"sip:alice@{LOCALHOST}:{port};transport=UDP"], got
    assert 3500 <= got[0]["expires"] <= 3600

    bad = run_sipp(sipp_dir() / "register_auth_uac.xml", name="bad", workdir=tmp_path / "bad",
                   remote=proxy.address, local_port=procs.free_port(), calls=1, timeout_s=5,
                   service="mallory", extra=["-au", "mallory", "-ap", "wrong"])
    assert bad.rc != 0 and bad.successful == 0, "a wrong password registered\n" + bad.summary()
    assert bad.failed == 1, bad.summary()
    assert bindings(proxy, "mallory") == [], "a wrong password stored a binding"


def test_registered_phone_is_called_then_404_after_unregister(
    sipp_bin: str, proxies: Proxies, tmp_path: Path
) -> None:
    """A phone registers (sipp, digest-less proxy), sipp's uas_answer.xml on its
    Contact port answers call_uac.xml's call to the AOR; after an un-REGISTER
    (Expires: 0) the same call gets 404."""
    proxy = proxies.plain
    phone_port = procs.free_port()
    reg = run_sipp(SCENARIOS / "register_uac.xml", name="reg", workdir=tmp_path / "reg",
                   remote=proxy.address, local_port=phone_port, calls=1, timeout_s=10,
                   service="dave")
    assert (reg.rc, reg.successful) == (0, 1), reg.summary() + proxy.diagnostics()
    stored = bindings(proxy, "dave")
    assert [b["contact"] for b in stored] == [f"sip:dave@{LOCALHOST}:{phone_port};transport=UDP"], (
        f"{stored}\n{reg.summary()}\n{proxy.diagnostics()}")

    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=tmp_path / "uas",
                      local_port=phone_port, calls=1, timeout_s=20, service="dave")
    uas.wait_bound()
    call = run_sipp(sipp_dir() / "call_uac.xml", name="call", workdir=tmp_path / "call",
                    remote=proxy.address, local_port=procs.free_port(), calls=1, timeout_s=15,
                    service="dave", duration_ms=100)
    res = uas.wait()
    diag = f"\n{call.summary()}\n{res.summary()}\n{proxy.diagnostics()}"
    assert (call.rc, call.successful, res.successful) == (0, 1, 1), "call to the AOR failed" + diag

    unreg = run_sipp(SCENARIOS / "unregister_uac.xml", name="unreg", workdir=tmp_path / "unreg",
                     remote=proxy.address, local_port=phone_port, calls=1, timeout_s=10,
                     service="dave")
    assert (unreg.rc, unreg.successful) == (0, 1), unreg.summary() + proxy.diagnostics()
    assert bindings(proxy, "dave") == []
    with UdpEndpoint() as caller:
        req = build_request("INVITE", f"sip:dave@{LOCALHOST}:{proxy.port}", sent_by=caller.sent_by,
                            contact=f"sip:caller@{caller.sent_by}")
        resp = transact(caller, proxy, req)
        caller.send(build_ack_for(req, resp), proxy.address)
    assert resp.status == 404, resp.start_line


# --------------------------------------------------------------------------- authentication rules


def test_register_sha256_and_the_401_rules(proxies: Proxies) -> None:
    proxy = proxies.auth
    ctl_ok(proxy, "user", "add", "erin", "pw-erin")
    with UdpEndpoint() as ep:
        call_id = secrets.token_hex(6)
        first = transact(ep, proxy, register_req(ep, proxy, "erin", call_id=call_id))
        assert first.status == 401, first.start_line
        offered = challenges(first, "www-authenticate")
        assert [c.get("algorithm", "MD5").upper() for c in offered] == ["MD5", "SHA-256"]
        assert all(c["realm"] == REALM and c.get("qop") == "auth" for c in offered)
        sha = offered[1]
        auth = credentials(sha, "erin", "pw-erin", "REGISTER", f"sip:{DOMAIN}", alg="SHA-256")
        ok = transact(ep, proxy, register_req(ep, proxy, "erin", cseq=2, call_id=call_id,
                                             extra=[("Authorization", auth)]))
        assert ok.status == 200, ok.start_line
        assert ok.header_values("date"), "200 to REGISTER without Date"
        # The same credentials again (same nonce and nonce-count): a replay.
        replay = transact(ep, proxy, register_req(ep, proxy, "erin", cseq=3, call_id=call_id,
                                                 extra=[("Authorization", auth)]))
        assert replay.status == 401, f"replayed nonce-count accepted: {replay.start_line}"
        # Someone else's valid credentials for erin's AOR: 403.
        ctl_ok(proxy, "user", "add", "frank", "pw-frank")
        # (The nonce is erin's, whose nonce-count 1 is spent: frank counts on.)
        auth = credentials(offered[0], "frank", "pw-frank", "REGISTER", f"sip:{DOMAIN}", nc=2)
        other = transact(ep, proxy, register_req(ep, proxy, "erin", cseq=4, call_id=call_id,
                                                extra=[("Authorization", auth)]))
        assert other.status == 403, other.start_line
        # An unknown scheme (RFC 4475 regaut01) is no credential: challenged.
        unknown = transact(ep, proxy, register_req(
            ep, proxy, "erin", cseq=5, call_id=call_id,
            extra=[("Authorization", "NoOneKnowsThisScheme opaque-data=here")]))
        assert unknown.status == 401, unknown.start_line


@pytest.mark.parametrize(("domain", "next_hop"), [
    (DOMAIN, False),
    (DOMAIN, True),
    ("{proxy}", False),
])
def test_register_through_a_preloaded_route(proxies: Proxies, domain: str,
                                            next_hop: bool) -> None:
    """A phone whose outbound proxy is the registrar sends REGISTER sip:DOMAIN
    with Route <sip:PROXY;lr> (and maybe a further hop after it): a request
    loose-routed to us, not a strict router's (16.4 applies only to a
    Request-URI we record-route with). Our Route is consumed, the
    Request-URI stays sip:DOMAIN (taken for strict routing, the last Route
    replaced it, and the REGISTER went to that hop), and the phone
    registers; so too when the domain is the proxy's own address and port,
    the form of our Record-Route URIs, and the Route names only us."""
    proxy = proxies.auth
    domain = domain.format(proxy=proxy.hostport)
    user = procs.unique("outbound")
    ctl_ok(proxy, "user", "add", user, "pw")
    routes = [("Route", f"<sip:{proxy.hostport};lr>")]
    if next_hop:
        routes.append(("Route", f"<sip:127.0.0.5:{procs.free_port()};lr>"))
    with UdpEndpoint() as ep:
        contact = f"sip:{user}@{ep.sent_by}"

        def register(cseq: int, *extra: tuple[str, str]) -> bytes:
            return build_request(
                "REGISTER", f"sip:{domain}", sent_by=ep.sent_by, from_uri=f"sip:{user}@{domain}",
                to_uri=f"sip:{user}@{domain}", cseq=cseq, call_id=f"{user}-reg", contact=contact,
                extra=[*routes, ("Expires", "300"), *extra])

        first = transact(ep, proxy, register(1))
        assert first.status == 401, f"{first.start_line}\n{proxy.diagnostics()}"
        auth = credentials(challenges(first, "www-authenticate")[0], user, "pw", "REGISTER",
                           f"sip:{domain}")
        ok = transact(ep, proxy, register(2, ("Authorization", auth)))
        assert ok.status == 200, f"{ok.start_line}\n{proxy.diagnostics()}"
    assert [b["contact"] for b in bindings(proxy, user)] == [contact]


def test_stale_nonce_gets_stale_true(proxies: Proxies) -> None:
    proxy = proxies.auth
    ctl_ok(proxy, "user", "add", "gina", "pw-gina")
    with UdpEndpoint() as ep:
        first = transact(ep, proxy, register_req(ep, proxy, "gina"))
        ch = challenges(first, "www-authenticate")[0]
        time.sleep(NONCE_LIFE + 1.0)
        auth = credentials(ch, "gina", "pw-gina", "REGISTER", f"sip:{DOMAIN}")
        late = transact(ep, proxy, register_req(ep, proxy, "gina", cseq=2,
                                               extra=[("Authorization", auth)]))
        assert late.status == 401, late.start_line
        fresh = challenges(late, "www-authenticate")
        assert all(c.get("stale", "").lower() == "true" for c in fresh), fresh
        assert fresh[0]["nonce"] != ch["nonce"]
        auth = credentials(fresh[0], "gina", "pw-gina", "REGISTER", f"sip:{DOMAIN}")
        ok = transact(ep, proxy, register_req(ep, proxy, "gina", cseq=3,
                                             extra=[("Authorization", auth)]))
        assert ok.status == 200, ok.start_line


def test_invite_from_local_user_is_challenged_and_forwarded_without_credentials(
    proxies: Proxies,
) -> None:
    proxy = proxies.auth
    ctl_ok(proxy, "user", "add", "hank", "pw-hank")
    callee = RawCallee()
    try:
        callee.reset(CalleeBehaviour(provisional=(), final=486))
        ctl_ok(proxy, "ul", "add", "ivan", f"sip:ivan@{LOCALHOST}:{callee.port}")
        with UdpEndpoint() as ep:
            ruri = f"sip:ivan@{DOMAIN}"
            call_id = secrets.token_hex(6)

            def invite(cseq: int, extra: list[tuple[str, str]]) -> bytes:
                return build_request("INVITE", ruri, sent_by=ep.sent_by, call_id=call_id,
                                     from_uri=f"sip:hank@{DOMAIN}", from_tag="t1", cseq=cseq,
                                     contact=f"sip:hank@{ep.sent_by}", extra=extra)

            req = invite(1, [])
            first = transact(ep, proxy, req)
            ep.send(build_ack_for(req, first), proxy.address)
            assert first.status == 407, first.start_line
            ch = challenges(first, "proxy-authenticate")[0]
            auth = credentials(ch, "hank", "pw-hank", "INVITE", ruri)
            req = invite(2, [("Proxy-Authorization", auth), ("Proxy-Authorization",
                                                             'Digest realm="elsewhere", x=1')])
            final = transact(ep, proxy, req)
            ep.send(build_ack_for(req, final), proxy.address)
            assert final.status == 486, final.start_line
        got = callee.wait_for("INVITE", 1, timeout=3)
        assert got, "the authenticated INVITE never reached the callee"
        forwarded = [v for n, v in got[0].msg.headers if n == "proxy-authorization"]
        assert forwarded == ['Digest realm="elsewhere", x=1'], (
            f"our realm's credentials must be removed, others kept: {forwarded}")
    finally:
        callee.close()


def test_auth_user_must_be_from_user_and_no_open_relay(proxies: Proxies) -> None:
    proxy = proxies.auth
    ctl_ok(proxy, "user", "add", "jack", "pw-jack")
    with UdpEndpoint() as ep:
        ruri = f"sip:nobody@{DOMAIN}"
        req = build_request("MESSAGE", ruri, sent_by=ep.sent_by, from_uri=f"sip:kate@{DOMAIN}")
        first = transact(ep, proxy, req)
        assert first.status == 407, first.start_line
        ch = challenges(first, "proxy-authenticate")[0]
        auth = credentials(ch, "jack", "pw-jack", "MESSAGE", ruri)
        req = build_request("MESSAGE", ruri, sent_by=ep.sent_by, from_uri=f"sip:kate@{DOMAIN}",
                            extra=[("Proxy-Authorization", auth)])
        assert transact(ep, proxy, req).status == 403
        # Neither From nor Request-URI is ours: not relaying, not even a challenge.
        req = build_request("MESSAGE", "sip:x@elsewhere.example", sent_by=ep.sent_by,
                            from_uri="sip:y@another.example")
        resp = transact(ep, proxy, req)
        assert (resp.status, resp.reason) == (403, "Not relaying")


# --------------------------------------------------------------------------- registrar details


def test_nat_binding_is_reached_at_its_source_address(proxies: Proxies) -> None:
    """A phone behind NAT registers a private Contact: the call goes to the
    address and port its REGISTER came from (Kamailio's received), with the
    registered Contact as Request-URI."""
    proxy = proxies.plain
    with UdpEndpoint() as phone, UdpEndpoint() as caller:
        contact = "sip:nat@192.168.77.5:5060"
        ok = transact(phone, proxy, register_req(phone, proxy, "natphone", contact=contact))
        assert ok.status == 200, ok.start_line
        stored = bindings(proxy, "natphone")
        assert stored[0]["nat"] is True and stored[0]["received"] == f"udp:{phone.sent_by}"
        req = build_request("INVITE", f"sip:natphone@{DOMAIN}", sent_by=caller.sent_by,
                            contact=f"sip:c@{caller.sent_by}")
        caller.send(req, proxy.address)
        got = phone.recv_until(lambda m: not m.is_response and m.method == "INVITE", 5)
        assert got is not None, "the INVITE did not reach the NAT'ed phone's source address"
        assert got.msg.request_uri == contact


def test_path_is_returned_and_routes_the_call(proxies: Proxies) -> None:
    proxy = proxies.plain
    edge = RawCallee()
    try:
        edge.reset(CalleeBehaviour(provisional=(), final=480))
        path = f"<sip:{LOCALHOST}:{edge.port};lr>"
        with UdpEndpoint() as phone, UdpEndpoint() as caller:
            resp = transact(phone, proxy, register_req(
                phone, proxy, "pathy", contact="sip:pathy@198.51.100.7:5060",
                extra=[("Path", path), ("Supported", "path")]))
            assert resp.status == 200 and resp.header_values("path") == [path], resp
            resp = transact(phone, proxy, register_req(
                phone, proxy, "pathy", cseq=2, contact="sip:pathy@198.51.100.7:5060",
                extra=[("Path", path)]))
            assert resp.status == 200 and resp.header_values("path") == [], (
                "Path returned to a UA that did not say Supported: path")
            req = build_request("INVITE", f"sip:pathy@{DOMAIN}", sent_by=caller.sent_by,
                                contact=f"sip:c@{caller.sent_by}")
            final = transact(caller, proxy, req)
            caller.send(build_ack_for(req, final), proxy.address)
        got = edge.wait_for("INVITE", 1, timeout=3)
        assert got, "the INVITE did not follow the registered Path"
        msg = got[0].msg
        assert msg.request_uri == "sip:pathy@198.51.100.7:5060"
        assert msg.header_values("route") == [path]
    finally:
        edge.close()


def test_expiry_bounds_and_contact_star(proxies: Proxies) -> None:
    proxy = proxies.plain
    with UdpEndpoint() as ep:
        call_id = secrets.token_hex(6)
        resp = transact(ep, proxy, register_req(ep, proxy, "lena", call_id=call_id,
                                                contact=f"sip:lena@{ep.sent_by}", expires=99999))
        values = resp.header_values("contact")
        assert resp.status == 200 and len(values) == 1 and values[0].endswith(";expires=7200"), values
        resp = transact(ep, proxy, register_req(
            ep, proxy, "lena", call_id=call_id, cseq=2, contact=f"sip:lena2@{ep.sent_by}"))
        assert len(resp.header_values("contact")) == 2
        # An older CSeq of the same Call-ID changes nothing.
        resp = transact(ep, proxy, register_req(ep, proxy, "lena", call_id=call_id, cseq=1,
                                                contact=f"sip:lena@{ep.sent_by}", expires=0))
        assert resp.status == 400 and len(bindings(proxy, "lena")) == 2
        # A query (no Contact) lists them.
        query = build_request("REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by,
                              from_uri=f"sip:lena@{DOMAIN}", to_uri=f"sip:lena@{DOMAIN}")
        assert len(transact(ep, proxy, query).header_values("contact")) == 2
        bad_star = register_req(ep, proxy, "lena", call_id=call_id, cseq=3, expires=10)
        bad_star = bad_star.replace(f"Contact: <sip:lena@{ep.sent_by}>".encode(), b"Contact: *")
        assert transact(ep, proxy, bad_star).status == 400
        star = register_req(ep, proxy, "lena", call_id=call_id, cseq=4, expires=0)
        star = star.replace(f"Contact: <sip:lena@{ep.sent_by}>".encode(), b"Contact: *")
        resp = transact(ep, proxy, star)
        assert resp.status == 200 and resp.header_values("contact") == []
        assert bindings(proxy, "lena") == []


def test_min_expires_423(proxies: Proxies) -> None:
    proxy = proxies.auth
    ctl_ok(proxy, "user", "add", "mona", "pw-mona")
    with UdpEndpoint() as ep:
        call_id = secrets.token_hex(6)
        first = transact(ep, proxy, register_req(ep, proxy, "mona", call_id=call_id, expires=5))
        ch = challenges(first, "www-authenticate")[0]
        auth = credentials(ch, "mona", "pw-mona", "REGISTER", f"sip:{DOMAIN}")
        resp = transact(ep, proxy, register_req(ep, proxy, "mona", call_id=call_id, cseq=2,
                                                expires=5, extra=[("Authorization", auth)]))
        assert resp.status == 423 and resp.header_values("min-expires") == ["60"], resp
        assert bindings(proxy, "mona") == []


def test_ctl_user_and_ul_commands_against_the_proxy(proxies: Proxies) -> None:
    proxy = proxies.plain
    ctl_ok(proxy, "user", "add", "test", "testpasswd")
    assert re.search(r"^test\s+sipsuite\s", ctl_ok(proxy, "user", "list"), re.M)
    ctl_ok(proxy, "user", "passwd", "test", "other")
    ctl_ok(proxy, "ul", "add", "test", "sip:test@192.0.2.44:5060", "600")
    table = ctl_ok(proxy, "ul", "show", "test")
    assert "sip:test@192.0.2.44:5060" in table and re.search(r"\b(600|599)\b", table), table
    ctl_ok(proxy, "ul", "rm", "test", "sip:test@192.0.2.44:5060")
    assert bindings(proxy, "test") == []
    ctl_ok(proxy, "user", "rm", "test")
    assert not re.search(r"^test\s", ctl_ok(proxy, "user", "list"), re.M)
    bad = proxy.ctl("user", "frobnicate")
    assert bad.returncode == 2 and "usage" in bad.stderr.lower()


# --------------------------------------------------------------------------- NAT keep-alives


def _nat_register(phone: UdpEndpoint, proxy: ProxyProcess, user: str) -> None:
    ok = transact(phone, proxy, register_req(phone, proxy, user, contact=f"sip:{user}@10.9.8.7:5060"))
    assert ok.status == 200, ok.start_line


def test_options_keepalives_and_removal_when_unanswered(proxy_factory: ProxyFactory) -> None:
    """[features] natsipping: a NAT'ed binding gets OPTIONS at its source
    address every interval; while it answers it stays, once it stops
    answering it is removed after keepalive_timeout."""
    proxy = proxy_factory("natping", tables={
        "features": {"natsipping": True},
        "nat": {"keepalive_interval": 0.5, "keepalive_timeout": 2.5}})
    with UdpEndpoint() as phone:
        _nat_register(phone, proxy, "pinged")
        answered = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            got = phone.recv_until(lambda m: not m.is_response and m.method == "OPTIONS", 2.0)
            assert got is not None, "no keep-alive OPTIONS reached the phone\n" + proxy.diagnostics()
            assert got.msg.request_uri == "sip:pinged@10.9.8.7:5060"
            phone.send(procs.build_response(got.msg, 200, "OK", to_tag="ka"), got.addr)
            answered += 1
        assert answered >= 4
        assert len(bindings(proxy, "pinged")) == 1, "an answering phone lost its binding"
        # Silence from now on: gone within the timeout plus a round or two.
        deadline = time.monotonic() + 6.0
        while bindings(proxy, "pinged") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert bindings(proxy, "pinged") == [], "unanswered binding kept\n" + proxy.diagnostics()


def test_crlf_keepalives(proxy_factory: ProxyFactory) -> None:
    """The default keep-alive: a CRLF datagram at the NAT'ed phone's source address;
    bindings that are not behind NAT get none."""
    proxy = proxy_factory("crlfping", tables={"nat": {"keepalive_interval": 0.5}})
    with UdpEndpoint() as phone, UdpEndpoint() as direct:
        _nat_register(phone, proxy, "crlf")
        ok = transact(direct, proxy, register_req(direct, proxy, "direct"))
        assert ok.status == 200
        # (settimeout makes the sockets blocking, bounded.)
        phone.sock.settimeout(3.0)
        direct.sock.settimeout(1.5)
        data, _ = phone.sock.recvfrom(100)
        assert data.strip(b"\r\n") == b"" and data, f"keep-alive was {data!r}"
        with pytest.raises(TimeoutError):
            direct.sock.recvfrom(100)


# --------------------------------------------------------------------------- forking


@pytest.mark.parametrize("serial", [False, True])
def test_forking_parallel_or_serial_by_q(proxy_factory: ProxyFactory, serial: bool) -> None:
    """Two bindings, q=1.0 and q=0.5, both busy. Parallel (the default): both get
    the INVITE at once. [registrar] serial_forking: the q=0.5 one only after the
    q=1.0 one has answered 486. Either way the caller gets 486."""
    proxy = proxy_factory(f"fork{int(serial)}", tables={"registrar": {"serial_forking": serial}})
    high, low = RawCallee(), RawCallee()
    try:
        for callee in (high, low):
            callee.reset(CalleeBehaviour(provisional=(), final=486, final_delay=0.5))
        with UdpEndpoint() as ep:
            req = build_request(
                "REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by, from_uri=f"sip:two@{DOMAIN}",
                to_uri=f"sip:two@{DOMAIN}", extra=[
                    ("Contact", f"<sip:two@{LOCALHOST}:{high.port}>;q=1.0"),
                    ("Contact", f"<sip:two@{LOCALHOST}:{low.port}>;q=0.5")])
            assert transact(ep, proxy, req).status == 200
            inv = build_request("INVITE", f"sip:two@{DOMAIN}", sent_by=ep.sent_by,
                                contact=f"sip:c@{ep.sent_by}")
            final = transact(ep, proxy, inv, wait=8)
            ep.send(build_ack_for(inv, final), proxy.address)
        assert final.status == 486, final.start_line
        a = high.wait_for("INVITE", 1, timeout=3)
        b = low.wait_for("INVITE", 1, timeout=3)
        assert a and b, f"INVITEs: high {len(a)}, low {len(b)}\n{proxy.diagnostics()}"
        gap = b[0].at - a[0].at
        if serial:
            assert gap >= 0.4, f"low-q binding tried {gap:.2f} s after the high-q one"
        else:
            assert abs(gap) < 0.3, f"parallel fork {gap:.2f} s apart"
    finally:
        high.close()
        low.close()
