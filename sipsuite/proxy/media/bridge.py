"""Which of a bridging relay's two networks each party of a call is on: the
I/E letters of RTPProxy's U and L (Kamailio's ``rtpproxy_manage("ie")``).

A relay with two media addresses (``[relay] media_addresses = [INTERNAL,
EXTERNAL]``, ``--media-address`` twice) bridges two networks: it gives each
party a port on the address of that party's own network, but only when the
command says which network each party is on.  The letters go in the
direction of the message that carries the SDP: the first names the sender's
network (the party whose address the command carries), the second the
receiver's (the party that is given the relay's address and port).  So an
INVITE from the LAN to a public phone is ``U`` with ``IE`` and the answer
coming back is ``L`` with ``EI``.

The proxy decides each party's side once, at the call's first offer, and
keeps it for the call:

* the **offerer**: ``internal`` when the address its media comes from is in
  ``[media] internal_networks``: for a party behind NAT (whose media the
  relay is told to expect from its signalling source) that source, else the
  address its SDP names;
* the **other party**: ``internal`` when every address the request is sent
  to is in the networks (a registered NAT'ed phone: the address it
  registered from; a fork to targets on both sides gets the external
  address, the one both sides usually reach).  A host name counts as
  external: a script that routes by name says the side itself.

A routing script overrides both with ``ctx.media_direction = ("internal",
"external")`` (the request's sender, then its receiver) before the media is
engaged.  Empty ``[media] internal_networks`` and no override: no letters,
the relay's first address for everyone, as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sipsuite.hosts import unbracket
from sipsuite.sip import sdp

__all__ = ["EXTERNAL", "INTERNAL", "CallSides", "crossing", "letters", "media_host", "side_of",
           "sides_of_targets", "validate_direction"]

INTERNAL = "internal"
EXTERNAL = "external"
_LETTER = {INTERNAL: "I", EXTERNAL: "E"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def side_of(host: str | None, networks: Sequence[Network]) -> str:
    """``internal`` when ``host`` is an IP address in ``networks``."""
    if not host:
        return EXTERNAL
    try:
        address = ipaddress.ip_address(unbracket(host))
    except ValueError:
        return EXTERNAL  # a name: see the module docstring
    if address.is_unspecified:
        return EXTERNAL
    return INTERNAL if any(address in net for net in networks) else EXTERNAL


def media_host(sd: sdp.SessionDescription, source: str, *, nat: bool) -> str:
    """Where the offerer's media comes from, as the relay is told: its
    signalling ``source`` when it is behind NAT, else its SDP's first live
    address (``source`` when there is none)."""
    if nat:
        return source
    for address, port in sdp.media_addresses(sd):
        if port and address:
            return address
    return source


def crossing(sides: CallSides | None) -> bool:
    """The call's parties are on the two networks a bridging relay joins:
    neither reaches the other but through the relay, so it is relayed
    whatever ``[media] relay`` says."""
    return sides is not None and sides.offerer != sides.other


def sides_of_targets(hosts: Iterable[str | None], networks: Sequence[Network]) -> str:
    """One side for every target of a request: internal only if all are."""
    sides = {side_of(h, networks) for h in hosts}
    return INTERNAL if sides == {INTERNAL} else EXTERNAL


def validate_direction(value: Any) -> tuple[str, str]:
    """``ctx.media_direction`` as (sender, receiver); ValueError otherwise."""
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, str) and v in _LETTER for v in value)):
        return value[0], value[1]
    raise ValueError("ctx.media_direction must be two of 'internal'/'external' "
                     f"(sender, receiver), not {value!r}")


def letters(sender: str, receiver: str) -> str:
    """The I/E modifier letters for a message from ``sender``'s network to
    ``receiver``'s."""
    return _LETTER[sender] + _LETTER[receiver]


@dataclass(slots=True, frozen=True)
class CallSides:
    """A call's two sides, by the tag of the party that made the first offer."""

    offerer_tag: str
    offerer: str
    other: str

    def modifiers(self, sender_tag: str | None) -> str:
        """The letters for a message (with SDP) sent by the party with this tag."""
        if sender_tag == self.offerer_tag:
            return letters(self.offerer, self.other)
        return letters(self.other, self.offerer)
