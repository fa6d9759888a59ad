"""Routing: Kamailio's routing blocks as methods of a Python class.

``base`` holds what a routing script sees (:class:`Routing`, the
:class:`RequestContext` its hooks receive, :class:`Destination`), ``default``
the default kamailio.cfg as :class:`DefaultRouting`, ``features`` its optional
blocks, ``loader`` the ``[proxy] routing = "package.module:Class"`` loader and
``driver`` the trampoline that runs a hook's coroutine.

``sipsuite.proxy.routing:DefaultRouting`` (the documented default of
``[proxy] routing``) names the class re-exported here.
"""

from sipsuite.proxy.routing.base import Destination, RequestContext, Routing
from sipsuite.proxy.routing.default import DefaultRouting
from sipsuite.proxy.routing.features import RouteState

__all__ = ["DefaultRouting", "Destination", "RequestContext", "RouteState", "Routing"]
