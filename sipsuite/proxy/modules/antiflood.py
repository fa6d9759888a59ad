"""The first look at every request, before any transaction exists:
kamailio.cfg's pike + ipban (``[features] antiflood``) and the scanner
User-Agents its route[REQINIT] drops (here also looked for in the display
name and user of From, To and Contact, for scanners that send no User-Agent).

Both drop silently: no answer at all, so a flooder or a scanner learns
nothing and costs us no more than a dict lookup. The check runs ahead of
transaction matching, so a flood of retransmissions counts like new
requests, and an INVITE from a scanner gets no 100 Trying either.

Memory stays bounded whatever the sources: windows are fixed-size (one
counter per source, reset when its window has passed), kept in a dict in
the order their windows started, so expired ones are pruned from the front;
past ``[antiflood] max_sources`` the oldest are forgotten. No timer per
request or per source: expiry is checked when a source is seen again and
by the pruning that runs when the table is full.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from sipsuite.hosts import ip_literal
from sipsuite.log import get_logger

if TYPE_CHECKING:
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.proxy.net.listener import Source
    from sipsuite.sip.message import Request

log = get_logger("sipsuite.proxy.antiflood")


class FloodTable:
    """Request counts per source address in fixed windows, and bans.

    Sans-IO: every call takes the current time. ``exempt(addr)`` says
    whether an address may never be banned (trusted networks, ourselves);
    it is asked only when a source crosses the limit, not per request.
    """

    __slots__ = ("windows", "bans", "exempt")

    def __init__(self, exempt: Any = None) -> None:
        # addr -> [window start, count], in window start order; OrderedDict
        # for its O(1) pop from the front (a plain dict's degrades to a scan
        # past deleted slots under a flood of new sources).
        self.windows: OrderedDict[str, list[float]] = OrderedDict()
        # addr -> ban end, in ban start order.
        self.bans: OrderedDict[str, float] = OrderedDict()
        self.exempt = exempt

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
        return True

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


_ADDRESS_HEADERS = ("from", "to", "contact")


def _contains(text: str, needles: tuple[str, ...]) -> bool:
    # A plain loop: any() over a generator costs more, on every request.
    for needle in needles:
        if needle in text:
            return True
    return False


class RequestGuard:
    """The hook at the top of ``ProxyCore.receive_request``: ``admit()``
    is False for a request to drop unanswered. Settings are read from
    ``core.config`` on every call (they change at run time)."""

    __slots__ = ("core", "table", "_agents_src", "_agents")

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self.table = FloodTable(self._exempt)
        self._agents_src: Any = None
        self._agents: tuple[str, ...] = ()

    def admit(self, req: Request, source: Source) -> bool:
        config = self.core.config
        if config.features.antiflood:
            a = config.antiflood
            if self.table.hit(source.host, self.core.clock.seconds(), a.requests, a.window,
                              a.ban_time, a.max_sources):
                self.core.count("drop.flood")
                return False
        agents = config.proxy.drop_user_agents
        if agents:
            if agents is not self._agents_src:
                # Lower-cased once per config object, not per request.
                self._agents = tuple(a.lower() for a in agents)
                self._agents_src = agents
            needles = self._agents
            ua = req.header("user-agent")
            if ua and _contains(ua.lower(), needles):
                self.core.count("drop.scanner")
                return False
            # sipvicious with -c sends no User-Agent, but svmap still names
            # itself in From/To ("sipvicious"<sip:100@1.1.1.1>).  Only the
            # part before the "@" (display name, scheme, user) is looked at:
            # a host such as sipclient.example.net is someone's real domain.
            for name in _ADDRESS_HEADERS:
                value = req.header(name)
                if value and _contains(value.partition("@")[0].lower(), needles):
                    self.core.count("drop.scanner_address")
                    return False
        return True

    def _exempt(self, addr: str) -> bool:
        core = self.core
        return addr.lower() in core.addresses or core.is_trusted(addr)


def _check_address(value: Any) -> str:
    from sipsuite.ops.errors import INVALID_PARAMS, RpcError

    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "address must be a string")
    address = ip_literal(value.strip())
    if address is None:
        raise RpcError(INVALID_PARAMS, f"{value!r} is not an IP address")
    return address


def register_flood_methods(registry: RpcRegistry, core: ProxyCore) -> None:
    """``flood.show`` and ``flood.unban`` (the ipban htable's dump and delete)."""
    guard: RequestGuard = core.guard

    def flood_show(top: int = 10) -> dict[str, Any]:
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            from sipsuite.ops.errors import INVALID_PARAMS, RpcError

            raise RpcError(INVALID_PARAMS, "top must be a whole number, 0 or more")
        now = core.clock.seconds()
        config = core.config
        table = guard.table
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
        unbanned = guard.table.unban(addr)
        if unbanned:
            log.info("antiflood: {a} unbanned by the operator", a=addr)
        return {"address": addr, "unbanned": unbanned}

    registry.register("flood.show", flood_show,
                      "flood.show(top=10): banned addresses with seconds left, and the"
                      " busiest sources of the current window")
    registry.register("flood.unban", flood_unban,
                      "flood.unban(address): lift the ban of an address (and reset its count)")
