"""sipsuite-ctl's output and argument checks for the live-operations commands
(debug, cfg, routing reload, stats, uptime); the rows are in ``ctl.COMMANDS``.

Kept apart from cli.py so the command table stays a table. It imports
nothing from the server side (sipsuite-ctl must start fast, without Twisted).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from sipsuite.ops.ctl.output import table

__all__ = ["debug_level", "explain_options", "explain_params", "render_explanation",
           "show_cfg_get", "show_cfg_set", "show_debug", "show_explain", "show_reload",
           "show_stats", "show_uptime"]

_LEVEL_NAMES = ("debug", "info", "notice", "warn", "warning", "error", "err")


def debug_level(text: str) -> str:
    """LEVEL of ``debug``: a name or a Kamailio number; checked here so a
    typo is a usage error and nothing is sent."""
    if text.strip().lower() in _LEVEL_NAMES or re.fullmatch(r"[+-]?[0-9]{1,6}", text.strip()):
        return text
    raise argparse.ArgumentTypeError(
        f"bad level {text!r}: expected debug, info, warn, error or a Kamailio number"
        " (3 = debug, 2 = info, 1 = notice, 0 = warn, -1 = error)")


def show_debug(result: Any, args: argparse.Namespace) -> str:
    if getattr(args, "level", None) is None:
        return f"log level: {result['level']}"
    return f"log level set to {result['level']}"


def _value_text(value: Any) -> str:
    # JSON, which is also how TOML writes these: what to type back in cfg set.
    return json.dumps(value, ensure_ascii=False)


def show_cfg_get(result: Any, args: argparse.Namespace) -> str:


    return table(("NAME", "VALUE"), [(k, _value_text(v)) for k, v in result.items()])


def show_cfg_set(result: Any, args: argparse.Namespace) -> str:
    return f"{result['name']}: {_value_text(result['old'])} -> {_value_text(result['value'])}"


def show_reload(result: Any, args: argparse.Namespace) -> str:
    how = "module re-imported" if result.get("module_reloaded") else "new instance"
    return f"routing reloaded: {result['routing']} ({how})"


def _flatten(prefix: str, value: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        if not value:
            rows.append((prefix, 0 if prefix == "drops" else "-"))
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, "-" if value is None else value))


def show_stats(result: Any, args: argparse.Namespace) -> str:


    rows: list[tuple[str, Any]] = []
    _flatten("", result, rows)
    return table(("COUNTER", "VALUE"), rows)


def show_uptime(result: Any, args: argparse.Namespace) -> str:
    seconds = int(result["uptime"])
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    span = (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"up {span} ({result['uptime']:.0f} s) since {result['started_utc']}"


def render_explanation(data: dict[str, Any]) -> str:
    """The lines ``route explain`` prints for the ``route.explain`` result
    (sipsuite.testing.report.explanation); the offline explainer prints the same."""
    lines = []
    for s in data["steps"]:
        by = f" (by {s['by']})" if s.get("by") else ""
        at = f"  [{s['where']}]" if s.get("where") else ""
        detail = f" {s['detail']}" if s["detail"] else ""
        lines.append(f"{s['hook']}: {s['action']}{detail}{by}{at}")
    for s in data["sent"]:
        lines.append(f"sent: {s['first_line']} -> {s['destination']}")
        if "data" in s:
            lines.extend("    " + ln for ln in s["data"].rstrip("\r\n").split("\r\n"))
    if data.get("avps"):
        lines.append("avps: " + ", ".join(f"{k}={v}" for k, v in data["avps"].items()))
    if data.get("vars"):
        lines.append("vars: " + ", ".join(f"{k}={v}" for k, v in data["vars"].items()))
    lines.append(f"decision: {data['decision']}")
    return "\n".join(lines)


def show_explain(result: Any, args: argparse.Namespace) -> str:
    return render_explanation(result)


def explain_params(args: argparse.Namespace) -> dict[str, Any]:
    """``route explain FILE``: the message read from FILE (``-``: stdin)."""
    import sys

    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.file, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"{args.file}: {exc.strerror or exc}") from None
    params: dict[str, Any] = {"message": text, "wire": bool(args.wire)}
    if args.source:
        params["source"] = args.source
    return params


def explain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="TRANSPORT:HOST:PORT",
                        help="where the message comes from (default: its top Via)")
    parser.add_argument("--wire", action="store_true", help="print every message sent in full")
