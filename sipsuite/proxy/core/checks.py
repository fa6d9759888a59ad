"""Who the proxy is, request validation (RFC 3261 16.3) and Route
preprocessing (16.4): a mixin of :class:`sipsuite.proxy.core.proxy.ProxyCore`,
what every request goes through before the routing class sees it.
"""

from __future__ import annotations

import hashlib
import ipaddress

from sipsuite.hosts import unbracket
from sipsuite.proxy.net.transport import TransportLayer
from sipsuite.sip.headers import NameAddr
from sipsuite.sip.message import Request
from sipsuite.sip.uri import URI

SUPPORTED_SCHEMES = ("sip", "sips", "tel")
# Our branches: cookie + tag + loop hash + '.' + random (16.6 step 8), so a
# request that comes back to us unchanged is recognised as a loop (16.3 step 4).
BRANCH_TAG = "z9hG4bKsps"


class RequestChecks:
    """Who this proxy is (its addresses, ports, domains, trusted networks,
    all kept by ProxyCore), and 16.3 / 16.4 built on that."""

    addresses: set[str]
    ports: set[int]
    domains: set[str]
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    transport: TransportLayer

    # -- who we are ---------------------------------------------------------------
    def is_myself(self, host: str, port: int | None) -> bool:
        h = unbracket(host).lower()
        if h not in self.addresses and h not in self.domains:
            return False
        if port is None:
            return 5060 in self.ports or 5061 in self.ports or h in self.domains
        return port in self.ports

    def is_record_route_uri(self, uri: URI) -> bool:
        """True if ``uri`` is one we write in Record-Route (addresses.
        record_route_value): no user, the advertised address of a listener
        and its port, which we always write. A domain of ours is not one."""
        if uri.scheme not in ("sip", "sips") or uri.user or uri.port is None:
            return False
        host = unbracket(uri.host).lower()
        return any(uri.port == (li.advertise_port or li.port)
                   and unbracket(li.advertise).lower() == host
                   for li in self.transport.all_listeners())

    def is_local_domain(self, host: str) -> bool:
        h = unbracket(host).lower()
        return h in self.domains or h in self.addresses

    def is_own_address(self, host: str) -> bool:
        """An address of one of our listeners (every local address of a
        wildcard one, and those messages reached it on): antiflood never
        bans it.  A domain of ours is not an address."""
        return unbracket(host).lower() in self.addresses

    def is_trusted(self, host: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def _validate(self, req: Request) -> tuple[int, str, list[tuple[str, str]]] | None:
        if req.uri.scheme not in SUPPORTED_SCHEMES:
            return (416, "Unsupported URI Scheme", [])
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            return (483, "Too Many Hops", [])
        if req.method != "ACK" and self._is_loop(req):
            return (482, "Loop Detected", [])
        if req.method not in ("ACK", "CANCEL"):
            tags = req.header_all("proxy-require")
            if tags:
                return (420, "Bad Extension", [("Unsupported", ", ".join(tags))])
        return None

    def _loop_hash(self, req: Request) -> str:
        # 16.6 step 8: the fields that differ between a spiral and a loop.
        parts = (
            str(req.uri), req.from_tag or "", req.to_tag or "", req.call_id,
            str(req.cseq.number), ",".join(req.header_all("route")),
            ",".join(req.header_all("proxy-require")), req.header("proxy-authorization") or "",
        )
        return hashlib.blake2s("\x00".join(parts).encode("utf-8", "surrogateescape"),
                               digest_size=5).hexdigest()

    def _is_loop(self, req: Request) -> bool:
        ours = [v for v in req.vias if (v.branch or "").startswith(BRANCH_TAG)
                and self.is_myself(v.host, v.port)]
        if not ours:
            return False
        prefix = BRANCH_TAG + self._loop_hash(req)
        return any((v.branch or "").startswith(prefix) for v in ours)

    def _preprocess_routes(self, req: Request) -> tuple[bool, list[NameAddr]]:
        """16.4: (loose-routed, the Route entries naming us that were
        removed from the top, in order).  Those entries are the request's
        RequestContext.removed_routes, where a module reads what our own
        Route carried (outbound's flow token)."""
        uri = req.uri
        routes = req.routes
        if (routes and self.is_record_route_uri(uri)
                and not self.is_myself(routes[-1].uri.host, routes[-1].uri.port)):
            # 16.4: a strict router upstream put our Record-Route in the
            # Request-URI; the real target is the last Route value. Only a
            # URI we record-route with counts: "REGISTER sip:DOMAIN" with a
            # preloaded Route to us is loose-routed to us.  And the last Route
            # is then the remote target, never us: a request to our address
            # (a domain that is our IP) whose Route names us is loose-routed.
            last = routes[-1]
            req.uri = last.uri
            _remove_last_value(req, "route")
            routes = req.routes
            # Kamailio's loose_route() is true here too: the request was
            # routed to us, so it is forwarded like a loose-routed one.
            strict = True
        else:
            strict = False
        removed: list[NameAddr] = []
        while routes and self.is_myself(routes[0].uri.host, routes[0].uri.port):
            # Our own Route entry (two of them after double record-routing).
            removed.append(routes[0])
            req.pop_first_value("route")
            routes = req.routes
        return strict or bool(removed), removed

def _remove_last_value(req: Request, name: str) -> None:
    values = req.header_all(name)
    req.remove_header(name)
    for value in values[:-1]:
        req.add_header(name, value, top=False)
