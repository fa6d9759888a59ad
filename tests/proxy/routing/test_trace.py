"""ctx.trace: the routing-step log of [features] debug, silent when it is off."""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent, globalLogPublisher

from sipsuite.proxy.routing.base import RequestContext
from sipsuite.sip.parser import parse_datagram

INVITE = (b"INVITE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKt1\r\n"
          b"From: <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@example.test>\r\n"
          b"Call-ID: trace-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def _routing_lines(debug: bool) -> list[str]:
    events: list[dict[str, Any]] = []
    ctx = RequestContext(None, parse_datagram(INVITE), None, False)  # type: ignore[arg-type]
    ctx.debug = debug
    globalLogPublisher.addObserver(events.append)
    try:
        ctx.trace("lookup: {n} binding(s) for {user}", n=2, user="bob")
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if e.get("log_namespace") == "sipsuite.proxy.routing"]


def test_trace_logs_one_line_with_its_fields_when_debug_is_on() -> None:
    assert _routing_lines(True) == [
        "route INVITE sip:bob@example.test cid=trace-1: lookup: 2 binding(s) for bob"]


def test_trace_is_silent_when_debug_is_off() -> None:
    assert _routing_lines(False) == []
