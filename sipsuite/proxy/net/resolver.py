"""RFC 3263 next-hop resolution (SRV / A / AAAA) over twisted.names.

The proxy hands a Request-URI's (host, port, transport, secure) here and
gets back every candidate hop, best first, so that it can fail over to
the next one on a 503 or a timeout (RFC 3263 section 4.3).

NAPTR is skipped on purpose: RFC 3263 section 4.1 allows a client to go
straight to SRV for the transports it supports, and the NAPTR step only
matters for transports (SCTP, WS) this proxy does not speak.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.names import dns
from twisted.names.error import DomainError
from twisted.python import log
from twisted.python.runtime import platform

from sipsuite.hosts import ip_literal

__all__ = ["Resolver", "Target"]

DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}

# RFC 3263 section 4.1: the SRV owner name for each transport.
SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}

# RFC 6761 section 6.3: "localhost" never goes to DNS; it is loopback.
_LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Target:
    """One concrete next hop: where and how to send."""

    transport: str  # 'udp' | 'tcp' | 'tls'
    host: str  # an IP address literal; IPv6 is not bracketed
    port: int
    # TLS: the name the server's certificate must carry, the host of the URI
    # we resolved (RFC 5922 4.1), not the SRV target; '' means ``host``.
    name: str = ""
    # A registered flow (sipsuite.proxy.registrar.outbound): sent from this listener,
    # over an existing connection only, never a new one.
    listener: Any = field(default=None, compare=False)


def named(targets: list[Target], name: str) -> list[Target]:
    """``targets`` with ``name`` as the certificate name of the TLS ones
    (lower case, without the trailing dot of a fully qualified name, which
    no certificate carries)."""
    name = name.lower().rstrip(".")
    return [Target(t.transport, t.host, t.port, name) if t.transport == "tls" else t
            for t in targets]


@dataclass(frozen=True, slots=True)
class _Srv:
    """An SRV record with its target already turned into addresses.

    Kept unordered in the cache so that the RFC 2782 weighted shuffle is
    redone on every resolve(): caching one ordering would pin all traffic
    to a single server for the whole TTL and defeat the weights.
    """

    priority: int
    weight: int
    targets: tuple[Target, ...]


# Groups in transport-preference order; each is one SRV RRset (or a single
# pseudo-record for the A/AAAA fallback) that is ordered independently.
_Plan = tuple[tuple[_Srv, ...], ...]

_Key = tuple[str, int | None, str | None, bool]


@dataclass(slots=True)
class _Outcome:
    """What a resolution learned, used to pick how long to cache it."""

    ttl: float | None = None  # min TTL of all records used; None: none seen
    error: bool = False  # a timeout / SERVFAIL made the answer incomplete
    groups: list[tuple[_Srv, ...]] = field(default_factory=list)

    def saw(self, ttl: int) -> None:
        self.ttl = ttl if self.ttl is None else min(self.ttl, ttl)


def _srv_target(rec: dns.Record_SRV) -> str:
    """SRV target as a lowercase name; "" for "." (service not offered)."""
    return rec.target.name.decode("ascii", "replace").rstrip(".").lower()


def _fits_dns(name: str) -> bool:
    """RFC 1035 2.3.4 after IDNA: labels of 1 to 63 octets, at most 253 in all
    (with the longest SRV prefix, "_sips._tcp.", in front)."""
    try:
        wire = name.encode("idna")
    except UnicodeError:
        return False
    return len(wire) + len("_sips._tcp.") <= 253 and all(
        0 < len(label) <= 63 for label in wire.split(b"."))


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def _system_resolver(reactor: Any) -> Any:
    """/etc/hosts, then the resolv.conf servers, on the given reactor.

    Not client.createResolver(): that one always uses the global reactor
    and adds a CacheResolver, and Resolver already caches.
    """
    from twisted.names import client, hosts, resolve

    if platform.getType() != "posix":
        return client.createResolver()
    return resolve.ResolverChain(
        [
            hosts.Resolver(b"/etc/hosts"),
            client.Resolver(resolv=b"/etc/resolv.conf", reactor=reactor),
        ]
    )


def rfc2782_order(records: Iterable[_Srv], rng: random.Random) -> list[_Srv]:
    """Order SRV records by priority, then weighted-randomly (RFC 2782)."""
    by_priority: dict[int, list[_Srv]] = {}
    for rec in records:
        by_priority.setdefault(rec.priority, []).append(rec)
    ordered: list[_Srv] = []
    for priority in sorted(by_priority):
        # RFC 2782: weight-0 records go first so that they are only picked
        # when the random number is exactly 0 (a small but non-zero chance).
        pending = sorted(by_priority[priority], key=lambda r: r.weight != 0)
        while pending:
            total = sum(r.weight for r in pending)
            pick = rng.randint(0, total)
            running = 0
            for index, rec in enumerate(pending):
                running += rec.weight
                if running >= pick:
                    ordered.append(pending.pop(index))
                    break
    return ordered


class Resolver:
    """Resolve a SIP URI's host part to an ordered list of Targets."""

    def __init__(
        self,
        reactor: Any,
        timeout: float = 3.0,
        resolver: Any | None = None,
        transports: AbstractSet[str] = frozenset({"udp", "tcp"}),
        *,
        max_ttl: float = 300.0,
        negative_ttl: float = 30.0,
        error_ttl: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        """
        @param resolver: a twisted.names IResolver; None builds the system
            one (resolv.conf + hosts) lazily, on first use, so that merely
            constructing a Resolver schedules nothing on the reactor.
        @param transports: what the proxy can send on; other transports are
            never returned.
        @param max_ttl: upper bound on caching a positive answer.
        @param negative_ttl: how long "no such name / no records" is cached.
        @param error_ttl: how long an answer spoiled by a timeout or server
            failure is cached; short, because a lost UDP packet should not
            black-hole a destination for the full negative TTL, yet long
            enough that a dead DNS server does not stall every request.
        @param rng: source of randomness for SRV weights (tests seed it).
        """
        self._reactor = reactor
        self._timeout = timeout
        self._dns = resolver
        self._transports = frozenset(t.lower() for t in transports)
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._error_ttl = error_ttl
        self._rng = rng if rng is not None else random.Random()
        self._cache: dict[_Key, tuple[float, _Plan]] = {}
        # Concurrent resolves of the same key share one DNS exchange.
        self._inflight: dict[_Key, list[Deferred[list[Target]]]] = {}

    # -- public -----------------------------------------------------------

    def resolve(
        self, host: str, port: int | None, transport: str | None, secure: bool
    ) -> Deferred[list[Target]]:
        """Resolve to every candidate Target, best first; [] if none.

        Never fails: an unresolvable host, a DNS error and the overall
        timeout all give [], because to the proxy they all mean "no route".
        """
        name = host.strip().lower()
        if not name.startswith("["):
            name = name.rstrip(".")  # FQDN form; also "192.0.2.1." is numeric
        literal = ip_literal(name)
        if name.startswith("[") and literal is None:
            return defer.succeed([])  # brackets around a non-IPv6 thing
        tport = transport.lower() if transport else None
        if port is not None and not 0 < port < 65536:
            return defer.succeed([])

        if literal is not None or _is_localhost(name):
            # Section 4.1/4.2: a numeric host needs no DNS at all.
            chosen = self._explicit_transport(tport, secure)
            if chosen is None:
                return defer.succeed([])
            hosts = (literal,) if literal is not None else _LOOPBACK
            dest = port if port is not None else DEFAULT_PORT[chosen]
            return defer.succeed([Target(chosen, h, dest) for h in hosts])

        if not name or name == "invalid" or name.endswith(".invalid"):
            # RFC 6761 6.4: .invalid never resolves, so never ask DNS for it.
            return defer.succeed([])
        if not _fits_dns(name):
            # No query can carry it: no such host, not an exception in the
            # DNS client (a URI host of 300 letters is easy to send).
            return defer.succeed([])

        key: _Key = (name, port, tport, secure)
        cached = self._cache.get(key)
        if cached is not None:
            expires, plan = cached
            if self._reactor.seconds() < expires:
                return defer.succeed(self._order(plan))
            del self._cache[key]

        waiter: Deferred[list[Target]] = Deferred()
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        waiters = self._inflight[key] = [waiter]

        deadline = self._reactor.seconds() + self._timeout
        work = Deferred.fromCoroutine(self._lookup(name, port, tport, secure, deadline))

        def expired() -> None:
            # The overall bound. The DNS queries are not cancelled (their
            # Deferreds have no canceller, and cancelling them leaves a
            # delayed errback that later raises AlreadyCalledError); they
            # were given only the remaining budget, so they end about now
            # and, if a late answer does arrive, it still fills the cache.
            if self._inflight.get(key) is waiters:
                del self._inflight[key]
                self._store(key, (), self._error_ttl)
                self._release(waiters, ())

        timer = self._reactor.callLater(self._timeout, expired)

        def finished(outcome: _Outcome) -> None:
            if timer.active():
                timer.cancel()
            plan: _Plan = tuple(g for g in outcome.groups if g)
            self._store(key, plan, self._ttl_for(plan, outcome))
            if self._inflight.get(key) is waiters:
                del self._inflight[key]
                self._release(waiters, plan)

        def crashed(reason: Any) -> None:
            # Only a bug in this module gets here; keep the proxy running.
            log.err(reason, "sipsuite resolver: unexpected failure")
            finished(_Outcome(error=True))

        work.addCallbacks(finished, crashed)
        return waiter

    # -- transport selection ----------------------------------------------

    def _explicit_transport(self, tport: str | None, secure: bool) -> str | None:
        """Transport when SRV will not be consulted; None if unusable."""
        if tport is None:
            chosen = "tls" if secure else "udp"
        elif secure:
            # A sips URI must be carried over TLS; transport=tcp means TLS
            # over TCP, and sips over UDP has no secure form we speak.
            chosen = "tls" if tport in ("tcp", "tls") else ""
        else:
            chosen = tport
        if chosen not in SRV_PREFIX or chosen not in self._transports:
            return None
        return chosen

    def _srv_transports(self, secure: bool) -> list[str]:
        """Transports to probe with SRV when the URI names none."""
        wanted = ["tls"] if secure else ["udp", "tcp"]
        return [t for t in wanted if t in self._transports]

    # -- DNS work -----------------------------------------------------------

    async def _lookup(
        self,
        name: str,
        port: int | None,
        tport: str | None,
        secure: bool,
        deadline: float,
    ) -> _Outcome:
        outcome = _Outcome()
        if port is not None:
            # Section 4.2: an explicit port means A/AAAA only, no SRV.
            chosen = self._explicit_transport(tport, secure)
            if chosen is not None:
                await self._fallback(name, chosen, port, deadline, outcome)
            return outcome

        if tport is not None:
            chosen = self._explicit_transport(tport, secure)
            candidates = [chosen] if chosen is not None else []
        else:
            candidates = self._srv_transports(secure)
        if not candidates:
            return outcome

        # All transports' SRV queries go out together to save round trips;
        # the groups keep the preference order of `candidates`.
        queries = [
            self._query("lookupService", f"{SRV_PREFIX[t]}.{name}", deadline, outcome)
            for t in candidates
        ]
        found_srv = False
        srv_sets: list[tuple[str, list[dns.Record_SRV]]] = []
        for chosen, query in zip(candidates, queries, strict=True):
            # (`is not None` first: mypy-zope narrows an `interface | None`
            # by isinstance only once None is out.)
            records = [
                rr.payload
                for rr in await query
                if rr.type == dns.SRV
                and rr.payload is not None
                and isinstance(rr.payload, dns.Record_SRV)
            ]
            if records:
                found_srv = True
            srv_sets.append((chosen, records))

        if not found_srv:
            # Section 4.2: no SRV at all -> A/AAAA on the default port of
            # the first usable transport (UDP for sip:, TLS for sips:).
            chosen = candidates[0]
            await self._fallback(name, chosen, DEFAULT_PORT[chosen], deadline, outcome)
            return outcome

        # Resolve every distinct SRV target at once.
        hostnames = {_srv_target(rec) for _, records in srv_sets for rec in records}
        hostnames.discard("")  # "." = service decidedly not available
        pending = {h: self._addresses(h, deadline, outcome) for h in hostnames}
        addresses = {h: await d for h, d in pending.items()}

        for chosen, records in srv_sets:
            group = []
            for rec in records:
                target = _srv_target(rec)
                if not target:
                    continue
                hops = tuple(Target(chosen, a, rec.port) for a in addresses[target])
                if hops:
                    group.append(_Srv(rec.priority, rec.weight, hops))
            outcome.groups.append(tuple(group))
        return outcome

    async def _fallback(
        self, name: str, chosen: str, port: int, deadline: float, outcome: _Outcome
    ) -> None:
        addrs = await self._addresses(name, deadline, outcome)
        hops = tuple(Target(chosen, a, port) for a in addrs)
        outcome.groups.append((_Srv(0, 0, hops),) if hops else ())

    def _addresses(self, name: str, deadline: float, outcome: _Outcome) -> Deferred[list[str]]:
        """A then AAAA addresses of name (both queried in parallel).

        IPv4 is listed first: a broken IPv6 path costs a whole transaction
        timeout before fail-over, and IPv4 is the more likely to work.
        """
        literal = ip_literal(name)
        if literal is not None:
            # Not allowed in SRV targets, but seen in the wild; harmless.
            return defer.succeed([literal])
        if _is_localhost(name):
            return defer.succeed(list(_LOOPBACK))
        v4 = self._query("lookupAddress", name, deadline, outcome)
        v6 = self._query("lookupIPV6Address", name, deadline, outcome)

        async def collect() -> list[str]:
            found: list[str] = []
            # The type tag decides the payload's class (dns.Message decodes it
            # so), which RRHeader's `payload: IEncodableRecord | None` cannot say.
            for rr in await v4:
                if rr.type == dns.A:
                    a = cast(dns.Record_A, rr.payload)
                    found.append(str(ipaddress.IPv4Address(a.address)))
            for rr in await v6:
                if rr.type == dns.AAAA:
                    aaaa = cast(dns.Record_AAAA, rr.payload)
                    found.append(str(ipaddress.IPv6Address(aaaa.address)))
            # Same address reached via two names is tried once only.
            return list(dict.fromkeys(found))

        return Deferred.fromCoroutine(collect())

    def _query(
        self, method: str, name: str, deadline: float, outcome: _Outcome
    ) -> Deferred[list[dns.RRHeader]]:
        """Run one IResolver lookup within the budget; errors become []."""
        remaining = deadline - self._reactor.seconds()
        if remaining <= 0:
            outcome.error = True
            return defer.succeed([])
        # client.Resolver re-sends after each entry expires: one retransmit
        # inside the budget survives a single lost UDP datagram.
        timeouts = (remaining / 3, remaining * 2 / 3)
        # IResolver reports errors through the Deferred; should a broken one
        # raise instead, resolve()'s crash handler still answers [].
        d = getattr(self._get_dns(), method)(name, timeout=timeouts)

        def answered(result: Sequence[Any]) -> list[dns.RRHeader]:
            answers = list(result[0])
            for rr in answers:
                outcome.saw(rr.ttl)
            return answers

        def failed(reason: Any) -> list[dns.RRHeader]:
            # NXDOMAIN is a definite "no"; anything else (timeout, SERVFAIL,
            # REFUSED) means the answer is incomplete and worth retrying soon.
            if not reason.check(DomainError):
                outcome.error = True
            return []

        return d.addCallbacks(answered, failed)

    def _get_dns(self) -> Any:
        if self._dns is None:
            self._dns = _system_resolver(self._reactor)
        return self._dns

    # -- cache ----------------------------------------------------------------

    def _ttl_for(self, plan: _Plan, outcome: _Outcome) -> float:
        if not plan:
            return self._error_ttl if outcome.error else self._negative_ttl
        ttl = float(outcome.ttl) if outcome.ttl is not None else self._max_ttl
        ttl = min(ttl, self._max_ttl)
        if outcome.error:
            ttl = min(ttl, self._error_ttl)
        return ttl

    def _store(self, key: _Key, plan: _Plan, ttl: float) -> None:
        if ttl <= 0:
            self._cache.pop(key, None)  # TTL 0: the zone owner said don't
            return
        self._cache[key] = (self._reactor.seconds() + ttl, plan)
        if len(self._cache) > 4096:
            # Bound memory against a flood of distinct names: drop expired
            # entries, and if that is not enough, the oldest inserted.
            now = self._reactor.seconds()
            for k in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[k]
            while len(self._cache) > 4096:
                del self._cache[next(iter(self._cache))]

    def _order(self, plan: _Plan) -> list[Target]:
        """Flatten a cached plan, redoing the weighted shuffle each time."""
        out: dict[Target, None] = {}
        for group in plan:
            for rec in rfc2782_order(group, self._rng):
                for target in rec.targets:
                    out.setdefault(target, None)  # dedupe, keep first
        return list(out)

    def _release(self, waiters: list[Deferred[list[Target]]], plan: _Plan) -> None:
        for waiter in waiters:
            if not waiter.called:  # a caller may have cancelled its Deferred
                # Each caller gets its own shuffle so load still spreads.
                waiter.callback(self._order(plan))

    def clear_cache(self) -> None:
        """Forget every cached answer (e.g. on a configuration reload)."""
        self._cache.clear()
