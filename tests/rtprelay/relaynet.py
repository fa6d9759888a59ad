"""Helpers for the relay's socket tests: a relay in the test reactor, UDP
peers that play control client, caller, callee or attacker, RTP packets.

Everything binds loopback ports picked at run time; the media port range is a
random slice below Linux's ephemeral range, and the relay skips any pair in it
that another program holds.
"""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.defer import DeferredQueue

from sipsuite.config import RelayConfig, parse_control
from sipsuite.rtprelay.service import RelayService

RECV_TIMEOUT = 2.0


def rtp(seq: int = 1, ssrc: int = 0x1234ABCD, payload: bytes = b"\xd5" * 160,
        pt: int = 8) -> bytes:
    """An RTP v2 packet (PCMA by default, 20 ms of it)."""
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + payload


def rtcp_rr(ssrc: int = 0x1234ABCD) -> bytes:
    """An empty RTCP receiver report."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def port_range(size: int = 40) -> tuple[int, int]:
    """A random even-aligned range of `size` ports below 32768 (Linux's
    ephemeral ports start there, so the OS hands none of these out)."""
    low = random.randrange(20000, 32000 - size, 2)
    return low, low + size - 1


def relay_config(*, control: list[str] | None = None, addresses: list[str] | None = None,
                 ports: tuple[int, int] | None = None, **kwargs: Any) -> RelayConfig:
    return RelayConfig(
        control=[parse_control(c) for c in (control or ["udp:127.0.0.1:0"])],
        media_addresses=addresses or ["127.0.0.1"],
        ports=ports or port_range(),
        learn_window=kwargs.pop("learn_window", 3.0),
        media_timeout=kwargs.pop("media_timeout", 60.0),
        hold_timeout=kwargs.pop("hold_timeout", 3600.0),
        drain_time=kwargs.pop("drain_time", 30.0),
        max_sessions_per_call=kwargs.pop("max_sessions_per_call", 32),
        # Loopback parties never take the kernel path; "off" keeps these
        # tests the same on a host that forwards IP.
        kernel=kwargs.pop("kernel", "off"),
        workers=kwargs.pop("workers", 1),
        **kwargs,
    )


class FakeClock:
    """A monotonic clock the test moves: time.monotonic's stand-in."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Peer(protocol.DatagramProtocol):
    """A UDP socket of the test: sends, and queues what it receives."""

    noisy = False

    def __init__(self) -> None:
        self.queue: DeferredQueue[tuple[bytes, tuple[str, int]]] = DeferredQueue()
        self.port_obj: Any = None

    @property
    def addr(self) -> tuple[str, int]:
        host = self.port_obj.getHost()
        return host.host, host.port

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.queue.put((data, (addr[0], addr[1])))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.write(data, addr)

    async def recv(self, timeout: float = RECV_TIMEOUT) -> tuple[bytes, tuple[str, int]]:
        from twisted.internet import reactor

        d = self.queue.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def command(self, relay_addr: tuple[str, int], text: str | bytes) -> str:
        """Send one control command, return the reply text (its cookie included)."""
        data = text.encode("latin-1") if isinstance(text, str) else text
        self.send(data, relay_addr)
        reply, _ = await self.recv()
        return reply.decode("latin-1").rstrip("\n")

    def drain(self) -> list[tuple[bytes, tuple[str, int]]]:
        """What arrived and nobody recv()'d yet; the queue is empty afterwards."""
        got = list(self.queue.pending)
        self.queue.pending.clear()
        return got


def open_peer(reactor: Any, host: str = "127.0.0.1") -> Peer:
    peer = Peer()
    peer.port_obj = reactor.listenUDP(0, peer, interface=host)
    return peer


async def settle(reactor: Any, seconds: float = 0.05) -> None:
    """Let packets in flight on loopback arrive."""
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


class UnixClient(protocol.Protocol):
    """One unix-socket command, Kamailio style: write, read the reply until
    the relay closes the connection."""

    def __init__(self, command: bytes) -> None:
        self.command = command
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.command)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.data)


async def unix_command(reactor: Any, path: str, command: str | bytes) -> str:
    data = command.encode("latin-1") if isinstance(command, str) else command
    client = UnixClient(data)
    factory = protocol.ClientFactory()
    factory.protocol = lambda: client  # type: ignore[assignment]
    reactor.connectUNIX(path, factory, timeout=RECV_TIMEOUT)
    client.done.addTimeout(RECV_TIMEOUT, reactor)
    reply = await client.done
    return reply.decode("latin-1")


@asynccontextmanager
async def running_relay(reactor: Any, config: RelayConfig, **kwargs: Any
                        ) -> AsyncIterator[RelayService]:
    """A started RelayService; stopped (without drain wait) afterwards."""
    relay = RelayService(config, reactor, **kwargs)
    relay.startService()
    try:
        yield relay
    finally:
        await relay.stop_now()


def control_addr(relay: RelayService, index: int = 0) -> tuple[str, int]:
    host = relay.listeners[index].getHost()
    return host.host, host.port


class Call:
    """A call through the relay: caller and callee peers, and the relay ports
    each sends to once offer (U) and answer (L) are done."""

    def __init__(self, reactor: Any, relay: RelayService, call_id: str = "call-1",
                 from_tag: str = "ftag;1", to_tag: str = "ttag;1") -> None:
        self.reactor = reactor
        self.relay = relay
        self.call_id = call_id
        self.from_tag = from_tag
        self.to_tag = to_tag
        self.control = open_peer(reactor)
        self.caller = open_peer(reactor)
        self.callee = open_peer(reactor)
        self.port_for_callee = 0  # the relay port in the offer the callee gets
        self.port_for_caller = 0  # the relay port in the answer the caller gets
        self.peers = [self.control, self.caller, self.callee]
        self._seq = 0

    def cookie(self) -> str:
        self._seq += 1
        return f"t{self._seq}_{self.call_id}"

    async def offer(self, addr: tuple[str, int] | None = None, modifiers: str = "") -> str:
        host, port = addr or self.caller.addr
        return await self.control.command(
            control_addr(self.relay),
            f"{self.cookie()} U{modifiers} {self.call_id} {host} {port} {self.from_tag}")

    async def answer(self, addr: tuple[str, int] | None = None, modifiers: str = "") -> str:
        host, port = addr or self.callee.addr
        return await self.control.command(
            control_addr(self.relay),
            f"{self.cookie()} L{modifiers} {self.call_id} {host} {port} {self.from_tag}"
            f" {self.to_tag}")

    async def setup(self) -> None:
        offer = await self.offer()
        self.port_for_callee = int(offer.split()[1])
        answer = await self.answer()
        self.port_for_caller = int(answer.split()[1])

    def close(self) -> None:
        for peer in self.peers:
            peer.port_obj.stopListening()


def open_pair(reactor: Any) -> tuple[Peer, Peer]:
    """Two peers on ports p (even) and p + 1: a party's RTP and RTCP sockets."""
    for _ in range(100):
        # Below the relays' test ranges (port_range), so they never meet.
        low = random.randrange(10000, 19998, 2)
        rtp_peer, rtcp_peer = Peer(), Peer()
        try:
            rtp_peer.port_obj = reactor.listenUDP(low, rtp_peer, interface="127.0.0.1")
        except Exception:
            continue
        try:
            rtcp_peer.port_obj = reactor.listenUDP(low + 1, rtcp_peer, interface="127.0.0.1")
        except Exception:
            rtp_peer.port_obj.stopListening()
            continue
        return rtp_peer, rtcp_peer
    raise RuntimeError("no free consecutive port pair on 127.0.0.1")
