"""Events for user services (``sipsuite.api``): raised on the SIP path,
delivered off it.

The SIP path calls :meth:`EventBus.emit` (or checks :meth:`EventBus.wants`
first when building the event's fields costs something).  With no
subscriber for a name, that is one dict lookup and nothing is built.  With
subscribers, the event goes into each one's queue and the SIP path goes on:
delivery happens from the reactor in a later turn, a batch at a time, so a
burst of events never makes one long turn.

A subscriber's callback may return a Deferred or a coroutine: its next
event waits until that finishes (one event in flight per subscriber, in
order).  A subscriber made with ``blocking=True`` has its callback run in a
thread of its own, for code that blocks (a database driver, ``time.sleep``).
Either way, a subscriber slower than the events it asked for does not slow
the proxy: its queue is bounded (``backlog``) and what does not fit is
dropped and counted (``dropped``, in ``stats()`` and the ``stats`` RPC).

Only Twisted and the standard library: the proxy's modules and the relay
both raise events here.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sipsuite.log import get_logger

__all__ = ["EVENTS", "Event", "EventBus", "Subscription"]

log = get_logger("sipsuite.events")

#: Every event name, with the fields it carries (docs/embedding.md has the table).
EVENTS: Mapping[str, str] = {
    "request.received": "method, call_id, ruri, from, to, source",
    "request.answered": "method, call_id, ruri, from, to, source, code, reason",
    "call.started": "call_id, from, to, ruri, source",
    "call.answered": "call_id, from, to, ruri, source, code, setup_time",
    "call.ended": "call_id, from, to, ruri, source, answered, cause, code, reason, duration,"
                  " setup_time",
    "registration.added": "aor, contact, expires, received, user_agent",
    "registration.refreshed": "aor, contact, expires, received, user_agent",
    "registration.removed": "aor, contact",
    "registration.expired": "aor, contact",
    "relay.session.created": "call_id, from_tag (, relay: a relay in another process)",
    "relay.session.latched": "call_id, from_tag, leg, address (the in-process relay only)",
    "relay.session.ended": "call_id, from_tag, reason (, relay)",
    "dispatcher.up": "setid, uri",
    "dispatcher.down": "setid, uri",
    "config.changed": "changed (the dotted keys)",
}

#: Events one subscriber gets per reactor turn before the next turn.
BATCH = 64
DEFAULT_BACKLOG = 1000


class Event:
    """One event: ``name``, ``time`` (epoch seconds) and its fields in
    ``data`` (plain values: str, int, float, bool, None, lists of those)."""

    __slots__ = ("data", "name", "time")

    def __init__(self, name: str, time: float, data: dict[str, Any]) -> None:
        self.name = name
        self.time = time
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict[str, Any]:
        """``{"event": name, "time": t, **fields}``: JSON-ready."""
        return {"event": self.name, "time": self.time, **self.data}

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.data!r})"


class Subscription:
    """One subscriber: its queue and counters.  ``cancel()`` ends it."""

    def __init__(self, bus: EventBus, names: frozenset[str], callback: Callable[[Event], Any],
                 backlog: int, blocking: bool, label: str) -> None:
        self.bus = bus
        self.names = names
        self.callback = callback
        self.backlog = backlog
        self.blocking = blocking
        self.label = label
        self.queue: deque[Event] = deque()
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.busy = False  # an event in flight (a Deferred, a coroutine or the thread)
        self.scheduled = False
        self.active = True
        self._pool: ThreadPool | None = None

    def cancel(self) -> None:
        self.bus.unsubscribe(self)

    def stats(self) -> dict[str, Any]:
        return {"events": sorted(self.names), "queued": len(self.queue), "delivered": self.delivered,
                "dropped": self.dropped, "failed": self.failed, "backlog": self.backlog,
                "blocking": self.blocking}

    # -- delivery ----------------------------------------------------------------
    def push(self, event: Event) -> None:
        if len(self.queue) >= self.backlog:
            self.dropped += 1
            return
        self.queue.append(event)
        if not self.busy and not self.scheduled:
            self.scheduled = True
            self.bus.reactor.callLater(0, self.pump)

    def pump(self) -> None:
        self.scheduled = False
        n = 0
        queue = self.queue
        while queue and self.active and not self.busy:
            if n >= BATCH:
                self.scheduled = True
                self.bus.reactor.callLater(0, self.pump)
                return
            n += 1
            event = queue.popleft()
            if self.blocking:
                self._in_thread(event)
                return
            try:
                result = self.callback(event)
            except Exception:  # noqa: BLE001 - a subscriber's bug is its own
                self._failed(Failure())
                continue
            if inspect.iscoroutine(result):
                result = defer.ensureDeferred(result)
            if isinstance(result, defer.Deferred):
                self.busy = True
                result.addCallbacks(self._done, self._failed_async)
                if self.busy:
                    return  # resumed by _done / _failed_async
                continue  # it had fired already: counted, go on
            self.delivered += 1

    def _in_thread(self, event: Event) -> None:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name=f"events:{self.label}")
            self._pool.start()
        self.busy = True
        d = threads.deferToThreadPool(self.bus.reactor, self._pool, self.callback, event)
        d.addCallbacks(self._done, self._failed_async)

    def _done(self, _: Any) -> None:
        self.delivered += 1
        self._resume()

    def _failed_async(self, failure: Failure) -> None:
        self._failed(failure)
        self._resume()

    def _failed(self, failure: Failure) -> None:
        self.failed += 1
        log.failure("event subscriber {s} failed", failure, s=self.label)

    def _resume(self) -> None:
        self.busy = False
        if self.queue and self.active and not self.scheduled:
            self.scheduled = True
            self.bus.reactor.callLater(0, self.pump)

    def close(self) -> None:
        self.active = False
        self.queue.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()


class EventBus:
    """Subscribers by event name; see the module's text."""

    def __init__(self, reactor: Any, clock: Callable[[], float] | None = None) -> None:
        self.reactor = reactor
        self.clock = clock or reactor.seconds
        # name -> the subscriptions that want it; a name nobody wants is absent.
        self._by_name: dict[str, tuple[Subscription, ...]] = {}
        self.subscriptions: list[Subscription] = []
        self._watchers: list[Callable[[], None]] = []
        # Drops of subscriptions already cancelled, so the totals survive them.
        self._gone_dropped = 0

    def wants(self, name: str) -> bool:
        return name in self._by_name

    def wanted(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def emit(self, name: str, **data: Any) -> None:
        subs = self._by_name.get(name)
        if subs is None:
            return
        event = Event(name, self.clock(), data)
        for sub in subs:
            sub.push(event)

    def subscribe(self, names: str | Iterable[str], callback: Callable[[Event], Any], *,
                  backlog: int = DEFAULT_BACKLOG, blocking: bool = False,
                  label: str | None = None) -> Subscription:
        """Deliver the events named (a name, a list of names, or a prefix
        ending in ``*``: ``"call.*"``) to ``callback(event)``."""
        wanted = _expand([names] if isinstance(names, str) else list(names))
        if backlog < 1:
            raise ValueError(f"backlog: expected at least 1, got {backlog}")
        name = label or str(getattr(callback, "__qualname__", None) or repr(callback))
        sub = Subscription(self, wanted, callback, backlog, blocking, name)
        self.subscriptions.append(sub)
        self._rebuild()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)
            self._gone_dropped += sub.dropped
            sub.close()
            self._rebuild()

    def on_change(self, fn: Callable[[], None]) -> None:
        """``fn()`` whenever the set of wanted names changes: a producer that
        installs its hooks only once someone listens (no cost before)."""
        self._watchers.append(fn)

    def _rebuild(self) -> None:
        by_name: dict[str, list[Subscription]] = {}
        for sub in self.subscriptions:
            for name in sub.names:
                by_name.setdefault(name, []).append(sub)
        self._by_name = {k: tuple(v) for k, v in by_name.items()}
        for fn in self._watchers:
            fn()

    def stats(self) -> dict[str, Any]:
        subs = self.subscriptions
        return {
            "subscribers": len(subs),
            "queued": sum(len(s.queue) for s in subs),
            "delivered": sum(s.delivered for s in subs),
            "dropped": self._gone_dropped + sum(s.dropped for s in subs),
            "by_subscriber": {f"{i}:{s.label}": s.stats() for i, s in enumerate(subs)},
        }

    def close(self) -> None:
        for sub in list(self.subscriptions):
            self.unsubscribe(sub)


def _expand(names: list[str]) -> frozenset[str]:
    out: set[str] = set()
    for name in names:
        if name.endswith("*"):
            prefix = name[:-1]
            found = [n for n in EVENTS if n.startswith(prefix)]
            if not found:
                raise ValueError(f"no event matches {name!r}: expected one of {', '.join(EVENTS)}")
            out.update(found)
        elif name in EVENTS:
            out.add(name)
        else:
            raise ValueError(f"unknown event {name!r}: expected one of {', '.join(EVENTS)}")
    return frozenset(out)
