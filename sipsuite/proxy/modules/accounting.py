"""Call accounting (Kamailio's acc module, ``[features] accounting``): one
JSON line per call in ``[accounting] file``.

A feature module (issue 13): ``SPEC`` sets it up when ``[features]
accounting`` is on, at start or by ``cfg set`` (a run-time switch), and it
plugs into the core through the one hook it needs, ``response_out``: the
answers the proxy sends upstream, so forwarded and locally made answers
count alike:

- the final answer to an initial INVITE: a 2xx starts tracking an answered
  call; 408/480/486/487/600/603 write a "missed" record (the callee did not
  take the call), any other answer >= 300 a "failed" one. 401/407 are left
  out: they are the challenge of a call that comes again with credentials
  (kamailio.cfg sets its accounting flag only after authentication);
- the final answer to a BYE (2xx, or 408/481: the dialog is gone either
  way) writes the "answered" record of its call, with who hung up.

An INVITE's start time (its 100 Trying) lives in the transaction's
CallState (:class:`AccState`) and goes with it.  Answered calls are held in
a dict in the order they were answered (so the oldest is at the front),
bounded by ``max_calls``; one timer, armed for the oldest call, ends calls
that pass ``max_duration`` without a BYE.  Each record is one ``write()``
of one whole line on a descriptor opened with ``O_APPEND``, so the kernel
appends it in one piece: the records of several worker processes (or of
several proxies) sharing one file never interleave within a line.  A
failure is logged (at most once a minute) and counted, never raised into
SIP handling.

Worker processes (``[proxy] workers > 1``, the ``WORKER_LINK`` service):
the call is held by the worker that sent its 2xx upstream, but its BYE is
an in-dialog request, which may reach any worker.  A worker whose BYE ends
a call it does not hold sends ``acc_bye`` (the dialog's Call-ID and tags,
the time of the BYE's final answer, its status) over its link; the
supervisor passes it to the other workers, and the one holding the call
writes its record with that end time and side, exactly as if the BYE had
come to it; the others hold no such call and drop it.  One line on the
link per BYE that lands elsewhere, nothing per request, and no shared
store.  A worker that dies (SIGKILL) loses the calls it held: their BYEs
find no holder, so they get no record; each worker's heartbeat carries how
many it holds, and the supervisor logs and counts them at its death
(``supervisor.lost_call_records``).  With one process the link is None and
the BYE path is what it always was.

Calls still up when the module stops are written as they stand: with
``"ended_by": "shutdown"`` when the proxy stops, ``"disabled"`` when
``cfg set features.accounting false`` switches accounting off.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.log import get_logger
from sipsuite.proxy.services import WORKER_LINK
from sipsuite.proxy.workerlink import bye_fields

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServerTxView, ServiceKey, Timer
    from sipsuite.proxy.services import WorkerLinkService
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
#: The link message of a BYE that ended a call another worker holds.
LINK_BYE = "acc_bye"
#: The heartbeat field with the number of answered calls a worker holds.
LINK_HELD = "acc_calls"


def iso(t: float) -> str:
    """Epoch seconds -> '2026-11-26T15:04:05.123Z'."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class AccState:
    """Accounting's part of an INVITE transaction's CallState."""

    start: float | None = None  # when its 100 Trying went out
    # (call-id, from tag, to tag) of the 2xx already counted: the INVITE
    # transaction outlives the call's BYE by 64*T1 (RFC 6026 Accepted), and a
    # 2xx retransmitted then is the same answer, not a new call.
    answered: set[tuple[str, str, str]] = field(default_factory=set)


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
    path changes (``cfg set``) or the file was moved away (rotation).

    A raw descriptor with ``O_APPEND`` and one ``os.write`` per record, no
    Python buffering in between: the whole line goes to the kernel in one
    system call, which appends it at the end of the file as one piece
    (POSIX; Linux holds the file's lock for the write), so writers in other
    processes cannot cut into it.  A short write (a full disk) is reported
    as a failure."""

    def __init__(self, core: CoreAPI) -> None:
        self.core = core
        self._fd = -1
        self._path: str | None = None
        self._last_error = -ERROR_LOG_INTERVAL
        self.written = 0
        self.failed = 0

    def write(self, record: dict[str, Any]) -> bool:
        # ASCII-only: a header byte that is not UTF-8 (kept as a lone
        # surrogate) must not make the record unwritable; JSON escapes it.
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")
        path = self.core.config.accounting.file
        try:
            fd = self._fd
            if fd < 0 or path != self._path or self._moved(fd, path):
                fd = self._open(path)
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except (OSError, ValueError) as e:
            self.core.stats.count("accounting.write_errors")
            self.failed += 1
            self.close()
            now = self.core.clock.seconds()
            if now - self._last_error >= ERROR_LOG_INTERVAL:
                self._last_error = now
                log.error("accounting: cannot write to {p}: {e}", p=path, e=e)
            return False
        self.core.stats.count("accounting.records")
        self.written += 1
        return True

    @staticmethod
    def _moved(fd: int, path: str) -> bool:
        try:
            return os.stat(path).st_ino != os.fstat(fd).st_ino
        except OSError:
            return True

    def _open(self, path: str) -> int:
        self.close()
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._path = path
        return self._fd

    def close(self) -> None:
        fd, self._fd, self._path = self._fd, -1, None
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class Accounting:
    """Turns the answers going upstream into call records."""

    name: ClassVar[str] = "accounting"

    def __init__(self, core: CoreAPI) -> None:
        self.core = core
        self.log = AccountingLog(core)
        # (call-id, from tag, to tag) -> the call, oldest answered first
        # (OrderedDict: O(1) access to the oldest, however many BYEs came).
        self.calls: OrderedDict[tuple[str, str, str], AnsweredCall] = OrderedDict()
        self._timer: Timer | None = None
        self._ended_by = "shutdown"
        # Worker processes only (None in a single process): the supervisor's
        # line, for BYEs that end calls another worker holds.
        self.link: WorkerLinkService | None = core.modules.get(WORKER_LINK)
        self._held: Callable[[], int] = self.calls.__len__
        self.byes_passed = 0  # BYEs of calls we do not hold, sent over the link
        self.byes_taken = 0  # records written for another worker's BYE
        self.bad_link_messages = 0

    # -- the module's life -----------------------------------------------------
    def start(self) -> None:
        link = self.link
        if link is not None:
            link.on(LINK_BYE, self._sibling_bye)
            link.gauge(LINK_HELD, self._held)

    def reconfigure(self, old: Config, new: Config) -> None:
        # The writer reopens by itself on a new file; max_* are read at use.
        if not new.features.accounting:
            self._ended_by = "disabled"  # the registry stops us next

    def stats(self) -> Mapping[str, object]:
        figures = {"calls": len(self.calls), "records": self.log.written,
                   "write_errors": self.log.failed}
        if self.link is not None:
            figures.update(byes_passed=self.byes_passed, byes_taken=self.byes_taken,
                           bad_link_messages=self.bad_link_messages)
        return figures

    # -- the hook ------------------------------------------------------------
    def response(self, tx: ServerTxView, resp: Response) -> None:
        """response_out: called for every answer sent upstream (the core's
        hook runner logs a raise here as one warning; the call goes on)."""
        req = tx.request
        method = req.method
        if method == "INVITE":
            if req.to_tag is None:
                self._invite(tx, req, resp)
        elif method == "BYE" and resp.status >= 200:
            status = resp.status
            if status < 300 or status in BYE_ENDS:
                self._bye(req, status)

    def _invite(self, tx: ServerTxView, req: Request, resp: Response) -> None:
        status = resp.status
        now = self.core.clock.seconds()
        state = tx.call.get(AccState)
        if status < 200:
            if status == 100:
                state.start = now
            return
        # A second 2xx of a forked call finds the start the first one saw.
        start = state.start if state.start is not None else now
        if status in CHALLENGES:
            return
        src = tx.source
        source = f"{src.transport}:{src.host}:{src.port}"
        if status < 300:
            key = (req.call_id, req.from_tag or "", resp.to_tag or "")
            if key in state.answered:
                return
            state.answered.add(key)
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
        cid = bye.call_id
        ftag = bye.from_tag or ""
        ttag = bye.to_tag or ""
        now = self.core.clock.seconds()
        if self._end(cid, ftag, ttag, now, status) or self.link is None:
            return
        # Not ours: the worker that sent the call's 2xx holds it.
        self.byes_passed += 1
        self.link.send(LINK_BYE, call_id=cid, from_tag=ftag, to_tag=ttag, end=now, code=status)

    def _end(self, cid: str, ftag: str, ttag: str, end: float, status: int) -> bool:
        """The call a BYE with these tags ends, written if we hold it: the
        BYE's From tag is the caller's when the caller hung up."""
        calls = self.calls
        call = calls.pop((cid, ftag, ttag), None)
        if call is not None:
            ended_by = "caller"
        else:
            call = calls.pop((cid, ttag, ftag), None)
            if call is None:
                return False
            ended_by = "callee"
        self._write_answered(call, end, ended_by, status)
        return True

    def _sibling_bye(self, msg: dict[str, Any]) -> None:
        """``acc_bye`` from the supervisor: another worker's BYE ended a call
        it does not hold; every other worker gets it, the holder writes."""
        fields = bye_fields(msg)
        if fields is None:
            self.bad_link_messages += 1
            return
        if self._end(*fields):
            self.byes_taken += 1

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
        self._timer = self.core.call_later(delay, self._expire)

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
        """The proxy stops (or accounting is switched off): calls still up are
        written as they stand ("ended_by": "shutdown" or "disabled", the
        duration so far), so a restart loses no record; the BYE will pass
        another node or none."""
        link = self.link
        if link is not None:
            link.off(LINK_BYE, self._sibling_bye)
            link.gauge(LINK_HELD, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls = self.calls
        if calls:
            now = self.core.clock.seconds()
            try:
                for call in list(calls.values()):
                    self._write_answered(call, now, self._ended_by, None)
            except Exception:  # noqa: BLE001 - stopping must go on
                log.failure("accounting failed at shutdown")
            calls.clear()
        self.log.close()


class AccountingSpec:
    """``[features] accounting``: a run-time switch (cfg set sets the module
    up or stops it)."""

    name = "accounting"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = True

    def enabled(self, config: Config) -> bool:
        return bool(config.features.accounting)

    def setup(self, core: CoreAPI, config: Config) -> Accounting:
        acc = Accounting(core)
        core.hooks.on_response_out(acc.response)
        return acc


SPEC = AccountingSpec()
