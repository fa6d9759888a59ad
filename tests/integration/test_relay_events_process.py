"""Relay events and the handle's relay_sessions() in a real ``twistd sipsuite``
carrying a sipp call with RTP both ways through its in-process relay."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import procs
from common import LOCALHOST, free_port_range
from test_media_relay import media_tables, run_rtp_call

TAP = '''
import json
import os

from twisted.application import service

from sipsuite.api import service_factory


class Tap(service.Service):
    def __init__(self, handle):
        self.handle = handle

    def startService(self):
        super().startService()
        self.handle.events.subscribe("relay.session.*", self.write)

    def write(self, event):
        line = event.to_dict()
        if event.name == "relay.session.latched":
            line["sessions"] = self.handle.relay_sessions()
        with open(os.environ["RELAY_TAP_OUT"], "a") as f:
            f.write(json.dumps(line) + "\\n")


@service_factory("tap")
def make(handle, settings):
    return Tap(handle)
'''


def test_relay_session_events_and_sessions(sipp_bin: str, tmp_path: Path, monkeypatch: Any) -> None:
    out = tmp_path / "relay.jsonl"
    monkeypatch.setenv("RELAY_TAP_OUT", str(out))
    ports = free_port_range(40)
    port, uas_port = procs.free_port(), procs.free_port()
    conf = procs.write_config(tmp_path / "sipsuite.toml", port=port,
                              static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                              tables={**media_tables(ports),
                                      "services": {"load": ["svc_relay_tap:make"]}})
    (tmp_path / "svc_relay_tap.py").write_text(TAP)
    proxy = procs.start_proxy(tmp_path / "run", conf, port, plugin="sipsuite")
    try:
        run_rtp_call(proxy.address, uas_port, ports, tmp_path / "sipp", proxy.ctl,
                     proxy.diagnostics)
        deadline = time.monotonic() + 5
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not any(
                e["event"] == "relay.session.ended" for e in events):
            time.sleep(0.1)
            events = [json.loads(ln) for ln in
                      (out.read_text().splitlines() if out.exists() else [])]
        time.sleep(0.5)  # a second ended event, had there been one, is in by now
        events = [json.loads(ln) for ln in
                  (out.read_text().splitlines() if out.exists() else [])]
    finally:
        proxy.stop()
    names = [e["event"] for e in events]
    assert names[0] == "relay.session.created" and names[-1] == "relay.session.ended", names
    # One source: the relay's table, not the media module's client as well.
    assert (names.count("relay.session.created"), names.count("relay.session.ended")) == (1, 1), \
        names
    assert "relay" not in events[0], events[0]
    latched = [e for e in events if e["event"] == "relay.session.latched"]
    assert sorted(e["leg"] for e in latched) == ["callee", "caller"], events
    assert all(e["address"].startswith(f"{LOCALHOST}:") for e in latched)
    assert len({e["call_id"] for e in events}) == 1
    [session] = latched[-1]["sessions"]
    assert session["call_id"] == events[0]["call_id"]
    assert all(ports[0] <= leg["port"] <= ports[1] for leg in session["legs"]), session
    assert events[-1]["reason"] == "deleted"
