"""What the core does when a routing hook raises.

A hook (request_route, branch_route, reply_route, failure_route, or what
they call: features, media, the relay client) that raises on a request
must cost that request an answer and the log one line, not the proxy a
traceback per request: anyone can send the input that trips it, and ~30
critical lines a request drown a log and the disk behind it.

So the failure is logged as one warning naming the request (method, URI,
Call-ID, source) and the exception; the traceback follows at debug level,
for whoever chases the bug with ``[log] level = "debug"``.  The answer is
the one a :class:`RequestRejected` carries (a component deep in routing
refusing the request, e.g. media.py's 488 for too many streams), the 4xx
a :class:`~sipsuite.sip.message.ParseError` names (a header the hook read
turned out malformed: the input's fault, RFC 3261 21.4.1), and 500
otherwise.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel
from twisted.python.failure import Failure

from sipsuite.log import enabled, get_logger
from sipsuite.sip.message import ParseError

__all__ = ["RequestRejected", "answer_for", "describe", "hook_failed"]

log = get_logger("sipsuite.proxy.core")


class RequestRejected(Exception):
    """Raised inside routing for a request the proxy refuses on purpose:
    the core answers ``status reason`` with ``headers`` and logs ``detail``
    in its one warning line.  Works from any depth and any routing class,
    so no call site has to remember to check and stop."""

    def __init__(self, status: int, reason: str, detail: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or []


def describe(request: Any, source: Any) -> str:
    """``METHOD URI (call-id '...', from SOURCE)``; never raises."""
    try:
        return (f"{request.method} {request.uri} (call-id {request.call_id!r}, "
                f"from {source})")
    except Exception:  # noqa: BLE001 - a header too broken to show
        return f"a request from {source}"


def answer_for(exc: BaseException) -> tuple[int, str, list[tuple[str, str]]]:
    """The status, reason and headers a request whose hook raised ``exc`` gets."""
    if isinstance(exc, RequestRejected):
        return exc.status, exc.reason, exc.headers
    if isinstance(exc, ParseError) and 400 <= exc.status < 500:
        return exc.status, exc.reason, []
    return 500, "Server Internal Error", []


def hook_failed(hook: str, request: Any, source: Any, failure: Failure | None = None,
                answered: int | None = None) -> None:
    """Log a hook's failure: one warning line, the traceback at debug.
    Call it inside the ``except`` block, or with the Failure of a Deferred."""
    if failure is None:
        failure = Failure()
    exc = failure.value
    outcome = f"; answered {answered}" if answered is not None else ""
    if isinstance(exc, RequestRejected):  # a decision, not a bug: no traceback
        log.warn("{request} refused: {detail}{outcome}", request=describe(request, source),
                 detail=exc.detail, outcome=outcome, hook=hook)
        return
    log.warn("{hook} failed for {request}: {kind}: {error}{outcome}", hook=hook,
             request=describe(request, source), kind=type(exc).__name__, error=exc,
             outcome=outcome)
    if enabled(LogLevel.debug):
        log.debug("{hook} traceback:\n{tb}", hook=hook, tb=failure.getTraceback())
