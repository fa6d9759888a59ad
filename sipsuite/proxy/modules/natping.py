"""Keep-alives for bindings registered from behind NAT (Kamailio's
nathelper ``natping``): without traffic the NAT forgets the phone's mapping
and calls to it stop arriving.

Each proxy node pings only the bindings its own listeners took, so nodes
sharing a Redis store do not ping the same phone twice. With OPTIONS
(``[features] natsipping``, nathelper's ``sipping``) an unanswered binding is
removed after ``[nat] keepalive_timeout``; CRLF pings get no answer over UDP
to check. Both are read from ``core.config`` at each ping, so a run-time
change of the switch takes effect on the next round.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from sipsuite.hosts import bracket
from sipsuite.log import get_logger
from sipsuite.proxy.registrar.location import Binding, StoreUnavailable
from sipsuite.proxy.routing.base import parse_address

if TYPE_CHECKING:
    from sipsuite.config import NatConfig
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.sip.message import Response

log = get_logger("sipsuite.proxy.keepalive")

#: Branch prefix of keep-alive OPTIONS: their answers belong to no transaction.
KEEPALIVE_BRANCH = "z9hG4bKspska"


class NatKeepalive:
    def __init__(self, core: ProxyCore, cfg: NatConfig, clock: Any) -> None:
        self.core = core
        self.cfg = cfg
        self.clock = clock  # wall clock (time.time): bindings' times are epoch seconds
        self.loop: task.LoopingCall | None = None
        # branch -> (aor, contact) of an OPTIONS in flight
        self.pending: dict[str, tuple[str, str]] = {}
        # (aor, contact) -> epoch of the last answer to an OPTIONS
        self.answered: dict[tuple[str, str], float] = {}
        self.sent = 0
        self.removed = 0
        # When OPTIONS pings began (None while pinging with CRLF): a binding
        # is judged on answers since then, so switching natsipping on at run
        # time does not remove every binding registered long ago at once.
        self.options_since: float | None = None
        self.running = False
        # AORs with a NAT'ed binding taken by this node: the registrar adds
        # them as it stores such bindings, so a round costs a lookup per
        # NAT'ed AOR, not per AOR in the store. None until the first round,
        # which finds those stored before this process started (the store's
        # NAT index: a restart does not read every AOR either).
        self.tracked: set[str] | None = None

    def track(self, aor: str) -> None:
        if self.tracked is not None:
            self.tracked.add(aor)

    def start(self) -> None:
        if self.cfg.keepalive_interval <= 0:
            return
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = self.core.clock
        self.loop.start(self.cfg.keepalive_interval, now=False).addErrback(
            lambda f: log.failure("keep-alive loop stopped", f))

    def stop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()

    def _tick(self) -> Any:
        if self.running:  # the previous round still waits on the store
            return None
        self.running = True
        d = Deferred.fromCoroutine(self.round())
        d.addErrback(lambda f: log.failure("keep-alive round failed", f))
        d.addBoth(self._done)
        return None

    def _done(self, _: Any) -> None:
        self.running = False

    async def round(self) -> None:
        store = self.core.location
        mine = {repr(listener) for listener in self.core.transport.all_listeners()}
        now = self.clock()
        self.pending.clear()
        try:
            if self.tracked is None:
                aors = await store.nat_aors()
                self.tracked = set()
            else:
                aors = sorted(self.tracked)
            seen: set[tuple[str, str]] = set()
            for aor in aors:
                ours = [b for b in await store.lookup(aor) if b.nat and b.received
                        and (b.socket in mine or self.core.transport.listener_named(b.socket or ""))]
                if not ours:
                    self.tracked.discard(aor)
                    continue
                self.tracked.add(aor)
                for b in ours:
                    seen.add((aor, b.contact))
                    await self.ping(aor, b, now)
            # Forget bindings that went (expired, unregistered) since the last round.
            self.answered = {k: v for k, v in self.answered.items() if k in seen}
        except StoreUnavailable as e:
            log.warn("keep-alives skipped: location store unavailable: {e}", e=e)

    async def ping(self, aor: str, b: Binding, now: float) -> None:
        dst = parse_address(b.received or "")
        if dst is None:
            return
        # From the address the phone registered to: its NAT maps only that one.
        listener = self.core.transport.listener_named(b.socket or "")
        if listener is None or listener.transport != dst.transport:
            listener = self.core.transport.pick_listener(dst.transport, dst.host, None)
        if listener is None:
            return
        config = self.core.config
        if not config.features.natsipping:
            self.options_since = None
            if dst.transport == "udp":
                self.core.transport.send(b"\r\n\r\n", "udp", dst.host, dst.port, listener)
            else:
                conn = self.core.transport.connections.get((dst.host, dst.port))
                if conn is not None and not conn.closed:
                    conn.send(b"\r\n\r\n")
            self.sent += 1
            return
        if self.options_since is None:
            self.options_since = now
        key = (aor, b.contact)
        last = max(self.answered.get(key, 0.0), b.updated, self.options_since)
        if now - last > config.nat.keepalive_timeout:
            log.info("removing {c} of {aor}: no answer to keep-alives for {t:.0f} s",
                     c=b.contact, aor=aor, t=now - last)
            await self.core.location.remove(aor, b.contact)
            self.answered.pop(key, None)
            self.removed += 1
            return
        if dst.transport != "udp":
            conn = self.core.transport.connections.get((dst.host, dst.port))
            if conn is None or conn.closed:
                return  # never open a connection to a NAT'ed phone: it cannot be reached
        branch = KEEPALIVE_BRANCH + secrets.token_hex(8)
        self.pending[branch] = key
        sent_by = listener.sent_by()
        data = (
            f"OPTIONS {b.contact} SIP/2.0\r\n"
            f"Via: {listener.via(branch)}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:keepalive@{sent_by}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <{b.contact}>\r\n"
            f"Call-ID: {branch}@{bracket(listener.advertise)}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
        self.core.transport.send(data, dst.transport, dst.host, dst.port, listener)
        self.sent += 1

    def response(self, resp: Response) -> None:
        """Any answer, even 404 or 501, shows the phone and its NAT mapping are alive."""
        key = self.pending.pop(resp.top_via.branch or "", None)
        if key is not None:
            self.answered[key] = self.clock()
