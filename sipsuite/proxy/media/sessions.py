"""The relay sessions this proxy holds on its relays, as the proxy sees them:
``handle.relay_sessions()`` and the ``relay.session.created`` / ``.ended``
events of the split deployment (``twistd sip-proxy`` driving a ``twistd
rtp-relay``, an rtpproxy or rtpengine over the control protocol).

A relay session is what the relay's table holds: one per call and media
stream (m= line N), named by the wire Call-ID and the offerer's tag with
``;N`` (Kamailio's ``tag;medianum``), as the relay itself names it.  So an
event carries the same values whichever process it comes from.

- **created**: the first U of a stream that a relay accepted.  A re-INVITE
  (from either party) for the same stream finds the session, as the relay
  does: no second event.
- **ended**: when the relay client stops holding the call (its ``forgotten``
  callback): ``deleted`` (the relay accepted the D: BYE, a failed or
  cancelled call), ``gone`` (the relay had no such session any more: it
  ended it itself, on its media timeout), ``failed`` (the D went
  unanswered: the relay ends the session on its own timeout), ``idle`` (no
  command for ``call_idle_time``) or ``evicted`` (``max_calls`` newer
  calls).

The proxy cannot see media: ``relay.session.latched`` is not raised here.

Sessions on a relay in this very process (``twistd sipsuite``) are left to
the relay's own table (sipsuite.relayevents), which knows latching and its
own timeouts: their URIs are in :attr:`RelaySessions.in_process`, and
nothing is tracked or raised for them, so no session is reported twice.

The table is kept always (a dict entry per relayed call, like the media
manager's per-source charges): ``relay_sessions()`` needs it.  Building an
event costs nothing while nobody subscribes (``EventBus.wants``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sipsuite.rtpproxy import protocol as rp
from sipsuite.rtpproxy.ids import encode_call_id, encode_id

if TYPE_CHECKING:
    from sipsuite.eventbus import EventBus

__all__ = ["HeldCall", "RelaySessions"]

CREATED = "relay.session.created"
ENDED = "relay.session.ended"


class HeldCall:
    """One call's sessions on one relay: stream index -> (tag;N, created)."""

    __slots__ = ("call_id", "relay", "streams")

    def __init__(self, call_id: str, relay: str) -> None:
        self.call_id = call_id  # as sent to the relay (sipsuite.rtpproxy.ids)
        self.relay = relay
        self.streams: dict[int, tuple[str, float]] = {}


class RelaySessions:
    """The sessions one media manager holds, by the client's call key."""

    def __init__(self, bus: Callable[[], EventBus | None], wall: Callable[[], float]) -> None:
        """``bus``: the event bus, or None (no events module); ``wall``:
        epoch seconds, for ``created``."""
        self._bus = bus
        self._wall = wall
        self.calls: dict[str, HeldCall] = {}
        #: Relay URIs whose sessions the relay's own table reports (the
        #: suite's relay, in this process): not tracked here.
        self.in_process: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return sum(len(c.streams) for c in self.calls.values())

    def opened(self, key: str, call_id: str, from_tag: str, media_index: int,
               relay: str | None) -> None:
        """A relay (URI ``relay``) accepted a U for stream ``media_index``
        of the call (held by the client as ``key``); ``from_tag`` is the
        offerer's, as the U carried it."""
        if relay is None or relay in self.in_process:
            return
        call = self.calls.get(key)
        if call is None:
            # A call sticks to its relay until the client forgets it (and
            # tells closed()), so a held call's relay is this one.
            call = self.calls[key] = HeldCall(encode_call_id(call_id), relay)
        if media_index in call.streams:
            return
        tag = rp.media_tag(encode_id(from_tag), media_index)
        call.streams[media_index] = (tag, self._wall())
        bus = self._bus()
        if bus is not None and bus.wants(CREATED):
            bus.emit(CREATED, call_id=call.call_id, from_tag=tag, relay=relay)

    def closed(self, key: str, why: str) -> None:
        """The client stopped holding the call: each of its sessions ended."""
        call = self.calls.pop(key, None)
        if call is None:
            return
        bus = self._bus()
        if bus is None or not bus.wants(ENDED):
            return
        for tag, _created in call.streams.values():
            bus.emit(ENDED, call_id=call.call_id, from_tag=tag, reason=why, relay=call.relay)

    def sessions(self) -> list[dict[str, Any]]:
        """What ``handle.relay_sessions()`` shows for relays elsewhere."""
        return [{"call_id": call.call_id, "from_tag": tag, "relay": call.relay,
                 "created": created}
                for call in self.calls.values() for tag, created in call.streams.values()]
