"""TimerHeap (proxy/core/timers.py): one DelayedCall, lazy cancellation, and
compaction once cancelled shells are more than a quarter of the heap (issue 19)."""

from __future__ import annotations

from twisted.internet import task

from sipsuite.proxy.core.timers import COMPACT_MIN, TimerHeap


def test_fires_in_deadline_order_and_skips_cancelled() -> None:
    clock = task.Clock()
    heap = TimerHeap(clock)
    fired: list[int] = []
    timers = [heap.call_later(0.1 * (5 - i), fired.append, i) for i in range(5)]
    timers[2].cancel()
    assert not timers[2].active() and timers[0].active()
    assert len(heap) == 4
    clock.advance(1.0)
    assert fired == [4, 3, 1, 0]
    assert len(heap) == 0 and heap.entries() == 0
    # Fired timers are inactive; cancelling one again changes nothing.
    assert not timers[0].active()
    timers[0].cancel()
    timers[2].cancel()
    assert len(heap) == 0


def test_one_delayed_call_for_the_earliest() -> None:
    clock = task.Clock()
    heap = TimerHeap(clock)
    fired: list[str] = []
    heap.call_later(5.0, fired.append, "late")
    heap.call_later(1.0, fired.append, "early")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1.0)
    assert fired == ["early"] and len(clock.getDelayedCalls()) == 1
    clock.advance(4.0)
    assert fired == ["early", "late"] and not clock.getDelayedCalls()


def test_cancelling_many_timers_shrinks_the_heap() -> None:
    clock = task.Clock()
    heap = TimerHeap(clock)
    fired: list[int] = []
    n = COMPACT_MIN * 8
    # Like transaction timers B/F: armed for 32 s, cancelled within a second.
    timers = [heap.call_later(32.0 + i * 0.001, fired.append, i) for i in range(n)]
    keep = set(range(0, n, 10))
    for i, t in enumerate(timers):
        if i not in keep:
            t.cancel()
    assert len(heap) == len(keep)
    # Shells stay under a third of the live timers, or under the minimum.
    assert heap.entries() - len(heap) <= max(len(keep) // 3 + 1, COMPACT_MIN)
    assert heap.entries() < n // 2
    # A cancelled timer lets go of what it would have called at once.
    assert timers[1].args == ()
    clock.advance(40.0)
    assert fired == sorted(keep)
    assert heap.entries() == 0 and not clock.getDelayedCalls()


def test_few_cancellations_do_not_compact() -> None:
    clock = task.Clock()
    heap = TimerHeap(clock)
    timers = [heap.call_later(10.0, lambda: None) for _ in range(COMPACT_MIN)]
    for t in timers:
        t.cancel()
    # Lazy below the minimum: the shells wait for their deadline.
    assert heap.entries() == COMPACT_MIN and len(heap) == 0
    clock.advance(10.0)
    assert heap.entries() == 0


def test_compaction_inside_a_callback_keeps_order() -> None:
    """A callback that cancels enough timers to compact, while _run is
    popping the same list, neither loses nor reorders the rest."""
    clock = task.Clock()
    heap = TimerHeap(clock)
    fired: list[int] = []
    later = [heap.call_later(2.0 + i * 0.001, fired.append, i) for i in range(COMPACT_MIN * 4)]

    def cancel_most() -> None:
        fired.append(-1)
        for t in later[: COMPACT_MIN * 3]:
            t.cancel()

    heap.call_later(1.0, cancel_most)
    heap.call_later(1.0, fired.append, -2)  # due in the same run, after the compaction
    clock.advance(1.0)
    assert fired == [-1, -2]
    assert heap.entries() < COMPACT_MIN * 2
    clock.advance(5.0)
    assert fired[2:] == list(range(COMPACT_MIN * 3, COMPACT_MIN * 4))
    assert not clock.getDelayedCalls()


def test_stop_detaches_timers() -> None:
    clock = task.Clock()
    heap = TimerHeap(clock)
    timers = [heap.call_later(1.0, lambda: None) for _ in range(10)]
    heap.stop()
    for t in timers:
        t.cancel()
    assert heap.entries() == 0 and len(heap) == 0 and not clock.getDelayedCalls()
