"""TCP/TLS hardening in the transport, on a Clock: the whole-message read
timeout ([proxy] tcp_message_timeout), and the connection limits
(tcp_max_connections, tcp_max_per_source, descriptor headroom) with their
refusal counts and rate-limited warnings. The same behaviour against a real
proxy process is in tests/integration/test_tcp_limits.py."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from sipsuite.fdlimit import nofile_limit, open_descriptors, raise_nofile_limit
from sipsuite.proxy.net import tcplimits
from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.stream import Admission, InboundFactory, SIPStreamProtocol
from sipsuite.proxy.net.tcplimits import ConnectionLimits
from sipsuite.proxy.net.transport import TransportLayer

TIMEOUT = 2.0
OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-1\r\n"
           b"From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
           b"Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
           b"Content-Length: 0\r\n\r\n")


class Layer:
    """A TransportLayer on a Clock whose handler keeps what it is given."""

    def __init__(self, kind: str = "tcp") -> None:
        self.clock = Clock()
        self.got: list[Any] = []
        self.layer = TransportLayer(self.clock, lambda msg, src: self.got.append(msg),
                                    tcp_idle_timeout=600.0, tcp_message_timeout=TIMEOUT)
        self.listener = Listener(kind, "127.0.0.1", 5060, "127.0.0.1")

    def accept(self, host: str = "192.0.2.1", port: int = 40000) -> tuple[SIPStreamProtocol | None,
                                                                         StringTransport]:
        addr = IPv4Address("TCP", host, port)
        proto = Admission(self.layer, InboundFactory(self.layer, self.listener)).buildProtocol(addr)
        wire = StringTransport(peerAddress=addr)
        if proto is not None:
            proto.makeConnection(wire)
        return proto, wire

    def close(self, proto: SIPStreamProtocol) -> None:
        proto.connectionLost(None)


@pytest.fixture
def warnings() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "refusing TCP/TLS" in event.get("log_format", ""):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# --------------------------------------------------------------------------- message timeout


def test_slowloris_is_closed_one_timeout_after_its_first_byte() -> None:
    """One byte every 0.3 s resets the idle timer each time; the message,
    still incomplete 2 s after its first byte, closes the connection."""
    t = Layer()
    proto, wire = t.accept()
    assert proto is not None
    sent = 0
    while not wire.disconnecting and sent < len(OPTIONS) - 1:
        proto.dataReceived(OPTIONS[sent:sent + 1])
        sent += 1
        t.clock.advance(0.3)
    assert wire.disconnecting and wire.disconnected, "not aborted"
    # the 7th byte came at 1.8 s; the timer fired at 2.0, before the 8th
    assert sent == 7 and t.clock.seconds() == pytest.approx(2.1)
    assert t.layer.drops == {"tcp_message_timeout": 1}
    assert t.got == []


def test_crlf_keepalives_between_messages_start_no_timer() -> None:
    """RFC 5626 pings every second for 10 s: each answered, nothing closed."""
    t = Layer()
    proto, wire = t.accept()
    assert proto is not None
    for _ in range(10):
        proto.dataReceived(b"\r\n")
        t.clock.advance(0.5)
        proto.dataReceived(b"\r\n")  # a ping split in two reads
        t.clock.advance(0.5)
    assert not wire.disconnecting
    assert wire.value() == b"\r\n" * 10
    assert proto.message_call is None


def test_each_message_has_its_own_timeout() -> None:
    """Four messages, each sent in two halves 1.5 s apart (6 s in all, three
    times the timeout): each is complete within 2 s of its first byte, so
    the connection stays and every message is handled."""
    t = Layer()
    proto, wire = t.accept()
    assert proto is not None
    half = len(OPTIONS) // 2
    for _ in range(4):
        proto.dataReceived(OPTIONS[:half])
        t.clock.advance(1.5)
        proto.dataReceived(OPTIONS[half:])
        t.clock.advance(0.1)
    t.clock.advance(5.0)
    assert not wire.disconnecting and len(t.got) == 4
    assert proto.message_call is None and t.layer.drops == {}


def test_a_message_begun_in_the_read_that_ends_another_is_timed_from_the_next_read() -> None:
    t = Layer()
    proto, wire = t.accept()
    assert proto is not None
    proto.dataReceived(OPTIONS + OPTIONS[:10])
    assert len(t.got) == 1
    t.clock.advance(1.0)
    proto.dataReceived(OPTIONS[10:11])
    t.clock.advance(TIMEOUT - 0.01)
    assert not wire.disconnecting
    t.clock.advance(0.02)
    assert wire.disconnected and t.layer.drops == {"tcp_message_timeout": 1}


def test_the_timeout_is_read_when_a_message_begins() -> None:
    """cfg set proxy.tcp_message_timeout: messages begun later take the new value."""
    t = Layer()
    proto, wire = t.accept()
    assert proto is not None
    t.layer.tcp_message_timeout = 5.0
    proto.dataReceived(b"OPT")
    t.clock.advance(4.9)
    assert not wire.disconnecting
    t.clock.advance(0.2)
    assert wire.disconnected


def test_tls_handshake_is_timed_too() -> None:
    """A TLS peer that never finishes the handshake is closed after the
    timeout; one that does is not, and its messages are timed as on TCP."""
    t = Layer("tls")
    stalled, wire = t.accept()
    assert stalled is not None
    t.clock.advance(TIMEOUT + 0.1)
    assert wire.disconnected
    stalled.connectionLost(None)
    proto, wire = t.accept(port=40001)
    assert proto is not None
    t.clock.advance(1.0)
    proto.handshakeCompleted()
    t.clock.advance(TIMEOUT + 1.0)
    assert not wire.disconnecting
    proto.dataReceived(b"OPT")
    t.clock.advance(TIMEOUT + 0.1)
    assert wire.disconnected


# --------------------------------------------------------------------------- limits


def test_per_source_limit_refuses_the_next_from_that_address_only(
        warnings: list[dict[str, Any]]) -> None:
    t = Layer()
    t.layer.limits.max_per_source = 3
    conns = [t.accept("192.0.2.1", 40000 + i)[0] for i in range(3)]
    assert all(c is not None for c in conns)
    refused, _ = t.accept("192.0.2.1", 40010)
    assert refused is None
    other, _ = t.accept("192.0.2.2", 40000)
    assert other is not None
    assert t.layer.drops == {"tcp_max_per_source": 1}
    assert [w["r"] for w in warnings] == [
        "[proxy] tcp_max_per_source (3) reached for 192.0.2.1"]
    # one closes: that address may open one again
    t.close(conns[0])  # type: ignore[arg-type]
    assert t.accept("192.0.2.1", 40011)[0] is not None
    assert t.layer.limits.by_source == {"192.0.2.1": 3, "192.0.2.2": 1}
    assert t.layer.limits.total == 4


def test_global_limit_counts_every_source_and_connections_we_open() -> None:
    t = Layer()
    t.layer.limits.max_connections = 4
    t.layer.reactor = _NoConnect()
    for i in range(3):
        assert t.accept(f"192.0.2.{i + 1}")[0] is not None
    # one to a next hop (refused there, or not: it counts while it is tried)
    assert t.layer.send(b"x", "tcp", "198.51.100.1", 5060, t.listener)
    assert t.layer.limits.total == 4 and t.layer.limits.by_source.get("198.51.100.1") is None
    assert t.accept("192.0.2.9")[0] is None
    assert not t.layer.send(b"x", "tcp", "198.51.100.2", 5060, t.listener)
    assert t.layer.drops == {"tcp_max_connections": 2}
    # the next hop's connection fails: it no longer counts
    t.layer.reactor.factories[0].clientConnectionFailed(None, None)
    assert t.layer.limits.total == 3
    assert t.accept("192.0.2.9")[0] is not None


class _NoConnect:
    """A reactor whose connectTCP only records the factory."""

    def __init__(self) -> None:
        self.factories: list[Any] = []

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30) -> None:
        self.factories.append(factory)


def test_descriptor_headroom_refuses_before_the_process_runs_out() -> None:
    """With 1000 descriptors allowed and 860 open, a connection that would
    leave fewer than 128 free is refused; the count is taken again after
    RECOUNT_INTERVAL, and connections opened meanwhile are added to it."""
    fds = [860]
    now = [0.0]
    limits = ConnectionLimits(max_connections=10_000, max_per_source=10_000,
                              descriptors=lambda: fds[0], fd_limit=lambda: 1000,
                              now=lambda: now[0])
    admitted = 0
    while limits.refusal("192.0.2.1") is None:
        limits.opened("192.0.2.1")
        admitted += 1
    assert limits.refusal("192.0.2.1") == "tcp_descriptors"
    assert admitted == 1000 - 128 - 860  # then exactly 128 are free
    fds[0] = 700  # something else closed many
    assert limits.refusal("192.0.2.1") == "tcp_descriptors"  # the count is still the old one
    now[0] += tcplimits.RECOUNT_INTERVAL
    assert limits.refusal("192.0.2.1") is None


def test_no_descriptor_count_leaves_the_other_limits() -> None:
    limits = ConnectionLimits(max_connections=2, descriptors=lambda: None, fd_limit=lambda: 10)
    assert limits.refusal("192.0.2.1") is None


def test_a_limit_warns_once_a_minute_with_the_count(warnings: list[dict[str, Any]]) -> None:
    now = [100.0]
    limits = ConnectionLimits(max_connections=1, now=lambda: now[0])
    limits.opened("192.0.2.1")
    for _ in range(50):
        assert limits.refusal("192.0.2.2") == "tcp_max_connections"
        limits.refused("tcp_max_connections", "192.0.2.2")
        now[0] += 1.0
    limits.refused("tcp_max_per_source", "192.0.2.3")  # another limit: its own warning
    assert [w["n"] for w in warnings] == [1, 1]
    now[0] += 10.0
    limits.refused("tcp_max_connections", "192.0.2.4")
    assert [w["n"] for w in warnings] == [1, 1, 50]
    assert warnings[2]["r"] == "[proxy] tcp_max_connections (1) reached, latest from 192.0.2.4"
    assert all(w["log_level"].name == "warn" for w in warnings)


def test_configure_takes_the_runtime_settings() -> None:
    from sipsuite.config import load_config

    t = Layer()
    proxy = load_config(None).proxy
    t.layer.configure(proxy)
    assert (t.layer.tcp_message_timeout, t.layer.limits.max_connections,
            t.layer.limits.max_per_source) == (20.0, 2048, 64)


# --------------------------------------------------------------------------- descriptors


def test_open_descriptors_counts_this_process() -> None:
    before = open_descriptors()
    assert before is not None
    with open(__file__) as _a, open(__file__) as _b:
        assert open_descriptors() == before + 2


def test_raise_nofile_limit_takes_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        assert nofile_limit() == lower
        assert raise_nofile_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
