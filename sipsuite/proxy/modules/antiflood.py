"""The first look at every request, before any transaction exists:
kamailio.cfg's pike + ipban (``[features] antiflood``).  A feature module on
the core's ``request_in`` hook; the scanner drop of route[REQINIT], which
runs right after it, is its sibling module (``scanners.py``).

A banned source is dropped silently: no answer at all, so a flooder learns
nothing and costs us no more than a dict lookup. The check runs ahead of
transaction matching, so a flood of retransmissions counts like new
requests.

Memory stays bounded whatever the sources: windows are fixed-size (one
counter per source, reset when its window has passed), kept in a dict in
the order their windows started, so expired ones are pruned from the front;
past ``[antiflood] max_sources`` the oldest are forgotten. No timer per
request or per source: expiry is checked when a source is seen again and
by the pruning that runs when the table is full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.hosts import ip_literal
from sipsuite.log import get_logger
from sipsuite.ops.errors import INVALID_PARAMS, RpcError
from sipsuite.proxy.services import WORKER_LINK

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.net.listener import Source
    from sipsuite.sip.message import Request

log = get_logger("sipsuite.proxy.antiflood")

#: How often a worker process sends its counts to the supervisor (s): at
#: most this late, a ban the host's sum starts reaches every worker.
BATCH = 0.1


class FloodTable:
    """Request counts per source address in fixed windows, and bans.

    Sans-IO: every call takes the current time. ``exempt(addr)`` says
    whether an address may never be banned (trusted networks, ourselves);
    it is asked only when a source crosses the limit, not per request.
    """

    __slots__ = ("windows", "bans", "exempt", "on_ban")

    def __init__(self, exempt: Any = None) -> None:
        # addr -> [window start, count], in window start order; OrderedDict
        # for its O(1) pop from the front (a plain dict's degrades to a scan
        # past deleted slots under a flood of new sources).
        self.windows: OrderedDict[str, list[float]] = OrderedDict()
        # addr -> ban end, in ban start order.
        self.bans: OrderedDict[str, float] = OrderedDict()
        self.exempt = exempt
        # on_ban(addr, seconds) when hit() starts a ban (worker processes
        # tell the others: Antiflood).
        self.on_ban: Any = None

    def hit(self, addr: str, now: float, limit: int, window: float, ban_time: float,
            max_sources: int) -> bool:
        """Count one request from ``addr``; True when it must be dropped
        (a ban is running, or this request starts one)."""
        bans = self.bans
        until = bans.get(addr)
        if until is not None:
            if now < until:
                return True
            del bans[addr]
        windows = self.windows
        entry = windows.get(addr)
        if entry is None or now - entry[0] >= window:
            if entry is not None:
                # A new window: to the back, so the order stays by window start.
                entry[0] = now
                entry[1] = 1.0
                windows.move_to_end(addr)
                return False
            if len(windows) >= max_sources:
                self._make_room(now, window, max_sources)
            windows[addr] = [now, 1.0]
            return False
        entry[1] += 1
        if entry[1] <= limit:
            return False
        # Over the limit: forget the window either way, so an exempt source
        # is asked again only after another full burst.
        del windows[addr]
        if self.exempt is not None and self.exempt(addr):
            return False
        if len(bans) >= max_sources:
            self._prune_bans(now, max_sources)
        bans[addr] = now + ban_time
        log.warn("antiflood: banning {a} for {t:g} s ({n} requests in {w:g} s)",
                 a=addr, t=ban_time, n=int(entry[1]), w=window)
        if self.on_ban is not None:
            self.on_ban(addr, ban_time)
        return True

    def add(self, addr: str, n: int, now: float, limit: int, window: float, ban_time: float,
            max_sources: int) -> bool:
        """``n`` requests from ``addr`` at once (a worker's batch, added up by
        the supervisor); True when they start a ban."""
        until = self.bans.get(addr)
        if until is not None:
            if now < until:
                return False
            del self.bans[addr]
        windows = self.windows
        entry = windows.get(addr)
        if entry is None:
            if len(windows) >= max_sources:
                self._make_room(now, window, max_sources)
            entry = windows[addr] = [now, 0.0]
        elif now - entry[0] >= window:
            entry[0], entry[1] = now, 0.0
            windows.move_to_end(addr)
        entry[1] += n
        if entry[1] <= limit:
            return False
        del windows[addr]
        if self.exempt is not None and self.exempt(addr):
            return False
        return self.ban(addr, now, ban_time, max_sources)

    def ban(self, addr: str, now: float, seconds: float, max_sources: int) -> bool:
        """Ban ``addr`` for ``seconds`` (a ban another table started; a
        running one is only made longer); True if it was not banned."""
        bans = self.bans
        until = bans.get(addr)
        if until is not None and until <= now:
            del bans[addr]  # to the back: the order stays by ban start
            until = None
        fresh = until is None
        if until is None and len(bans) >= max_sources:
            self._prune_bans(now, max_sources)
        if until is None or now + seconds > until:
            bans[addr] = now + seconds
        self.windows.pop(addr, None)
        return fresh

    def _make_room(self, now: float, window: float, max_sources: int) -> None:
        windows = self.windows
        while windows:
            addr, entry = next(iter(windows.items()))
            if now - entry[0] < window and len(windows) < max_sources:
                break
            # Expired, or still fresh but the oldest of a full table (a
            # spoofed-source flood): each of those sends too little to be
            # banned anyway.
            windows.popitem(last=False)

    def _prune_bans(self, now: float, max_sources: int) -> None:
        bans = self.bans
        while bans:
            addr, until = next(iter(bans.items()))
            if until > now and len(bans) < max_sources:
                break
            bans.popitem(last=False)

    def banned(self, now: float) -> list[tuple[str, float]]:
        """(address, seconds left) of every running ban, longest left first."""
        out = [(a, until - now) for a, until in self.bans.items() if until > now]
        out.sort(key=lambda item: -item[1])
        return out

    def top(self, now: float, window: float, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` busiest sources of their current window."""
        live = [(a, int(e[1])) for a, e in self.windows.items() if now - e[0] < window]
        live.sort(key=lambda item: -item[1])
        return live[:n]

    def unban(self, addr: str) -> bool:
        self.windows.pop(addr, None)
        return self.bans.pop(addr, None) is not None


class Antiflood:
    """``[features] antiflood`` on the ``request_in`` hook: False (drop,
    unanswered) while the source is banned or when this request starts a
    ban.  The limits are read from ``core.config`` on every request (they
    change at run time); the table lives as long as the module, so
    switching antiflood off forgets every ban.

    In a worker process (the ``WORKER_LINK`` service) the table still
    counts and bans what this worker sees, and the counts also go to the
    supervisor every :data:`BATCH` s, one line for all sources, where the
    workers' are added up: a source over the limit for the whole host is
    banned in every worker (docs/architecture.md "Host-wide state").  No
    round trip per request: a dict increment."""

    name: ClassVar[str] = "antiflood"

    __slots__ = ("core", "table", "link", "_clock", "_stats", "_pending", "_new_bans",
                 "_exempt_seen", "_batcher")

    def __init__(self, core: CoreAPI) -> None:
        self.core = core
        self.table = FloodTable(self._exempt)
        self.link = core.modules.get(WORKER_LINK)
        # Per packet: the reactor and the counters are the core's for its
        # whole life, so they are looked up once, not through the core each time.
        self._clock = core.clock
        self._stats = core.stats
        # Worker processes: requests per source since the last batch (None
        # in a single process: nothing to add up), the bans this worker
        # started, and which sources may never be banned (asked once each).
        self._pending: dict[str, int] | None = None if self.link is None else {}
        self._new_bans: dict[str, float] = {}
        self._exempt_seen: dict[str, bool] = {}
        self._batcher: Any = None
        if self.link is not None:
            self.table.on_ban = self._new_bans.__setitem__

    def admit(self, req: Request, source: Source) -> bool:
        a = self.core.config.antiflood
        host = source.host
        if self.table.hit(host, self._clock.seconds(), a.requests, a.window,
                          a.ban_time, a.max_sources):
            self._stats.count("drop.flood")
            return False
        pending = self._pending
        if pending is not None:
            n = pending.get(host)
            if n is not None:
                pending[host] = n + 1
            elif len(pending) < a.max_sources:
                pending[host] = 1
        return True

    def _exempt(self, addr: str) -> bool:
        # Asked only when a source crosses the limit: never ban ourselves
        # (a wildcard listener's addresses included) or a trusted network.
        identity = self.core.identity
        return identity.is_own_address(addr) or identity.is_trusted(addr)

    # -- worker processes: the host's counts -------------------------------------------
    def _batch(self) -> None:
        pending, bans = self._pending, self._new_bans
        if not pending and not bans or self.link is None or pending is None:
            return
        self._pending = {}
        self._new_bans = {}
        self.table.on_ban = self._new_bans.__setitem__
        a = self.core.config.antiflood
        seen = self._exempt_seen
        if len(seen) > a.max_sources:
            seen.clear()
        counts = {}
        for addr, n in pending.items():
            exempt = seen.get(addr)
            if exempt is None:
                exempt = seen[addr] = self._exempt(addr)
            if not exempt:
                counts[addr] = n
        self.link.send("flood", counts=counts, bans=bans, limit=a.requests, window=a.window,
                       ban_time=a.ban_time, max_sources=a.max_sources)

    def _host_ban(self, msg: dict[str, Any]) -> None:
        addr, seconds = msg.get("address"), msg.get("seconds")
        if (isinstance(addr, str) and isinstance(seconds, int | float)
                and not isinstance(seconds, bool) and seconds > 0):
            if self.table.ban(addr, self._clock.seconds(), float(seconds),
                              self.core.config.antiflood.max_sources):
                log.info("antiflood: {a} banned for {t:g} s for the host", a=addr, t=seconds)

    def _host_unban(self, msg: dict[str, Any]) -> None:
        addr = msg.get("address")
        if isinstance(addr, str):
            self.table.unban(addr)

    # -- the module's life -----------------------------------------------------------
    def start(self) -> None:
        if self.link is not None:
            from twisted.internet import task

            self.link.on("flood_ban", self._host_ban)
            self.link.on("flood_unban", self._host_unban)
            self._batcher = task.LoopingCall(self._batch)
            self._batcher.clock = self._clock
            self._batcher.start(BATCH, now=False)

    def reconfigure(self, old: Config, new: Config) -> None:
        self._exempt_seen.clear()  # trusted networks may have changed; the limits are read at use

    def stats(self) -> Mapping[str, object]:
        return {"tracked": len(self.table.windows), "banned": len(self.table.bans)}

    def stop(self) -> None:
        if self.link is not None:
            self.link.off("flood_ban", self._host_ban)
            self.link.off("flood_unban", self._host_unban)
        if self._batcher is not None and self._batcher.running:
            self._batcher.stop()
        self._batcher = None


class AntifloodSpec:
    """``[features] antiflood``: a run-time switch (``cfg set
    features.antiflood``), set up before the scanner drop so a flood is
    counted and banned whatever its User-Agent."""

    name = "antiflood"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = True

    def enabled(self, config: Config) -> bool:
        return bool(config.features.antiflood)

    def setup(self, core: CoreAPI, config: Config) -> Antiflood:
        module = Antiflood(core)
        core.hooks.on_request_in(module.admit)
        return module


SPEC = AntifloodSpec()


def _check_address(value: Any) -> str:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "address must be a string")
    address = ip_literal(value.strip())
    if address is None:
        raise RpcError(INVALID_PARAMS, f"{value!r} is not an IP address")
    return address


def register_flood_methods(registry: RpcRegistry, core: CoreAPI) -> None:
    """``flood.show`` and ``flood.unban`` (the ipban htable's dump and delete).

    Registered whether antiflood is on or not (it can be switched on later):
    each call finds the module as it is now; while it is off there is no
    table, so nothing is banned or tracked and nothing can be unbanned."""

    def module() -> Antiflood | None:
        found = core.modules.by_name(Antiflood.name)
        return found if isinstance(found, Antiflood) else None

    def flood_show(top: int = 10) -> dict[str, Any]:
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise RpcError(INVALID_PARAMS, "top must be a whole number, 0 or more")
        now = core.clock.seconds()
        config = core.config
        on = module()
        table = on.table if on is not None else FloodTable()
        return {
            "enabled": config.features.antiflood,
            "requests": config.antiflood.requests,
            "window": config.antiflood.window,
            "ban_time": config.antiflood.ban_time,
            "banned": [{"address": a, "seconds_left": round(left, 1)}
                       for a, left in table.banned(now)],
            "top": [{"address": a, "requests": n}
                    for a, n in table.top(now, config.antiflood.window, top)],
            "tracked": len(table.windows),
        }

    def flood_unban(address: str) -> dict[str, Any]:
        addr = _check_address(address)
        on = module()
        unbanned = on is not None and on.table.unban(addr)
        if unbanned:
            log.info("antiflood: {a} unbanned by the operator", a=addr)
        return {"address": addr, "unbanned": unbanned}

    registry.register("flood.show", flood_show,
                      "flood.show(top=10): banned addresses with seconds left, and the"
                      " busiest sources of the current window")
    registry.register("flood.unban", flood_unban,
                      "flood.unban(address): lift the ban of an address (and reset its count)")
