"""The network of an offline proxy: listeners that bind nothing, sends that
are captured, and a resolver that answers from a table instead of DNS."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from twisted.internet.defer import Deferred, succeed

from sipsuite.hosts import host_port, is_ip, unbracket
from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.resolver import Target
from sipsuite.proxy.net.transport import TransportLayer
from sipsuite.sip.message import Request, Response
from sipsuite.sip.parser import parse_datagram

__all__ = ["CaptureNet", "Sent", "StaticResolver", "parse_target"]


@dataclass(frozen=True)
class Sent:
    """One message the proxy would have sent: the exact bytes, and where to."""

    data: bytes
    transport: str
    host: str
    port: int
    listener: Any = None

    @cached_property
    def message(self) -> Request | Response:
        return parse_datagram(self.data)

    @property
    def destination(self) -> str:
        """``udp:192.0.2.10:5060``."""
        return f"{self.transport}:{host_port(self.host, self.port)}"

    def __str__(self) -> str:
        msg = self.message
        first = (f"{msg.method} {msg.uri}" if isinstance(msg, Request)
                 else f"{msg.status} {msg.reason}")
        return f"{first} -> {self.destination}"


class CaptureNet(TransportLayer):
    """The transport layer with no socket: ``listen`` only registers the
    listener, every send is handed to ``on_send`` (set by the owner) and
    succeeds, and no TCP connection is ever made."""

    def __init__(self, reactor: Any, handler: Any, tcp_idle_timeout: float = 600.0) -> None:
        super().__init__(reactor, handler, tcp_idle_timeout)
        self.on_send: Callable[[Sent], None] = lambda sent: None

    def listen(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def send(self, data: bytes, transport: str, host: str, port: int, listener: Listener,
             name: str = "", connect: bool = True) -> bool:
        self.on_send(Sent(data, transport, unbracket(host), port, listener))
        return True

    def send_on(self, data: bytes, conn: Any) -> bool:
        host, port = conn.peer
        self.on_send(Sent(data, conn.kind, host, port, conn.listener))
        return True

    def stop(self) -> list[Any]:
        return []


def parse_target(text: str) -> Target:
    """``udp:192.0.2.10:5060``, ``tcp:[2001:db8::1]:5060`` or ``192.0.2.10``
    (UDP, port 5060) -> Target; ValueError otherwise."""
    transport, sep, rest = text.partition(":")
    if not sep or transport.lower() not in ("udp", "tcp", "tls"):
        transport, rest = "udp", text
    host, port = rest, "5060"
    if rest.startswith("["):
        end = rest.find("]")
        host, port = rest[1:end], rest[end + 2:] or "5060"
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad address {text!r}: expected udp:HOST:PORT")
    return Target(transport.lower(), host, int(port))


class StaticResolver:
    """RFC 3263 from a table: ``{"gw.example.com": ["udp:192.0.2.10:5060"]}``;
    an IP address is itself, any other name resolves to nothing (the branch
    then fails with 503, as an unknown name does).  No DNS query is made."""

    def __init__(self, names: Mapping[str, Sequence[str]] | None = None) -> None:
        self.names = {k.lower(): [parse_target(t) for t in v] for k, v in (names or {}).items()}

    def resolve(self, host: str, port: int | None, transport: str | None,
                secure: bool = False) -> Deferred[list[Target]]:
        host = unbracket(host)
        found = self.names.get(host.lower())
        if found is not None:
            return succeed([t if port is None else Target(t.transport, t.host, port, t.name)
                            for t in found if transport is None or t.transport == transport])
        if is_ip(host):
            t = transport or ("tls" if secure else "udp")
            return succeed([Target(t, host, port or (5061 if t == "tls" else 5060))])
        return succeed([])
