"""RFC 3263 resolver tests against a real in-process twisted.names server."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.names import client, common, dns, server
from twisted.names.error import DomainError

from sipsuite.proxy.net.resolver import Resolver, Target, rfc2782_order

ZONE = "example.test"


class MemoryAuthority(common.ResolverBase):
    """A tiny authority: name -> [(type, payload, ttl)], logging queries.

    A name that is absent answers NXDOMAIN; a name that exists but lacks
    the asked type answers NOERROR with no records, as a real zone would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, list[tuple[int, Any, int]]] = {}
        self.queries: list[tuple[str, int]] = []

    def add(self, name: str, payload: Any, ttl: int = 300) -> None:
        self.records.setdefault(name.lower(), []).append((payload.TYPE, payload, ttl))

    def _lookup(self, name: bytes | str, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        key = (name.decode() if isinstance(name, bytes) else name).lower()
        self.queries.append((key, type))
        if key not in self.records:
            return defer.fail(DomainError(key))
        answers = [
            dns.RRHeader(key, t, dns.IN, ttl, payload, auth=True)
            for t, payload, ttl in self.records[key]
            if t == type
        ]
        return defer.succeed((answers, [], []))


@dataclass
class DNSServer:
    authority: MemoryAuthority
    port: int

    def client(self) -> client.Resolver:
        return client.Resolver(servers=[("127.0.0.1", self.port)], reactor=reactor)

    def resolver(self, **kwargs: Any) -> Resolver:
        kwargs.setdefault("timeout", 2.0)
        return Resolver(reactor, resolver=self.client(), **kwargs)

    def asked(self, type: int | None = None) -> list[str]:
        return [n for n, t in self.authority.queries if type is None or t == type]


class _BlackHole(protocol.DatagramProtocol):
    """A "DNS server" that reads every query and never answers."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pass


def _srv(prio: int, weight: int, port: int, target: str) -> dns.Record_SRV:
    return dns.Record_SRV(prio, weight, port, target.encode())


@pytest_twisted.async_yield_fixture
async def dns_server() -> AsyncIterator[DNSServer]:
    authority = MemoryAuthority()
    factory = server.DNSServerFactory(authorities=[authority], verbose=0)
    # Port 0: the kernel picks a free port, so parallel runs do not clash.
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(controller=factory), interface="127.0.0.1")
    try:
        yield DNSServer(authority, port.getHost().port)
    finally:
        await port.stopListening()


class _NoDNS:
    """An IResolver stand-in that fails the test if it is ever consulted."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected DNS lookup: {name}")


def _no_dns_resolver(**kwargs: Any) -> Resolver:
    return Resolver(reactor, resolver=_NoDNS(), **kwargs)


# -- no DNS at all -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ipv4_literal() -> None:
    r = _no_dns_resolver(transports={"udp", "tcp", "tls"})
    assert await r.resolve("192.0.2.1", None, None, False) == [Target("udp", "192.0.2.1", 5060)]
    assert await r.resolve("192.0.2.1", 5080, "TCP", False) == [Target("tcp", "192.0.2.1", 5080)]
    assert await r.resolve("192.0.2.1", None, None, True) == [Target("tls", "192.0.2.1", 5061)]
    # sips + transport=tcp means TLS over TCP.
    assert await r.resolve("192.0.2.1", None, "tcp", True) == [Target("tls", "192.0.2.1", 5061)]


@pytest_twisted.ensureDeferred
async def test_ipv6_literal() -> None:
    r = _no_dns_resolver()
    assert await r.resolve("[2001:DB8::1]", None, None, False) == [
        Target("udp", "2001:db8::1", 5060)
    ]
    assert await r.resolve("[2001:db8::1]", 5070, "tcp", False) == [
        Target("tcp", "2001:db8::1", 5070)
    ]
    # Unbracketed is accepted too (e.g. from maddr or Via received=).
    assert await r.resolve("2001:db8::1", None, None, False) == [Target("udp", "2001:db8::1", 5060)]
    assert await r.resolve("[not-an-address]", None, None, False) == []


@pytest_twisted.ensureDeferred
async def test_localhost_is_loopback_without_dns() -> None:
    r = _no_dns_resolver()
    assert await r.resolve("LocalHost", None, None, False) == [
        Target("udp", "127.0.0.1", 5060),
        Target("udp", "::1", 5060),
    ]
    assert await r.resolve("localhost.", 5080, "tcp", False) == [
        Target("tcp", "127.0.0.1", 5080),
        Target("tcp", "::1", 5080),
    ]


@pytest_twisted.ensureDeferred
async def test_unsupported_transport_gives_nothing() -> None:
    r = _no_dns_resolver()  # udp + tcp only
    assert await r.resolve("192.0.2.1", None, None, True) == []  # needs TLS
    assert await r.resolve("192.0.2.1", None, "sctp", False) == []
    r = _no_dns_resolver(transports={"udp", "tcp", "tls"})
    assert await r.resolve("192.0.2.1", None, "udp", True) == []  # sips/UDP


def test_rfc2782_order_priority_then_weight() -> None:
    from sipsuite.proxy.net.resolver import _Srv

    def srv(prio: int, weight: int, host: str) -> Any:
        return _Srv(prio, weight, (Target("udp", host, 5060),))

    records = [srv(20, 0, "c"), srv(10, 0, "a0"), srv(10, 5, "a5")]
    rng = random.Random(1)
    seen_first = set()
    for _ in range(200):
        order = [r.targets[0].host for r in rfc2782_order(records, rng)]
        assert order[2] == "c"  # higher priority value always last
        assert sorted(order[:2]) == ["a0", "a5"]
        seen_first.add(order[0])
    assert seen_first == {"a0", "a5"}  # weight 0 can win, rarely


# -- through the DNS server -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_and_aaaa_fallback_without_srv(dns_server: DNSServer) -> None:
    dns_server.authority.add(ZONE, dns.Record_A("192.0.2.10"))
    dns_server.authority.add(ZONE, dns.Record_AAAA("2001:db8::10"))
    r = dns_server.resolver()
    assert await r.resolve(ZONE, None, None, False) == [
        Target("udp", "192.0.2.10", 5060),
        Target("udp", "2001:db8::10", 5060),
    ]
    # No transport: both supported transports were probed with SRV first.
    assert set(dns_server.asked(dns.SRV)) == {
        f"_sip._udp.{ZONE}",
        f"_sip._tcp.{ZONE}",
    }


@pytest_twisted.ensureDeferred
async def test_explicit_port_skips_srv(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 0, 5999, f"other.{ZONE}"))
    auth.add(f"other.{ZONE}", dns.Record_A("192.0.2.99"))
    auth.add(ZONE, dns.Record_A("192.0.2.10"))
    r = dns_server.resolver()
    assert await r.resolve(ZONE, 5070, None, False) == [Target("udp", "192.0.2.10", 5070)]
    assert await r.resolve(ZONE, 5071, "tcp", False) == [Target("tcp", "192.0.2.10", 5071)]
    assert dns_server.asked(dns.SRV) == []


@pytest_twisted.ensureDeferred
async def test_srv_priority_order_and_ports(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    # Listed worst-first so that the order cannot come from the zone.
    auth.add(f"_sip._udp.{ZONE}", _srv(20, 0, 5080, f"backup.{ZONE}"))
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 0, 5070, f"primary.{ZONE}"))
    auth.add(f"primary.{ZONE}", dns.Record_A("192.0.2.1"))
    auth.add(f"primary.{ZONE}", dns.Record_AAAA("2001:db8::1"))
    auth.add(f"backup.{ZONE}", dns.Record_A("192.0.2.2"))
    r = dns_server.resolver()
    assert await r.resolve(ZONE, None, None, False) == [
        Target("udp", "192.0.2.1", 5070),
        Target("udp", "2001:db8::1", 5070),
        Target("udp", "192.0.2.2", 5080),
    ]
    # SRV found: no A/AAAA query for the domain itself.
    assert ZONE not in dns_server.asked()


@pytest_twisted.ensureDeferred
async def test_srv_weights(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 0, 5060, f"zero.{ZONE}"))
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 30, 5060, f"heavy.{ZONE}"))
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 10, 5060, f"light.{ZONE}"))
    auth.add(f"zero.{ZONE}", dns.Record_A("192.0.2.0"))
    auth.add(f"heavy.{ZONE}", dns.Record_A("192.0.2.30"))
    auth.add(f"light.{ZONE}", dns.Record_A("192.0.2.10"))
    r = dns_server.resolver(rng=random.Random(2782))
    first: dict[str, int] = {}
    runs = 2000
    for _ in range(runs):
        targets = await r.resolve(ZONE, None, "udp", False)
        # Every record is always present; only the order varies.
        assert sorted(t.host for t in targets) == [
            "192.0.2.0",
            "192.0.2.10",
            "192.0.2.30",
        ]
        first[targets[0].host] = first.get(targets[0].host, 0) + 1
    # RFC 2782 odds of going first: weight/(sum+1) for non-zero weights,
    # 1/(sum+1) for the weight-0 record: 30/41, 10/41, 1/41.
    assert 0.66 < first["192.0.2.30"] / runs < 0.80
    assert 0.19 < first["192.0.2.10"] / runs < 0.30
    assert 0 < first["192.0.2.0"] / runs < 0.05
    # The shuffle is redone from cache; DNS was asked only once per name.
    assert dns_server.asked(dns.SRV) == [f"_sip._udp.{ZONE}"]


@pytest_twisted.ensureDeferred
async def test_transport_param_selects_srv(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 0, 5060, f"udp.{ZONE}"))
    auth.add(f"_sip._tcp.{ZONE}", _srv(10, 0, 5062, f"tcp.{ZONE}"))
    auth.add(f"udp.{ZONE}", dns.Record_A("192.0.2.1"))
    auth.add(f"tcp.{ZONE}", dns.Record_A("192.0.2.2"))
    r = dns_server.resolver()
    assert await r.resolve(ZONE, None, "TCP", False) == [Target("tcp", "192.0.2.2", 5062)]
    assert dns_server.asked(dns.SRV) == [f"_sip._tcp.{ZONE}"]
    # Without a transport both are used, UDP's servers first.
    assert await r.resolve(ZONE, None, None, False) == [
        Target("udp", "192.0.2.1", 5060),
        Target("tcp", "192.0.2.2", 5062),
    ]


@pytest_twisted.ensureDeferred
async def test_transport_param_without_srv_uses_default_port(
    dns_server: DNSServer,
) -> None:
    dns_server.authority.add(ZONE, dns.Record_A("192.0.2.10"))
    r = dns_server.resolver(transports={"udp", "tcp", "tls"})
    assert await r.resolve(ZONE, None, "tcp", False) == [Target("tcp", "192.0.2.10", 5060)]
    assert await r.resolve(ZONE, None, "tls", False) == [Target("tls", "192.0.2.10", 5061)]


@pytest_twisted.ensureDeferred
async def test_only_tcp_srv_published(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    auth.add(f"_sip._tcp.{ZONE}", _srv(10, 0, 5060, f"sip.{ZONE}"))
    auth.add(f"sip.{ZONE}", dns.Record_A("192.0.2.5"))
    r = dns_server.resolver()
    assert await r.resolve(ZONE, None, None, False) == [Target("tcp", "192.0.2.5", 5060)]


@pytest_twisted.ensureDeferred
async def test_transports_filter_srv_probing(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 0, 5060, f"sip.{ZONE}"))
    auth.add(f"_sip._tcp.{ZONE}", _srv(10, 0, 5060, f"sip.{ZONE}"))
    auth.add(f"sip.{ZONE}", dns.Record_A("192.0.2.5"))
    r = dns_server.resolver(transports={"tcp"})
    assert await r.resolve(ZONE, None, None, False) == [Target("tcp", "192.0.2.5", 5060)]
    assert dns_server.asked(dns.SRV) == [f"_sip._tcp.{ZONE}"]


@pytest_twisted.ensureDeferred
async def test_sips(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    auth.add(f"_sip._udp.{ZONE}", _srv(10, 0, 5060, f"sip.{ZONE}"))
    auth.add(f"_sips._tcp.{ZONE}", _srv(10, 0, 5063, f"tls.{ZONE}"))
    auth.add(f"sip.{ZONE}", dns.Record_A("192.0.2.5"))
    auth.add(f"tls.{ZONE}", dns.Record_A("192.0.2.6"))
    auth.add(f"plain.{ZONE}", dns.Record_A("192.0.2.7"))
    r = dns_server.resolver(transports={"udp", "tcp", "tls"})
    assert await r.resolve(ZONE, None, None, True) == [Target("tls", "192.0.2.6", 5063)]
    assert dns_server.asked(dns.SRV) == [f"_sips._tcp.{ZONE}"]
    # No _sips._tcp SRV: A/AAAA on 5061 over TLS.
    assert await r.resolve(f"plain.{ZONE}", None, None, True) == [Target("tls", "192.0.2.7", 5061)]
    # A proxy without TLS cannot reach a sips URI at all.
    assert await dns_server.resolver().resolve(ZONE, None, None, True) == []


@pytest_twisted.ensureDeferred
async def test_srv_dot_target_means_no_service(dns_server: DNSServer) -> None:
    auth = dns_server.authority
    auth.add(f"_sip._udp.{ZONE}", dns.Record_SRV(0, 0, 0, b"."))
    auth.add(ZONE, dns.Record_A("192.0.2.10"))
    r = dns_server.resolver()
    # SRV exists, so no A fallback (RFC 3263 4.2), and "." offers nothing.
    assert await r.resolve(ZONE, None, "udp", False) == []
    assert ZONE not in dns_server.asked()


@pytest_twisted.ensureDeferred
async def test_nxdomain_is_empty_and_negatively_cached(dns_server: DNSServer) -> None:
    r = dns_server.resolver()
    assert await r.resolve(f"nowhere.{ZONE}", None, None, False) == []
    asked = len(dns_server.authority.queries)
    assert asked > 0
    assert await r.resolve(f"nowhere.{ZONE}", None, None, False) == []
    assert len(dns_server.authority.queries) == asked


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("host", [
    "a" * 64 + f".{ZONE}",  # a label over 63 octets (the fuzzer's case: a traceback)
    f"www..{ZONE}",  # an empty label
    ".".join(["abcdefghi"] * 25),  # 249 octets: too long with an SRV prefix
])
async def test_name_no_dns_query_can_carry_is_no_host(dns_server: DNSServer, host: str) -> None:
    from twisted.logger import globalLogPublisher

    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        # twisted.python.log.err's events carry "failure", new ones "log_failure".
        if "log_failure" in event or "failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        r = dns_server.resolver()
        for port, transport in ((None, None), (5060, None), (None, "tcp")):
            assert await r.resolve(host, port, transport, False) == []
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == []  # "unexpected failure" with a traceback, before
    assert dns_server.authority.queries == []


@pytest_twisted.ensureDeferred
async def test_cache_avoids_queries_until_ttl(dns_server: DNSServer) -> None:
    dns_server.authority.add(ZONE, dns.Record_A("192.0.2.10"), ttl=1)
    r = dns_server.resolver()
    expected = [Target("udp", "192.0.2.10", 5070)]
    assert await r.resolve(ZONE, 5070, None, False) == expected
    asked = len(dns_server.authority.queries)
    assert await r.resolve(ZONE, 5070, None, False) == expected
    assert len(dns_server.authority.queries) == asked
    # The key includes the port: another port is another lookup.
    assert await r.resolve(ZONE, 5071, None, False) == [Target("udp", "192.0.2.10", 5071)]
    assert len(dns_server.authority.queries) > asked
    # After the record's 1 s TTL, DNS is asked again.
    asked = len(dns_server.authority.queries)
    await deferLater(reactor, 1.1, lambda: None)
    assert await r.resolve(ZONE, 5070, None, False) == expected
    assert len(dns_server.authority.queries) > asked


@pytest_twisted.ensureDeferred
async def test_concurrent_resolves_share_queries(dns_server: DNSServer) -> None:
    dns_server.authority.add(ZONE, dns.Record_A("192.0.2.10"))
    r = dns_server.resolver()
    results = await defer.gatherResults([r.resolve(ZONE, None, None, False) for _ in range(5)])
    assert all(res == [Target("udp", "192.0.2.10", 5060)] for res in results)
    assert dns_server.asked(dns.SRV).count(f"_sip._udp.{ZONE}") == 1
    assert dns_server.asked(dns.A) == [ZONE]


@pytest_twisted.ensureDeferred
async def test_unanswering_server_times_out_to_empty() -> None:
    hole = reactor.listenUDP(0, _BlackHole(), interface="127.0.0.1")
    try:
        dns_client = client.Resolver(servers=[("127.0.0.1", hole.getHost().port)], reactor=reactor)
        r = Resolver(reactor, timeout=0.5, resolver=dns_client)
        start = reactor.seconds()
        assert await r.resolve(ZONE, None, None, False) == []
        elapsed = reactor.seconds() - start
        assert 0.4 <= elapsed < 1.5
        # Let the abandoned queries (given only the 0.5 s budget) wind down
        # so that nothing of this test is still scheduled in the next one.
        await deferLater(reactor, 0.2, lambda: None)
        assert not r._inflight
        # The failure is cached briefly: an immediate retry costs no wait.
        start = reactor.seconds()
        assert await r.resolve(ZONE, None, None, False) == []
        assert reactor.seconds() - start < 0.1
    finally:
        await hole.stopListening()
