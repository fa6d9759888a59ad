"""The in-process relay adapter: ``twistd sipsuite`` runs the relay in the proxy's
process, and the proxy's MediaManager talks to it through this RelayClient
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


class Dispatcher(Protocol):
    """The relay's ``ControlDispatcher``: one command in, one reply out."""

    def handle(self, data: bytes, *, datagram: bool = True) -> bytes: ...


class LocalRelayClient(RelayClient):
    """A RelayClient whose one relay is the relay in this process.

    ``dispatcher`` returns the relay's dispatcher, or None while there is
    none (not built yet): then the relay counts as not answering."""

    def __init__(self, dispatcher: Callable[[], Dispatcher | None], **kwargs: Any) -> None:
        super().__init__([RelaySpec(LOCAL_RELAY_URI)], **kwargs)
        self._dispatcher = dispatcher

    def _exchange_stream(self, relay: RelayState, data: bytes) -> Deferred[bytes]:
        target = self._dispatcher()
        if target is None:
            return fail(NoAnswer("the in-process relay is not running"))
        # Stream framing (no cookie): a retransmission cache has nothing to do here.
        return succeed(target.handle(data, datagram=False))
