"""Call accounting (Kamailio's acc module, ``[features] accounting``): one
JSON line per call in ``[accounting] file``.

Records come from the answers the proxy sends upstream (the one hook,
``ProxyCore._send_response``), so forwarded and locally made answers count
alike:

- the final answer to an initial INVITE: a 2xx starts tracking an answered
  call; 408/480/486/487/600/603 write a "missed" record (the callee did not
  take the call), any other answer >= 300 a "failed" one. 401/407 are left
  out: they are the challenge of a call that comes again with credentials
  (kamailio.cfg sets its accounting flag only after authentication);
- the final answer to a BYE (2xx, or 408/481: the dialog is gone either
  way) writes the "answered" record of its call, with who hung up.

Answered calls are held in a dict in the order they were answered (so the
oldest is at the front), bounded by ``max_calls``; one timer, armed for the
oldest call, ends calls that pass ``max_duration`` without a BYE. Writes are
appended and flushed per record; a failure is logged (at most once a
minute) and counted, never raised into SIP handling.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sipsuite.log import get_logger
from sipsuite.proxy.core.hookerrors import hook_failed

if TYPE_CHECKING:
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.proxy.core.txlayer import ServerTx
    from sipsuite.sip.message import Request, Response

log = get_logger("sipsuite.proxy.accounting")

#: Final answers that mean the callee did not take the call.
MISSED = frozenset({408, 480, 486, 487, 600, 603})
#: Challenges: the caller tries again with credentials, as a new transaction.
CHALLENGES = frozenset({401, 407})
#: Final answers to a BYE after which the call is over.
BYE_ENDS = frozenset({408, 481})
# Longest wait of the expiry timer, so a max_duration lowered at run time
# takes effect within this long.
MAX_TIMER = 60.0
ERROR_LOG_INTERVAL = 60.0


def iso(t: float) -> str:
    """Epoch seconds -> '2026-11-26T15:04:05.123Z'."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AnsweredCall:
    __slots__ = ("key", "call_id", "from_uri", "to_uri", "from_tag", "to_tag", "ruri", "source",
                 "start", "answer", "code", "reason")

    def __init__(self, key: tuple[str, str, str], req: Request, resp: Response, source: str,
                 start: float, answer: float) -> None:
        self.key = key
        self.call_id = req.call_id
        self.from_uri = str(req.from_.uri)
        self.to_uri = str(req.to.uri)
        self.from_tag = req.from_tag or ""
        self.to_tag = resp.to_tag or ""
        self.ruri = str(req.uri)
        self.source = source
        self.start = start
        self.answer = answer
        self.code = resp.status
        self.reason = resp.reason


class AccountingLog:
    """Appends JSON lines to the configured file, reopening it when the
    path changes (``cfg set``) or the file was moved away (rotation)."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self._file: Any = None
        self._path: str | None = None
        self._last_error = -ERROR_LOG_INTERVAL

    def write(self, record: dict[str, Any]) -> bool:
        # ASCII-only: a header byte that is not UTF-8 (kept as a lone
        # surrogate) must not make the record unwritable; JSON escapes it.
        line = json.dumps(record, separators=(",", ":")) + "\n"
        path = self.core.config.accounting.file
        try:
            f = self._file
            if f is None or path != self._path or self._moved(f, path):
                f = self._open(path)
            f.write(line)
            f.flush()
        except (OSError, ValueError) as e:
            self.core.count("accounting.write_errors")
            self.close()
            now = self.core.clock.seconds()
            if now - self._last_error >= ERROR_LOG_INTERVAL:
                self._last_error = now
                log.error("accounting: cannot write to {p}: {e}", p=path, e=e)
            return False
        self.core.count("accounting.records")
        return True

    @staticmethod
    def _moved(f: Any, path: str) -> bool:
        try:
            return os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
        except OSError:
            return True

    def _open(self, path: str) -> Any:
        self.close()
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open between records
        self._path = path
        return self._file

    def close(self) -> None:
        f, self._file, self._path = self._file, None, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


class Accounting:
    """Turns the answers going upstream into call records."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self.log = AccountingLog(core)
        # INVITE server transaction key -> arrival time (its 100 Trying).
        self.pending: OrderedDict[tuple, float] = OrderedDict()
        # (call-id, from tag, to tag) -> the call, oldest answered first
        # (OrderedDict: O(1) access to the oldest, however many BYEs came).
        self.calls: OrderedDict[tuple[str, str, str], AnsweredCall] = OrderedDict()
        self._timer: Any = None

    # -- the hook ------------------------------------------------------------
    def response(self, holder: ServerTx, resp: Response) -> None:
        """Called for every answer sent upstream, while accounting is on."""
        try:
            req = holder.tx.request
            method = req.method
            if method == "INVITE":
                if req.to_tag is None:
                    self._invite(holder, req, resp)
            elif method == "BYE" and resp.status >= 200:
                status = resp.status
                if status < 300 or status in BYE_ENDS:
                    self._bye(req, status)
        except Exception:  # noqa: BLE001 - accounting must never break a call
            # One warning per request, not a critical traceback (hookerrors).
            hook_failed("accounting", holder.tx.request, holder.source)

    def _invite(self, holder: ServerTx, req: Request, resp: Response) -> None:
        status = resp.status
        now = self.core.clock.seconds()
        if status < 200:
            if status == 100:
                pending = self.pending
                if len(pending) >= self.core.config.accounting.max_calls:
                    # An INVITE that never got a final answer (dropped by
                    # routing): forget the oldest.
                    pending.popitem(last=False)
                pending[holder.key] = now
            return
        rctx = holder.rctx
        start = self.pending.pop(holder.key, None)
        if start is None:
            # A second 2xx of a forked call: the first one stashed the start.
            start = rctx.vars.get("acc_start", now) if rctx is not None else now
        elif rctx is not None:
            rctx.vars["acc_start"] = start
        if status in CHALLENGES:
            return
        src = holder.source
        source = f"{src.transport}:{src.host}:{src.port}"
        if status < 300:
            if rctx is not None:
                # The INVITE transaction outlives the call's BYE by 64*T1
                # (RFC 6026 Accepted): a 2xx retransmitted then is the same
                # answer, not a new call.
                seen = rctx.vars.setdefault("acc_answered", set())
                key = (req.call_id, req.from_tag or "", resp.to_tag or "")
                if key in seen:
                    return
                seen.add(key)
            self._answered(req, resp, source, start, now)
            return
        kind = "missed" if status in MISSED else "failed"
        self.log.write({
            "kind": kind, "time": iso(now), "call_id": req.call_id,
            "from": str(req.from_.uri), "to": str(req.to.uri), "from_tag": req.from_tag or "",
            "ruri": str(req.uri), "source": source, "code": status, "reason": resp.reason,
            "start": iso(start), "setup_time": round(now - start, 3),
        })

    def _answered(self, req: Request, resp: Response, source: str, start: float, now: float) -> None:
        key = (req.call_id, req.from_tag or "", resp.to_tag or "")
        calls = self.calls
        if key in calls:
            return  # a retransmitted 2xx
        cfg = self.core.config.accounting
        while len(calls) >= cfg.max_calls:
            oldest = calls.popitem(last=False)[1]
            self._write_answered(oldest, now, "evicted", None)
        calls[key] = AnsweredCall(key, req, resp, source, start, now)
        if self._timer is None:
            self._arm(now)

    def _bye(self, bye: Request, status: int) -> None:
        calls = self.calls
        cid = bye.call_id
        ftag = bye.from_tag or ""
        ttag = bye.to_tag or ""
        call = calls.pop((cid, ftag, ttag), None)
        if call is not None:
            ended_by = "caller"
        else:
            call = calls.pop((cid, ttag, ftag), None)
            if call is None:
                return
            ended_by = "callee"
        self._write_answered(call, self.core.clock.seconds(), ended_by, status)

    def _write_answered(self, call: AnsweredCall, end: float, ended_by: str,
                        bye_code: int | None) -> None:
        record: dict[str, Any] = {
            "kind": "answered", "time": iso(end), "call_id": call.call_id,
            "from": call.from_uri, "to": call.to_uri, "from_tag": call.from_tag,
            "to_tag": call.to_tag, "ruri": call.ruri, "source": call.source,
            "code": call.code, "reason": call.reason, "start": iso(call.start),
            "answer": iso(call.answer), "end": iso(end),
            "setup_time": round(call.answer - call.start, 3),
            "duration": round(end - call.answer, 3), "ended_by": ended_by,
        }
        if bye_code is not None:
            record["bye_code"] = bye_code
        self.log.write(record)

    # -- calls that never see a BYE --------------------------------------------
    def _arm(self, now: float) -> None:
        calls = self.calls
        if not calls:
            self._timer = None
            return
        oldest = calls[next(iter(calls))]
        due = oldest.answer + self.core.config.accounting.max_duration
        delay = min(max(due - now, 0.0), MAX_TIMER)
        self._timer = self.core.timer_heap.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.core.clock.seconds()
        limit = self.core.config.accounting.max_duration
        calls = self.calls
        while calls:
            call = calls[next(iter(calls))]
            end = call.answer + limit
            if end > now:
                break
            del calls[call.key]
            self._write_answered(call, end, "timeout", None)
        self._arm(now)

    def stop(self) -> None:
        """The proxy stops: calls still up are written as they stand
        ("ended_by": "shutdown", the duration so far), so a restart loses
        no record; the BYE will pass another node or none."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls = self.calls
        if calls:
            now = self.core.clock.seconds()
            try:
                for call in list(calls.values()):
                    self._write_answered(call, now, "shutdown", None)
            except Exception:  # noqa: BLE001 - stopping must go on
                log.failure("accounting failed at shutdown")
            calls.clear()
        self.log.close()
