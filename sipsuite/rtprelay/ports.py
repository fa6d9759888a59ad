"""Relay port pairs: an even RTP port p and its RTCP port p + 1.

RFC 3550 section 11 pairs RTP on an even port with RTCP on the next odd one,
and SDP without ``a=rtcp`` (RFC 3605) implies that pairing, so the allocator
hands out pairs, never single ports.

Ports come out in random order, as RTPProxy's do: sequential ports let an
attacker who sees one call's port guess the next call's, which is half of an
RTP Bleed attack.  The free pairs live in a shuffled list (pop from the end)
and the pairs in use in a set, so allocate and release are O(1) whatever the
range.
"""

from __future__ import annotations

import random

__all__ = ["PortAllocator", "PortsExhausted"]


class PortsExhausted(Exception):
    """Every pair in the range is in use: no new session can be relayed."""


class PortAllocator:
    """RTP/RTCP port pairs within [low, high], handed out in random order."""

    __slots__ = ("low", "high", "capacity", "_free", "_used", "_rng")

    def __init__(self, low: int, high: int, rng: random.Random | None = None) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port range {low}-{high} is not within 1-65535")
        first = low + (low & 1)
        # p + 1 must be <= high too, hence the exclusive stop at high.
        pairs = list(range(first, high, 2))
        if not pairs:
            raise ValueError(f"port range {low}-{high} holds no even/odd pair")
        # A Random seeded from os.urandom (what Random() does) per allocator, not
        # the module-level one that tests and other code may seed.
        self._rng = rng if rng is not None else random.Random()
        self._rng.shuffle(pairs)
        self.low = low
        self.high = high
        self.capacity = len(pairs)
        self._free = pairs
        self._used: set[int] = set()

    @property
    def free_count(self) -> int:
        """Pairs that allocate() can still hand out."""
        return len(self._free)

    @property
    def used_count(self) -> int:
        return len(self._used)

    def __contains__(self, port: object) -> bool:
        """Whether ``port`` is the RTP port of a pair in use."""
        return port in self._used

    def allocate(self) -> int:
        """The RTP port of a free pair (its RTCP port is the result + 1)."""
        if not self._free:
            raise PortsExhausted(f"all {self.capacity} port pairs in {self.low}-{self.high} in use")
        port = self._free.pop()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Give back a pair that allocate() returned."""
        if port not in self._used:
            # A double release would put the pair in the free list twice and
            # later hand it to two sessions at once: refuse it loudly.
            raise ValueError(f"port {port} is not an allocated RTP port")
        self._used.remove(port)
        free = self._free
        free.append(port)
        # Swap it to a random place: appended at the end, it would be the very
        # next one handed out, which is both guessable and the port most likely
        # to still receive the old call's late packets.
        j = self._rng.randrange(len(free))
        free[-1], free[j] = free[j], free[-1]
