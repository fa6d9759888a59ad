"""The dispatcher's pure parts: Kamailio's dispatcher.list format and the
selection algorithms (which destination of a set a request goes to first,
and in which order the others are tried). No Twisted, no clock.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from sipsuite.config.values import DispatcherEntry, parse_dispatcher_entry


class DsState(StrEnum):
    """A destination's state, as ``dispatcher.list`` shows it (a StrEnum: it
    still equals, and serialises as, its word)."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    DISABLED = "disabled"

__all__ = [
    "ALGORITHMS",
    "ListError",
    "algorithm_number",
    "candidates",
    "parse_list",
    "read_list",
]

# Kamailio's algorithm numbers, and the names accepted for them.
ALGORITHMS: dict[int, tuple[str, ...]] = {
    0: ("hash-callid", "callid"),
    1: ("hash-from", "from"),
    2: ("hash-to", "to"),
    3: ("hash-ruri", "ruri"),
    4: ("round-robin", "rr"),
    8: ("priority",),
    9: ("weight",),
    10: ("least-calls", "load", "call-load"),
}
_BY_NAME = {name: number for number, names in ALGORITHMS.items() for name in names}

# Flags of the list file's third column (Kamailio's DS_*_DST bits).
FLAG_INACTIVE = 1
FLAG_PROBING = 2
FLAG_DISABLED = 4


class ListError(ValueError):
    """A list file that cannot be used; ``str()`` names the file and line."""


def algorithm_number(alg: int | str) -> int:
    """4, "4", "round-robin", "rr" -> 4; ValueError on anything else."""
    if isinstance(alg, bool):
        raise ValueError(f"unknown dispatcher algorithm {alg!r}")
    if isinstance(alg, int):
        number = alg
    elif isinstance(alg, str) and alg.strip().isdigit():
        number = int(alg)
    elif isinstance(alg, str) and alg.strip().lower() in _BY_NAME:
        return _BY_NAME[alg.strip().lower()]
    else:
        raise ValueError(f"unknown dispatcher algorithm {alg!r}; expected one of "
                         + ", ".join(f"{n} ({names[0]})" for n, names in ALGORITHMS.items()))
    if number not in ALGORITHMS:
        raise ValueError(f"unknown dispatcher algorithm {number}; expected one of "
                         + ", ".join(str(n) for n in ALGORITHMS))
    return number


def parse_list(text: str, name: str = "<list>") -> dict[int, list[DispatcherEntry]]:
    """``SETID URI [FLAGS [PRIORITY [ATTRS]]]`` lines -> entries by set id,
    in file order. Raises ListError naming ``name`` and the line."""
    sets: dict[int, list[DispatcherEntry]] = {}
    seen: set[tuple[int, str]] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        setid_text, _, rest = line.replace("\t", " ").partition(" ")
        if not setid_text.isdigit() or len(setid_text) > 9:
            raise ListError(f"{name}:{number}: expected 'SETID URI [FLAGS [PRIORITY [ATTRS]]]'"
                            f" with SETID a whole number, got {raw.strip()!r}")
        try:
            entry = parse_dispatcher_entry(rest)
        except ValueError as e:
            raise ListError(f"{name}:{number}: {e}") from None
        setid = int(setid_text)
        if (setid, entry.uri) in seen:
            raise ListError(f"{name}:{number}: {entry.uri} is already in set {setid}")
        seen.add((setid, entry.uri))
        sets.setdefault(setid, []).append(entry)
    return sets


def read_list(path: str) -> dict[int, list[DispatcherEntry]]:
    """Read and parse a list file; ListError on an unreadable or bad file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ListError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ListError(f"{path}: not UTF-8 text: {e}") from None
    return parse_list(text, path)


# ---------------------------------------------------------------------------
# Selection.


class Candidate(Protocol):
    """What the algorithms need of a destination."""

    weight: int
    calls: int
    maxload: int

    @property
    def usable(self) -> bool: ...


def stable_hash(text: str) -> int:
    """The same number for the same text in every process and release
    (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8", "surrogateescape"))


def _rotate(dests: Sequence[Candidate], start: int) -> list[Candidate]:
    n = len(dests)
    return [dests[(start + i) % n] for i in range(n)]


def candidates(alg: int, dests: Sequence[Candidate], key: str, counter: int) -> list[Candidate]:
    """The set's usable destinations in the order to try them.

    ``dests`` is the whole set in its configured order (priority first);
    ``key`` the text hashed by algorithms 0-3 (and 9); ``counter`` the set's
    round-robin counter. Hashing picks over the whole set and then skips
    unusable ones, so a destination going down moves only its own share of
    calls (Kamailio does the same).
    """
    if not dests:
        return []
    if alg in (0, 1, 2, 3):
        ordered = _rotate(dests, stable_hash(key) % len(dests))
    elif alg == 4:
        ordered = _rotate(dests, counter % len(dests))
    elif alg == 9:
        ordered = _by_weight(dests, stable_hash(key))
    elif alg == 10:
        usable = [d for d in dests if d.usable]
        open_ = [d for d in usable if not d.maxload or d.calls < d.maxload]
        # Fewest calls first; the configured order breaks ties (sorted is stable).
        return sorted(open_, key=lambda d: d.calls)
    else:  # 8: priority order, as configured
        ordered = list(dests)
    return [d for d in ordered if d.usable]


def _by_weight(dests: Sequence[Candidate], h: int) -> list[Candidate]:
    """The first choice drawn by weight (the hash picks a slot of the
    weights laid end to end), the rest in configured order after it."""
    usable = [d for d in dests if d.usable]
    total = sum(d.weight for d in usable)
    if total <= 0:
        return _rotate(dests, h % len(dests))
    slot = h % total
    first = usable[-1]
    for d in usable:
        if slot < d.weight:
            first = d
            break
        slot -= d.weight
    start = list(dests).index(first)
    return _rotate(dests, start)
