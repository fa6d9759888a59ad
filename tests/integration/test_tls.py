"""SIP over TLS through a real proxy process, with a test PKI made at run time
(tests/tlscerts.py): a call between two TLS phones, outgoing TLS that checks
the server's certificate and name, mutual TLS on one listener, certificate
reload without restart, and the start-up errors of a bad [tls] section.
The relay's control channel over mutual TLS is in test_tls_relay.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
import tlscerts
from dnsserver import DnsServer
from procs import LOCALHOST, SDP_OFFER, ProxyFactory, UdpEndpoint, build_request, build_response
from sipmsg import SipMessage, build_ack_for, build_ack_for_2xx, new_branch, uri_of
from tlsendpoints import TlsClient, TlsServer, client_context

DOMAIN = "sipsuite.test"
OTHER = "127.0.0.2"


@dataclass
class Topo:
    proxy: procs.ProxyProcess
    pki: tlscerts.TestPKI
    rogue_pki: tlscerts.TestPKI
    tls_port: int  # tls listener asking for no client certificate
    mtls_port: int  # tls listener in require_client_cert
    servers: dict[str, TlsServer]
    proxy_cert: tlscerts.Issued

    def client(self, port: int | None = None, cert: tlscerts.Issued | None = None) -> TlsClient:
        ctx = client_context(self.pki.ca_file, cert.cert if cert else None,
                             cert.key if cert else None)
        return TlsClient((LOCALHOST, port or self.tls_port), ctx)


@pytest.fixture(scope="module")
def topo(proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    folder = tmp_path_factory.mktemp("pki")
    pki = tlscerts.TestPKI(folder / "ca")
    rogue_pki = tlscerts.TestPKI(folder / "rogue", "rogue CA")
    proxy_cert = pki.issue("proxy", dns=["localhost"], ips=[LOCALHOST])
    # The impostors live on OTHER, an address that is not the proxy's own, so a
    # Request-URI naming it is sent on rather than taken as a local user.
    servers = {
        # The right certificate for 127.0.0.1 and for good.tls.test.
        "good": TlsServer(*_files(pki.issue("good", dns=["good.tls.test"], ips=[LOCALHOST]))),
        # Signed by our CA, but for another name (and no IP address).
        "impostor": TlsServer(*_files(pki.issue("impostor", dns=["impostor.tls.test"])),
                              host=OTHER),
        # The right names, from a CA we do not trust.
        "rogue": TlsServer(*_files(rogue_pki.issue("rogue", dns=["rogue.tls.test"], ips=[OTHER])),
                           host=OTHER),
    }
    dns = DnsServer()
    dns.add_a("good.tls.test", LOCALHOST)
    dns.add_a("rogue.tls.test", OTHER)
    # Leads to the good server: only its certificate (not for this name) tells.
    dns.add_a("wrong.tls.test", LOCALHOST)
    port = procs.free_port()
    tls_port, mtls_port = procs.free_port("tcp"), procs.free_port("tcp")
    listen = [*procs.default_listen(port), f"tls:{LOCALHOST}:{tls_port}",
              f"tls:{LOCALHOST}:{mtls_port}"]
    good, impostor, rogue = servers["good"], servers["impostor"], servers["rogue"]
    static = {
        "good": [good.uri("good")],
        "impostor": [impostor.uri("impostor")],
        "rogue": [rogue.uri("rogue")],
        "byname": [f"sip:good@good.tls.test:{good.port};transport=tls"],
        "sipsname": [f"sips:good@good.tls.test:{good.port}"],
        "wrongname": [f"sip:good@wrong.tls.test:{good.port};transport=tls"],
    }
    try:
        proxy = proxy_factory(
            # Trusted: the test callers may send calls on to foreign hosts.
            "tls", port=port, listen=listen, static=static, dns_timeout=2.0,
            trusted=[f"{LOCALHOST}/32"],
            extra_proxy={"dns_servers": [f"{dns.address[0]}:{dns.address[1]}"]},
            tables={"tls": {
                "certificate": str(proxy_cert.cert), "private_key": str(proxy_cert.key),
                "ca_list": str(pki.ca_file),
                "require_client_cert": [f"tls:{LOCALHOST}:{mtls_port}"],
            }},
        )
        yield Topo(proxy, pki, rogue_pki, tls_port, mtls_port, servers, proxy_cert)
    finally:
        for server in servers.values():
            server.close()
        dns.close()


def _files(issued: tlscerts.Issued) -> tuple[Path, Path]:
    return issued.cert, issued.key


def _final(msg: SipMessage) -> bool:
    return msg.is_response and msg.status >= 200


def _options(client: TlsClient) -> SipMessage | None:
    host, port = client.sock.getpeername()[:2]
    client.send(build_request("OPTIONS", f"sip:{host}:{port};transport=tls",
                              sent_by=client.sent_by, transport="TLS"))
    return client.recv_until(_final, 5)


# --------------------------------------------------------------------------- a call


@pytest.mark.parametrize("scheme", ["sip", "sips"])
def test_call_between_two_tls_phones(topo: Topo, scheme: str) -> None:
    """REGISTER, INVITE/180/200/ACK and BYE/200 between two phones each on
    its own TLS connection; a sips: call gets a sips: Record-Route."""
    diag = topo.proxy.diagnostics
    with topo.client() as callee, topo.client() as caller:
        contact_b = f"sip:bob@{callee.sent_by};transport=tls"
        callee.send(build_request(
            "REGISTER", f"sip:{DOMAIN}", sent_by=callee.sent_by, transport="TLS",
            from_uri=f"sip:bob@{DOMAIN}", to_uri=f"sip:bob@{DOMAIN}", contact=contact_b,
            extra=[("Expires", "300")]))
        reg = callee.recv_until(_final, 5)
        assert reg is not None and reg.status == 200, f"REGISTER over TLS: {reg}\n{diag()}"

        invite = build_request(
            "INVITE", f"{scheme}:bob@{DOMAIN}", sent_by=caller.sent_by, transport="TLS",
            from_uri=f"{scheme}:alice@{DOMAIN}", to_uri=f"{scheme}:bob@{DOMAIN}",
            contact=f"sip:alice@{caller.sent_by};transport=tls",
            extra=[("Content-Type", "application/sdp")], body=SDP_OFFER)
        caller.send(invite)

        got = callee.recv_until(lambda m: m.method == "INVITE", 5)
        assert got is not None, "the INVITE never reached the callee over TLS\n" + diag()
        assert got.vias[0].startswith(f"SIP/2.0/TLS {LOCALHOST}:{topo.tls_port};"), got.vias
        assert got.vias[1].startswith(f"SIP/2.0/TLS {caller.sent_by};"), got.vias
        rr = got.header_values("record-route")
        ours = (f"<sips:{LOCALHOST}:{topo.tls_port};lr>" if scheme == "sips"
                else f"<sip:{LOCALHOST}:{topo.tls_port};transport=tls;lr>")
        assert rr == [ours], rr
        tag = "calleetag"
        copy = [("Record-Route", v) for v in got.header_lines("record-route")]
        callee.send(build_response(got, 180, "Ringing", to_tag=tag, extra=copy))
        callee.send(build_response(got, 200, "OK", to_tag=tag,
                                   extra=[*copy, ("Contact", f"<{contact_b}>")]))

        seen: list[SipMessage] = []
        ok = caller.recv_until(_final, 5, seen)
        assert ok is not None and ok.status == 200, f"caller got {seen}\n{diag()}"
        assert 180 in [m.status for m in seen], seen
        caller.send(build_ack_for_2xx(invite, ok, sent_by=caller.sent_by, transport="TLS"))
        ack = callee.recv_until(lambda m: m.method == "ACK", 5)
        assert ack is not None, "ACK for the 2xx did not reach the callee\n" + diag()
        assert ack.request_uri == contact_b

        bye = _in_dialog("BYE", invite, ok, caller.sent_by)
        caller.send(bye)
        got_bye = callee.recv_until(lambda m: m.method == "BYE", 5)
        assert got_bye is not None, "BYE did not reach the callee\n" + diag()
        callee.send(build_response(got_bye, 200, "OK"))
        done = caller.recv_until(_final, 5)
        assert done is not None and done.status == 200 and done.cseq == (2, "BYE"), done


def _in_dialog(method: str, invite: bytes, ok: SipMessage, sent_by: str) -> bytes:
    """A request of the caller in the dialog ``ok`` set up (route set: the
    Record-Route reversed, RFC 3261 12.1.2)."""
    inv = SipMessage.parse(invite)
    lines = [
        f"{method} {uri_of(ok.header('contact') or '')} SIP/2.0",
        f"Via: SIP/2.0/TLS {sent_by};branch={new_branch()};rport",
        "Max-Forwards: 70",
        f"From: {inv.header('from')}",
        f"To: {ok.header('to')}",
        f"Call-ID: {inv.call_id}",
        f"CSeq: 2 {method}",
        *(f"Route: {r}" for r in reversed(ok.header_values("record-route"))),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- outgoing TLS


def _call_status(proxy: procs.ProxyProcess, ruri: str) -> int | None:
    with UdpEndpoint() as caller:
        req = build_request("INVITE", ruri, sent_by=caller.sent_by,
                            contact=f"sip:alice@{caller.sent_by}")
        caller.send(req, proxy.address)
        final = caller.recv_until(lambda m: m.is_response and m.status >= 200, 10, [])
        if final is None:
            return None
        if final.msg.status >= 300:
            caller.send(build_ack_for(req, final.msg), proxy.address)
        return final.msg.status


@pytest.mark.parametrize("user", ["good", "byname", "sipsname"])
def test_outgoing_tls_to_a_server_with_the_right_certificate(topo: Topo, user: str) -> None:
    """An IP-address URI, a host name (resolved by DNS) and a sips: URI: the
    server answers 486 over the TLS connection the proxy opened."""
    server = topo.servers["good"]
    before = len(server.received)
    assert _call_status(topo.proxy, f"sip:{user}@{DOMAIN}") == 486, topo.proxy.diagnostics()
    invites = [m for m in server.received[before:] if m.method == "INVITE"]
    assert invites, "the INVITE did not reach the TLS server"
    assert invites[0].vias[0].startswith(f"SIP/2.0/TLS {LOCALHOST}:{topo.tls_port};")
    # In over UDP, out over TLS: two Record-Routes, one per side.
    rr = invites[0].header_values("record-route")
    assert rr == [f"<sip:{LOCALHOST}:{topo.tls_port};transport=tls;lr>",
                  f"<sip:{topo.proxy.hostport};lr>"], rr
    # The connection was checked for the host of the URI, not the address.
    name = LOCALHOST if user == "good" else "good.tls.test"
    shown = json.loads(topo.proxy.ctl("--json", "tls", "list").stdout)
    out = [c for c in shown if c["direction"] == "out" and c["checked_name"] == name
           and c["peer"] == f"{LOCALHOST}:{server.port}"]
    assert len(out) == 1 and "CN=good" in out[0]["peer_certificate"], shown


@pytest.mark.parametrize(("server", "host"), [
    ("impostor", OTHER),  # its address is not a name in its certificate
    ("rogue", OTHER),  # the right names, signed by a CA not in ca_list
    ("rogue", "rogue.tls.test"),
    ("good", "wrong.tls.test"),  # resolves to the good server: not its name
])
def test_outgoing_tls_refuses_a_server_with_the_wrong_certificate(
    topo: Topo, server: str, host: str,
) -> None:
    """Sent on as asked (a foreign Request-URI): the caller gets the proxy's
    503, and the server never gets a SIP byte."""
    peer = topo.servers[server]
    before = len(peer.received)
    status = _call_status(topo.proxy, f"sip:x@{host}:{peer.port};transport=tls")
    assert status in (503, 408), f"caller got {status}\n{topo.proxy.diagnostics()}"
    assert peer.received[before:] == [], "SIP was sent to a server that failed verification"
    assert f"tls handshake with {peer.host}:{peer.port} failed" in topo.proxy.log_text()


@pytest.mark.parametrize(("user", "server"), [
    ("impostor", "impostor"), ("rogue", "rogue"), ("wrongname", "good")])
def test_local_user_behind_a_wrong_certificate_is_unreachable(
    topo: Topo, user: str, server: str,
) -> None:
    """A local user whose only binding fails verification: the default
    routing's 480 (registered but not reachable), as for any unreachable phone."""
    peer = topo.servers[server]
    before = len(peer.received)
    status = _call_status(topo.proxy, f"sip:{user}@{DOMAIN}")
    assert status == 480, f"caller got {status}\n{topo.proxy.diagnostics()}"
    assert peer.received[before:] == []


# --------------------------------------------------------------------------- mutual TLS


def test_client_without_certificate_accepted_where_none_is_required(topo: Topo) -> None:
    with topo.client(topo.tls_port) as client:
        answer = _options(client)
    assert answer is not None and answer.status == 200, topo.proxy.diagnostics()


def _refused(topo: Topo, cert: tlscerts.Issued | None, reason: str) -> None:
    """A client on the mutual-TLS listener gets no SIP service, and the proxy
    says why in its log."""
    log_before = topo.proxy.log_text().count(reason)
    try:
        client = topo.client(topo.mtls_port, cert)
    except ssl.SSLError:
        pass  # refused in the handshake itself (TLS 1.2)
    else:
        with client:
            # TLS 1.3: the server's refusal arrives after our side finished.
            assert _options(client) is None, "a refused client got a SIP answer"
            assert client.closed, "the connection stayed open"
    deadline = time.monotonic() + 5
    while topo.proxy.log_text().count(reason) == log_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert topo.proxy.log_text().count(reason) > log_before, topo.proxy.diagnostics()


def test_mutual_tls_listener_refuses_a_client_without_certificate(topo: Topo) -> None:
    _refused(topo, None, "peer did not return a certificate")


def test_mutual_tls_listener_refuses_a_certificate_from_another_ca(topo: Topo) -> None:
    _refused(topo, topo.rogue_pki.issue("rogue-client"), "certificate verify failed")


def test_mutual_tls_listener_serves_a_client_with_a_valid_certificate(topo: Topo) -> None:
    alice = topo.pki.issue("alice-phone")
    with topo.client(topo.mtls_port, alice) as client:
        answer = _options(client)
        assert answer is not None and answer.status == 200, topo.proxy.diagnostics()
        shown = topo.proxy.ctl("--json", "tls", "list")
        assert shown.returncode == 0, shown.stderr
        mine = [c for c in json.loads(shown.stdout) if c["peer"] == client.sent_by]
        assert len(mine) == 1, shown.stdout
        assert mine[0]["direction"] == "in" and mine[0]["secured"] is True
        assert "CN=alice-phone" in mine[0]["peer_certificate"]
        assert mine[0]["listener"] == f"tls:{LOCALHOST}:{topo.mtls_port}"


# --------------------------------------------------------------------------- reload


def _fingerprint(client: TlsClient) -> bytes:
    return hashlib.sha256(client.peer_certificate()).digest()


def test_tls_reload_new_connections_see_the_new_certificate(topo: Topo) -> None:
    """Runs last in the module: it replaces the proxy's certificate files."""
    with topo.client() as old:
        assert _fingerprint(old) == topo.proxy_cert.fingerprint
        fresh = topo.pki.issue("proxy-renewed", dns=["localhost"], ips=[LOCALHOST])
        topo.proxy_cert.cert.write_bytes(fresh.cert.read_bytes())
        topo.proxy_cert.key.write_bytes(fresh.key.read_bytes())
        done = topo.proxy.ctl("tls", "reload")
        assert done.returncode == 0, done.stderr + done.stdout
        assert "proxy-renewed" in done.stdout, done.stdout
        with topo.client() as new:
            assert _fingerprint(new) == fresh.fingerprint
            assert _options(new) is not None
        # The connection made before the reload goes on with the old one.
        answer = _options(old)
        assert answer is not None and answer.status == 200

        # A broken file is refused, with the reason, and the current one serves on.
        topo.proxy_cert.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
        refused = topo.proxy.ctl("tls", "reload")
        assert refused.returncode != 0
        text = refused.stdout + refused.stderr
        assert "refused" in text and "tls.private_key" in text, text
        with topo.client() as after:
            assert _fingerprint(after) == fresh.fingerprint
        shown = topo.proxy.ctl("tls", "show")
        assert "proxy-renewed" in shown.stdout, shown.stdout


# --------------------------------------------------------------------------- start-up errors


def _start_fails(tmp_path: Path, tls: dict[str, str | list[str]]) -> str:
    port, tls_port = procs.free_port(), procs.free_port("tcp")
    listen = [*procs.default_listen(port), f"tls:{LOCALHOST}:{tls_port}"]
    cfg = procs.write_config(tmp_path / "sipsuite.toml", port=port, listen=listen,
                             tables={"tls": tls})
    cmd = procs.proxy_command(cfg, port, tmp_path / "proxy.log", listen=listen)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=procs.REPO)
    assert done.returncode != 0, "the proxy started with a bad [tls] section"
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def test_tls_listener_without_certificate_stops_start_up(tmp_path: Path) -> None:
    line = _start_fails(tmp_path, {})
    assert "tls.certificate: expected a PEM file path, required by tls:127.0.0.1:" in line, line


def test_unreadable_certificate_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    key = tmp_path / "key.pem"
    key.write_text("")
    line = _start_fails(tmp_path, {"certificate": str(missing), "private_key": str(key)})
    assert line.startswith("sip"), line
    assert f"tls.certificate: cannot read '{missing}'" in line, line


def test_key_not_matching_the_certificate_stops_start_up(tmp_path: Path) -> None:
    pki = tlscerts.TestPKI(tmp_path / "pki")
    one, two = pki.issue("one", ips=[LOCALHOST]), pki.issue("two", ips=[LOCALHOST])
    line = _start_fails(tmp_path, {"certificate": str(one.cert), "private_key": str(two.key)})
    assert f"tls.private_key: '{two.key}' does not match" in line, line


def test_verify_server_false_skips_the_checks(topo: Topo, proxy_factory: ProxyFactory) -> None:
    """verify_server = false (testing only): the impostor gets the call."""
    port, tls_port = procs.free_port(), procs.free_port("tcp")
    cert = topo.pki.issue("lax-proxy", ips=[LOCALHOST])
    lax = proxy_factory(
        "tls-lax", port=port, trusted=[f"{LOCALHOST}/32"],
        listen=[*procs.default_listen(port), f"tls:{LOCALHOST}:{tls_port}"],
        tables={"tls": {"certificate": str(cert.cert), "private_key": str(cert.key),
                        "ca_list": str(topo.pki.ca_file), "verify_server": False}},
    )
    impostor = topo.servers["impostor"]
    before = len(impostor.received)
    status = _call_status(lax, f"sip:x@{impostor.host}:{impostor.port};transport=tls")
    assert status == 486, lax.diagnostics()
    assert [m.method for m in impostor.received[before:]][:1] == ["INVITE"]


def test_plain_sip_on_a_tls_port_is_dropped_and_counted(topo: Topo) -> None:
    """Not TLS at all: the connection is closed, counted as a failed
    handshake, and the listener goes on serving."""
    with socket.create_connection((LOCALHOST, topo.tls_port), timeout=5) as raw:
        raw.sendall(build_request("OPTIONS", f"sip:{LOCALHOST}:{topo.tls_port}",
                                  sent_by="127.0.0.1:1", transport="TCP"))
        data = b""
        try:
            while chunk := raw.recv(4096):
                data += chunk
        except OSError:
            pass
    assert b"SIP/2.0" not in data, data
    stats = json.loads(topo.proxy.ctl("--json", "stats").stdout)
    assert stats["drops"].get("transport.tls_handshake", 0) >= 1, stats["drops"]
    with topo.client() as client:
        answer = _options(client)
    assert answer is not None and answer.status == 200
