"""Keep-alives for bindings registered from behind NAT (Kamailio's
nathelper ``natping``): without traffic the NAT forgets the phone's mapping
and calls to it stop arriving.

A feature module (issue 13): ``SPEC`` sets it up while ``[nat]
keepalive_interval`` is above 0 (a run-time switch: ``cfg set`` to 0 stops
it, back above 0 sets it up again), and it provides NATPING.

Each proxy node pings only the bindings its own listeners took, so nodes
sharing a Redis store do not ping the same phone twice. With OPTIONS
(``[features] natsipping``, nathelper's ``sipping``) an unanswered binding is
removed after ``[nat] keepalive_timeout``; CRLF pings get no answer over UDP
to check. Both are read from ``core.config`` at each ping, so a run-time
change of the switch takes effect on the next round. OPTIONS go through the
core's local UAC (``core.uac``), sent once each; CRLF pings straight through
``core.net``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet import task
from twisted.internet.defer import Deferred

from sipsuite.log import get_logger
from sipsuite.proxy.api import ServiceKey
from sipsuite.proxy.registrar.location import Binding, StoreUnavailable
from sipsuite.proxy.routing.base import parse_address
from sipsuite.proxy.services import LOCATION, NATPING, REGISTRAR

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI
    from sipsuite.sip.message import Response

__all__ = ["SPEC", "NatPing", "NatPingSpec"]

log = get_logger("sipsuite.proxy.keepalive")

CRLF_PING = b"\r\n\r\n"


class NatPing:
    name: ClassVar[str] = "natping"

    def __init__(self, core: CoreAPI) -> None:
        self.core = core
        self.loop: task.LoopingCall | None = None
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
        self.stopped = False

    # -- api.Module ------------------------------------------------------------------
    def track(self, aor: str) -> None:
        """The registrar stored a NAT'ed binding of ``aor`` (NatPingService)."""
        if self.tracked is not None and not self.stopped:
            self.tracked.add(aor)

    def start(self) -> None:
        interval = self.core.config.nat.keepalive_interval
        if interval <= 0:
            return
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = self.core.clock
        self.loop.start(interval, now=False).addErrback(
            lambda f: log.failure("keep-alive loop stopped", f))

    def _stop_loop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None

    def reconfigure(self, old: Config, new: Config) -> None:
        running = self.loop is not None and self.loop.running
        if new.nat.keepalive_interval != old.nat.keepalive_interval and (
                running or self.core.net.listeners):
            # The LoopingCall took the interval when it started.
            self._stop_loop()
            self.start()

    def stats(self) -> dict[str, object]:
        return {"sent": self.sent, "removed": self.removed}

    def stop(self) -> None:
        self._stop_loop()
        # Switched off at run time: the registrar may still hold track();
        # it must not grow a set nobody reads.
        self.stopped = True
        self.tracked = None

    # -- rounds ----------------------------------------------------------------------
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

    def _store(self) -> Any:
        return self.core.modules.require(LOCATION)

    async def round(self) -> None:
        store = self._store()
        net = self.core.net
        now = self.core.wall()
        try:
            if self.tracked is None:
                aors = await store.nat_aors()
                self.tracked = set()
            else:
                aors = sorted(self.tracked)
            seen: set[tuple[str, str]] = set()
            for aor in aors:
                ours = [b for b in await store.lookup(aor) if b.nat and b.received
                        and net.listener_named(b.socket or "") is not None]
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
        net = self.core.net
        # From the address the phone registered to: its NAT maps only that one.
        listener = net.listener_named(b.socket or "")
        if listener is None or listener.transport != dst.transport:
            listener = net.pick_listener(dst.transport, dst.host, None)
        if listener is None:
            return
        config = self.core.config
        if not config.features.natsipping:
            self.options_since = None
            if dst.transport == "udp":
                net.send(CRLF_PING, "udp", dst.host, dst.port, listener)
            else:
                conn = net.connection_to(dst.host, dst.port)
                if conn is not None:
                    conn.send(CRLF_PING)
            self.sent += 1
            return
        if (dst.transport != "udp" and net.connection_to(dst.host, dst.port) is None
                and net.sibling_holds(dst.transport, dst.host, dst.port) is not None):
            # Worker processes: the worker holding the phone's connection pings
            # it and hears the answers; another worker must not count them
            # missing and remove the binding.
            return
        if self.options_since is None:
            self.options_since = now
        key = (aor, b.contact)
        last = max(self.answered.get(key, 0.0), b.updated, self.options_since)
        if now - last > config.nat.keepalive_timeout:
            log.info("removing {c} of {aor}: no answer to keep-alives for {t:.0f} s",
                     c=b.contact, aor=aor, t=now - last)
            await self._store().remove(aor, b.contact)
            self.answered.pop(key, None)
            self.removed += 1
            return
        if dst.transport != "udp" and net.connection_to(dst.host, dst.port) is None:
            return  # never open a connection to a NAT'ed phone: it cannot be reached
        d = self.core.uac.request(
            "OPTIONS", b.contact, dst, listener=listener,
            from_uri=f"sip:keepalive@{listener.sent_by()}", timeout=config.nat.keepalive_interval,
            retransmit=False, connect=False)
        d.addCallback(self._answered, key)
        self.sent += 1

    def _answered(self, resp: Response | None, key: tuple[str, str]) -> None:
        """Any answer, even 404 or 501, shows the phone and its NAT mapping are alive."""
        if resp is not None:
            self.answered[key] = self.core.wall()


class NatPingSpec:
    """``[nat] keepalive_interval`` above 0: a run-time switch."""

    name = "natping"
    requires: tuple[ServiceKey[Any], ...] = (LOCATION, REGISTRAR)
    runtime_switch = True

    def enabled(self, config: Config) -> bool:
        return config.nat.keepalive_interval > 0

    def setup(self, core: CoreAPI, config: Config) -> NatPing:
        ping = NatPing(core)
        # The registrar tells us of each NAT'ed binding it stores.
        core.modules.require(REGISTRAR).on_nat_binding(ping.track)
        core.modules.provide(NATPING, ping)
        return ping


SPEC = NatPingSpec()
