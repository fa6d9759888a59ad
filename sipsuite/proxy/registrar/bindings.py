"""The location service's data: a binding, the store-unavailable error and
the "current bindings" rule.

Data only (no store, no Twisted): what the routing script, the services'
interfaces (``sipsuite.proxy.services``) and the stores share.  The stores
are in ``location.py`` (memory) and ``redis/location.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sipsuite.sip.uri import URI

__all__ = ["Binding", "StoreUnavailable", "current"]


class StoreUnavailable(Exception):
    """The store's backend (Redis) did not answer, or not in time."""


@dataclass(slots=True)
class Binding:
    """One contact of an AOR, with what the registrar learnt with it."""

    contact: str  # the Contact URI exactly as registered (its URI params and headers kept)
    expires: float | None = None  # absolute epoch seconds; None: permanent
    q: float = 1.0
    call_id: str = ""
    cseq: int = 0
    path: list[str] = field(default_factory=list)  # Path header values, first = nearest to us
    received: str | None = None  # "udp:IP:PORT" the REGISTER came from (Kamailio's received)
    socket: str | None = None  # "udp:IP:PORT" of our listener that took it
    instance: str | None = None  # +sip.instance (RFC 5626)
    reg_id: int | None = None
    user_agent: str = ""
    nat: bool = False  # the Contact is not reachable from here: use ``received``
    updated: float = 0.0  # epoch seconds of the last REGISTER that touched it
    # The flow it registered over (RFC 5626; for TCP/TLS also without
    # outbound): a Route URI naming the node that holds it, its user part a
    # flow token only that node can read (sipsuite.proxy.registrar.outbound).
    flow: str | None = None
    outbound: bool = False  # RFC 5626 outbound: reached only over ``flow``, never its Contact

    @property
    def uri(self) -> URI:
        return URI.parse(self.contact)

    def remaining(self, now: float) -> int | None:
        """Whole seconds left (rounded, so a binding just stored for 3600 s
        says 3600), None for a permanent binding."""
        return None if self.expires is None else max(0, round(self.expires - now))

    def to_dict(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies field by field through
        # generic code, several times slower on a REGISTER's path.
        return {
            "contact": self.contact, "expires": self.expires, "q": self.q,
            "call_id": self.call_id, "cseq": self.cseq, "path": list(self.path),
            "received": self.received, "socket": self.socket, "instance": self.instance,
            "reg_id": self.reg_id, "user_agent": self.user_agent, "nat": self.nat,
            "updated": self.updated, "flow": self.flow, "outbound": self.outbound,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def current(bindings: list[Binding], now: float) -> list[Binding]:
    """The bindings not yet expired, highest q first (stable otherwise)."""
    live = [b for b in bindings if b.expires is None or b.expires > now]
    live.sort(key=lambda b: -b.q)
    return live
