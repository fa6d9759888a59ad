"""The user-service examples in a real ``twistd sipsuite`` with sipp (issue 18):

- examples/services/webhook.py: a test HTTP server receives exactly one
  call.ended per call, with its parties, duration and cause, and a
  registration.added for a sipp REGISTER; a server that fails at first gets
  the event on a retry;
- examples/services/missed_calls.py: a busy callee's call shows on its HTTP
  endpoint;
- a subscriber that blocks (a thread sleeping per event) and one that waits
  (a Deferred per event) leave 100 calls at 50/s all successful, with the
  setup time of a proxy without them, and count their dropped events.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from common import LOCALHOST, free_port, sipp_dir
from proxyproc import start_proxy, write_config
from sipp import SippProcess, read_sipp_stats, run_sipp

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


class Hook:
    """A loopback HTTP server recording the JSON bodies POSTed to it; the
    first ``fail_first`` POSTs get a 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.attempts += 1
                if hook.attempts <= hook.fail_first:
                    self.send_response(503)
                else:
                    hook.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOCALHOST, free_port("tcp")), Handler)
        self.url = f"http://{LOCALHOST}:{self.server.server_port}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [b for b in list(self.bodies) if pred(b)]
            if found:
                return found
            time.sleep(0.05)
        return []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook(fail_first=1)
    yield h
    h.close()


def test_webhook_and_missed_calls(sipp_bin: str, hook: Hook, tmp_path: Path) -> None:
    port, uas_port, busy_port = free_port(), free_port("udp"), free_port("udp")
    missed_port = free_port("tcp")
    conf = write_config(tmp_path / "sipsuite.toml", port=port, static={
        "bob": [f"sip:bob@{LOCALHOST}:{uas_port}"],
        "carol": [f"sip:carol@{LOCALHOST}:{busy_port}"],
    }, tables={
        "services": {"load": ["examples.services.webhook:make_service",
                              "examples.services.missed_calls:make_service"]},
        "services.webhook": {"url": hook.url, "events": ["call.ended", "registration.added"],
                             "backoff": 0.2},
        "services.missed_calls": {"listen": f"tcp:{missed_port}:interface={LOCALHOST}"},
    })
    # Found in the working directory (the checkout), as [proxy] routing would be.
    proxy = start_proxy(tmp_path / "run", conf, port, plugin="sipsuite")
    try:
        # A REGISTER: its event, after one 503 from the server and a retry.
        reg = run_sipp(SCENARIOS / "register_uac.xml", name="reg", workdir=tmp_path,
                       remote=proxy.address, local_port=free_port("udp"), calls=1, timeout_s=10,
                       service="alice")
        assert reg.rc == 0, reg.summary() + proxy.diagnostics()
        [added] = hook.wait_for(lambda b: b["event"] == "registration.added")
        assert added["aor"].startswith("alice") and added["expires"] == 3600
        assert added["contact"].startswith("sip:alice@127.0.0.1:")
        assert hook.attempts >= 2  # the first POST got 503

        # An answered call of about 1 s, hung up by the caller.
        uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=tmp_path,
                          local_port=uas_port, calls=1, timeout_s=20, service="bob")
        uas.wait_bound()
        caller_port = free_port("udp")
        uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path,
                       remote=proxy.address, local_port=caller_port, calls=1, timeout_s=20,
                       service="bob", duration_ms=1000)
        assert (uac.rc, uac.successful, uas.wait().successful) == (0, 1, 1), uac.summary()
        ended = hook.wait_for(lambda b: b["event"] == "call.ended" and b["to"].startswith("sip:bob@"))
        time.sleep(0.5)  # a second one would have come by now
        ended = [b for b in hook.bodies if b["event"] == "call.ended"
                 and b["to"].startswith("sip:bob@")]
        assert len(ended) == 1, hook.bodies
        call = ended[0]
        assert call["from"] == f"sip:caller@{LOCALHOST}:{caller_port}", call
        assert call["to"] == call["ruri"] == f"sip:bob@{LOCALHOST}:{port}", call
        assert (call["answered"], call["cause"], call["code"]) == (True, "caller-hangup", 200)
        assert 0.9 <= call["duration"] <= 2.0, call
        assert call["source"] == f"udp:{LOCALHOST}:{caller_port}", call

        # carol is busy: a missed call on the missed_calls endpoint.
        uas_xml, uac_xml = tmp_path / "uas486.xml", tmp_path / "uac486.xml"
        uas_xml.write_text((SCENARIOS / "uas_reject.xml").read_text().replace("REJECT_STATUS", "486"))
        uac_xml.write_text(
            (SCENARIOS / "uac_expect_final.xml").read_text().replace("EXPECTED_STATUS", "486"))
        rej = SippProcess(uas_xml, name="rej", workdir=tmp_path, local_port=busy_port, calls=1,
                          timeout_s=20, service="carol",
                          extra=["-key", "reason", "Busy", "-key", "hdr", "X-Why: busy"])
        rej.wait_bound()
        fail = run_sipp(uac_xml, name="uac486", workdir=tmp_path, remote=proxy.address,
                        local_port=free_port("udp"), calls=1, timeout_s=20, service="carol",
                        extra=["-key", "from_host", LOCALHOST])
        rej.wait()
        assert fail.rc == 0, fail.summary() + proxy.diagnostics()
        assert hook.wait_for(lambda b: b["event"] == "call.ended" and b["cause"] == "busy")
        with urllib.request.urlopen(f"http://{LOCALHOST}:{missed_port}/missed/carol",
                                    timeout=5) as r:
            missed = json.loads(r.read())
        assert [(m["cause"], m["code"]) for m in missed] == [("busy", 486)], missed
        shown = proxy.ctl("services")
        assert [ln.split()[:2] for ln in shown.stdout.splitlines()[1:]] == [
            ["webhook", "running"], ["missed_calls", "running"]], shown.stdout
    finally:
        proxy.stop()


SLOW = '''
import time

from twisted.application import service
from twisted.internet import task

from sipsuite.api import service_factory


class Slow(service.Service):
    def __init__(self, handle):
        self.handle = handle

    def startService(self):
        super().startService()
        events = ["call.*", "request.*"]
        # Blocks its thread for 0.2 s per event...
        self.handle.events.subscribe(events, lambda e: time.sleep(0.2), blocking=True,
                                     backlog=20, label="sleeper")
        # ...and waits 1 s per event on the reactor.
        self.handle.events.subscribe(
            events, lambda e: task.deferLater(self.handle.reactor, 1.0, lambda: None),
            backlog=20, label="waiter")


@service_factory("slow")
def make(handle, settings):
    return Slow(handle)
'''

CALLS, RATE = 100, 50


def _load(tmp: Path, name: str, slow: bool) -> tuple[float, Any, Any]:
    """100 calls at 50/s through a fresh proxy; (mean setup ms, uac, proxy stats)."""
    work = tmp / name
    work.mkdir()
    (work / "svc_slow.py").write_text(SLOW)
    port, uas_port = free_port(), free_port("udp")
    tables = {"services": {"load": ["svc_slow:make"]}} if slow else {}
    conf = write_config(work / "sipsuite.toml", port=port,
                        static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]}, tables=tables)
    proxy = start_proxy(work / "run", conf, port, plugin="sip-proxy")
    try:
        uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                          local_port=uas_port, calls=CALLS, timeout_s=40, service="bob")
        uas.wait_bound()
        uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=work,
                       remote=proxy.address, local_port=free_port("udp"), calls=CALLS,
                       timeout_s=40, service="bob", rate=RATE, duration_ms=100)
        uas.wait()
        stats = json.loads(proxy.ctl("--json", "stats").stdout) if slow else None
        if slow:
            with urllib.request.urlopen(proxy.management_url + "metrics", timeout=5) as r:
                stats["metrics"] = r.read().decode()
    finally:
        rc = proxy.stop()
    # Stopped by the SIGTERM (twistd re-raises it), not the SIGKILL after
    # the grace time: no subscriber thread kept the process alive.
    assert rc == -signal.SIGTERM, proxy.diagnostics()
    row = read_sipp_stats(uac.file(".stat.csv"))
    return _ms(row.get("ResponseTimesetup(C)", "")), uac, stats


def _ms(text: str) -> float:
    """sipp's 'HH:MM:SS:uuuuuu' (-trace_stat) -> milliseconds."""
    parts = [int(p) for p in text.split(":")] if text else []
    if len(parts) != 4:
        return float("nan")
    h, m, s, us = parts
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


def test_slow_subscribers_do_not_delay_calls(sipp_bin: str, tmp_path: Path) -> None:
    base_ms, base, _ = _load(tmp_path, "baseline", slow=False)
    slow_ms, uac, stats = _load(tmp_path, "slow", slow=True)
    assert (base.successful, base.failed) == (CALLS, 0), base.summary()
    assert (uac.successful, uac.failed) == (CALLS, 0), uac.summary()
    subs = stats["events"]["by_subscriber"]
    print(f"setup ms: baseline {base_ms:.2f}, slow subscribers {slow_ms:.2f}; {subs}")
    sleeper = next(v for k, v in subs.items() if k.endswith("sleeper"))
    waiter = next(v for k, v in subs.items() if k.endswith("waiter"))
    # 100 calls raise ~900 events; 0.2 s and 1 s each cannot keep up.
    assert sleeper["dropped"] > 0 and waiter["dropped"] > 0, subs
    assert stats["events"]["dropped"] == sleeper["dropped"] + waiter["dropped"]
    assert f'sipsuite_events_dropped_total{{subscriber="0:sleeper"}} {float(sleeper["dropped"])}' \
        in stats["metrics"], stats["metrics"]
    # The setup time (INVITE to 200, mean over the run) within noise of the baseline.
    assert slow_ms == slow_ms and base_ms == base_ms, (base_ms, slow_ms)
    assert slow_ms <= base_ms * 1.5 + 5, (base_ms, slow_ms)
