"""The SIP proxy and registrar.

What a routing script imports lives here::

    from sipsuite.proxy import DefaultRouting, RequestContext

``core`` receives, checks, routes and relays (the transactions), ``net`` is
the transports and the resolver, ``routing`` the routing classes, ``modules``
the Kamailio-module twins (auth, antiflood, accounting, nat, natping,
dispatcher), ``registrar`` the registrar and its location stores, ``media``
the RTP relay client, and ``service`` builds them from the configuration.
A routing class reaches the modules' services by key:
``self.core.modules.get(NAT)`` (None when the module is off).
"""

from sipsuite.proxy.modules.nat import add_contact_alias, handle_ruri_alias, signalling_nat
from sipsuite.proxy.registrar.bindings import StoreUnavailable
from sipsuite.proxy.routing import DefaultRouting, Destination, RequestContext, RouteState, Routing
from sipsuite.proxy.services import DISPATCHER, MEDIA, NAT

__all__ = [
    "DISPATCHER",
    "MEDIA",
    "NAT",
    "DefaultRouting",
    "Destination",
    "RequestContext",
    "RouteState",
    "Routing",
    "StoreUnavailable",
    "add_contact_alias",
    "handle_ruri_alias",
    "signalling_nat",
]
