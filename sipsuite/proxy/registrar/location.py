"""Location service and subscriber data: the two store interfaces.

``LocationStore`` holds the bindings of each address-of-record (AOR): what
the registrar writes and what a request for a local user is forked to.
``SubscriberStore`` holds the users allowed to authenticate, with their HA1
digests (never a password). Each has an in-memory implementation here (the
default: ``twistd -n sipsuite`` needs nothing else) and a Redis one in
``sipsuite.proxy.registrar.redis.location``; ``tests/proxy/registrar/test_stores.py`` runs one
behavioural suite against both.

AORs are keyed by the unescaped user part alone, one namespace for all local
domains, like Kamailio's default ``use_domain=0``.

Every store method is a coroutine that awaits only Deferreds, so routing
hooks can ``await`` them; the in-memory ones never wait at all. A store whose
backend cannot answer in time raises :class:`StoreUnavailable`.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# The data types live apart (bindings.py) so the script and the services'
# interfaces use them without the store code; re-exported here for the stores
# and for user code that imports them from this module.
from sipsuite.proxy.registrar.bindings import Binding, StoreUnavailable, current
from sipsuite.sip.uri import URI

__all__ = [
    "Binding", "LocationStore", "MemoryLocationStore", "MemorySubscriberStore",
    "StaticLocationStore", "StoreUnavailable", "Subscriber", "SubscriberStore", "current",
]

T = TypeVar("T")


class LocationStore(Protocol):
    """The location service (Kamailio's usrloc table): the registered
    bindings of each AOR.  MemoryLocationStore here, RedisLocationStore
    (redis/location.py) shared by the nodes; the location module
    (usrloc.py) puts the static bindings in front of it."""

    async def lookup(self, aor: str) -> list[Binding]:
        """Every current binding of ``aor``, highest q first; never an expired one."""
        ...

    async def update(self, aor: str, change: Callable[[list[Binding], float], T]) -> T:
        """Apply ``change`` to the AOR's bindings atomically.

        ``change(bindings, now)`` gets the current bindings (expired ones
        already removed) as a list it may edit in place, and returns a
        result; the edited list is stored and the result returned. If it
        raises, nothing is stored and the exception propagates. It may be
        called more than once (a Redis store retries when another node
        changed the AOR meanwhile), so it must not have other effects.
        """
        ...

    async def remove(self, aor: str, contact: str | None = None) -> int:
        """Remove one contact (compared as URIs, RFC 3261 19.1.4) or, with
        None, every binding of the AOR; returns how many went."""
        ...

    async def aors(self) -> list[str]:
        """Every AOR with at least one current binding, sorted."""
        ...

    async def nat_aors(self) -> list[str]:
        """The AORs holding a current binding registered from behind NAT
        (``Binding.nat``), sorted: what NAT keep-alives walk after a restart.
        May also list an AOR whose NAT'ed binding expired meanwhile."""
        ...


# Stale expiry entries tolerated beyond one per AOR before a rebuild.
EXPIRY_SLACK = 1024


class MemoryLocationStore:
    """Bindings in this process's memory; lost when it stops."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._aors: dict[str, list[Binding]] = {}
        # (expiry, aor): lets purge() find expired AORs without a full scan.
        # Every REGISTER pushes one and the stale ones (a refreshed AOR's
        # earlier expiries) stay until popped, so a phone refreshing every
        # minute for an hour's expiry would leave 60; _store rebuilds the heap
        # (one entry per AOR) when it outgrows the AORs, which bounds it.
        self._expiry: list[tuple[float, str]] = []

    def _purge(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, aor = heapq.heappop(heap)
            bindings = self._aors.get(aor)
            if bindings is not None:
                # _store re-arms the heap for the next expiry among the live
                # ones, else the AOR would outlive its last binding in aors().
                self._store(aor, current(bindings, now))

    def _store(self, aor: str, bindings: list[Binding]) -> None:
        if not bindings:
            self._aors.pop(aor, None)
            return
        self._aors[aor] = bindings
        ends = [b.expires for b in bindings if b.expires is not None]
        if ends:
            heapq.heappush(self._expiry, (min(ends), aor))
            if len(self._expiry) > 2 * len(self._aors) + EXPIRY_SLACK:
                self._rebuild_expiry()

    def _rebuild_expiry(self) -> None:
        """One entry per AOR, its earliest expiry.  In place: _purge holds the
        list while it calls _store.  O(AORs) after at least AORs + slack
        pushes: amortised O(1) per REGISTER."""
        heap = self._expiry
        heap[:] = [(min(ends), aor) for aor, bindings in self._aors.items()
                   if (ends := [b.expires for b in bindings if b.expires is not None])]
        heapq.heapify(heap)

    async def lookup(self, aor: str) -> list[Binding]:
        now = self.clock()
        self._purge(now)
        return current(self._aors.get(aor, []), now)

    async def update(self, aor: str, change: Callable[[list[Binding], float], T]) -> T:
        now = self.clock()
        self._purge(now)
        bindings = current(self._aors.get(aor, []), now)
        # Copies, so an exception half-way through leaves the stored ones as they were.
        work = [Binding.from_dict(b.to_dict()) for b in bindings]
        result = change(work, now)
        self._store(aor, current(work, now))
        return result

    async def remove(self, aor: str, contact: str | None = None) -> int:
        now = self.clock()
        self._purge(now)
        bindings = current(self._aors.get(aor, []), now)
        if contact is None:
            self._store(aor, [])
            return len(bindings)
        target = URI.parse(contact)
        keep = [b for b in bindings if not b.uri.equivalent(target)]
        self._store(aor, keep)
        return len(bindings) - len(keep)

    async def aors(self) -> list[str]:
        self._purge(self.clock())
        return sorted(self._aors)

    async def nat_aors(self) -> list[str]:
        now = self.clock()
        self._purge(now)
        return sorted(aor for aor, held in self._aors.items()
                      if any(b.nat for b in current(held, now)))

    async def counts(self) -> tuple[int, int | None]:
        """(AORs with a current binding, current bindings)."""
        now = self.clock()
        self._purge(now)
        aors = bindings = 0
        for held in self._aors.values():
            n = sum(1 for b in held if b.expires is None or b.expires > now)
            if n:
                aors += 1
                bindings += n
        return aors, bindings


@dataclass(slots=True)
class Subscriber:
    """A user who may authenticate: HA1 per digest algorithm, for ``realm``."""

    user: str
    realm: str
    ha1: dict[str, str]  # algorithm ("MD5", "SHA-256") -> hex H(user:realm:password)

    @classmethod
    def from_password(cls, user: str, realm: str, password: str) -> Subscriber:
        from sipsuite.sip.digest import ALGORITHMS, compute_ha1

        return cls(user, realm, {alg: compute_ha1(alg, user, realm, password) for alg in ALGORITHMS})

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "realm": self.realm, "ha1": dict(self.ha1)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subscriber:
        return cls(str(data["user"]), str(data["realm"]), {str(k): str(v) for k, v in data["ha1"].items()})


class SubscriberStore(Protocol):
    """The users who may authenticate (Kamailio's subscriber table), each
    with its HA1s.  MemorySubscriberStore here, RedisSubscriberStore
    (redis/subscribers.py) shared by the nodes; the subscribers module
    provides it, the ``user.*`` RPCs manage it."""

    async def get(self, user: str) -> Subscriber | None: ...

    async def add(self, sub: Subscriber) -> bool:
        """Store a new subscriber; False (and nothing changed) if the user exists."""
        ...

    async def replace(self, sub: Subscriber) -> bool:
        """Replace an existing subscriber's data; False if there is no such user."""
        ...

    async def remove(self, user: str) -> bool: ...

    async def list(self) -> list[Subscriber]:
        """Every subscriber, sorted by user."""
        ...


class MemorySubscriberStore:
    """Subscribers in this process's memory (the default store); lost when
    it stops, so the ``user.*`` RPCs or a test fill it."""

    def __init__(self) -> None:
        self._subs: dict[str, Subscriber] = {}

    async def get(self, user: str) -> Subscriber | None:
        return self._subs.get(user)

    async def add(self, sub: Subscriber) -> bool:
        if sub.user in self._subs:
            return False
        self._subs[sub.user] = sub
        return True

    async def replace(self, sub: Subscriber) -> bool:
        if sub.user not in self._subs:
            return False
        self._subs[sub.user] = sub
        return True

    async def remove(self, user: str) -> bool:
        return self._subs.pop(user, None) is not None

    async def list(self) -> list[Subscriber]:
        return [self._subs[u] for u in sorted(self._subs)]


class StaticLocationStore(MemoryLocationStore):
    """Permanent bindings from ``[location.static]`` (Kamailio's ``kamctl ul
    add`` entries without expiry); the registrar may add more beside them."""

    def __init__(self, static: dict[str, list[str]], clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        for user, contacts in static.items():
            self._aors[user] = [Binding(c) for c in contacts]
