"""Location service: where a user at one of our domains can be reached.

``LocationStore`` is the interface the routing uses; this issue ships the
static bindings from ``[location.static]`` (Kamailio's ``kamctl ul add``
permanent entries). The registrar adds dynamic stores behind the same
interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sipsuite.sip.uri import URI


@dataclass(slots=True)
class Binding:
    """One contact of an address-of-record."""

    contact: URI
    q: float = 1.0
    expires: float | None = None  # absolute time; None = permanent
    path: list[str] = field(default_factory=list)


class LocationStore(Protocol):
    async def lookup(self, user: str) -> list[Binding]:
        """Every current binding of ``user`` (the AOR's user part; one
        namespace for all local domains, like Kamailio's use_domain=0)."""
        ...


class StaticLocationStore:
    """Permanent bindings from the config; never expire."""

    def __init__(self, static: dict[str, list[str]]) -> None:
        self.bindings: dict[str, list[Binding]] = {
            user: [Binding(URI.parse(c)) for c in contacts] for user, contacts in static.items()
        }

    async def lookup(self, user: str) -> list[Binding]:
        return list(self.bindings.get(user, ()))
