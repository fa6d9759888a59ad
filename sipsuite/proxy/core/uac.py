"""The proxy's local UAC: requests the proxy sends on
its own behalf, such as NAT keep-alive OPTIONS (modules/natping.py) and
load-balancer probes (modules/dispatcher/probe.py).

Each request runs a sans-IO ClientNonInviteTransaction in the core's
transaction table, driven like any forwarded request: its answers match by
branch (no special case in ``receive_response``), its retransmissions
follow ``[timers]`` as they stand when it starts, and it holds a
:class:`~sipsuite.proxy.core.txlayer.LocalTx`, which ``in_flight()`` leaves
out so a drain never waits for a probe.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from sipsuite.hosts import bracket
from sipsuite.log import get_logger
from sipsuite.proxy.api import UAC_BRANCH
from sipsuite.proxy.core.txlayer import LocalTx
from sipsuite.sip.builders import make_request
from sipsuite.sip.transaction import ClientNonInviteTransaction
from sipsuite.sip.uri import URI

if TYPE_CHECKING:
    from sipsuite.proxy.core.proxy import ProxyCore
    from sipsuite.proxy.net.listener import Listener
    from sipsuite.proxy.net.resolver import Target
    from sipsuite.sip.message import Response

__all__ = ["UAC_BRANCH", "LocalUAC"]

log = get_logger("sipsuite.proxy.core")


class LocalUAC:
    """api.LocalUAC on a ProxyCore."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core

    def request(self, method: str, uri: str, target: Target, *,
                listener: Listener | None = None, from_uri: str | None = None,
                headers: Sequence[tuple[str, str]] = (), timeout: float | None = None,
                retransmit: bool = True, connect: bool = True,
                rport: bool = False) -> Deferred[Response | None]:
        """Send ``method`` to ``uri`` at ``target``; fires with the first
        final answer, or None (timeout, timer F, transport error, no
        listener, a URI that does not parse).  Never errbacks.

        ``retransmit=False``: sent once, only the timeouts armed (a
        keep-alive to a dead phone must not cost ten datagrams).
        ``connect=False``: over an existing TCP/TLS connection only."""
        d: Deferred[Response | None] = Deferred()
        core = self.core
        if listener is None:
            listener = core.transport.pick_listener(target.transport, target.host, None)
        if listener is None:
            d.callback(None)
            return d
        try:
            ruri = URI.parse(uri)
        except ValueError as e:
            log.warn("{m} to {u} not sent: {e}", m=method, u=uri, e=e)
            d.callback(None)
            return d
        branch = UAC_BRANCH + secrets.token_hex(8)
        siblings = core.transport.siblings
        if siblings is not None and target.transport != "udp":
            branch += siblings.mark  # answered on a sibling's connection: back to us
        sender = from_uri or f"sip:sipsuite@{listener.sent_by()}"
        req = make_request(
            method, ruri, via=listener.via(branch, rport=rport),
            from_=f"<{sender}>;tag={secrets.token_hex(4)}", to=f"<{uri}>",
            call_id=f"{secrets.token_hex(8)}@{bracket(listener.advertise)}", headers=headers)
        if not connect and target.listener is None:
            # The core's own rule (TransactionDriver._run): a target that
            # names its listener goes over an existing connection only.
            target = replace(target, listener=listener)
        reliable = target.transport != "udp" or not retransmit
        tx = ClientNonInviteTransaction(req, reliable, core.timers)
        key = (branch, method)
        holder = LocalTx(tx, key, target, listener, d)
        core.client_txs[key] = holder
        if timeout is not None:
            holder.timers["uac"] = core.timer_heap.call_later(timeout, self._expire, holder)
        core._run(holder, tx.start(core.clock.seconds()))
        return d

    def _expire(self, holder: LocalTx) -> None:
        holder.timers.pop("uac", None)
        if holder.alive:
            self.core._terminate(holder)  # fires None (LocalTx.detach)

