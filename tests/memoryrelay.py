"""An in-process relay without sockets, for tests of relay naming and limits
(tests/rtpproxy/test_rtpproxy_ids.py, tests/proxy/media/test_media_limits.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from sipsuite.rtprelay.ports import PortAllocator


class MemoryPorts(PortAllocator):
    """The dispatcher's MediaPorts without sockets: this tests naming, not media."""

    bind_address = "127.0.0.1"

    def start(self, session: Any) -> None:
        pass

    def address_of(self, leg: Any) -> str | None:
        return "127.0.0.1" if leg.port is not None else None


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the in-process relay answers at once"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]
