"""The in-process relay adapter: ``twistd sipsuite`` runs the relay in the proxy's
process, and the proxy's media module talks to it through this RelayClient
without a socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from sipsuite.proxy.media.client import (
    RelayClient,
    RelaySpec,
)
from sipsuite.proxy.media.peers import NoAnswer, RelayState

#: The name the in-process relay has in the client's status and logs.
LOCAL_RELAY_URI = "unix:in-process"


class RelayCommandHandler(Protocol):
    """The relay's ``ControlHandler``: one rtpproxy command in, one reply out."""

    def handle(self, data: bytes, *, datagram: bool = True) -> bytes: ...


class LocalRelayClient(RelayClient):
    """A RelayClient whose one relay is the relay in this process.

    ``handler`` returns the relay's command handler, or None while there is
    none (not built yet): then the relay counts as not answering."""

    def __init__(self, handler: Callable[[], RelayCommandHandler | None], **kwargs: Any) -> None:
        super().__init__([RelaySpec(LOCAL_RELAY_URI)], **kwargs)
        self._handler = handler

    def _exchange_stream(self, relay: RelayState, data: bytes) -> Deferred[bytes]:
        target = self._handler()
        if target is None:
            return fail(NoAnswer("the in-process relay is not running"))
        # Stream framing (no cookie): a retransmission cache has nothing to do here.
        return succeed(target.handle(data, datagram=False))
