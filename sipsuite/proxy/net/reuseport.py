"""Sockets for worker processes ([proxy] workers > 1, docs/architecture.md
"Worker processes").

Every worker binds each listener of [proxy] listen with SO_REUSEPORT: the
kernel (Linux) spreads datagrams and connections over the workers by their
address 4-tuple, so one source (a caller's retransmissions, its ACK for a
non-2xx, its CANCEL) always reaches the same worker.  Twisted binds in
``_bindSocket`` right after ``createInternetSocket``: these ports set the
option in between, which listenUDP/listenTCP cannot.

Answers from downstream must reach the worker that sent the request: each
worker also binds a private UDP socket on the listener's address and its
own port and names that port in its Via (``Listener.via_port``). Its
requests leave from the shared port (a NAT'ed phone lets only that through)
unless their Via asks for rport; an answer that reaches the shared port
anyway is passed to the private port its Via names (transport.py,
``TransportLayer.steer``).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp, udp

from sipsuite.proxy.net.localaddr import PktinfoPort

__all__ = ["ReusePktinfoPort", "ReuseTCPPort", "ReuseUDPPort", "reuse_port_available"]


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


class _ReusePort:
    def createInternetSocket(self) -> socket.socket:
        sock: socket.socket = super().createInternetSocket()  # type: ignore[misc]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


class ReuseUDPPort(_ReusePort, udp.Port):
    """reactor.listenUDP with SO_REUSEPORT."""


class ReusePktinfoPort(_ReusePort, PktinfoPort):
    """localaddr.listen_pktinfo with SO_REUSEPORT."""


class ReuseTCPPort(_ReusePort, tcp.Port):
    """reactor.listenTCP with SO_REUSEPORT."""


def start(port: Any) -> Any:
    port.startListening()
    return port
