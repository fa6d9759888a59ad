"""The flight recorder (``[trace]``, on by default): per call, every SIP
message in and out, the routing decisions with their hook and source line,
auth results, dispatcher choices and media relay commands and replies, in
a store bounded by ``[trace] memory`` (sipsuite/trace/store.py).

It plugs into the core at three places, none of which costs anything with
the module off:

- the transport layer's wire tap (``core.net.add_tap``, TraceStore.tap): each message as it
  was received (after it parsed) or sent, with transport and addresses;
- the ``routing_action`` hook: what ``ctx.reply``/``relay``/``drop``/
  ``record_route``/``register``/``lookup``/``auth_check``/``trace`` did and
  what modules note (``ctx.note``: the dispatcher's choice).  The file:line
  is found by walking up the stack from the action to the routing code:
  the first frame of the routing class (or of DefaultRouting's blocks),
  with the sipsuite function in between (``auth.check`` answering a
  challenge) named too;
- the media module's relay client tap: each U/L/D command and its reply.

The ``calls.list`` and ``calls.trace`` RPCs (``sipsuite-ctl calls`` and
``trace``) read the store; with worker processes the supervisor asks every
worker and merges (proxy/workerops.py).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from types import CodeType
from typing import TYPE_CHECKING, Any

from sipsuite.log import get_logger
from sipsuite.proxy.services import MEDIA
from sipsuite.rtpproxy.ids import decode_id
from sipsuite.trace.query import list_calls
from sipsuite.trace.store import TraceStore

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.routing.base import RequestContext

__all__ = ["SPEC", "FlightRecorder", "register_trace_methods"]

log = get_logger("sipsuite.proxy.recorder")

_SIPSUITE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep
# sipsuite's own routing blocks are routing code (the default script).
_SCRIPT_FILES = tuple(os.path.join(_SIPSUITE, "proxy", "routing", name)
                      for name in ("default.py", "features.py"))
# The context and the test kit's recording subclass stand between an
# action and whoever called it.
_PASS_THROUGH = (os.path.join(_SIPSUITE, "proxy", "routing", "base.py"),
                 os.path.join(_SIPSUITE, "testing", "recorder.py"),
                 os.path.abspath(__file__))
# Where the routing code ends: the core's hook runner (and Twisted's
# callbacks beyond it).
_CORE = os.path.join(_SIPSUITE, "proxy", "core") + os.sep
_LIBRARY = tuple(sorted({os.path.dirname(os.__file__) + os.sep,
                         os.path.dirname(os.path.dirname(os.path.abspath(
                             sys.modules["twisted"].__file__ or ""))) + os.sep}))

PASS, SCRIPT, SIPSUITE, STOP = 0, 1, 2, 3
_kinds: dict[CodeType, int] = {}


def _kind(code: CodeType) -> int:
    kind = _kinds.get(code)
    if kind is None:
        name = code.co_filename
        if name.startswith(_PASS_THROUGH):
            kind = PASS
        elif name.startswith(_CORE) or name.startswith(_LIBRARY) or name.startswith("<"):
            kind = STOP
        elif name.startswith(_SIPSUITE):
            kind = SCRIPT if name.startswith(_SCRIPT_FILES) else SIPSUITE
        else:
            kind = SCRIPT  # a routing class of the user's, wherever it lives
        _kinds[code] = kind
    return kind


_ROOT = len(os.path.dirname(_SIPSUITE.rstrip(os.sep))) + 1
# (file, line) -> "file:line": the same few lines are named for every call.
_places: dict[tuple[str, int], str] = {}


def _where(filename: str, line: int) -> str:
    key = (filename, line)
    place = _places.get(key)
    if place is None:
        shown = filename[_ROOT:] if filename.startswith(_SIPSUITE) else filename
        place = _places[key] = f"{shown}:{line}"
        if len(_places) > 10_000:  # routing reloaded many times over: start again
            _places.clear()
    return place


def caller(depth: int) -> str:
    """Where a routing action was made, ``depth`` frames above this call:
    "file:line" of the routing code, with "(by module.function)" when a
    sipsuite function in between made it (the auth module answering for
    ``ctx.auth_check``).  Walks as few frames as it can: each one Python
    has to make an object for."""
    frame: Any = sys._getframe(depth + 1)
    by = ""
    steps = 0
    while frame is not None and steps < 12:
        steps += 1
        code = frame.f_code
        kind = _kind(code)
        if kind == SCRIPT:
            where = _where(code.co_filename, frame.f_lineno)
            return f"{where} (by {by})" if by else where
        if kind == STOP:
            break
        if kind == SIPSUITE and not by:
            by = f"{os.path.splitext(os.path.basename(code.co_filename))[0]}.{code.co_name}"
        frame = frame.f_back
    return f"(by {by})" if by else ""


class FlightRecorder:
    """The ``recorder`` module: owns the store, feeds it from the taps."""

    name = "recorder"

    def __init__(self, core: CoreAPI, config: Config) -> None:
        t = config.trace
        self.core = core
        self.store = TraceStore(t.memory, show_credentials=t.show_credentials)
        self.wall = time.time
        # The store's own method is the tap: no call in between, per message.
        # (The transport layer catches what a tap raises: no message lost.)
        core.net.add_tap(self.store.tap)
        core.hooks.on_routing_action(self.action)
        self._client: Any = None

    # -- the taps -------------------------------------------------------------------
    def action(self, ctx: RequestContext, action: str, detail: str) -> None:
        # caller() inlined for its usual case, an action the routing code
        # calls itself: the frame above the context's method (one or two
        # frames up, past the test kit's recording subclass) is the script's.
        frame: Any = sys._getframe(2)
        code = frame.f_code
        while _kinds.get(code, -1) == PASS:
            frame = frame.f_back
            code = frame.f_code
        if _kinds.get(code) == SCRIPT:
            where = _places.get((code.co_filename, frame.f_lineno)) or _where(
                code.co_filename, frame.f_lineno)
        else:
            where = caller(2)
        self.store.route(ctx.request.call_id, self.wall(), ctx.hook or "module", action, detail,
                         where)

    def relay(self, relay: str, command: bytes, reply: str) -> None:
        text = command.decode("utf-8", "replace").strip()
        words = text.split(None, 2)
        if len(words) < 2 or words[0][:1].upper() not in "ULDQ":
            return  # V, VF, pings: no call's
        call_id = decode_id(words[1].split(";", 1)[0])
        self.store.relay(call_id, self.wall(), relay, text, reply.strip())

    # -- Module ----------------------------------------------------------------------
    def start(self) -> None:
        # The media module (set up after this one, or by the suite by hand)
        # owns the relay client: its commands are tapped from here on.
        media = self.core.modules.get(MEDIA)
        client = getattr(media, "client", None)
        if client is not None and hasattr(client, "tap"):
            client.tap = self.relay
            self._client = client

    def reconfigure(self, old: Config, new: Config) -> None:
        t = new.trace
        self.store.memory = t.memory
        self.store.show_credentials = t.show_credentials

    def stats(self) -> Mapping[str, object]:
        return self.store.stats()

    def stop(self) -> None:
        self.core.net.remove_tap(self.store.tap)
        if self._client is not None:
            self._client.tap = None


class RecorderSpec:
    """``[trace] enabled`` (on by default); set at start only."""

    name = "recorder"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return bool(config.trace.enabled and config.trace.memory > 0)

    def setup(self, core: CoreAPI, config: Config) -> FlightRecorder:
        return FlightRecorder(core, config)


SPEC = RecorderSpec()


def register_trace_methods(registry: RpcRegistry, core: Any) -> None:
    """``calls.list`` and ``calls.trace`` over the recorder of ``core``."""

    def recorder() -> FlightRecorder:
        module = core.modules.by_name("recorder")
        if module is None:
            from sipsuite.ops.errors import INVALID_PARAMS, RpcError

            raise RpcError(INVALID_PARAMS, "the flight recorder is off ([trace] enabled)")
        return module

    def calls(user: str | None = None, result: str | None = None, since: float | None = None,
              limit: int = 100, all: bool = False) -> dict[str, Any]:  # noqa: A002 - the RPC's name
        store = recorder().store
        rows = list_calls((c.summary() for c in store), user=user, result=result, since=since,
                          limit=limit, every=all)
        return {"calls": rows, "stats": store.stats()}

    def trace(call_id: str) -> dict[str, Any]:
        store = recorder().store
        found = store.get(call_id)
        if found is None:
            from sipsuite.ops.errors import INVALID_PARAMS, RpcError

            raise RpcError(INVALID_PARAMS, f"no call {call_id!r} recorded (or it was dropped)")
        return found.to_dict(store.show_credentials)

    registry.register("calls.list", calls,
                      "calls.list(user, result, since, limit, all): the recent calls, newest first")
    registry.register("calls.trace", trace,
                      "calls.trace(call_id): every message and decision recorded of one call")
