"""Relay events in the split deployment: a real ``twistd sip-proxy`` driving a
separate ``twistd rtp-relay`` over the control protocol, a user service on
the proxy subscribed to relay.session.*, and a sipp call with RTP through
the relay: exactly one created and one ended for the call, raised by the
proxy's media module, with the call's Call-ID and the relay's address; the
handle's relay_sessions() shows the session while it is open.

And ``twistd sipsuite`` whose ``[media] relays`` names its own relay's
control socket: the relay's table reports the session, the media module
does not, so still exactly one of each."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procs
from common import LOCALHOST, free_port_range
from procs import parse_sipp_messages
from test_media_relay import media_tables, run_rtp_call
from test_relay_kamailio import PORTS, start_relay

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
        line["sessions"] = self.handle.relay_sessions()
        with open(os.environ["RELAY_TAP_OUT"], "a") as f:
            f.write(json.dumps(line) + "\\n")


@service_factory("tap")
def make(handle, settings):
    return Tap(handle)
'''


def tap_events(out: Path) -> list[dict[str, Any]]:
    """The tap's events once the ended one is in (5 s at most), and a moment
    more: a second event, had there been one, would come in the same turn."""
    deadline = time.monotonic() + 5
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = [json.loads(ln) for ln in (out.read_text().splitlines() if out.exists() else [])]
        if any(e["event"] == "relay.session.ended" for e in events):
            time.sleep(0.5)
            return [json.loads(ln) for ln in out.read_text().splitlines()]
        time.sleep(0.1)
    return events


def call_id_of(work: Path) -> str:
    ids = {t.msg.call_id for t in parse_sipp_messages(work / "uac.msg.log")}
    assert len(ids) == 1, ids
    (call_id,) = ids
    assert call_id
    return call_id


def created_and_ended(events: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one created and one ended event (latched ones aside)."""
    names = [e["event"] for e in events if e["event"] != "relay.session.latched"]
    assert names == ["relay.session.created", "relay.session.ended"], events
    created = next(e for e in events if e["event"] == "relay.session.created")
    ended = next(e for e in events if e["event"] == "relay.session.ended")
    return created, ended


def test_split_proxy_raises_one_created_and_one_ended(
    sipp_bin: str, tmp_path: Path, monkeypatch: Any
) -> None:
    out = tmp_path / "relay.jsonl"
    monkeypatch.setenv("RELAY_TAP_OUT", str(out))
    relay = start_relay(tmp_path / "relay")
    relay_uri = f"udp:{LOCALHOST}:{relay.control}"
    try:
        uas_port, port = procs.free_port(), procs.free_port()
        tables = media_tables(PORTS)
        del tables["relay"]
        tables["services"] = {"load": ["svc_relay_tap_split:make"]}
        work = tmp_path / "proxy"
        work.mkdir()
        (work / "svc_relay_tap_split.py").write_text(TAP)
        cfg = procs.write_config(work / "sipsuite.toml", port=port,
                                 static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                                 tables=tables)
        proxy = procs.start_proxy(work, cfg, port, plugin="sip-proxy",
                                  extra=["--relay", relay_uri])
        try:
            def diagnostics() -> str:
                return (proxy.diagnostics() + "\n--- relay log:\n"
                        + relay.log.read_text(errors="replace")[-4000:])

            run_rtp_call(proxy.address, uas_port, PORTS, tmp_path / "sipp", relay.ctl,
                         diagnostics)
            events = tap_events(out)
        finally:
            proxy.stop()
    finally:
        relay.proc.terminate()
        relay.proc.wait(15)
    call_id = call_id_of(tmp_path / "sipp")
    # Latching is seen only by the relay: the proxy raises no latched event.
    assert [e["event"] for e in events] == ["relay.session.created", "relay.session.ended"], events
    created, ended = created_and_ended(events)
    for e in (created, ended):
        assert (e["call_id"], e["relay"]) == (call_id, relay_uri), e
        assert e["from_tag"].endswith(";1"), e  # the offerer's tag, stream 1
    assert ended["from_tag"] == created["from_tag"]
    assert ended["reason"] == "deleted"  # the BYE's D
    [session] = created["sessions"]
    assert session["call_id"] == call_id and session["relay"] == relay_uri, session
    assert session["from_tag"] == created["from_tag"]
    assert abs(session["created"] - created["time"]) < 5, session
    assert ended["sessions"] == []


def test_suite_driving_its_own_relay_by_address_reports_once(
    sipp_bin: str, tmp_path: Path, monkeypatch: Any
) -> None:
    out = tmp_path / "relay.jsonl"
    monkeypatch.setenv("RELAY_TAP_OUT", str(out))
    ports = free_port_range(40)
    port, uas_port, control = procs.free_port(), procs.free_port(), procs.free_port("udp")
    tables = media_tables(ports)
    tables["relay"]["control"] = [f"udp:{LOCALHOST}:{control}"]
    tables["media"]["relays"] = [f"udp:{LOCALHOST}:{control}"]
    tables["services"] = {"load": ["svc_relay_tap_own:make"]}
    (tmp_path / "svc_relay_tap_own.py").write_text(TAP)
    conf = procs.write_config(tmp_path / "sipsuite.toml", port=port,
                              static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]}, tables=tables)
    proxy = procs.start_proxy(tmp_path / "run", conf, port, plugin="sipsuite")
    try:
        ctl: Callable[..., Any] = proxy.ctl
        run_rtp_call(proxy.address, uas_port, ports, tmp_path / "sipp", ctl, proxy.diagnostics)
        events = tap_events(out)
    finally:
        proxy.stop()
    created, ended = created_and_ended(events)
    assert created["call_id"] == ended["call_id"] == call_id_of(tmp_path / "sipp")
    # The relay's table raised them: its fields, no proxy-side "relay" one,
    # and latching, which only the relay sees.
    assert "relay" not in created and ended["reason"] == "deleted", events
    assert any(e["event"] == "relay.session.latched" for e in events), events
    [session] = created["sessions"]
    assert "legs" in session, session
