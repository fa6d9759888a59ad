"""``[management] token`` and the /calls pages, against a real ``twistd
sip-proxy``: a listener beyond loopback without a token is refused at start;
with a token, JSON-RPC, /metrics and the pages answer 401 without it
(sipsuite-ctl sends it from --token or $SIPSUITE_CTL_TOKEN); a hostile
Call-ID and header are shown as text on the pages, never as markup."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import procs
import pytest
from procs import LOCALHOST

TOKEN = "s3cret-token-0123456789abcdef"

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, *, token: str | None = None, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of one request; 4xx/5xx answers too."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, headers=sent,
                                     method="POST" if data is not None else "GET")
    try:
        with OPENER.open(request, timeout=10) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


RPC = json.dumps({"jsonrpc": "2.0", "method": "system.listMethods", "id": 1}).encode()


def test_non_loopback_listener_without_token_is_refused_at_start(tmp_path: Path) -> None:
    port = procs.free_port()
    cfg = procs.write_config(tmp_path / "sipsuite.toml", port=port, tables={
        "management": {"listen": f"tcp:0.0.0.0:{procs.free_port('tcp')}"}})
    with pytest.raises(procs.ProxyStartError):
        proxy = procs.start_proxy(tmp_path / "run", cfg, port, plugin="sip-proxy")
        proxy.stop()
    out = (tmp_path / "run" / "proxy.out").read_text()
    lines = [line for line in out.splitlines() if "[management] listen" in line]
    assert len(lines) == 1 and "set [management] token" in lines[0], out
    assert "Traceback" not in out, out


def test_a_token_that_is_too_short_is_refused_naming_the_key(tmp_path: Path) -> None:
    port = procs.free_port()
    cfg = procs.write_config(tmp_path / "sipsuite.toml", port=port,
                             tables={"management": {"token": "short"}})
    with pytest.raises(procs.ProxyStartError):
        proxy = procs.start_proxy(tmp_path / "run", cfg, port, plugin="sip-proxy")
        proxy.stop()
    out = (tmp_path / "run" / "proxy.out").read_text()
    assert "management.token" in out and "Traceback" not in out, out


def test_with_a_token_every_request_without_it_gets_401(
        proxy_factory: procs.ProxyFactory) -> None:
    proxy = proxy_factory("token", plugin="sip-proxy", tables={"management": {"token": TOKEN}})
    base = proxy.management_url
    for token in (None, "wrong-token-0123456789abcdef", TOKEN[:-1], TOKEN + "x"):
        status, body, headers = http(base, token=token, data=RPC)
        assert status == 401, (token, status, body)
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
        assert json.loads(body)["error"]["code"] == -32600
        for path in ("metrics", "calls", "calls/some-call-id", "anything"):
            assert http(base + path, token=token)[0] == 401, (path, token)
    status, body, _ = http(base, token=TOKEN, data=RPC)
    assert status == 200 and "calls.list" in json.loads(body)["result"], body
    # The scheme's case does not matter (RFC 7235); the token's does.
    assert http(base, data=RPC, headers={"Authorization": f"bearer {TOKEN}"})[0] == 200
    assert http(base, data=RPC, headers={"Authorization": f"Bearer {TOKEN.upper()}"})[0] == 401
    assert http(base + "metrics", token=TOKEN)[0] == 200
    status, body, _ = http(base + "calls", token=TOKEN)
    assert status == 200 and b"<h1>Calls</h1>" in body, body

    # sipsuite-ctl: from the environment, from --token, and a clear error without.
    env = dict(os.environ, SIPSUITE_CTL_URL=base)
    ctl = [*procs.ctl_command(), "--json", "rpc", "system.listMethods"]
    bare = subprocess.run(ctl, capture_output=True, text=True, timeout=20,
                          env={k: v for k, v in env.items() if k != "SIPSUITE_CTL_TOKEN"})
    assert bare.returncode == 1 and "HTTP 401" in bare.stderr and "SIPSUITE_CTL_TOKEN" in bare.stderr
    by_env = subprocess.run(ctl, capture_output=True, text=True, timeout=20,
                            env=dict(env, SIPSUITE_CTL_TOKEN=TOKEN))
    assert by_env.returncode == 0 and "calls.trace" in by_env.stdout, by_env.stderr
    by_option = subprocess.run([*ctl, "--token", TOKEN], capture_output=True, text=True,
                               timeout=20, env=env)
    assert by_option.returncode == 0, by_option.stderr
    wrong = subprocess.run([*ctl, "--token", "x" * 20], capture_output=True, text=True,
                           timeout=20, env=env)
    assert wrong.returncode == 1 and "wrong token" in wrong.stderr, wrong.stderr

    # A browser: /login (served without the token) puts it in a cookie.
    status, body, _ = http(base + "login")
    assert status == 200 and b'name="token"' in body
    assert http(base + "login", data=b"token=nope",
                headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 401
    request = urllib.request.Request(base + "login", data=f"token={TOKEN}".encode(),
                                     method="POST")
    no_redirect = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        no_redirect.open(request, timeout=10)
        raise AssertionError("no redirect after a good token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 303, exc.code
        cookie = exc.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    pair = cookie.split(";", 1)[0]
    assert http(base + "calls", headers={"Cookie": pair})[0] == 200
    assert http(base + "calls", headers={"Cookie": "sipsuite-token=nope"})[0] == 401
    # The cookie opens the pages only, not the JSON-RPC calls.
    assert http(base, data=RPC, headers={"Cookie": pair})[0] == 401


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


HOSTILE_ID = "<script>alert(1)</script>\"'<img/src/onerror>@x"
HOSTILE_HEADER = "<svg/onload=alert(2)><b>bold</b>"


def test_a_hostile_call_id_and_header_are_text_on_the_pages(
        proxy_factory: procs.ProxyFactory) -> None:
    proxy = proxy_factory("hostile", plugin="sip-proxy")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        sock.settimeout(5)
        here = sock.getsockname()[1]
        invite = (f"INVITE sip:nobody@{proxy.hostport} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {LOCALHOST}:{here};branch=z9hG4bK-hostile-1\r\n"
                  "Max-Forwards: 70\r\n"
                  f"From: <sip:mallory@{LOCALHOST}>;tag=1\r\n"
                  f"To: <sip:nobody@{proxy.hostport}>\r\n"
                  f"Call-ID: {HOSTILE_ID}\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:mallory@{LOCALHOST}:{here}>\r\n"
                  f"Subject: {HOSTILE_HEADER}\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(invite.encode(), proxy.address)
        final = b""
        while not final.startswith(b"SIP/2.0 4"):
            final = sock.recv(65535)
    base = proxy.management_url
    status, listing, _ = http(base + "calls")
    assert status == 200
    page = listing.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&lt;img/src/onerror&gt;" in page, page
    assert "<script>alert(1)" not in page and "<img" not in page, page
    link = "/calls/" + quote(HOSTILE_ID, safe="")
    assert f'href="{link}"' in page, page
    status, body, _ = http(base.rstrip("/") + link)
    assert status == 200, body
    ladder = body.decode()
    assert "&lt;svg/onload=alert(2)&gt;&lt;b&gt;bold&lt;/b&gt;" in ladder, ladder
    assert "<svg/onload" not in ladder and "<b>bold" not in ladder and "<img" not in ladder
    # Only the page's own markup: one svg (the ladder), no script at all.
    assert ladder.count("<svg") == 1 and "<script" not in ladder, ladder
    # An unknown call is a 404 page that shows the asked-for id as text.
    status, body, _ = http(base + "calls/" + quote("<i>nope</i>", safe=""))
    assert status == 404 and b"&lt;i&gt;nope&lt;/i&gt;" in body and b"<i>" not in body


def test_with_workers_the_token_reaches_the_workers_and_the_pages_merge(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    """[proxy] workers = 2 and a token: the supervisor sends the token to
    its workers' listeners (which require it too), and the pages show the
    call whichever worker carried it."""
    import re
    import time

    import redisproc
    from test_flight_recorder import one_call

    redis = redisproc.RedisServer()
    redis.start()
    try:
        uas_port = procs.free_port()
        proxy = proxy_factory("token-workers", plugin="sip-proxy",
                              static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                              extra_proxy={"workers": 2},
                              tables={"redis": {"url": redis.url(4)}, "management": {"token": TOKEN}})
        deadline = time.monotonic() + 20
        while len(re.findall(r"worker [01]: sip proxy ready", proxy.log_text())) < 2:
            assert time.monotonic() < deadline, proxy.diagnostics(80)
            time.sleep(0.1)
        one_call(proxy, uas_port, tmp_path / "sipp")
    finally:
        redis.close()
    base = proxy.management_url
    env = dict(os.environ, SIPSUITE_CTL_TOKEN=TOKEN)
    shown = subprocess.run([*procs.ctl_command(), "--url", base, "--json", "calls"],
                           capture_output=True, text=True, timeout=20, env=env)
    assert shown.returncode == 0, shown.stderr
    calls = json.loads(shown.stdout)["calls"]
    assert [c["result"] for c in calls] == [200], calls
    call_id = calls[0]["call_id"]
    stats = subprocess.run([*procs.ctl_command(), "--url", base, "--json", "stats"],
                           capture_output=True, text=True, timeout=20, env=env)
    assert stats.returncode == 0 and set(json.loads(stats.stdout)["workers"]) == {"0", "1"}
    assert http(base + "calls")[0] == 401
    status, body, _ = http(base + "calls", token=TOKEN)
    assert status == 200 and call_id.encode() in body, body
    status, body, _ = http(base + "calls/" + quote(call_id, safe=""), token=TOKEN)
    assert status == 200, body
    assert body.count(b'class="arrow sip"') == 14, body
    assert http(base + "metrics", token=TOKEN)[0] == 200
