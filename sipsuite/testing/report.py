"""An Outcome as data (what the ``route.explain`` RPC answers) and as the
lines ``route explain`` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipsuite.ops.ctl.liveops import render_explanation as render_data

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


def render(outcome: Outcome, wire: bool = False) -> str:
    return render_data(explanation(outcome, wire))
