"""An Outcome as data (what the ``route.explain`` RPC answers) and as the
lines ``route explain`` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipsuite.testing.outcome import Outcome

__all__ = ["explanation", "render", "render_data"]


def explanation(outcome: Outcome, wire: bool = False) -> dict[str, Any]:
    """The outcome as JSON-ready data: what ``route.explain`` answers."""
    return {
        "decision": outcome.decision,
        "steps": [{"hook": s.hook, "action": s.action, "detail": s.detail, "where": s.where,
                   "by": s.by} for s in outcome.steps],
        "sent": [{"destination": s.destination, "first_line": str(s).rsplit(" -> ", 1)[0],
                  **({"data": s.data.decode("utf-8", "backslashreplace")} if wire else {})}
                 for s in outcome.sent],
        "avps": {k: repr(v) for k, v in outcome.avps.items()},
        "vars": {k: repr(v) for k, v in outcome.vars.items()},
    }


def render_data(data: dict[str, Any]) -> str:
    """The lines ``route explain`` prints for :func:`explanation`'s data."""
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


def render(outcome: Outcome, wire: bool = False) -> str:
    return render_data(explanation(outcome, wire))
