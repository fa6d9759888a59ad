"""The dispatcher (Kamailio's dispatcher module): sets of destinations a
routing class sends requests to, chosen by an algorithm, probed with SIP
OPTIONS, and failed over in ``failure_route``.

A feature module (issue 13): ``SPEC`` sets up the :class:`LoadBalancer`
when ``[dispatcher]`` names a list file or sets, and it provides the
``DISPATCHER`` service.  A routing class finds it there (None when there is
no destination)::

    from sipsuite.proxy import DISPATCHER

    ds = self.core.modules.get(DISPATCHER)
    if not ds.relay(ctx, 1, "round-robin"):          # ds_select_dst + t_relay
        ctx.reply(503, "No gateway available")
    ...
    def failure_route(self, ctx, response):
        ds = self.core.modules.get(DISPATCHER)
        ds.next(ctx, response)                        # ds_next_dst + t_relay

(``self.core.dispatcher`` still finds it, through the core's bridge for
names of features that became modules.)  A request's walk through its set,
the :class:`Attempt`, lives in the transaction's CallState:
``ds.attempt(ctx)``.  The module sees the answers itself (``response_in``),
so algorithm 10's call counts need no help from ``reply_route``.

States, as Kamailio's flags: ``active`` (A) takes requests; ``inactive``
(I) does not, and comes back after ``probe_successes`` accepted answers to
probes; ``disabled`` (D) takes nothing and is never probed. The ``probing``
flag (P) says a destination is probed when ``probe_mode = "inactive"``; a
destination marked down gets it. The probes themselves are in
probe.py, the list format and the algorithms in lists.py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.config.values import DispatcherEntry
from sipsuite.hosts import is_ip, unbracket
from sipsuite.log import get_logger
from sipsuite.ops.errors import NO_SUCH_ENTRY as NO_DESTINATION
from sipsuite.ops.errors import NOT_IN_USE as NO_DISPATCHER
from sipsuite.ops.errors import REFUSED as LIST_REFUSED
from sipsuite.proxy.modules.dispatcher.lists import (
    FLAG_DISABLED,
    FLAG_INACTIVE,
    FLAG_PROBING,
    DsState,
    ListError,
    algorithm_number,
    candidates,
    read_list,
)
from sipsuite.proxy.modules.dispatcher.probe import PROBE_BRANCH, Prober, _Probe
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.routing.base import Destination, RequestContext
from sipsuite.proxy.services import DISPATCHER, EVENTS, WORKER_LINK
from sipsuite.sip.uri import URI
from sipsuite.startup import StartupError

if TYPE_CHECKING:
    from sipsuite.config import Config, DispatcherConfig
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.api import CoreAPI, ServiceKey
    from sipsuite.proxy.core.context import Branch
    from sipsuite.sip.message import Response

log = get_logger("sipsuite.proxy.dispatcher")

__all__ = ["PROBE_BRANCH", "SPEC", "Attempt", "Dispatcher", "DsDestination", "LoadBalancer",
           "register_dispatcher_methods"]

#: What failure_route fails over on by default: no answer (408, local or
#: not), a server failure, a global failure (Kamailio's usual 408|5xx|6xx).
FAILOVER = frozenset({408, *range(500, 700)})
#: Most calls counted at once for algorithm 10; the oldest go first past it.
MAX_CALLS = 100_000

STATES = tuple(DsState)
_A, _I, _D = DsState.ACTIVE, DsState.INACTIVE, DsState.DISABLED
# set_state words (ours and kamcmd's letters) -> (state, probing flag or None: keep)
_STATE_WORDS: dict[str, tuple[DsState, bool | None]] = {
    "active": (_A, None), "a": (_A, False), "ap": (_A, True),
    "inactive": (_I, None), "i": (_I, False), "probing": (_I, True), "ip": (_I, True),
    "p": (_I, True), "disabled": (_D, None), "d": (_D, False), "dp": (_D, True),
}
# (state, probing) -> the kamcmd word a worker passes to the others.
_WORDS_OF = {(_A, False): "a", (_A, True): "ap", (_I, False): "i", (_I, True): "ip",
             (_D, False): "d", (_D, True): "dp"}


class DsDestination:
    """One destination of one set, with its run-time state."""

    __slots__ = ("setid", "entry", "uri", "parsed", "target", "priority", "weight", "maxload",
                 "duid", "state", "probing", "failures", "successes", "calls", "last_probe",
                 "last_probe_at")

    def __init__(self, setid: int, entry: DispatcherEntry) -> None:
        self.setid = setid
        self.entry = entry
        self.uri = entry.uri
        self.parsed = URI.parse(entry.uri)
        host = unbracket(self.parsed.host)
        # An IP address is sent to directly, the Request-URI kept (ds_select_dst's
        # $du); a host name goes in the Request-URI and is resolved there.
        self.target: Target | None = None
        if is_ip(host) and self.parsed.scheme == "sip":
            transport = self.parsed.transport or "udp"
            self.target = Target(transport, host,
                                 self.parsed.port or (5061 if transport == "tls" else 5060))
        self.priority = entry.priority
        self.weight = int(entry.attr("weight") or 1)
        self.maxload = int(entry.attr("maxload") or 0)
        self.duid = entry.attr("duid") or ""
        flags = entry.flags
        self.state = (DsState.DISABLED if flags & FLAG_DISABLED else
                      DsState.INACTIVE if flags & FLAG_INACTIVE else DsState.ACTIVE)
        self.probing = bool(flags & FLAG_PROBING)
        self.failures = 0  # consecutive
        self.successes = 0  # consecutive, while inactive
        self.calls = 0
        self.last_probe: str | None = None
        self.last_probe_at: float | None = None

    @property
    def usable(self) -> bool:
        return self.state == DsState.ACTIVE

    def take_state(self, old: DsDestination) -> None:
        """Keep the run-time state of the same destination before a reload."""
        self.state, self.probing = old.state, old.probing
        self.failures, self.successes, self.calls = old.failures, old.successes, old.calls
        self.last_probe, self.last_probe_at = old.last_probe, old.last_probe_at

    def flags(self, mode: str) -> str:
        first = {_A: "T" if self.failures else "A", _I: "I", _D: "D"}[self.state]
        probed = self.state != DsState.DISABLED and (self.probing or mode == "all")
        return first + ("P" if probed else "X")

    def __repr__(self) -> str:
        return f"<DsDestination {self.setid} {self.uri} {self.state}>"


class Attempt:
    """A request's walk through one set: its part of the transaction's
    CallState (``LoadBalancer.attempt(ctx)``).  ``ctx.vars["dispatcher"]``
    names the same object for scripts written before; deprecated."""

    __slots__ = ("setid", "alg", "remaining", "current", "branch", "rewrite")

    def __init__(self, setid: int, alg: int, remaining: list[DsDestination], rewrite: bool) -> None:
        self.setid = setid
        self.alg = alg
        self.remaining = remaining
        self.current: DsDestination | None = None
        self.branch: Branch | None = None
        self.rewrite = rewrite


class LoadBalancer(Prober):
    """The dispatcher module: the sets, selection and failover for routing
    classes (the DISPATCHER service), probing while the proxy runs."""

    name: ClassVar[str] = "dispatcher"

    def __init__(self, core: CoreAPI, clock: Any = None) -> None:
        self.core = core
        self.clock = clock if clock is not None else core.clock
        self.sets: dict[int, list[DsDestination]] = {}
        self.by_uri: dict[str, list[DsDestination]] = {}
        self.rr: dict[int, int] = {}
        # Call-ID -> (destination, when): the calls algorithm 10 counts.
        self.calls: dict[str, tuple[DsDestination, float]] = {}
        self.inflight: dict[str, _Probe] = {}  # by URI
        self.timer: Any = None
        # SPEC.setup registered response_in: on_reply has nothing left to do.
        self.hooked = False
        # Worker processes: worker 0 probes for the host, and every state a
        # worker finds goes to the others through the supervisor.
        self.link = core.modules.get(WORKER_LINK)
        self.install(self.load())

    @property
    def cfg(self) -> DispatcherConfig:
        # Read at use: `sipsuite-ctl cfg set` replaces core.config.
        return self.core.config.dispatcher

    # -- the module's life (start and stop: the prober's) ------------------------------
    @property
    def prober(self) -> bool:
        """This process probes: the only one, or worker 0 of the host."""
        return self.link is None or self.link.index == 0

    def start(self) -> None:
        if self.link is not None:
            self.link.on("ds", self._shared_state)
        if self.prober:
            super().start()

    def stop(self) -> None:
        if self.link is not None:
            self.link.off("ds", self._shared_state)
        super().stop()

    def _share(self, d: DsDestination) -> None:
        """A state this worker found (a probe, a call not answered): to the
        other workers, through the supervisor."""
        if self.link is not None:
            word = _WORDS_OF.get((d.state, d.probing))
            self.link.send("ds", setid=d.setid, uri=d.uri, state=word)

    def _shared_state(self, msg: dict[str, Any]) -> None:
        """A state another worker found, or one the supervisor remembers for
        a worker started again."""
        setid, uri, word = msg.get("setid"), msg.get("uri"), msg.get("state")
        change = _STATE_WORDS.get(word) if isinstance(word, str) else None
        if not isinstance(setid, int) or not isinstance(uri, str) or change is None:
            return
        d = self.find(setid, uri)
        if d is None:
            return  # not in this worker's sets (reloaded since)
        state, probing = change
        probing = d.probing if probing is None else probing
        if (d.state, d.probing) == (state, probing):
            return
        d.state, d.probing = state, probing
        d.failures = d.successes = 0
        by = msg.get("by")
        log.info("dispatcher: {u} in set {s} is {st} ({w})", u=d.uri, s=setid, st=state,
                 w=f"found by worker {by}" if isinstance(by, int) and by >= 0 else "host state")

    def reconfigure(self, old: Config, new: Config) -> None:
        # Nothing to push: the prober reads cfg each round, selection at use;
        # the sets change with `dispatcher reload`, not with cfg set.
        pass

    def stats(self) -> Mapping[str, object]:
        return {"sets": len(self.sets), "destinations": sum(len(v) for v in self.sets.values()),
                "calls": len(self.calls)}

    # -- the sets ------------------------------------------------------------------
    def load(self) -> dict[int, list[DispatcherEntry]]:
        """The list file's sets and the config's, merged; ListError on a bad file."""
        cfg = self.cfg
        merged = {k: list(v) for k, v in (read_list(cfg.list_file) if cfg.list_file else {}).items()}
        for setid, entries in cfg.sets.items():
            have = {e.uri for e in merged.get(setid, [])}
            merged.setdefault(setid, []).extend(e for e in entries if e.uri not in have)
        return merged

    def install(self, entries: dict[int, list[DispatcherEntry]]) -> None:
        old = {(d.setid, d.uri): d for dests in self.sets.values() for d in dests}
        sets: dict[int, list[DsDestination]] = {}
        for setid in sorted(entries):
            dests = []
            for e in entries[setid]:
                try:
                    dests.append(DsDestination(setid, e))
                except ValueError as exc:  # the config's URI check is looser than the parser
                    raise ListError(f"set {setid}: {e.uri}: {exc}") from None
            # Kamailio orders a set by priority, highest first, at load.
            dests.sort(key=lambda d: -d.priority)
            for d in dests:
                before = old.get((setid, d.uri))
                if before is None:
                    continue
                if before.entry.flags == d.entry.flags:
                    d.take_state(before)
                else:  # the file's new flags win, the calls in progress stay counted
                    d.calls = before.calls
            sets[setid] = dests
        self.sets = sets
        self.by_uri = {}
        for dests in sets.values():
            for d in dests:
                self.by_uri.setdefault(d.uri, []).append(d)
        # Calls in progress stay counted on the new objects (or are forgotten
        # with a destination that went).
        renamed: dict[str, tuple[DsDestination, float]] = {}
        for call_id, (d, since) in self.calls.items():
            new = next((n for n in self.by_uri.get(d.uri, []) if n.setid == d.setid), None)
            if new is not None:
                renamed[call_id] = (new, since)
        self.calls = renamed

    def reload(self) -> dict[str, int]:
        """Re-read the list file (dispatcher.reload); on a bad one raise
        ListError and keep the sets as they are."""
        self.install(self.load())
        n = sum(len(v) for v in self.sets.values())
        log.info("dispatcher: {s} set(s), {n} destination(s) loaded", s=len(self.sets), n=n)
        return {"sets": len(self.sets), "destinations": n}

    def find(self, setid: int, uri: str) -> DsDestination | None:
        for d in self.sets.get(setid, []):
            if d.uri == uri:
                return d
        try:
            wanted = URI.parse(uri)
        except ValueError:
            return None
        return next((d for d in self.sets.get(setid, []) if d.parsed.equivalent(wanted)), None)

    def set_state(self, setid: int, uri: str, word: str) -> DsDestination:
        """Operator's state change (kamcmd dispatcher.set_state); KeyError /
        ValueError for an unknown destination or state."""
        change = _STATE_WORDS.get(word.strip().lower())
        if change is None:
            raise ValueError(f"unknown state {word!r}: expected active, inactive, probing or"
                             " disabled (or kamcmd's a, ap, i, ip, d)")
        d = self.find(setid, uri)
        if d is None:
            raise KeyError(f"no destination {uri} in set {setid}")
        state, probing = change
        d.state = state
        if probing is not None:
            d.probing = probing
        d.failures = d.successes = 0
        log.info("dispatcher: {u} in set {s} set {st} by the operator", u=d.uri, s=setid, st=state)
        return d

    def dump(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        mode = self.cfg.probe_mode
        out = []
        for setid, dests in self.sets.items():
            out.append({"setid": setid, "destinations": [{
                "uri": d.uri, "state": d.state, "flags": d.flags(mode), "probing": d.probing,
                "priority": d.priority, "weight": d.weight, "duid": d.duid,
                "attrs": dict(d.entry.attrs), "calls": d.calls, "failures": d.failures,
                "last_probe": d.last_probe,
                "last_probe_age": None if d.last_probe_at is None else round(now - d.last_probe_at, 1),
            } for d in dests]})
        return out

    # -- selection and failover (for routing classes) -----------------------------------
    def select(self, ctx: RequestContext, setid: int, alg: int | str, limit: int = 0,
               rewrite_uri: bool = False) -> list[DsDestination]:
        """Kamailio's ds_select: the usable destinations of ``setid`` in the
        order ``alg`` gives them (at most ``limit``, 0 = all), remembered in
        the transaction's CallState (:meth:`attempt`) for relay_next()/next().
        ValueError for an unknown algorithm; [] for an unknown set or none usable."""
        number = algorithm_number(alg)
        req = ctx.request
        key = _hash_key(number, req)
        counter = self.rr.get(setid, 0)
        if number == 4:
            self.rr[setid] = counter + 1
        chosen: list[DsDestination] = candidates(number, self.sets.get(setid, []), key, counter)  # type: ignore[assignment]
        if limit > 0:
            chosen = chosen[:limit]
        attempt = Attempt(setid, number, list(chosen), rewrite_uri)
        ctx.call.put(attempt)
        # Deprecated (one release): scripts read ctx.vars["dispatcher"].current.
        ctx.vars["dispatcher"] = attempt
        if getattr(getattr(ctx, "watch", None), "routing_action", None):  # the flight recorder
            ctx.note("dispatcher", f"set {setid} alg {number}: "
                     + (", ".join(d.uri for d in chosen) if chosen else "no usable destination"))
        return chosen

    @staticmethod
    def attempt(ctx: RequestContext) -> Attempt | None:
        """The request's walk through its set (``.current``: the destination
        tried now), None when select()/relay() did not run for it."""
        return ctx.call.peek(Attempt)

    def relay(self, ctx: RequestContext, setid: int, alg: int | str = 4, limit: int = 0,
              rewrite_uri: bool = False) -> bool:
        """ds_select_dst + t_relay: send the request to the first choice;
        False (nothing sent) when the set has no usable destination.

        The Request-URI is kept and the request sent to the destination's
        address (Kamailio's $du) when it is an IP address; a destination
        named by a host name, or ``rewrite_uri=True``, gets its host and
        port put in the Request-URI instead (ds_select_domain)."""
        if not self.select(ctx, setid, alg, limit, rewrite_uri):
            return False
        return self.relay_next(ctx)

    def relay_next(self, ctx: RequestContext) -> bool:
        """Send to the next remembered destination still usable; False when none is left."""
        attempt = ctx.call.peek(Attempt)
        if attempt is None:
            return False
        while attempt.remaining:
            d = attempt.remaining.pop(0)
            if not d.usable:
                continue
            attempt.current = d
            if getattr(getattr(ctx, "watch", None), "routing_action", None):
                ctx.note("dispatcher", f"next destination of set {attempt.setid}: {d.uri}")
            req = ctx.request
            if req.method == "INVITE":
                self._count_call(req.call_id, d)
            rsp = ctx.response
            before = len(rsp.branches) if rsp is not None else 0
            ctx.relay([self._destination(ctx, d, attempt.rewrite)])
            rsp = ctx.response
            if rsp is not None and len(rsp.branches) > before:
                attempt.branch = rsp.branches[-1]
            else:
                # Nothing went out (CANCELed meanwhile, an ACK): no call to count.
                attempt.branch = None
                if req.method == "INVITE":
                    self.call_ended(req.call_id)
            self.core.stats.count("dispatcher.relayed")
            return True
        attempt.current = None
        return False

    def next(self, ctx: RequestContext, response: Response,
             codes: Collection[int] = FAILOVER) -> bool:
        """For failure_route (ds_next_dst + t_relay): the destination just
        tried failed; when its answer is one of ``codes`` (default 408, 5xx,
        6xx) and the caller did not cancel, relay to the next destination.
        A destination that did not answer at all (timeout, unreachable) has
        that counted toward being marked inactive, as a failed probe is.
        True when the request went on."""
        attempt = ctx.call.peek(Attempt)
        if attempt is None:
            return False
        failed = attempt.current
        branch = attempt.branch
        status = branch.response.status if branch is not None and branch.response is not None \
            else response.status
        if failed is not None:
            self.call_ended(ctx.request.call_id)
            if branch is not None and self._no_answer(branch):
                self.core.stats.count("dispatcher.no_answer")
                self._result(failed, False, f"no answer to {ctx.request.method}")
        rsp = ctx.response
        if (rsp is not None and rsp.cancelled) or status not in codes:
            return False
        if self.relay_next(ctx):
            self.core.stats.count("dispatcher.failover")
            now = attempt.current
            log.info("dispatcher: {m} (call-id {c}) failed over from {f} ({s}) to {t}",
                     m=ctx.request.method, c=ctx.request.call_id,
                     f=failed.uri if failed is not None else "-", s=status,
                     t=now.uri if now is not None else "-")
            return True
        return False

    def on_reply(self, ctx: RequestContext, response: Response) -> None:
        """For reply_route, kept for scripts written before: the module set
        up by SPEC sees the answers itself (``response_in``), so this does
        nothing then (a call is never ended twice).  A LoadBalancer built by
        hand, without the hook, still ends the call on a final failure."""
        if self.hooked:
            return
        attempt = ctx.call.peek(Attempt)
        if attempt is not None and response.status >= 300 and ctx.request.method == "INVITE":
            self.call_ended(ctx.request.call_id)

    def response_in(self, ctx: RequestContext, branch: Branch, response: Response) -> None:
        """The response_in hook: a final failure from the destination the
        request was sent to ends its call (algorithm 10's count).  Only the
        dispatcher's own branch, and not one given up on already (timer C):
        a late answer must not end the call of the next destination."""
        if response.status < 300 or ctx.request.method != "INVITE":
            return
        attempt = ctx.call.peek(Attempt)
        if attempt is not None and attempt.branch is branch and not branch.done:
            self.call_ended(ctx.request.call_id)

    def call_ended(self, call_id: str) -> None:
        """A call counted for algorithm 10 ended (BYE, failure)."""
        entry = self.calls.pop(call_id, None)
        if entry is not None:
            entry[0].calls = max(0, entry[0].calls - 1)

    def _count_call(self, call_id: str, d: DsDestination) -> None:
        self.call_ended(call_id)
        now = self.clock.seconds()
        calls = self.calls
        limit = now - self.cfg.call_timeout
        # Oldest first (insertion order): forget calls that never saw a BYE.
        while calls:
            first = next(iter(calls))
            dest, since = calls[first]
            if since > limit and len(calls) < MAX_CALLS:
                break
            self.call_ended(first)
        calls[call_id] = (d, now)
        d.calls += 1

    def _no_answer(self, branch: Branch) -> bool:
        resp = branch.response
        return (not branch.provisional and resp is not None
                and resp.to_tag == branch.response_ctx.local_tag and resp.status in (408, 503))

    def _destination(self, ctx: RequestContext, d: DsDestination, rewrite: bool) -> Destination:
        uri = ctx.request.uri
        if d.target is not None and not rewrite:
            return Destination(uri, dst=d.target)
        new = uri.copy() if uri.scheme in ("sip", "sips") else URI("sip", uri.user or None)
        new.scheme = d.parsed.scheme
        new.host = d.parsed.host
        new.port = d.parsed.port
        # Where the request goes is the destination's business alone: the
        # caller's maddr or transport would steer it elsewhere.
        new.params.pop("maddr", None)
        new.params.pop("transport", None)
        if d.parsed.transport:
            new.params["transport"] = d.parsed.transport
        return Destination(new)

    def _result(self, d: DsDestination, ok: bool, why: str, probe: bool = False) -> None:
        """One probe answer (or a call the destination did not answer): the
        thresholds move it between active and inactive."""
        cfg = self.cfg
        if probe:
            d.last_probe = why
            d.last_probe_at = self.clock.seconds()
        if d.state == DsState.DISABLED:
            return
        if ok:
            d.failures = 0
            if d.state != DsState.INACTIVE:
                return
            d.successes += 1
            if d.successes >= cfg.probe_successes:
                d.state = DsState.ACTIVE
                d.successes = 0
                if cfg.probe_mode == "inactive":
                    d.probing = False
                log.info("dispatcher: {u} in set {s} is active again ({w})", u=d.uri, s=d.setid,
                         w=why)
                self._share(d)
                self._event("dispatcher.up", d)
            return
        d.successes = 0
        if d.state != DsState.ACTIVE:
            return
        d.failures += 1
        if d.failures >= cfg.probe_failures:
            d.state = DsState.INACTIVE
            d.probing = True
            log.warn("dispatcher: {u} in set {s} marked inactive after {n} failure(s) ({w})",
                     u=d.uri, s=d.setid, n=d.failures, w=why)
            self._share(d)
            self._event("dispatcher.down", d)

    def _event(self, name: str, d: DsDestination) -> None:
        events = self.core.modules.get(EVENTS)
        if events is not None:
            events.bus.emit(name, setid=d.setid, uri=d.uri)


def _hash_key(alg: int, req: Any) -> str:
    """The text algorithms 0-3 and 9 hash (user@host of a URI, as Kamailio does)."""
    if alg == 1:
        uri = req.from_.uri
    elif alg == 2:
        uri = req.to.uri
    elif alg == 3:
        uri = req.uri
    else:
        return req.call_id
    return f"{uri.user or ''}@{uri.host}"


# ---------------------------------------------------------------------------
# Wiring and management.


#: The name the documentation used before the rename (one meaning per name:
#: "dispatcher" is the module, the load balancer is its class); one release.
Dispatcher = LoadBalancer


class DispatcherSpec:
    """Set up when ``[dispatcher]`` names a list file or sets (read at
    start-up only, so no run-time switch); a bad list file stops start-up
    with one line naming the file and line."""

    name = "dispatcher"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        cfg = config.dispatcher
        return bool(cfg.list_file or cfg.sets)

    def setup(self, core: CoreAPI, config: Config) -> LoadBalancer:
        try:
            ds = LoadBalancer(core)
        except ListError as e:
            raise StartupError(f"dispatcher: {e}") from None
        core.hooks.on_response_in(ds.response_in)
        ds.hooked = True
        core.modules.provide(DISPATCHER, ds)
        n = sum(len(v) for v in ds.sets.values())
        log.info("dispatcher: {s} set(s), {n} destination(s)", s=len(ds.sets), n=n)
        return ds


SPEC = DispatcherSpec()




def register_dispatcher_methods(registry: RpcRegistry, core: CoreAPI) -> None:
    """The dispatcher.* RPCs, registered always: they find the module when
    called and answer NOT_IN_USE while there is none."""
    from sipsuite.ops.errors import INVALID_PARAMS, RpcError

    def get() -> LoadBalancer:
        d = core.modules.by_name("dispatcher")
        if not isinstance(d, LoadBalancer):
            raise RpcError(NO_DISPATCHER, "no dispatcher: [dispatcher] names no list_file and no sets")
        return d

    def dump() -> list[dict[str, Any]]:
        return get().dump()

    def reload() -> dict[str, Any]:
        try:
            return get().reload()
        except ListError as e:
            raise RpcError(LIST_REFUSED, f"list refused, the old sets stay: {e}") from None

    def set_state(setid: int, uri: str, state: str) -> dict[str, Any]:
        if isinstance(setid, str) and setid.isdigit():
            setid = int(setid)
        if isinstance(setid, bool) or not isinstance(setid, int):
            raise RpcError(INVALID_PARAMS, "setid must be a whole number")
        if not isinstance(uri, str) or not isinstance(state, str):
            raise RpcError(INVALID_PARAMS, "uri and state must be strings")
        try:
            d = get().set_state(setid, uri, state)
        except ValueError as e:
            raise RpcError(INVALID_PARAMS, str(e)) from None
        except KeyError as e:
            raise RpcError(NO_DESTINATION, e.args[0]) from None
        return {"setid": setid, "uri": d.uri, "state": d.state, "probing": d.probing}

    registry.register("dispatcher.dump", dump,
                      "dispatcher.dump(): every set and destination with state (flags as"
                      " Kamailio's: A/I/D/T + P/X), priority, weight, active calls, last probe")
    registry.register("dispatcher.reload", reload,
                      "dispatcher.reload(): re-read [dispatcher] list_file; a bad file is"
                      f" refused (error {LIST_REFUSED}) and the old sets stay")
    registry.register("dispatcher.set_state", set_state,
                      "dispatcher.set_state(setid, uri, state): state active, inactive, probing"
                      " (inactive until probes answer) or disabled; kamcmd's a, ap, i, ip, d too")
