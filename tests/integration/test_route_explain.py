"""sipsuite-ctl route explain against a real twistd proxy, alone and with
two worker processes on Redis: the decisions it prints are the ones the
live proxy takes with the same message, and the dry run changes nothing
(registrations, stats, nonce counts)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import digestclient
import pytest
from common import LOCALHOST, free_port
from endpoints import UdpEndpoint
from proxyproc import ProxyProcess, start_proxy, write_config

AUTH = {"features": {"auth": True}, "auth": {"realm": "example.com", "secret": "s3cret"}}


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    port = free_port()
    cfg = write_config(tmp_path / "sipsuite.toml", port=port, domains=["example.com"], tables=AUTH)
    p = start_proxy(tmp_path / "run", cfg, port, plugin="sip-proxy")
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ProxyProcess]:
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    port = free_port()
    try:
        cfg = write_config(tmp_path / "sipsuite.toml", port=port, domains=["example.com"],
                           extra_proxy={"workers": 2},
                           tables={**AUTH, "redis": {"url": redis.url(3)}})
        p = start_proxy(tmp_path / "run", cfg, port, plugin="sip-proxy")
        try:
            deadline = time.monotonic() + 15
            while len(re.findall(r"worker [01]: sip proxy ready", p.log_text())) < 2:
                assert time.monotonic() < deadline, p.diagnostics(80)
                time.sleep(0.1)
            yield p
        finally:
            p.stop()
    finally:
        redis.close()


def request(method: str, ruri: str, ep: UdpEndpoint, *, from_: str, to: str, call_id: str,
            cseq: int = 1, to_tag: str = "", extra: str = "") -> bytes:
    host, port = ep.address
    text = (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{call_id}{cseq}{method};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <{from_}>;tag=f{call_id}\r\n"
            f"To: <{to}>{';tag=' + to_tag if to_tag else ''}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{from_.split(':')[1].split('@')[0]}@{host}:{port}>\r\n"
            f"{extra}Content-Length: 0\r\n\r\n")
    return text.encode()


def explain(proxy: ProxyProcess, data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "msg.txt"
    path.write_bytes(data)
    run = proxy.ctl("route", "explain", str(path))
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def state(proxy: ProxyProcess) -> tuple[Any, ...]:
    # The seconds left of each binding tick on; everything else must stay.
    ul = [{**aor, "bindings": [{k: v for k, v in b.items() if k != "expires"}
                               for b in aor["bindings"]]}
          for aor in json.loads(proxy.ctl("--json", "ul", "show").stdout)]
    stats = json.loads(proxy.ctl("--json", "stats").stdout)
    counters = {k: stats[k] for k in ("requests", "requests_by_method", "replies_sent_by_class",
                                      "transactions", "registrations")}
    return ul, counters


def exchange(ep: UdpEndpoint, data: bytes, dest: tuple[str, int]) -> list[Any]:
    ep.send(data, dest)
    return [r.msg for r in ep.collect(1.0)]


def test_route_explain_shows_what_the_live_proxy_does_and_changes_nothing(
        proxy: ProxyProcess, tmp_path: Path) -> None:
    same_decisions_and_nothing_changed(proxy, tmp_path)


def test_with_workers_worker_0_explains_on_the_shared_state(
        workers: ProxyProcess, tmp_path: Path) -> None:
    """Bindings and nonce counts are in Redis: worker 0's dry run sees those
    the other worker wrote, and writes none."""
    same_decisions_and_nothing_changed(workers, tmp_path)


def same_decisions_and_nothing_changed(proxy: ProxyProcess, tmp_path: Path) -> None:
    dest = (LOCALHOST, proxy.port)
    assert proxy.ctl("user", "add", "bob", "secret").returncode == 0
    with UdpEndpoint() as bob, UdpEndpoint() as carol:
        # bob registers for real (401, then with credentials, nc=1).
        reg = request("REGISTER", "sip:example.com", bob, from_="sip:bob@example.com",
                      to="sip:bob@example.com", call_id="reg1")
        [challenge] = [m for m in exchange(bob, reg, dest) if m.status == 401]
        ch = digestclient.challenges(challenge, "www-authenticate")[0]
        creds = digestclient.credentials(ch, "bob", "secret", "REGISTER", "sip:example.com", nc=1)
        reg2 = request("REGISTER", "sip:example.com", bob, from_="sip:bob@example.com",
                       to="sip:bob@example.com", call_id="reg1", cseq=2,
                       extra=f"Authorization: {creds}\r\n")
        assert [m.status for m in exchange(bob, reg2, dest)] == [200]
        before = state(proxy)

        # The same nonce with nc=2, explained: accepted (200), and not
        # written back: the live proxy then takes nc=2 too.
        creds2 = digestclient.credentials(ch, "bob", "secret", "REGISTER", "sip:example.com", nc=2)
        reg3 = request("REGISTER", "sip:example.com", bob, from_="sip:bob@example.com",
                       to="sip:bob@example.com", call_id="reg1", cseq=3,
                       extra=f"Authorization: {creds2}\r\nExpires: 0\r\n")
        lines = explain(proxy, reg3, tmp_path)
        assert any(ln.startswith("request_route: auth_check 'bob' (www): valid credentials")
                   for ln in lines), lines
        assert any(ln.startswith("request_route: reply 200 OK (by registrar.save)") for ln in lines)
        assert lines[-1] == "decision: replied"
        # A replayed nc (1) is refused by the dry run as the live proxy refuses it.
        replay = explain(proxy, reg2, tmp_path)
        assert any(ln.startswith("sent: 401 Unauthorized") for ln in replay), replay

        # An INVITE to bob (registered): relayed to his binding.
        inv = request("INVITE", "sip:bob@example.com", carol, from_="sip:carol@other.org",
                      to="sip:bob@example.com", call_id="inv1")
        lines = explain(proxy, inv, tmp_path)
        bob_at = f"udp:{bob.address[0]}:{bob.address[1]}"
        assert any(ln.startswith(f"request_route: lookup 'bob': 1 binding(s): sip:bob@{bob.sent_by}")
                   for ln in lines), lines
        assert f"sent: INVITE sip:bob@{bob.sent_by} -> {bob_at}" in lines
        assert lines[-1] == "decision: relayed"

        # An INVITE to a foreign domain from a foreign caller: 403.
        foreign = request("INVITE", "sip:dave@elsewhere.example", carol, from_="sip:carol@other.org",
                          to="sip:dave@elsewhere.example", call_id="inv2")
        lines = explain(proxy, foreign, tmp_path)
        assert any(ln.startswith("request_route: reply 403 Not relaying  [") for ln in lines)
        assert lines[-1] == "decision: replied"

        # An in-dialog BYE routed through us: relayed to its Request-URI.
        bye = request("BYE", f"sip:bob@{bob.sent_by}", carol, from_="sip:carol@other.org",
                      to="sip:bob@example.com", call_id="inv1", cseq=2, to_tag="b1",
                      extra=f"Route: <sip:{LOCALHOST}:{proxy.port};lr>\r\n")
        lines = explain(proxy, bye, tmp_path)
        assert any(ln.startswith("request_route: relay to the Request-URI") for ln in lines)
        assert f"sent: BYE sip:bob@{bob.sent_by} -> {bob_at}" in lines

        # Nothing changed: bindings, counters.
        assert state(proxy) == before

        # The live proxy takes the same decisions with the same messages.
        # (403 again: timer G, carol never ACKs)
        assert list(dict.fromkeys(m.status for m in exchange(carol, foreign, dest))) == [100, 403]
        exchange(carol, inv, dest)
        got = bob.collect(1.0)
        assert [(r.msg.method, r.msg.request_uri) for r in got][:1] == [
            ("INVITE", f"sip:bob@{bob.sent_by}")]
        exchange(carol, bye, dest)
        # (and the INVITE again: bob never answered it)
        assert {r.msg.method for r in bob.collect(1.0)} - {"INVITE"} == {"BYE"}
        # nc=2 still unused live: the dry run did not take it.
        assert [m.status for m in exchange(bob, reg3, dest)] == [200]


def test_route_explain_of_a_file_that_is_no_sip(proxy: ProxyProcess, tmp_path: Path) -> None:
    (tmp_path / "junk.txt").write_text("hello\n\n")
    run = proxy.ctl("route", "explain", str(tmp_path / "junk.txt"))
    assert run.returncode == 1 and "cannot route it" in run.stderr
    assert proxy.alive
    run = subprocess.run(proxy.ctl("route", "explain", str(tmp_path / "missing.txt")).args,
                         capture_output=True, text=True, timeout=20)
    assert run.returncode == 1 and "missing.txt" in run.stderr
