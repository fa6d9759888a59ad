"""A call's trace drawn as a ladder diagram in the terminal (sngrep's view
in plain text): one column per party, an arrow per message with its
method or status and its time from the call's first event.

Columns, left to right: the caller (where the first request came from),
the proxy, each branch's callee in the order the proxy first sent to it,
and the media relays the proxy drove.  With ``full`` each message follows
its arrow, and the routing decisions and relay commands are shown where
they happened.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["columns", "draw", "label"]

WIDTH = 22   # characters between two columns' lines
TIME = 10    # the time column


def _addr(pair: Sequence[Any]) -> str:
    host, port = str(pair[0]), pair[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def label(data: str) -> str:
    """INVITE, or 180 Ringing, from a message's first line."""
    first = data.split("\r\n", 1)[0]
    if first.startswith("SIP/2.0 "):
        return first[8:].strip()[:WIDTH - 4]
    return first.split(" ", 1)[0][:WIDTH - 4]


def columns(events: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, title) of each column; keys are "proxy", "relay:URI" or an address."""
    cols: list[tuple[str, str]] = []
    keys: set[str] = set()
    sips = [e for e in events if e["type"] == "sip"]
    caller = next((e for e in sips if e["dir"] == "in" and not e["data"].startswith("SIP/2.0")),
                  sips[0] if sips else None)
    if caller is not None:
        key = _addr(caller["remote"])
        cols.append((key, "caller"))
        keys.add(key)
    cols.append(("proxy", "proxy"))
    callees = 0
    for e in sips:
        key = _addr(e["remote"])
        if key not in keys:
            keys.add(key)
            callees += 1
            cols.append((key, f"callee-{callees}" if e["dir"] == "out" else "peer"))
    if callees == 1:
        cols = [(k, "callee" if t == "callee-1" else t) for k, t in cols]
    for e in events:
        if e["type"] == "relay":
            key = "relay:" + e["relay"]
            if key not in keys:
                keys.add(key)
                cols.append((key, "relay"))
    return cols


def _arrow(line: list[str], a: int, b: int, text: str) -> None:
    """An arrow from column ``a`` to ``b`` on ``line`` with ``text`` in it."""
    left, right = sorted((a, b))
    start, end = TIME + left * WIDTH, TIME + right * WIDTH
    for i in range(start + 1, end):
        line[i] = "-"
    if b > a:
        line[end - 1] = ">"
    else:
        line[start + 1] = "<"
    text = f" {text} "
    room = end - start - 3
    text = text[:room]
    at = start + 2 + (room - len(text)) // 2
    line[at:at + len(text)] = list(text)


def _blank(ncols: int) -> list[str]:
    line = [" "] * (TIME + (ncols - 1) * WIDTH + 1)
    for c in range(ncols):
        line[TIME + c * WIDTH] = "|"
    return line


def _indent(text: str, ncols: int) -> str:
    del ncols
    return " " * TIME + text


def draw(call: dict[str, Any], *, full: bool = False) -> str:
    """The ladder of one call (a ``calls.trace`` result)."""
    events = sorted(call.get("events", []), key=lambda e: e["t"])
    if not events:
        return f"call {call.get('call_id', '?')}: nothing recorded"
    cols = columns(events)
    index = {key: i for i, (key, _) in enumerate(cols)}
    n = len(cols)
    t0 = events[0]["t"]
    out = [_header(call, t0)]
    titles = [" "] * (TIME + n * WIDTH)
    addrs = [" "] * (TIME + n * WIDTH)
    for i, (key, title) in enumerate(cols):
        at = TIME + i * WIDTH - len(title) // 2
        titles[max(0, at):max(0, at) + len(title)] = list(title)
        shown = "" if key == "proxy" else key.removeprefix("relay:")
        if key == "proxy":
            local = next((e["local"] for e in events if e["type"] == "sip"), None)
            shown = _addr(local) if local else ""
        shown = shown[:WIDTH - 1]
        at = TIME + i * WIDTH - len(shown) // 2
        addrs[max(0, at):max(0, at) + len(shown)] = list(shown)
    out.append("".join(titles).rstrip())
    out.append("".join(addrs).rstrip())
    proxy = index["proxy"]
    for e in events:
        offset = f"+{e['t'] - t0:.3f}"
        kind = e["type"]
        if kind == "sip":
            peer = index[_addr(e["remote"])]
            line = _blank(n)
            a, b = (proxy, peer) if e["dir"] == "out" else (peer, proxy)
            _arrow(line, a, b, label(e["data"]) + ("" if e["transport"] == "udp"
                                                   else f" ({e['transport']})"))
            line[:len(offset)] = list(offset)
            out.append("".join(line).rstrip())
            if full:
                raw = e["data"].encode("latin-1").decode("utf-8", "replace")
                for text in raw.rstrip("\r\n").split("\r\n"):
                    out.append(_indent("    " + text, n))
                out.append("")
        elif kind == "relay":
            relay = index["relay:" + e["relay"]]
            line = _blank(n)
            _arrow(line, proxy, relay, e["command"].split(" ", 1)[0] or "?")
            line[:len(offset)] = list(offset)
            out.append("".join(line).rstrip())
            line = _blank(n)
            _arrow(line, relay, proxy, (e["reply"] or "no reply").split(" ", 1)[0])
            out.append("".join(line).rstrip())
            if full:
                out.append(_indent(f"    relay {e['relay']}: {e['command']}", n))
                out.append(_indent(f"    reply: {e['reply'] or '(none)'}", n))
        elif full:
            where = f"  [{e['where']}]" if e.get("where") else ""
            detail = f" {e['detail']}" if e.get("detail") else ""
            out.append(f"{offset:<{TIME}}  * {e['hook']}: {e['action']}{detail}{where}")
    return "\n".join(out)


def _header(call: dict[str, Any], t0: float) -> str:
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(call.get("start") or t0))
    result = call.get("result")
    outcome = f"{result} {call.get('reason', '')}".strip() if result is not None else "no answer yet"
    duration = call.get("duration")
    lasted = f", {duration:.1f} s" if duration is not None else ""
    dropped = f" ({call['dropped']} event(s) over the limit not kept)" if call.get("dropped") else ""
    return (f"Call-ID {call.get('call_id', '?')}  {start} UTC  {call.get('from', '')} -> "
            f"{call.get('to', '')}: {outcome}{lasted}{dropped}")
