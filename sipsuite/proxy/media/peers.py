"""What a RelayClient keeps per relay and how it reaches one: the relay's
state (up or down, counters, capability check), a command waiting for its
reply, and the two ways a command travels (a datagram on the client's
socket; one stream connection per command for unix: and tls: relays, as
Kamailio's rtpproxy module does). Split from :mod:`sipsuite.proxy.media.client`,
which drives them.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure

from sipsuite.config.specs import RelaySpec, parse_relay_uri
from sipsuite.rtpproxy import controller as rc

if TYPE_CHECKING:
    from sipsuite.proxy.media.client import RelayClient

__all__ = ["ControlSocket", "NoAnswer", "PendingCommand", "RelayState", "StreamExchange",
           "StreamFactory", "call_key"]


class NoAnswer(Exception):
    """Internal: the relay said nothing usable in time (timeout, refused,
    closed); turned into RelayUnavailable after marking the relay down."""


class RelayState:
    __slots__ = ("spec", "address", "hash_prefix", "up", "down_until", "last_error", "sent",
                 "retransmits", "timeouts", "errors", "calls", "capable", "checking", "recheck")

    def __init__(self, spec: RelaySpec) -> None:
        self.spec = spec
        self.address = parse_relay_uri(spec.uri)
        self.hash_prefix = spec.uri.encode("utf-8") + b"\0"
        # Optimistic until a check says otherwise: start-up checks every relay
        # at once, and a relay that is really away costs one timeout and a
        # failover, not a window in which every call goes unrelayed.
        self.up = True
        self.down_until: float | None = None
        self.last_error = ""
        self.sent = 0
        self.retransmits = 0
        self.timeouts = 0
        self.errors = 0
        self.calls = 0
        self.capable = False  # VF 20050322 answered 1 since the relay last came up
        self.checking = False
        self.recheck: Any = None  # IDelayedCall of the check after disable_time

    @property
    def uri(self) -> str:
        return self.spec.uri

    @property
    def stream(self) -> bool:
        return self.address.scheme in ("unix", "tls")

    @property
    def media_host(self) -> str | None:
        # Where a U/L reply without an address says the media is: the relay's
        # own control host, as good a guess as any for a relay on another
        # host; a unix-socket relay is on this host and the caller fills in
        # the address the SIP message arrived on (Kamailio's rcv.dst_ip).
        return self.address.host or None

    def sent_from(self, addr: tuple[Any, ...]) -> bool:
        # The relay answers from the address the command reached: a reply
        # from anywhere else is someone guessing cookies.
        if addr[1] != self.address.port:
            return False
        host = addr[0]
        if host == self.address.host:
            return True
        try:
            return ipaddress.ip_address(host) == ipaddress.ip_address(self.address.host)
        except ValueError:
            return False


class PendingCommand:
    __slots__ = ("relay", "data", "deferred", "deadline", "timer")

    def __init__(self, relay: RelayState, data: bytes, deferred: Deferred[rc.Reply],
                 deadline: float) -> None:
        self.relay = relay
        self.data = data
        self.deferred = deferred
        self.deadline = deadline
        self.timer: Any = None


class ControlSocket(protocol.DatagramProtocol):
    def __init__(self, client: RelayClient) -> None:
        self.client = client

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.client._datagram(datagram, addr)


class StreamExchange(protocol.Protocol):
    """One command over one stream connection: write it, read one reply, close."""

    # A TCP connection (or TLS over one): abortConnection ends a relay that
    # does not answer within the command timeout.
    transport: ITCPTransport | None

    def __init__(self, data: bytes, done: Deferred[bytes]) -> None:
        self.data = data
        self.done = done
        self.buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        # Every reply ends in a newline; Kamailio takes what one read returns,
        # waiting for the newline is the same thing without the short-read risk.
        if self.buffer.endswith(b"\n") and not self.done.called:
            self.done.callback(self.buffer)
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if self.buffer:  # a relay that closes instead of ending with a newline
            self.done.callback(self.buffer)
        else:
            self.done.errback(NoAnswer("connection closed without a reply"))


class StreamFactory(protocol.ClientFactory):
    def __init__(self, data: bytes, done: Deferred[bytes]) -> None:
        self.data = data
        self.done = done
        self.exchange: StreamExchange | None = None

    def buildProtocol(self, addr: Any) -> StreamExchange:
        self.exchange = StreamExchange(self.data, self.done)
        return self.exchange

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(NoAnswer(f"cannot connect: {reason.getErrorMessage()}"))


def call_key(call_id: str) -> str:
    # Kamailio may append ";<via branch>" to the Call-ID it sends; a Call-ID
    # itself never holds ";" (RFC 3261 word), so what precedes it is the call.
    return call_id.partition(";")[0]
