"""PortAllocator: even/odd pairs, random order, exhaustion, release and reuse."""

from __future__ import annotations

import random

import pytest

from sipsuite.rtprelay.ports import PortAllocator, PortsExhausted


def test_pairs_are_even_rtp_with_rtcp_inside_the_range() -> None:
    ports = PortAllocator(30001, 30006, random.Random(1))
    # 30001 rounds up to 30002; 30006 cannot start a pair (30007 > high).
    assert ports.capacity == 2
    got = sorted(ports.allocate() for _ in range(2))
    assert got == [30002, 30004]
    for p in got:
        assert p % 2 == 0 and 30001 <= p and p + 1 <= 30006


def test_every_pair_of_a_range_comes_out_once() -> None:
    ports = PortAllocator(20000, 20999, random.Random(2))
    got = [ports.allocate() for _ in range(ports.capacity)]
    assert sorted(got) == list(range(20000, 20999, 2))
    assert ports.free_count == 0
    assert ports.used_count == 500


def test_order_is_random_not_sequential() -> None:
    a = PortAllocator(20000, 21999, random.Random(3))
    b = PortAllocator(20000, 21999, random.Random(4))
    first_a = [a.allocate() for _ in range(50)]
    first_b = [b.allocate() for _ in range(50)]
    assert first_a != sorted(first_a)
    assert first_a != sorted(first_a, reverse=True)
    assert first_a != first_b
    # Consecutive allocations are not neighbours: guessing the next call's
    # port from this one's must not work.
    steps = {abs(y - x) for x, y in zip(first_a, first_a[1:], strict=False)}
    assert steps != {2}


def test_default_rng_is_seeded_per_allocator() -> None:
    random.seed(0)
    a = [PortAllocator(20000, 29999).allocate() for _ in range(5)]
    random.seed(0)
    b = [PortAllocator(20000, 29999).allocate() for _ in range(5)]
    # Seeding the module-level generator must not make relay ports predictable.
    assert a != b


def test_exhaustion_raises() -> None:
    ports = PortAllocator(40000, 40003, random.Random(5))
    ports.allocate()
    ports.allocate()
    with pytest.raises(PortsExhausted):
        ports.allocate()
    assert ports.free_count == 0


def test_release_makes_the_pair_reusable() -> None:
    ports = PortAllocator(40000, 40003, random.Random(6))
    p = ports.allocate()
    q = ports.allocate()
    assert p in ports and q in ports
    ports.release(p)
    assert p not in ports
    assert ports.free_count == 1
    assert ports.allocate() == p
    with pytest.raises(PortsExhausted):
        ports.allocate()


def test_release_twice_or_unknown_is_refused() -> None:
    ports = PortAllocator(40000, 40099, random.Random(7))
    p = ports.allocate()
    ports.release(p)
    with pytest.raises(ValueError):
        ports.release(p)
    with pytest.raises(ValueError):
        ports.release(p + 1)  # an RTCP port is not a pair
    with pytest.raises(ValueError):
        ports.release(12345)
    assert ports.free_count == ports.capacity


def test_released_port_is_not_simply_the_next_one() -> None:
    ports = PortAllocator(20000, 29999, random.Random(8))
    held = [ports.allocate() for _ in range(10)]
    again = 0
    for p in held:
        ports.release(p)
        if ports.allocate() == p:
            again += 1
    # LIFO would give 10/10; a random place in a 5000-long list almost never.
    assert again <= 1


def test_never_hands_out_a_pair_in_use() -> None:
    ports = PortAllocator(50000, 50199, random.Random(9))
    rng = random.Random(10)
    used: set[int] = set()
    for _ in range(2000):
        if used and (rng.random() < 0.5 or ports.free_count == 0):
            p = rng.choice(sorted(used))
            used.remove(p)
            ports.release(p)
        else:
            p = ports.allocate()
            assert p not in used
            used.add(p)
        assert ports.free_count + len(used) == ports.capacity


@pytest.mark.parametrize(
    "low,high", [(0, 100), (100, 70000), (200, 100), (1000, 1000), (1001, 1002)]
)
def test_bad_ranges_are_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        PortAllocator(low, high)
