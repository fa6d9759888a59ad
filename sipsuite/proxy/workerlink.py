"""A worker process's line to its supervisor ([proxy] workers > 1;
docs/architecture.md "Worker processes", "Host-wide state").

Two pipes the supervisor opened anyway: the worker writes one JSON object
a line to its stdout, beside its log events, whose first key is
:data:`LINK_KEY` (the supervisor takes those lines out of the log); the
supervisor writes the same kind of lines to the worker's stdin.  No port,
no authentication to get right, and the pipe dies with either end.

Worker to supervisor:

- ``ready``: serving; ``private_ports``, the UDP ports its Vias name.
- ``load``: every :data:`HEARTBEAT` s, ``server``: the received
  requests not answered finally yet (what is lost if it dies now), and
  the modules' gauges (:meth:`WorkerLink.gauge`): ``acc_calls``, the
  answered calls accounting holds.
- ``flood``: the antiflood module's batch (modules/antiflood.py).
- ``ds``: a dispatcher state it found (modules/dispatcher/dispatcher.py).
- ``acc_bye``: a BYE ended a call this worker does not hold
  (modules/accounting.py).

Supervisor to worker:

- ``siblings``: ``ports``, the other workers' private ports, the only
  ones a response is steered to (net/transport.py ``steer``).
- ``flood_ban``, ``ds``: host-wide bans and dispatcher states;
  ``flood_unban`` to a worker still starting (the others got ``flood.unban``
  through management).
- ``acc_bye``: another worker's, passed to all but that worker.

Modules reach the link as the ``WORKER_LINK`` service (None in a single
process).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any, TextIO

from twisted.internet import task

from sipsuite.log import get_logger

log = get_logger("sipsuite.proxy.worker")

#: The first key of every link line (both ways).
LINK_KEY = "sipsuite_link"
#: What a supervisor looks for at the start of a worker's stdout line.
LINK_PREFIX = b'{"' + LINK_KEY.encode() + b'"'
#: How often a worker reports its transactions in progress (s).
HEARTBEAT = 1.0
#: The longest line a link reader buffers (a flood batch is bounded by max_sources).
MAX_LINE = 16 * 1024 * 1024


def encode(kind: str, **fields: Any) -> bytes:
    return json.dumps({LINK_KEY: kind, **fields}, separators=(",", ":")).encode() + b"\n"


class LineSplitter:
    """Bytes in, link messages (dicts with :data:`LINK_KEY`) out; a line
    that is not one is given to ``other``."""

    def __init__(self, message: Callable[[dict[str, Any]], None],
                 other: Callable[[bytes], None] | None = None) -> None:
        self.message = message
        self.other = other
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:
            log.warn("link: a line longer than {n} bytes dropped", n=MAX_LINE)
            self.buffer = b""
        for line in lines:
            self.line(line)

    def flush(self) -> None:
        if self.buffer:
            line, self.buffer = self.buffer, b""
            self.line(line)

    def line(self, line: bytes) -> None:
        if line.startswith(LINK_PREFIX):
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and isinstance(msg.get(LINK_KEY), str):
                self.message(msg)
                return
        if self.other is not None:
            self.other(line)


class WorkerLink:
    """The worker's end (the ``WORKER_LINK`` service)."""

    def __init__(self, index: int, out: TextIO | None = None) -> None:
        self.index = index
        self._out = out if out is not None else sys.stdout
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._splitter = LineSplitter(self._dispatch)
        self._reader: Any = None
        self._gauges: dict[str, Callable[[], int]] = {}

    def send(self, kind: str, **fields: Any) -> None:
        # The log observer writes to the same stream from the same thread:
        # whole lines, never interleaved.
        try:
            self._out.write(encode(kind, **fields).decode())
            self._out.flush()
        except (OSError, ValueError):
            pass  # the supervisor is gone: the orphan check stops us

    def on(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    def off(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None:
        handlers = self._handlers.get(kind, [])
        if handler in handlers:
            handlers.remove(handler)

    def gauge(self, name: str, read: Callable[[], int] | None) -> None:
        """``read()`` goes in every heartbeat as field ``name`` (None: no
        more): what the supervisor counts lost if this worker dies."""
        if read is None:
            self._gauges.pop(name, None)
        else:
            self._gauges[name] = read

    def gauges(self) -> dict[str, int]:
        return {name: read() for name, read in self._gauges.items()}

    def listen(self, reactor: Any, fd: int = 0) -> None:
        """Read the supervisor's messages from ``fd`` (stdin)."""
        from twisted.internet.process import ProcessReader

        self._reader = ProcessReader(reactor, self, "link", fd)

    # ProcessReader's process interface.
    def childDataReceived(self, name: str, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self._splitter.feed(data)

    def childConnectionLost(self, name: str, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self._reader = None  # the supervisor closed it or died: the orphan check stops us

    def feed(self, data: bytes) -> None:
        self._splitter.feed(data)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        for handler in self._handlers.get(msg[LINK_KEY], ()):
            try:
                handler(msg)
            except Exception:  # noqa: BLE001 - a bad message must not stop the link
                log.failure("link message {k} failed", k=msg[LINK_KEY])


def bye_fields(msg: dict[str, Any]) -> tuple[str, str, str, float, int] | None:
    """(Call-ID, From tag, To tag, end time, status) of an ``acc_bye`` or
    ``ev_bye`` message (a BYE that ended a call another worker holds), or
    None when one of them is missing or of the wrong type."""
    cid, ftag, ttag = msg.get("call_id"), msg.get("from_tag"), msg.get("to_tag")
    end, code = msg.get("end"), msg.get("code")
    if (not isinstance(cid, str) or not isinstance(ftag, str) or not isinstance(ttag, str)
            or isinstance(end, bool) or not isinstance(end, int | float)
            or not math.isfinite(end) or isinstance(code, bool) or not isinstance(code, int)):
        return None
    return cid, ftag, ttag, float(end), code


def follow_siblings(core: Any, link: WorkerLink) -> None:
    """The other workers' private ports, for steering (the supervisor sends
    them whenever a worker (re)starts)."""
    transport = core.transport

    def siblings(msg: dict[str, Any]) -> None:
        ports = msg.get("ports")
        if isinstance(ports, list):
            transport.sibling_ports = frozenset(
                p for p in ports if isinstance(p, int) and not isinstance(p, bool))

    link.on("siblings", siblings)


def start_heartbeat(core: Any, link: WorkerLink, clock: Any) -> task.LoopingCall:
    """The ``load`` heartbeat (the caller stops it)."""

    def heartbeat() -> None:
        link.send("load", **link.gauges(), server=core.unanswered())

    beat = task.LoopingCall(heartbeat)
    beat.clock = clock
    beat.start(HEARTBEAT, now=True)
    return beat


def ready(core: Any, link: WorkerLink) -> None:
    link.send("ready", private_ports=sorted(
        listener.via_port for listener in core.transport.private if listener.via_port))
