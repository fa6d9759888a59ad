"""The suite's relay events (sipsuite.relayevents): created and ended from the
session table as they happen, latched from a scan while someone listens."""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace

from twisted.internet import task

from sipsuite.eventbus import Event, EventBus
from sipsuite.relayevents import LATCH_SCAN, RelayEvents
from sipsuite.rtprelay.ports import PortAllocator
from sipsuite.rtprelay.table import SessionTable

A = ("192.0.2.10", 4000)
B = ("198.51.100.20", 5000)


def rtp(seq: int = 1, ssrc: int = 0xA1A1) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xff" * 160


def setup() -> tuple[task.Clock, SessionTable, RelayEvents, list[Event]]:
    clock = task.Clock()
    table = SessionTable(PortAllocator(30000, 30999, random.Random(1)))  # type: ignore[arg-type]
    bus = EventBus(clock)
    events = RelayEvents(bus, SimpleNamespace(table=table), clock)
    events.startService()
    got: list[Event] = []
    bus.subscribe("relay.session.*", got.append)
    return clock, table, events, got


def test_created_latched_ended() -> None:
    clock, table, events, got = setup()
    s, _ = table.update("c1", "ft", None, A, 0.0)
    table.lookup("c1", "ft", "tt", B, 0.1)
    clock.advance(0)
    assert [(e.name, e["call_id"]) for e in got] == [("relay.session.created", "c1")]
    # Media from a NAT's address, not the SDP's: learnt in the window.
    assert s.on_packet(s.caller, rtp(), ("203.0.113.5", 40000), 0.2) == B
    clock.advance(LATCH_SCAN)
    clock.advance(0)
    latched = [e for e in got if e.name == "relay.session.latched"]
    assert [(e["leg"], e["address"]) for e in latched] == [("caller", "203.0.113.5:40000")]
    clock.advance(LATCH_SCAN)  # reported once
    assert len([e for e in got if e.name == "relay.session.latched"]) == 1
    table.delete("c1", "ft")
    clock.advance(0)
    assert (got[-1].name, got[-1]["reason"]) == ("relay.session.ended", "deleted")
    events.stopService()


def test_no_scan_without_a_latch_subscriber() -> None:
    clock = task.Clock()
    table = SessionTable(PortAllocator(30000, 30999, random.Random(1)))  # type: ignore[arg-type]
    bus = EventBus(clock)
    events = RelayEvents(bus, SimpleNamespace(table=table), clock)
    events.startService()
    assert clock.getDelayedCalls() == []
    sub = bus.subscribe("relay.session.latched", lambda e: None)
    assert len(clock.getDelayedCalls()) == 1
    sub.cancel()
    assert clock.getDelayedCalls() == []
