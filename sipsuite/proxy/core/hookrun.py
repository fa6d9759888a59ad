"""The one hook runner: routing hooks (the script's blocks) and module hooks.

* :func:`run_script` calls a routing hook (request_route, branch_route,
  reply_route, failure_route), plain or ``async``, and reports a raise or a
  failed await the one way (:func:`~sipsuite.proxy.core.hookerrors.hook_failed`:
  one warning line), answering the request when asked to.
* :func:`run_hooks` calls the module hooks of one point (branch_out,
  response_in, response_out) fail-open: a broken module costs a warning
  line, never the call.  ``request_in`` runs inline in the core instead: it
  is per packet and its hooks return a verdict.
* :func:`drive` runs what a hook returned without a Deferred unless it waits.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sipsuite.proxy.core.hookerrors import answer_for, hook_failed

if TYPE_CHECKING:
    from collections.abc import Callable

    from sipsuite.proxy.routing.base import RequestContext

__all__ = ["drive", "run_hooks", "run_script"]


def _nothing() -> None:
    pass


def run_script(hook: str, ctx: RequestContext, fn: Callable[..., Any], *args: Any,
               done: Callable[[], None] = _nothing, answer: bool = False) -> bool:
    """Run one routing hook ``fn(ctx, *args)``; ``done()`` runs after it, when
    it ended or failed.  A failure is logged (hook_failed); with ``answer``
    the request also gets :func:`answer_for`'s answer unless it was handled
    already or is an ACK.  Returns True while the hook still awaits."""
    # ctx.hook names the hook running (the flight recorder's routing
    # decisions say which); the one that called this one gets it back.
    outer = ctx.hook
    ctx.hook = hook
    try:
        result = fn(ctx, *args)
    except Exception:  # noqa: BLE001 - a script bug must not kill the proxy
        ctx.hook = outer
        _failed(hook, ctx, Failure(), answer)
        done()
        return False
    ctx.hook = outer
    if not inspect.iscoroutine(result):
        done()
        return False
    return _ScriptDriver(result, done, hook, ctx, answer).step(None)


def _failed(hook: str, ctx: RequestContext, failure: Failure, answer: bool) -> None:
    if not answer:
        hook_failed(hook, ctx.request, ctx.source, failure)
        return
    status, reason, headers = answer_for(failure.value)
    answered = None if ctx.handled or ctx.request.method == "ACK" else status
    hook_failed(hook, ctx.request, ctx.source, failure, answered)
    if answered is not None:
        ctx.reply(status, reason, headers)


def run_hooks(point: str, hooks: tuple[tuple[str, Callable[..., Any]], ...],
              request: Any, source: Any, *args: Any) -> None:
    """Call each module hook of ``point`` with ``args``, fail-open."""
    for owner, fn in hooks:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - fail-open: a broken module must not cost the call
            hook_failed(f"{owner}.{point}", request, source)


def drive(result: Any, on_done: Any, on_error: Any) -> bool:
    """Run what a hook returned: a plain value finishes at once; a coroutine
    runs here until it ends or waits on a Deferred.

    Most routing coroutines never really wait (an in-memory lookup), and
    ``ensureDeferred`` would cost a Deferred and its machinery per request;
    this trampoline only touches Twisted when the hook actually waits, and
    builds no closures, so a finished request leaves no reference cycle for
    the garbage collector.  Returns True while the coroutine still waits.
    """
    if not inspect.iscoroutine(result):
        on_done()
        return False
    return _Driver(result, on_done, on_error).step(None)


class _Driver:
    __slots__ = ("coro", "on_done", "on_error")

    def __init__(self, coro: Any, on_done: Any, on_error: Any) -> None:
        self.coro = coro
        self.on_done = on_done
        self.on_error = on_error

    def step(self, error: BaseException | None) -> bool:
        coro = self.coro
        while True:
            try:
                if error is not None:
                    awaited = coro.throw(error)
                    error = None
                else:
                    awaited = coro.send(None)
            except StopIteration:
                self.finish(None)
                return False
            except Exception:  # noqa: BLE001 - reported, never raised into the transport
                self.finish(Failure())
                return False
            if not isinstance(awaited, Deferred):
                coro.close()
                self.finish(Failure(TypeError(f"routing hooks may only await Deferreds, not {awaited!r}")))
                return False
            if awaited.called and not awaited.paused:
                continue
            awaited.addBoth(self.resume)
            return True

    def resume(self, value: Any) -> Any:
        if isinstance(value, Failure):
            # Raised inside the coroutine where it awaited; consumed here so
            # the Deferred does not also report it as unhandled.
            self.step(value.value)
            return None
        # A success is read by the coroutine from the Deferred itself (its
        # __await__ protocol), so hand it back unchanged.
        self.step(None)
        return value

    def finish(self, failure: Failure | None) -> None:
        on_done, on_error = self.on_done, self.on_error
        self.coro = self.on_done = self.on_error = None
        if failure is None:
            on_done()
        else:
            on_error(failure)


class _ScriptDriver(_Driver):
    """A driver that reports its own failure (no second object per hook:
    this runs for most requests, and most never fail)."""

    __slots__ = ("answer", "ctx", "hook")

    def __init__(self, coro: Any, done: Callable[[], None], hook: str, ctx: RequestContext,
                 answer: bool) -> None:
        super().__init__(coro, done, None)
        self.hook, self.ctx, self.answer = hook, ctx, answer

    def step(self, error: BaseException | None) -> bool:
        # Each stretch of the coroutine runs as its hook (ctx.hook), and
        # gives the name back to whatever ran before it.
        ctx = self.ctx
        outer = ctx.hook
        ctx.hook = self.hook
        try:
            return super().step(error)
        finally:
            ctx.hook = outer

    def finish(self, failure: Failure | None) -> None:
        if failure is not None:
            _failed(self.hook, self.ctx, failure, self.answer)
        done = self.on_done
        self.ctx = None  # type: ignore[assignment]
        self.coro = self.on_done = self.on_error = None
        done()
