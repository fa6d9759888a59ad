"""Transaction timers on one reactor DelayedCall.

A call through the proxy arms a dozen SIP timers (A, B, C, E, F, K, L, M...)
and cancels most of them long before they fire. ``reactor.callLater`` per
timer costs a DelayedCall and a heap operation in the reactor each time; a
heap of our own with lazy cancellation, served by a single DelayedCall for
the earliest deadline, is several times cheaper. SIP timers are at least
tens of milliseconds, so deadlines are coalesced to ``resolution``.

Most timers are cancelled long before their deadline (B, F, C: up to
minutes; C: three), so the heap counts its cancelled entries and rebuilds
itself without them once they are more than a quarter of it (and more than
``COMPACT_MIN``): each rebuild is O(n) after at least n/4 cancellations, so
amortised O(1) per cancel, and the shells stay under a third of the live
timers (a half, the first threshold tried, let them grow to as many as the
live ones: ~200 bytes each with its heap entry, some 3 MB by estimate at
300 calls/s).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

# Below this many cancelled entries a rebuild is not worth its pass.
COMPACT_MIN = 256


def _noop(*args: Any) -> None:
    pass


class Timer:
    """One armed timer: what runs at ``deadline``, unless cancelled.  It has
    the two methods of a DelayedCall the transaction code uses, ``cancel()``
    and ``active()``."""

    __slots__ = ("deadline", "func", "args", "cancelled", "owner")

    def __init__(self, deadline: float, func: Callable[..., Any], args: tuple[Any, ...],
                 owner: TimerHeap | None = None) -> None:
        self.deadline = deadline
        self.func = func
        self.args = args
        self.cancelled = False
        # The heap this timer still sits in, told of the cancellation so it
        # can compact; None once fired, popped or the heap stopped.
        self.owner = owner

    def cancel(self) -> None:
        if self.cancelled:
            return
        # The heap keeps this shell until its deadline or a compaction; let
        # go of the transaction it would have called now.
        self.cancelled = True
        self.func = _noop
        self.args = ()
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner._cancelled_one()

    def _fired(self) -> None:
        # Popped to run: it is out of the heap, so not counted as a shell.
        self.owner = None
        self.cancelled = True
        self.func = _noop
        self.args = ()

    def active(self) -> bool:
        return not self.cancelled


class TimerHeap:
    """The proxy core's timers (api.CoreAPI.call_later and every transaction
    timer): a heap of Timers ordered by deadline, served by one reactor
    DelayedCall for the earliest; cancelled ones stay as shells until popped
    or compacted (when they are more than a quarter of the heap)."""

    def __init__(self, clock: Any, resolution: float = 0.01) -> None:
        self.clock = clock
        self.resolution = resolution
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._call: Any = None
        self._call_at = 0.0
        self._dead = 0  # cancelled entries still in _heap

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any) -> Timer:
        deadline = self.clock.seconds() + delay
        timer = Timer(deadline, func, args, self)
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, timer))
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
                self._dead -= 1
                continue
            func, args = timer.func, timer.args
            timer._fired()
            func(*args)
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._dead -= 1
        if heap:
            # A timer armed by a callback above may have scheduled the call
            # for itself, later than an older entry still waiting.
            if self._call is None:
                self._schedule(heap[0][0])
            elif heap[0][0] + self.resolution < self._call_at:
                self._call.cancel()
                self._schedule(heap[0][0])

    def _cancelled_one(self) -> None:
        self._dead += 1
        if self._dead > COMPACT_MIN and self._dead * 4 > len(self._heap):
            self._compact()

    def _compact(self) -> None:
        """Drop the cancelled shells.  In place: _run holds the list while
        its callbacks may cancel timers.  The earliest deadline can only move
        later, so the one DelayedCall stays valid (it finds nothing due, or
        reschedules, in _run)."""
        heap = self._heap
        heap[:] = [entry for entry in heap if not entry[2].cancelled]
        heapq.heapify(heap)
        self._dead = 0

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for _, _, timer in self._heap:
            timer.owner = None
        self._heap.clear()
        self._dead = 0

    def __len__(self) -> int:
        """Live (armed, not cancelled) timers."""
        return len(self._heap) - self._dead

    def entries(self) -> int:
        """Entries held, cancelled shells included (what the memory costs)."""
        return len(self._heap)
