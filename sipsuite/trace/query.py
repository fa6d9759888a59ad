"""Reading the recorder: the filtered list of calls, and the merge of what
several worker processes recorded (each keeps its own store; one call's
messages may have crossed more than one, e.g. its BYE from the callee's
address landing on another worker)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sipsuite.trace.store import is_failure, summary_of

__all__ = ["list_calls", "matches_result", "merge_lists", "merge_traces"]


def matches_result(row: dict[str, Any], wanted: str) -> bool:
    """``wanted``: "failed", "answered" (a 2xx), "none" (no final yet),
    a status ("486") or a class ("4xx")."""
    status = row.get("result")
    w = wanted.strip().lower()
    if w in ("failed", "fail"):
        return is_failure(status)
    if w in ("answered", "ok", "2xx"):
        return status is not None and 200 <= status < 300
    if w in ("none", "pending"):
        return status is None
    if len(w) == 3 and w.endswith("xx") and w[0].isdigit():
        return status is not None and status // 100 == int(w[0])
    return w.isdigit() and status == int(w)


def _user_in(row: dict[str, Any], user: str) -> bool:
    needle = user.lower()
    return needle in str(row.get("from", "")).lower() or needle in str(row.get("to", "")).lower()


def list_calls(rows: Iterable[dict[str, Any]], *, user: str | None = None,
               result: str | None = None, since: float | None = None, limit: int = 100,
               every: bool = False) -> list[dict[str, Any]]:
    """The summaries that pass the filters, newest first, at most ``limit``.
    Only INVITE dialogs unless ``every`` (REGISTER, OPTIONS... too)."""
    out = []
    for row in rows:
        if not every and row.get("method") != "INVITE":
            continue
        if since is not None and row["start"] < since:
            continue
        if user and not _user_in(row, user):
            continue
        if result and not matches_result(row, result):
            continue
        out.append(row)
    out.sort(key=lambda r: r["start"], reverse=True)
    return out[:max(0, int(limit))]


def merge_traces(traces: Sequence[dict[str, Any] | None], call_id: str) -> dict[str, Any] | None:
    """One call from the traces several workers hold of it (None: none did)."""
    found = [t for t in traces if t]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    events = [e for t in found for e in t["events"]]
    merged = summary_of(events, call_id)
    merged["dropped"] = sum(t.get("dropped", 0) for t in found)
    merged["bytes"] = sum(t.get("bytes", 0) for t in found)
    return merged


def merge_lists(answers: Sequence[dict[str, Any]], limit: int = 100) -> dict[str, Any]:
    """The ``calls.list`` answers of several workers as one: a call seen by
    more than one is one row (its earliest start, the result known)."""
    by_id: dict[str, dict[str, Any]] = {}
    for answer in answers:
        for row in answer.get("calls", []):
            have = by_id.get(row["call_id"])
            if have is None:
                by_id[row["call_id"]] = dict(row)
                continue
            have["start"] = min(have["start"], row["start"])
            for key in ("method", "from", "to", "result", "reason", "answered", "ended",
                        "duration"):
                if not have.get(key) and row.get(key):
                    have[key] = row[key]
            have["events"] = have.get("events", 0) + row.get("events", 0)
    rows = sorted(by_id.values(), key=lambda r: r["start"], reverse=True)[:max(0, int(limit))]
    stats: dict[str, int] = {}
    for answer in answers:
        for key, value in answer.get("stats", {}).items():
            stats[key] = stats.get(key, 0) + value
    return {"calls": rows, "stats": stats}
