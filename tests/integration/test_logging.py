"""Logging as [log] level sets it: one line per transaction at info, whole
messages on the wire at debug."""

from __future__ import annotations

import time

import procs
from procs import LOCALHOST, ProxyFactory, build_request


def _options_round(proxy: procs.ProxyProcess, marker: str) -> procs.SipMessage:
    req = build_request(
        "OPTIONS", f"sip:{LOCALHOST}:{proxy.port}", sent_by=f"{LOCALHOST}:9", call_id=marker,
        to_uri=f"sip:{LOCALHOST}:{proxy.port}", extra=[("X-Marker", marker)],
    )
    with procs.UdpEndpoint() as ep:
        ep.send(req, proxy.address)
        got = ep.recv(3.0)
    assert got is not None, f"no answer to OPTIONS\n{proxy.diagnostics()}"
    # twisted's file log is written by the reactor loop; give it a moment.
    time.sleep(0.3)
    return got.msg


def test_debug_logs_whole_messages(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory("log-debug", log_level="debug")
    resp = _options_round(proxy, "debug-marker-1")
    assert resp.status == 200
    text = proxy.log_text()
    assert "X-Marker: debug-marker-1" in text, proxy.diagnostics()
    assert "SIP/2.0 200 Keepalive" in text, proxy.diagnostics()
    assert "OPTIONS sip:" in text and "answered 200" in text, proxy.diagnostics()


def test_info_logs_one_line_per_transaction(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory("log-info", log_level="info")
    resp = _options_round(proxy, "info-marker-2")
    assert resp.status == 200
    text = proxy.log_text()
    lines = [line for line in text.splitlines() if "info-marker-2" in line]
    assert len(lines) == 1, proxy.diagnostics()
    assert "answered 200" in lines[0], proxy.diagnostics()
    assert "X-Marker" not in text, "info level must not log whole messages"
