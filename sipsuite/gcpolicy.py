"""Garbage-collector policy for a long-running SIP server.

CPython frees almost everything by reference counting; the cyclic
collector is for reference cycles. Its full collections scan every live
object, and a busy proxy keeps tens of thousands of calls alive for the
32 s that RFC 6026 holds finished transactions: a full pass then stops
the process for hundreds of milliseconds, long enough for retransmissions
and for datagrams to overflow the socket buffers.

The proxy's call path leaves no cycles behind (tests check it), so:
- every ``freeze_interval`` seconds the young generations are collected
  (cheap; it catches cycles made since the last pass) and the survivors
  are frozen, which takes them out of all later scans without keeping
  them alive: frozen objects are still freed by reference counting;
- every ``full_interval`` seconds everything is unfrozen and collected
  once, so a cycle made by user routing code that was frozen while alive
  is still reclaimed. That one pause is the price, paid rarely.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.internet import task

from sipsuite.log import get_logger

log = get_logger("sipsuite.gcpolicy")


class GCPolicy:
    def __init__(self, clock: Any, freeze_interval: float = 1.0, full_interval: float = 600.0) -> None:
        self.freeze_loop = task.LoopingCall(self.freeze)
        self.freeze_loop.clock = clock
        self.full_loop = task.LoopingCall(self.full)
        self.full_loop.clock = clock
        self.freeze_interval = freeze_interval
        self.full_interval = full_interval

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        self.freeze_loop.start(self.freeze_interval, now=False)
        self.full_loop.start(self.full_interval, now=False)

    def stop(self) -> None:
        for loop in (self.freeze_loop, self.full_loop):
            if loop.running:
                loop.stop()

    def freeze(self) -> None:
        gc.collect(1)
        gc.freeze()

    def full(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        log.info("full garbage collection: {n} unreachable objects, {ms:.0f} ms",
                 n=found, ms=(time.perf_counter() - started) * 1000)
