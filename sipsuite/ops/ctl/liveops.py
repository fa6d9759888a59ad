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

__all__ = ["debug_level", "show_cfg_get", "show_cfg_set", "show_debug", "show_reload",
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
