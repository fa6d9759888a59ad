"""sipsuite-ctl's ``calls`` and ``trace`` (the flight recorder): options,
params and output; the rows are in ``ctl.COMMANDS``.  No Twisted: the
ladder and the pcap writer are sipsuite/trace's pure functions."""

from __future__ import annotations

import argparse
import re
import time
from datetime import datetime
from typing import Any

from sipsuite.ops.ctl.output import table
from sipsuite.trace.ladder import draw
from sipsuite.trace.pcap import write_pcap

__all__ = ["calls_options", "calls_params", "show_calls", "show_trace", "since_time",
           "trace_options"]

_AGO = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(text: str, now: float | None = None) -> float:
    """--since: a time ago ("90s", "10m", "2h", "1d"), or a local date and
    time ("2026-12-08 14:00", "14:00" today)."""
    now = time.time() if now is None else now
    match = _AGO.fullmatch(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M",
                "%Y-%m-%d"):
        try:
            return datetime.strptime(text.strip(), fmt).timestamp()
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            clock = datetime.strptime(text.strip(), fmt).time()
        except ValueError:
            continue
        return datetime.combine(datetime.fromtimestamp(now).date(), clock).timestamp()
    raise argparse.ArgumentTypeError(
        f"bad --since {text!r}: expected 10m, 2h, 1d, 14:00 or 2026-12-08 14:00")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def calls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", help="calls whose From or To contains this (user or URI part)")
    parser.add_argument("--result",
                        help="answered, failed, none (no final yet), a status (486) or class (4xx)")
    parser.add_argument("--since", type=since_time, metavar="WHEN",
                        help="calls started since: 10m, 2h, 1d ago, or 14:00, 2026-12-08 14:00")
    parser.add_argument("--limit", type=_limit, default=100, help="at most this many (100)")
    parser.add_argument("--all", action="store_true",
                        help="every Call-ID recorded (REGISTER, OPTIONS...), not only INVITE dialogs")


def calls_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": args.limit}
    for name in ("user", "result", "since"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    if args.all:
        params["all"] = True
    return params


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def show_calls(result: Any, args: argparse.Namespace) -> str:
    rows = []
    for c in result.get("calls", []):
        status = c.get("result")
        outcome = f"{status} {c.get('reason', '')}".strip() if status is not None else "-"
        duration = c.get("duration")
        rows.append((_when(c.get("start")), c.get("from", ""), c.get("to", ""), outcome,
                     f"{duration:.1f}s" if duration is not None else "-",
                     *((c.get("method", ""),) if getattr(args, "all", False) else ()),
                     c.get("call_id", "")))
    if not rows:
        return "no calls recorded" + (" that match" if any(
            getattr(args, n, None) for n in ("user", "result", "since")) else "")
    head = ("START", "FROM", "TO", "RESULT", "DURATION",
            *(("METHOD",) if getattr(args, "all", False) else ()), "CALL-ID")
    return table(head, rows)


def trace_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true",
                        help="each message after its arrow, with the routing decisions")
    parser.add_argument("--pcap", metavar="FILE",
                        help="also write the call's SIP messages to FILE as a pcap (Wireshark)")


def show_trace(result: Any, args: argparse.Namespace) -> str:
    out = draw(result, full=getattr(args, "full", False))
    path = getattr(args, "pcap", None)
    if path:
        with open(path, "wb") as stream:
            n = write_pcap(stream, result.get("events", []))
        out += f"\nwrote {n} packet(s) to {path}"
    return out
