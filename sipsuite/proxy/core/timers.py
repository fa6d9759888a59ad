"""Transaction timers on one reactor DelayedCall.

A call through the proxy arms a dozen SIP timers (A, B, C, E, F, K, L, M...)
and cancels most of them long before they fire. ``reactor.callLater`` per
timer costs a DelayedCall and a heap operation in the reactor each time; a
heap of our own with lazy cancellation, served by a single DelayedCall for
the earliest deadline, is several times cheaper. SIP timers are at least
tens of milliseconds, so deadlines are coalesced to ``resolution``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


def _noop(*args: Any) -> None:
    pass


class Timer:
    """One armed timer: what runs at ``deadline``, unless cancelled.  It has
    the two methods of a DelayedCall the transaction code uses, ``cancel()``
    and ``active()``."""

    __slots__ = ("deadline", "func", "args", "cancelled")

    def __init__(self, deadline: float, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.deadline = deadline
        self.func = func
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        # The heap keeps this shell until its deadline (B, C: up to minutes);
        # let go of the transaction it would have called now.
        self.cancelled = True
        self.func = _noop
        self.args = ()

    def active(self) -> bool:
        return not self.cancelled


class TimerHeap:
    """The proxy core's timers (api.CoreAPI.call_later and every transaction
    timer): a heap of Timers ordered by deadline, served by one reactor
    DelayedCall for the earliest; cancelled ones stay as shells until popped
    or compacted."""

    def __init__(self, clock: Any, resolution: float = 0.01) -> None:
        self.clock = clock
        self.resolution = resolution
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._call: Any = None
        self._call_at = 0.0

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any) -> Timer:
        deadline = self.clock.seconds() + delay
        timer = Timer(deadline, func, args)
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, timer))
        if len(heap) > 4096 and self._seq % 4096 == 0:
            self._compact()
        if self._call is None:
            self._schedule(deadline)
        elif deadline + self.resolution < self._call_at:
            self._call.cancel()
            self._schedule(deadline)
        return timer

    def _schedule(self, deadline: float) -> None:
        self._call_at = deadline
        self._call = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._run)

    def _run(self) -> None:
        self._call = None
        heap = self._heap
        # Everything due within the resolution runs now, in deadline order.
        limit = self.clock.seconds() + self.resolution
        while heap and heap[0][0] <= limit:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            func, args = timer.func, timer.args
            timer.cancel()
            func(*args)
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if heap:
            # A timer armed by a callback above may have scheduled the call
            # for itself, later than an older entry still waiting.
            if self._call is None:
                self._schedule(heap[0][0])
            elif heap[0][0] + self.resolution < self._call_at:
                self._call.cancel()
                self._schedule(heap[0][0])

    def _compact(self) -> None:
        """Drop cancelled shells once they outnumber the live timers: most
        timers are cancelled long before their deadline (B, F, C)."""
        live = [entry for entry in self._heap if not entry[2].cancelled]
        if len(live) * 2 < len(self._heap):
            heapq.heapify(live)
            self._heap = live

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._heap.clear()

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)
