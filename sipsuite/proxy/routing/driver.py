"""The hook driver: runs what a routing hook returned, a plain value or a coroutine."""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def drive(result: Any, on_done: Any, on_error: Any) -> None:
    """Run what a hook returned: a plain value finishes at once; a coroutine
    runs here until it ends or waits on a Deferred.

    Most routing coroutines never really wait (an in-memory lookup), and
    ``ensureDeferred`` would cost a Deferred and its machinery per request;
    this trampoline only touches Twisted when the hook actually waits, and
    builds no closures, so a finished request leaves no reference cycle for
    the garbage collector.
    """
    if not inspect.iscoroutine(result):
        on_done()
        return
    _Driver(result, on_done, on_error).step(None)


class _Driver:
    __slots__ = ("coro", "on_done", "on_error")

    def __init__(self, coro: Any, on_done: Any, on_error: Any) -> None:
        self.coro = coro
        self.on_done = on_done
        self.on_error = on_error

    def step(self, error: BaseException | None) -> None:
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
                return
            except Exception:  # noqa: BLE001 - reported, never raised into the transport
                self.finish(Failure())
                return
            if not isinstance(awaited, Deferred):
                coro.close()
                self.finish(Failure(TypeError(f"routing hooks may only await Deferreds, not {awaited!r}")))
                return
            if awaited.called and not awaited.paused:
                continue
            awaited.addBoth(self.resume)
            return

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
