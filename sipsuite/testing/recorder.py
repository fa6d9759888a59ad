"""What the routing did, step by step, with the line of code that did it.

:class:`RecordingContext` is the ``ctx`` the routing hooks get in the test
kit and in ``route explain``: a :class:`~sipsuite.proxy.routing.RequestContext`
whose actions (reply, relay, drop, record_route, register, lookup,
auth_check, AVP and field writes, trace lines) also append a :class:`Step`
to the :class:`Recorder` of their core, naming the hook that ran and the
file:line of the routing code that called.  The proxy itself never makes
one (``ProxyCore.context_class`` is the plain class), so finding the caller
frame costs only when explaining.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from twisted.logger import formatEvent

from sipsuite.proxy.routing.base import RequestContext

if TYPE_CHECKING:
    from sipsuite.proxy.registrar.bindings import Binding

__all__ = ["HOOKS", "Recorder", "RecordingContext", "RecordingShv", "Step", "avps_of",
           "note_routing"]

#: The routing class's hooks, as the core calls them.
HOOKS = ("request_route", "branch_route", "reply_route", "failure_route")

# Message fields a routing class may write (ctx.ruri = ...: issue 14's
# vocabulary); a write is a decision worth a step.
FIELDS = frozenset({"ruri", "ruri_user", "ruri_host", "dst_uri", "from_uri", "from_user",
                    "from_display", "to_uri", "to_user", "call_id", "user_agent"})

_SIPSUITE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# sipsuite's own routing blocks are routing code (the default script):
# their lines are what an explanation points at.  Everything else of
# sipsuite (the context, the core, the modules, this kit) is machinery.
_SCRIPT_FILES = tuple(os.path.join(_SIPSUITE, "proxy", "routing", name)
                      for name in ("default.py", "features.py"))


# Python's own library and the installed packages (Twisted...) are not
# routing code either, unless a routing class's module lives there.
_LIBRARY = tuple(sorted({os.path.abspath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib",
                                                              "platlib")
                         if (p := sysconfig.get_paths().get(key))}))
#: Files of the routing classes in use (their MRO), routing code wherever they live.
routing_files: set[str] = set()


def note_routing(routing: object) -> None:
    """Count the files of ``routing``'s classes as routing code."""
    for cls in type(routing).__mro__:
        module = sys.modules.get(cls.__module__)
        filename = getattr(module, "__file__", None)
        if filename:
            routing_files.add(os.path.abspath(filename))


def _is_script(filename: str) -> bool:
    if filename in routing_files:
        return not filename.endswith(os.path.join("routing", "base.py"))
    if filename.startswith(_SIPSUITE):
        return filename.startswith(_SCRIPT_FILES)
    return not filename.startswith("<") and not filename.startswith(_LIBRARY)


def _where(filename: str, line: int) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        rel = filename
    return f"{filename if rel.startswith('..') else rel}:{line}"


@dataclass(slots=True)
class Step:
    """One thing the routing did: ``action`` (reply, relay, drop,
    record_route, register, lookup, auth, avp, set, trace...) with its
    ``detail``, in ``hook``, made at ``where`` (file:line of the routing
    code; ``by`` names the sipsuite function in between, e.g. the auth
    module answering a challenge for ``ctx.auth_check``)."""

    hook: str
    action: str
    detail: str
    where: str = ""
    by: str = ""

    def __str__(self) -> str:
        by = f" (by {self.by})" if self.by else ""
        at = f"  [{self.where}]" if self.where else ""
        return f"{self.hook}: {self.action} {self.detail}{by}{at}"


@dataclass
class Recorder:
    """The steps of every RecordingContext of one core, in order, and the
    contexts made (one per request routed)."""

    steps: list[Step] = field(default_factory=list)
    contexts: list[RecordingContext] = field(default_factory=list)

    def record(self, action: str, detail: str, depth: int = 2) -> None:
        hook, where, by = _caller(sys._getframe(depth))
        self.steps.append(Step(hook, action, detail, where, by))


def _frames(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def _caller(frame: FrameType) -> tuple[str, str, str]:
    """(hook, file:line of the innermost routing-code frame, the sipsuite
    function between it and ``ctx``) for an action called from ``frame``."""
    where = by = hook = ""
    for f in _frames(frame):
        code = f.f_code
        script = _is_script(code.co_filename)
        if not where:
            if script:
                where = _where(code.co_filename, f.f_lineno)
            elif not by and code.co_filename.startswith(_SIPSUITE):
                module = os.path.splitext(os.path.basename(code.co_filename))[0]
                by = f"{module}.{code.co_name}"
        # The outermost hook method wins (a subclass's request_route calling
        # super().request_route is still request_route).
        if script and code.co_name in HOOKS:
            hook = code.co_name
    return hook or "module", where, by


def _targets(targets: list[Any] | None, ctx: RequestContext) -> str:
    if not targets:
        return f"to the Request-URI {ctx.request.uri}"
    return "to " + ", ".join(str(getattr(t, "uri", t)) + (
        f" via {t.dst.transport}:{t.dst.host}:{t.dst.port}" if getattr(t, "dst", None) else "")
        for t in targets)


def _bindings(found: list[Binding]) -> str:
    return ", ".join(b.contact for b in found) or "none"


def _avps_class() -> Any:
    try:
        module = importlib.import_module("sipsuite.proxy.routing.avp")
    except ImportError:  # the AVP vocabulary (issue 14) not there yet
        return None
    return getattr(module, "Avps", None)


def avps_of(ctx: RequestContext) -> dict[str, Any]:
    """The AVPs of ``ctx``'s transaction (``ctx.avp.as_dict()``), {} when
    it has none."""
    cls = _avps_class()
    if cls is None:
        return {}
    avps = ctx.call.peek(cls)
    return dict(avps.as_dict()) if avps is not None else {}


class _RecordingAvps:
    """``ctx.avp`` as a RecordingContext hands it out: the transaction's
    Avps, each write recorded."""

    __slots__ = ("_avps", "_recorder")

    def __init__(self, avps: Any, recorder: Recorder) -> None:
        self._avps = avps
        self._recorder = recorder

    def __setitem__(self, name: str, value: Any) -> None:
        self._recorder.record("avp", f"{name} = {value!r}")
        self._avps[name] = value

    def __delitem__(self, name: str) -> None:
        self._recorder.record("avp", f"{name} deleted")
        del self._avps[name]

    def add(self, name: str, value: Any) -> None:
        self._recorder.record("avp", f"{name} += {value!r}")
        self._avps.add(name, value)

    def __getitem__(self, name: str) -> Any:
        return self._avps[name]

    def __contains__(self, name: object) -> bool:
        return name in self._avps

    def __iter__(self) -> Iterator[str]:
        return iter(self._avps)

    def __len__(self) -> int:
        return len(self._avps)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._avps, name)


class RecordingShv:
    """``self.shv`` as the kit and route explain hand it out: the shared
    variables of the core, each write recorded with the line that made it."""

    def __init__(self, inner: Any, core: Any) -> None:
        self.inner = inner
        self.core = core

    def _record(self, detail: str) -> None:
        # Called first thing in the coroutine: the frame above is the
        # routing code awaiting it.
        recorder: Recorder | None = getattr(self.core, "recorder", None)
        if recorder is not None:
            recorder.record("shv", detail, depth=3)

    async def get(self, name: str, default: Any = None) -> Any:
        return await self.inner.get(name, default)

    async def set(self, name: str, value: Any) -> None:
        self._record(f"{name} = {value!r}")
        await self.inner.set(name, value)

    async def incr(self, name: str, by: int = 1) -> int:
        self._record(f"{name} += {by!r}")
        return int(await self.inner.incr(name, by))

    async def delete(self, name: str) -> bool:
        self._record(f"{name} deleted")
        return bool(await self.inner.delete(name))

    async def items(self) -> dict[str, Any]:
        return dict(await self.inner.items())


class RecordingContext(RequestContext):
    """A RequestContext that records each action in its core's ``recorder``
    (see the module's docstring)."""

    __slots__ = ("recorder",)
    recorder: Recorder

    def __init__(self, core: Any, request: Any, source: Any, loose_routed: bool,
                 call: Any = None) -> None:
        recorder: Recorder = core.recorder
        object.__setattr__(self, "recorder", recorder)
        super().__init__(core, request, source, loose_routed, call)
        recorder.contexts.append(self)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in FIELDS:
            self.recorder.record("set", f"{name} = {value!r}")
        object.__setattr__(self, name, value)

    def reply(self, status: int, reason: str | None = None,
              headers: list[tuple[str, str]] | None = None) -> None:
        caller = sys._getframe(1)
        if caller.f_code.co_name == "_failed" and caller.f_code.co_filename.endswith("hookrun.py"):
            self._raised(caller.f_locals.get("hook"), caller.f_locals.get("failure"))
        self.recorder.record("reply", f"{status} {reason or ''}".rstrip())
        super().reply(status, reason, headers)

    def _raised(self, hook: Any, failure: Any) -> None:
        """A hook raised and the core answers for it: the exception, and
        the line of routing code it came from, as a step of its own."""
        exc = getattr(failure, "value", None)
        if exc is None:
            return
        where = ""
        for frame in reversed(getattr(failure, "frames", None) or []):
            filename, line = frame[1], frame[2]
            if _is_script(filename):
                where = _where(filename, line)
                break
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        self.recorder.steps.append(Step(str(hook or "module"), "raised", detail, where))

    def relay(self, targets: list[Any] | None = None) -> None:
        self.recorder.record("relay", _targets(targets, self))
        super().relay(targets)

    def drop(self) -> None:
        self.recorder.record("drop", "")
        super().drop()

    def record_route(self) -> None:
        self.recorder.record("record_route", "")
        super().record_route()

    async def register(self) -> None:
        self.recorder.record("register", "save(location)")
        await super().register()

    async def lookup(self, user: str) -> list[Binding]:
        recorder = self.recorder
        # The frame is the caller's now, not after the await.
        hook, where, by = _caller(sys._getframe(1))
        try:
            found = await super().lookup(user)
        except Exception as exc:
            recorder.steps.append(Step(hook, "lookup", f"{user!r}: failed: {exc}", where, by))
            raise
        recorder.steps.append(Step(hook, "lookup", f"{user!r}: {len(found)} binding(s): "
                                   f"{_bindings(found)}", where, by))
        return found

    async def auth_check(self, user: str, *, proxy: bool) -> bool:
        recorder = self.recorder
        hook, where, by = _caller(sys._getframe(1))
        ok = await super().auth_check(user, proxy=proxy)
        what = "valid credentials" if ok else "no valid credentials (challenged or refused)"
        recorder.steps.append(Step(hook, "auth_check", f"{user!r} ({'proxy' if proxy else 'www'}):"
                                   f" {what}", where, by))
        return ok

    def consume_credentials(self, *, proxy: bool) -> None:
        self.recorder.record("consume_credentials", "")
        super().consume_credentials(proxy=proxy)

    def trace(self, fmt: str, /, **fields: object) -> None:
        # Recorded whether [features] debug is on or not: explaining is
        # asking for the step log.
        self.recorder.record("trace", formatEvent({"log_format": fmt, **fields}))
        super().trace(fmt, **fields)

    if _avps_class() is not None:
        @property
        def avp(self) -> Any:
            return _RecordingAvps(super().avp, self.recorder)  # type: ignore[misc,unused-ignore]

    # uac_replace_from / uac_replace_to (issue 14), where the context has them.
    if hasattr(RequestContext, "replace_from"):
        def replace_from(self, *args: Any, **kwargs: Any) -> Any:
            self.recorder.record("replace_from", _call_text(args, kwargs))
            return super().replace_from(*args, **kwargs)  # type: ignore[misc,unused-ignore]

    if hasattr(RequestContext, "replace_to"):
        def replace_to(self, *args: Any, **kwargs: Any) -> Any:
            self.recorder.record("replace_to", _call_text(args, kwargs))
            return super().replace_to(*args, **kwargs)  # type: ignore[misc,unused-ignore]


def _call_text(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
