"""The events module: the proxy's side of ``sipsuite.api``'s events.

It owns the :class:`~sipsuite.eventbus.EventBus` (offered as the EVENTS
service) and raises the request, call, registration and config events from
the core's hook points.  Nothing is hooked until a subscriber asks for one
of those events (``EventBus.on_change``): a proxy with no user service pays
nothing per request.

- ``request.received``: the ``request_received`` hook (validated, after the
  Route preprocessing: retransmissions and dropped floods never get here);
- ``request.answered``: ``response_out``, each final answer sent upstream;
- ``call.started``: an initial INVITE's first branch (``branch_out``): the
  proxy routed it on.  An INVITE answered here (407 challenge, 404) is no
  call, only a request answered;
- ``call.answered``: the first 2xx of a started call going upstream;
- ``call.ended``: a started call's final answer >= 300 (cause ``cancelled``,
  ``busy``, ``no-answer``, ``declined`` or ``failed``), or the answer to the
  BYE of an answered call (``caller-hangup`` / ``callee-hangup``), or
  ``timeout`` when no BYE passed within ``[accounting] max_duration``, with
  ``duration`` (answer to BYE, 0 unanswered) and ``setup_time``.  With
  worker processes the BYE may reach a worker other than the one that
  answered the call: that worker passes it over the link (``ev_bye``, as
  the accounting module's ``acc_bye``) and the holder raises the event, so
  it comes once, with the right duration and side;
- ``registration.*``: from the registrar (``bindings_changed``) and, for
  ``expired``, a timer per earliest expiry that checks the store;
- ``config.changed``: ``cfg set`` (the module's ``reconfigure``).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.eventbus import EventBus
from sipsuite.log import get_logger
from sipsuite.proxy.services import EVENTS, LOCATION, WORKER_LINK
from sipsuite.proxy.workerlink import bye_fields

if TYPE_CHECKING:
    from sipsuite.config import Config
    from sipsuite.proxy.api import CoreAPI, ServerTxView, ServiceKey, Timer
    from sipsuite.proxy.core.context import Branch
    from sipsuite.proxy.registrar.bindings import Binding
    from sipsuite.proxy.routing.base import RequestContext
    from sipsuite.sip.message import Request, Response

log = get_logger("sipsuite.proxy.events")

#: Answered calls remembered for their BYE; the oldest go first beyond this.
MAX_CALLS = 100_000
CAUSES = {487: "cancelled", 486: "busy", 600: "busy", 408: "no-answer", 480: "no-answer",
          603: "declined"}
BYE_ENDS = frozenset({408, 481})
#: The worker link's message for a BYE that ended a call another worker holds.
LINK_BYE = "ev_bye"


class CallEvents:
    """An INVITE transaction's part (in its CallState)."""

    __slots__ = ("answered", "ended", "start")

    def __init__(self) -> None:
        self.start: float | None = None  # set when the call started (its first branch)
        self.answered: set[tuple[str, str, str]] = set()
        self.ended = False


def _parties(req: Request, source: Any) -> dict[str, Any]:
    return {"call_id": req.call_id, "from": str(req.from_.uri), "to": str(req.to.uri),
            "ruri": str(req.uri), "source": f"{source.transport}:{source.host}:{source.port}"}


class Events:
    """The EVENTS service: the bus and the producers that feed it."""

    name: ClassVar[str] = "events"

    def __init__(self, core: CoreAPI, bus: EventBus | None = None) -> None:
        self.core = core
        self.bus = bus or EventBus(core.clock, core.wall)
        self._hooked: set[str] = set()
        self.calls: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
        self.registrations = False  # the registrar reports binding changes
        self._expiry: list[tuple[float, str, str]] = []
        self._watched: dict[tuple[str, str], float] = {}
        self._expiry_timer: Timer | None = None
        self._call_timer: Timer | None = None
        # Worker processes only (None in a single process).
        self.link = core.modules.get(WORKER_LINK)
        self.byes_passed = 0
        self.byes_taken = 0
        self.bad_link_messages = 0
        self.bus.on_change(self._wanted_changed)

    # -- installing hooks on demand ---------------------------------------------
    def _wanted_changed(self) -> None:
        wants = self.bus.wants
        hooks = self.core.hooks
        if wants("request.received") and "request_received" not in self._hooked:
            self._hooked.add("request_received")
            hooks.on_request_received(self._request_received)
        calls = wants("call.started") or wants("call.answered") or wants("call.ended")
        if calls and "branch_out" not in self._hooked:
            self._hooked.add("branch_out")
            hooks.on_branch_out(self._branch_out)
        if (calls or wants("request.answered")) and "response_out" not in self._hooked:
            self._hooked.add("response_out")
            hooks.on_response_out(self._response_out)
        self.registrations = any(wants(n) for n in (
            "registration.added", "registration.refreshed", "registration.removed",
            "registration.expired"))

    # -- requests and calls -------------------------------------------------------
    def _request_received(self, ctx: RequestContext) -> None:
        req = ctx.request
        self.bus.emit("request.received", method=req.method, **_parties(req, ctx.source))

    def _branch_out(self, ctx: RequestContext, branch: Branch) -> None:
        req = ctx.request
        if req.method != "INVITE" or req.to_tag is not None:
            return
        state = ctx.call.get(CallEvents)
        if state.start is None:
            state.start = self.core.clock.seconds()
            self.bus.emit("call.started", **_parties(req, ctx.source))

    def _response_out(self, tx: ServerTxView, resp: Response) -> None:
        status = resp.status
        if status < 200:
            return
        req = tx.request
        bus = self.bus
        if bus.wants("request.answered"):
            bus.emit("request.answered", method=req.method, code=status, reason=resp.reason,
                     **_parties(req, tx.source))
        method = req.method
        if method == "INVITE" and req.to_tag is None:
            state = tx.call.peek(CallEvents)
            if state is not None and state.start is not None:
                self._invite_final(tx, req, resp, state)
        elif method == "BYE" and (status < 300 or status in BYE_ENDS):
            self._bye(req, status)

    def _invite_final(self, tx: ServerTxView, req: Request, resp: Response,
                      state: CallEvents) -> None:
        now = self.core.clock.seconds()
        start = state.start if state.start is not None else now
        status = resp.status
        if status < 300:
            key = (req.call_id, req.from_tag or "", resp.to_tag or "")
            if key in state.answered or key in self.calls:
                return  # a retransmitted 2xx
            state.answered.add(key)
            call = _parties(req, tx.source)
            call.update(code=status, setup_time=round(now - start, 3))
            self.bus.emit("call.answered", **call)
            call["answer"] = now
            calls = self.calls
            calls[key] = call
            while len(calls) > MAX_CALLS:
                calls.popitem(last=False)
            if self._call_timer is None:
                self._arm_calls(now)
            return
        if state.ended or state.answered:
            return
        state.ended = True
        self.bus.emit("call.ended", answered=False, cause=CAUSES.get(status, "failed"),
                      code=status, reason=resp.reason, duration=0.0,
                      setup_time=round(now - start, 3), **_parties(req, tx.source))

    def _bye(self, bye: Request, status: int) -> None:
        cid, ftag, ttag = bye.call_id, bye.from_tag or "", bye.to_tag or ""
        now = self.core.clock.seconds()
        if self._end(cid, ftag, ttag, now, status) or self.link is None:
            return
        if self.bus.wants("call.ended"):
            # Not ours: the worker that sent the call's 2xx holds it.
            self.byes_passed += 1
            self.link.send(LINK_BYE, call_id=cid, from_tag=ftag, to_tag=ttag, end=now, code=status)

    def _end(self, cid: str, ftag: str, ttag: str, end: float, status: int) -> bool:
        """call.ended for the answered call a BYE with these tags ends, if we
        hold it: the BYE's From tag is the caller's when the caller hung up."""
        call = self.calls.pop((cid, ftag, ttag), None)
        cause = "caller-hangup"
        if call is None:
            call = self.calls.pop((cid, ttag, ftag), None)
            cause = "callee-hangup"
            if call is None:
                return False
        answer = call.pop("answer")
        self.bus.emit("call.ended", answered=True, cause=cause, reason="BYE", bye_code=status,
                      duration=round(end - answer, 3), **call)
        return True

    def _sibling_bye(self, msg: dict[str, Any]) -> None:
        """``ev_bye`` from the supervisor: another worker's BYE ended a call it
        does not hold; every other worker gets it, the holder raises the event."""
        fields = bye_fields(msg)
        if fields is None:
            self.bad_link_messages += 1
            return
        if self._end(*fields):
            self.byes_taken += 1

    # -- answered calls whose BYE never passes ----------------------------------------
    def _arm_calls(self, now: float) -> None:
        calls = self.calls
        if not calls:
            self._call_timer = None
            return
        oldest = calls[next(iter(calls))]
        due = oldest["answer"] + self.core.config.accounting.max_duration
        # At most a minute, so a max_duration lowered by cfg set applies soon.
        self._call_timer = self.core.call_later(min(max(due - now, 0.0), 60.0), self._expire_calls)

    def _expire_calls(self) -> None:
        self._call_timer = None
        now = self.core.clock.seconds()
        limit = self.core.config.accounting.max_duration
        calls = self.calls
        while calls:
            key = next(iter(calls))
            call = calls[key]
            if call["answer"] + limit > now:
                break
            del calls[key]
            call.pop("answer")
            self.bus.emit("call.ended", answered=True, cause="timeout", reason="max_duration",
                          duration=round(limit, 3), **call)
        self._arm_calls(now)

    # -- registrations -------------------------------------------------------------
    def bindings_changed(self, aor: str, before: Mapping[str, float | None],
                         after: list[Binding]) -> None:
        """The registrar stored a REGISTER: ``before`` maps each contact it
        held to its expiry, ``after`` is what it holds now."""
        bus = self.bus
        now = self.core.wall()
        kept = set()
        for b in after:
            kept.add(b.contact)
            if b.contact in before:
                if before[b.contact] == b.expires:
                    continue  # another contact of the AOR, not in this REGISTER
                name = "registration.refreshed"
            else:
                name = "registration.added"
            expires = None if b.expires is None else max(0, round(b.expires - now))
            bus.emit(name, aor=aor, contact=b.contact, expires=expires, received=b.received,
                     user_agent=b.user_agent)
            if b.expires is not None and bus.wants("registration.expired"):
                self._watch_expiry(b.expires, aor, b.contact)
        for contact in before:
            if contact not in kept:
                self._watched.pop((aor, contact), None)
                bus.emit("registration.removed", aor=aor, contact=contact)

    def _watch_expiry(self, when: float, aor: str, contact: str) -> None:
        # The heap keeps stale entries of refreshed bindings; _watched says
        # which expiry is the binding's current one.
        self._watched[(aor, contact)] = when
        heapq.heappush(self._expiry, (when, aor, contact))
        if self._expiry_timer is None or self._expiry[0][0] == when:
            self._arm()

    def _arm(self) -> None:
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        self._expiry_timer = None
        if self._expiry:
            delay = max(0.0, self._expiry[0][0] - self.core.wall()) + 0.05
            self._expiry_timer = self.core.call_later(delay, self._check_expiry)

    def _check_expiry(self) -> None:
        self._expiry_timer = None
        now = self.core.wall()
        due: list[tuple[str, str]] = []
        while self._expiry and self._expiry[0][0] <= now:
            when, aor, contact = heapq.heappop(self._expiry)
            if self._watched.get((aor, contact)) == when:
                del self._watched[(aor, contact)]
                due.append((aor, contact))
        if due:
            from twisted.internet.defer import ensureDeferred

            ensureDeferred(self._expired(due)).addErrback(
                lambda f: log.failure("registration expiry check failed", f))
        self._arm()

    async def _expired(self, due: list[tuple[str, str]]) -> None:
        location = self.core.modules.get(LOCATION)
        if location is None:
            return
        now = self.core.wall()
        for aor, contact in due:
            # Refreshed through another node (a shared Redis store): not expired.
            bindings = await location.store.lookup(aor)
            live = [b for b in bindings if b.contact == contact]
            if live and (live[0].expires is None or live[0].expires > now):
                continue
            self.bus.emit("registration.expired", aor=aor, contact=contact)

    # -- the module's life -----------------------------------------------------------
    def start(self) -> None:
        if self.link is not None:
            self.link.on(LINK_BYE, self._sibling_bye)

    def reconfigure(self, old: Config, new: Config) -> None:
        if not self.bus.wants("config.changed"):
            return
        changed = []
        for f in dataclasses.fields(new):
            a, b = getattr(old, f.name), getattr(new, f.name)
            if a == b:
                continue
            if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
                changed += [f"{f.name}.{g.name}" for g in dataclasses.fields(b)
                            if getattr(a, g.name) != getattr(b, g.name)]
            else:
                changed.append(f.name)
        self.bus.emit("config.changed", changed=changed)

    def stats(self) -> Mapping[str, object]:
        # Under "events" of the stats RPC; per subscriber, so the one that
        # drops is named.
        figures: dict[str, object] = {**self.bus.stats(), "calls_tracked": len(self.calls)}
        if self.link is not None:
            figures.update(byes_passed=self.byes_passed, byes_taken=self.byes_taken,
                           bad_link_messages=self.bad_link_messages)
        return {"events": figures}

    def stop(self) -> None:
        if self.link is not None:
            self.link.off(LINK_BYE, self._sibling_bye)
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        self._expiry_timer = None
        if self._call_timer is not None and self._call_timer.active():
            self._call_timer.cancel()
        self._call_timer = None
        # The user services stopped first; what they left subscribed goes
        # now, with the threads of blocking subscribers (a thread left
        # waiting would keep the process from exiting).
        self.bus.close()


class EventsSpec:
    """Always set up (it costs nothing until something subscribes)."""

    name = "events"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return True

    def setup(self, core: CoreAPI, config: Config) -> Events:
        events = Events(core)
        core.modules.provide(EVENTS, events)
        return events


SPEC = EventsSpec()
