"""The flight recorder's store: what happened to each call, by Call-ID,
in a bounded amount of memory (sans-IO: bytes and times in, plain data out).

Each call is a :class:`CallTrace` holding its events in order:

- ``("sip", t, incoming, transport, local_host, local_port, remote_host, remote_port, data)``:
  a SIP message as it crossed the wire (kept as it was: its Authorization
  values are masked when the trace is read, :func:`mask_credentials`, unless
  ``show_credentials``; so what leaves the process is masked, at no cost
  per message);
- ``("route", t, hook, action, detail, where)``: a routing decision, the
  hook it was made in and the file:line that made it (auth results and
  dispatcher choices are routing decisions too);
- ``("relay", t, relay, command, reply)``: a media relay command and its reply.

The memory a call takes is counted as its events are added (:func:`cost`,
an estimate of what CPython holds for them); when the total passes the
bound, whole calls go, oldest first, in this order: exchanges that are not
INVITE dialogs (REGISTER, OPTIONS...), failed calls over half the bound,
calls, failed calls.  So a failed call outlives the successful calls of
its time, and neither keepalives nor a flood of failures wipes the calls.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["CallTrace", "TraceStore", "call_id_of", "cost", "is_failure", "mask_credentials",
           "summary_of"]

# CPython's cost of an event beyond its payload: the tuple, its float, ints,
# the list slot and the strings' headers (measured: tests/trace/test_trace_store.py).
EVENT_OVERHEAD = 160
CALL_OVERHEAD = 700
#: Events one call may hold; later ones are counted, not kept (a dialog
#: that lives for hours with re-INVITEs every minute, a flood on one Call-ID).
MAX_EVENTS = 2000

# Finals that are not a failure of the call: a challenge (the caller tries
# again on the same Call-ID) and the caller's own CANCEL.
NOT_FAILED = frozenset({401, 407, 487})

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_CSEQ = re.compile(rb"\r\nCSeq[ \t]*:[ \t]*[0-9]+[ \t]+([A-Za-z]+)", re.IGNORECASE)
_FROM = re.compile(rb"\r\n(?:from|f)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_TO = re.compile(rb"\r\n(?:to|t)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_URI = re.compile(rb"<([^>]*)>|((?:sips?|tel):[^;>\s]*)", re.IGNORECASE)
_AUTH = re.compile(rb"(\r\n(?:proxy-)?authorization[ \t]*:[ \t]*)([^\r\n]*)", re.IGNORECASE)
_SECRET = re.compile(rb'((?:response|nonce|cnonce|opaque)[ \t]*=[ \t]*)("[^"]*"|[^,\s]*)',
                     re.IGNORECASE)
_HEAD_END = b"\r\n\r\n"
_FINALS = frozenset((b"2", b"3", b"4", b"5", b"6"))
_FAILS = frozenset((b"3", b"4", b"5", b"6"))


def call_id_of(data: bytes) -> str | None:
    """The Call-ID of a SIP message's bytes (None when it has none)."""
    match = _CALL_ID.search(data, 0, data.find(_HEAD_END))
    if match is None:
        return None
    return match.group(1).strip().decode("utf-8", "replace")


def mask_credentials(data: bytes) -> bytes:
    """``data`` with the secrets of its Authorization and Proxy-Authorization
    values (digest response, nonce, cnonce, opaque) replaced by ``***``; the
    scheme, username, realm and uri stay, so the trace still says who."""
    end = data.find(_HEAD_END)
    head = data if end < 0 else data[:end]
    if _AUTH.search(head) is None:
        return data
    masked = _AUTH.sub(lambda m: m.group(1) + _SECRET.sub(rb'\1"***"', m.group(2)), head)
    return masked if end < 0 else masked + data[end:]


def is_failure(status: int | None) -> bool:
    return status is not None and status >= 300 and status not in NOT_FAILED


def cost(event: tuple[Any, ...]) -> int:
    """What one event takes in memory, roughly (bytes): its overhead and
    the text it holds (hook and action names are shared constants)."""
    kind = event[0]
    if kind == "sip":
        return EVENT_OVERHEAD + len(event[8]) + len(event[4]) + len(event[6])
    if kind == "route":
        return EVENT_OVERHEAD + len(event[4]) + len(event[5])
    return EVENT_OVERHEAD + len(event[2]) + len(event[3]) + len(event[4])


def _uri(header: bytes | None) -> str:
    if not header:
        return ""
    match = _URI.search(header)
    text = (match.group(1) or match.group(2)) if match else header.strip()
    return text.decode("utf-8", "replace")


class CallTrace:
    """One call's events and what is known of it (see the module docstring)."""

    __slots__ = ("answered", "call_id", "caller", "callee", "dropped", "ended", "events",
                 "method", "result", "reason", "seen", "size", "start", "suspect", "tier")

    def __init__(self, call_id: str, start: float) -> None:
        self.call_id = call_id
        self.start = start
        self.events: list[tuple[Any, ...]] = []
        self.size = CALL_OVERHEAD + len(call_id)
        self.method = ""          # of the first request seen
        self.caller = ""          # its From and To URIs
        self.callee = ""
        self.result: int | None = None   # the last final answer to an INVITE sent upstream
        self.reason = ""
        self.answered: float | None = None
        self.ended: float | None = None
        self.dropped = 0          # events over MAX_EVENTS, not kept
        self.tier = 0
        self.seen = 0             # events the summary has taken in (refresh)
        self.suspect = False      # sent an answer >= 300: may have failed

    def refresh(self) -> None:
        """Bring the summary up to date with the events recorded since the
        last time: worked out when it is read or its call is weighed for
        eviction, not per message (the recorder's cost is per message)."""
        events = self.events
        for i in range(self.seen, len(events)):
            e = events[i]
            if e[0] == "sip":
                data = e[8]
                if not self.method or (data[8:9] in _FINALS and data.startswith(b"SIP/2.0 ")):
                    self.note_sip(e[1], e[2], data)
        self.seen = len(events)

    def note_sip(self, t: float, incoming: bool, data: bytes) -> None:
        """Update what is known of the call from one of its messages."""
        line_end = data.find(b"\r\n")
        line = data[:line_end] if line_end > 0 else data[:200]
        if not line.startswith(b"SIP/2.0 "):
            if not self.method:
                self.method = line.split(b" ", 1)[0].decode("ascii", "replace")
                self.caller = _uri(_match(_FROM, data, b"\r\nFrom: "))
                self.callee = _uri(_match(_TO, data, b"\r\nTo: "))
            return
        parts = line.split(b" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            return
        if status < 200:
            return
        cseq = _match(_CSEQ, data, b"\r\nCSeq: ")
        words = cseq.split() if cseq else []
        method = words[-1].upper() if words else b""
        if method == b"INVITE":
            if incoming:
                return  # a branch's answer; what the caller got is what counts
            self.result = status
            self.reason = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
            if status < 300:
                if self.answered is None:
                    self.answered = t
            else:
                self.ended = t
        elif method == b"BYE":
            if self.ended is None:
                self.ended = t
        elif self.method != "INVITE" and method.decode("ascii", "replace") == self.method:
            # REGISTER, OPTIONS, MESSAGE...: their own final answer is the result.
            self.result = status
            self.reason = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
            self.ended = t

    def duration(self) -> float | None:
        """Seconds from the answer to the end (a BYE), None while it lasts
        or when never answered."""
        if self.answered is None or self.ended is None:
            return None
        return max(0.0, self.ended - self.answered)

    def summary(self) -> dict[str, Any]:
        self.refresh()
        return {"call_id": self.call_id, "start": self.start, "method": self.method,
                "from": self.caller, "to": self.callee, "result": self.result,
                "reason": self.reason, "answered": self.answered, "ended": self.ended,
                "duration": self.duration(), "events": len(self.events),
                "dropped": self.dropped, "bytes": self.size}

    def to_dict(self, show_credentials: bool = False) -> dict[str, Any]:
        """The summary and the events, JSON-ready (message bytes as latin-1
        text: one character per byte, so the bytes come back exactly), the
        Authorization values masked unless ``show_credentials``."""
        out = self.summary()
        out["events"] = [event_dict(e, show_credentials) for e in self.events]
        return out


def _match(pattern: re.Pattern[bytes], data: bytes, usual: bytes) -> bytes | None:
    """The value of a header: the usual spelling (``usual``, e.g. b"\\r\\nCSeq: ")
    found by a plain search, which is fast; any other by ``pattern``, whose
    case-blind scan costs some ten times more."""
    start = data.find(usual)
    if start >= 0:
        start += len(usual)
        return data[start:data.find(b"\r", start)]
    match = pattern.search(data, 0, data.find(_HEAD_END))
    return match.group(1) if match else None


def event_dict(event: tuple[Any, ...], show_credentials: bool = False) -> dict[str, Any]:
    kind = event[0]
    if kind == "sip":
        _, t, incoming, transport, lhost, lport, rhost, rport, data = event
        if not show_credentials:
            data = mask_credentials(data)
        return {"type": "sip", "t": t, "dir": "in" if incoming else "out", "transport": transport,
                "local": [lhost, lport], "remote": [rhost, rport],
                "data": data.decode("latin-1")}
    if kind == "route":
        _, t, hook, action, detail, where = event
        return {"type": "route", "t": t, "hook": hook, "action": action, "detail": detail,
                "where": where}
    _, t, relay, command, reply = event
    return {"type": "relay", "t": t, "relay": relay, "command": command, "reply": reply}


def summary_of(events: Iterable[dict[str, Any]], call_id: str = "") -> dict[str, Any]:
    """The summary of a call from its events as dicts (the merge of the
    events several worker processes recorded of one call)."""
    ordered = sorted(events, key=lambda e: e["t"])
    trace = CallTrace(call_id, ordered[0]["t"] if ordered else 0.0)
    for e in ordered:
        if e["type"] == "sip":
            trace.note_sip(e["t"], e["dir"] == "in", e["data"].encode("latin-1"))
    out = trace.summary()
    out["events"] = ordered
    return out


class _Place:
    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


# Tiers, in the order their calls are dropped.
OTHER, FAILED, CALLS = 0, 1, 2


class TraceStore:
    """Calls by Call-ID within ``memory`` bytes (see the module docstring)."""

    def __init__(self, memory: int, *, show_credentials: bool = False,
                 max_events: int = MAX_EVENTS, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.memory = memory
        self.show_credentials = show_credentials
        self.max_events = max_events
        self.calls: dict[str, CallTrace] = {}
        # Each tier's calls, oldest first; its bytes.
        self.tiers: tuple[OrderedDict[str, CallTrace], ...] = (OrderedDict(), OrderedDict(),
                                                               OrderedDict())
        self.tier_bytes = [0, 0, 0]
        self.total = 0
        self.evicted = 0

    # -- recording -------------------------------------------------------------------
    def _call(self, call_id: str, t: float, tier: int = OTHER) -> CallTrace:
        trace = self.calls.get(call_id)
        if trace is None:
            trace = self.calls[call_id] = CallTrace(call_id, t)
            trace.tier = tier
            self.tiers[tier][call_id] = trace
            self.tier_bytes[tier] += trace.size
            self.total += trace.size
        return trace

    def sip(self, t: float, incoming: bool, transport: str, local: tuple[str, int],
            remote: tuple[str, int], data: bytes) -> None:
        """A message crossed the wire."""
        self.tap(incoming, data, transport, _Place(*local), remote[0], remote[1], t)

    def tap(self, incoming: bool, data: bytes, transport: str, listener: Any, host: str,
            port: int, t: float | None = None) -> None:
        """The transport layer's wire tap itself (``listener``: anything with
        ``host`` and ``port``; ``t`` None: now, from ``clock``).  The hot path:
        one C-level search per message, a little more for a call's first
        request and its final answers (what its summary is made of), no
        further Python call.  Credentials are masked when the trace is read
        (:meth:`CallTrace.to_dict`)."""
        # The usual spelling found by a plain search (fast), any other
        # (compact "i:", other case) by the regex.
        start = data.find(b"\r\nCall-ID: ")
        if start >= 0:
            start += 11
            call_id = data[start:data.find(b"\r", start)].strip().decode("utf-8", "replace")
        else:
            match = _CALL_ID.search(data)
            if match is None:
                return
            call_id = match.group(1).strip().decode("utf-8", "replace")
        if t is None:
            t = self.clock()
        trace = self.calls.get(call_id)
        if trace is None:
            # An INVITE opens a call; anything else (REGISTER, OPTIONS...) is
            # dropped before calls.  Whether it failed is looked at when it
            # is weighed for eviction (_victim), not here.
            trace = self._call(call_id, t, CALLS if data.startswith(b"INVITE ") else OTHER)
        elif not incoming and data[8:9] in _FAILS and data.startswith(b"SIP/2.0 "):
            trace.suspect = True
        events = trace.events
        if len(events) >= self.max_events:
            trace.dropped += 1
            return
        lhost = listener.host
        events.append(("sip", t, incoming, transport, lhost, listener.port, host, port, data))
        size = EVENT_OVERHEAD + len(data) + len(lhost) + len(host)
        trace.size += size
        self.tier_bytes[trace.tier] += size
        self.total += size
        if self.total > self.memory:
            self._evict(trace)

    def route(self, call_id: str, t: float, hook: str, action: str, detail: str,
              where: str) -> None:
        trace = self.calls.get(call_id)
        if trace is None:
            trace = self._call(call_id, t)
        events = trace.events
        if len(events) >= self.max_events:
            trace.dropped += 1
            return
        events.append(("route", t, hook, action, detail, where))
        size = EVENT_OVERHEAD + len(detail) + len(where)
        trace.size += size
        self.tier_bytes[trace.tier] += size
        self.total += size
        if self.total > self.memory:
            self._evict(trace)

    def relay(self, call_id: str, t: float, relay: str, command: str, reply: str) -> None:
        event = ("relay", t, relay, command, reply)
        self._add(self._call(call_id, t), event, cost(event))

    def _retier(self, trace: CallTrace) -> None:
        want = FAILED if is_failure(trace.result) else CALLS if trace.method == "INVITE" else OTHER
        if want == trace.tier:
            return
        del self.tiers[trace.tier][trace.call_id]
        self.tier_bytes[trace.tier] -= trace.size
        trace.tier = want
        self.tiers[want][trace.call_id] = trace
        self.tier_bytes[want] += trace.size

    def _add(self, trace: CallTrace, event: tuple[Any, ...], size: int) -> None:
        """``size``: cost(event), worked out by the caller, which knows its shape."""
        if len(trace.events) >= self.max_events:
            trace.dropped += 1
            return
        trace.events.append(event)
        trace.size += size
        self.tier_bytes[trace.tier] += size
        self.total += size
        if self.total > self.memory:
            self._evict(trace)

    def _evict(self, keep: CallTrace) -> None:
        """Drop whole calls until the total is within the bound again."""
        while self.total > self.memory:
            victim = self._victim(keep)
            if victim is None:
                # Only the call being recorded is left and it alone is over
                # the bound: it loses its oldest events instead (its summary
                # has taken them in first).
                keep.refresh()
                while self.total > self.memory and len(keep.events) > 1:
                    keep.seen -= 1
                    size = cost(keep.events.pop(0))
                    keep.size -= size
                    self.tier_bytes[keep.tier] -= size
                    self.total -= size
                    keep.dropped += 1
                return
            self.forget(victim.call_id)
            self.evicted += 1

    def _victim(self, keep: CallTrace) -> CallTrace | None:
        tiers = self.tiers
        while True:
            order = (OTHER, FAILED, CALLS, FAILED) if self.tier_bytes[FAILED] > self.memory // 2 \
                else (OTHER, CALLS, FAILED)
            failed = None
            for tier in order:
                for trace in tiers[tier].values():
                    if trace is keep:
                        continue
                    if tier == CALLS and trace.suspect:
                        trace.refresh()
                        if is_failure(trace.result):
                            failed = trace  # kept longer: moved, then look again
                            break
                    return trace
                if failed is not None:
                    break
            if failed is None:
                return None
            self._retier(failed)

    def forget(self, call_id: str) -> None:
        trace = self.calls.pop(call_id, None)
        if trace is None:
            return
        del self.tiers[trace.tier][call_id]
        self.tier_bytes[trace.tier] -= trace.size
        self.total -= trace.size

    # -- reading ---------------------------------------------------------------------
    def get(self, call_id: str) -> CallTrace | None:
        return self.calls.get(call_id)

    def __iter__(self) -> Iterator[CallTrace]:
        return iter(sorted(self.calls.values(), key=lambda c: c.start))

    def __len__(self) -> int:
        return len(self.calls)

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "bytes": self.total, "memory": self.memory,
                "evicted": self.evicted}
