"""``route.explain``: the running proxy routes one message in dry-run mode
(``sipsuite-ctl route explain FILE``).

The work is done by a sandbox core (sipsuite/testing/sandbox.py) built for
each call from the live config, stores and routing class: nothing is sent,
no store, counter or nonce count of the live proxy changes.  The sandbox
is imported at the first call, so a proxy that never explains never loads
the test kit.  With worker processes the supervisor passes the call to
worker 0 (proxy/workerops.py), as for every call that changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipsuite.ops.errors import INVALID_PARAMS, RpcError

if TYPE_CHECKING:
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.core.proxy import ProxyCore

__all__ = ["register_route_methods"]


def register_route_methods(registry: RpcRegistry, core: ProxyCore) -> None:
    async def explain(message: str, source: str | None = None, wire: bool = False) -> Any:
        from sipsuite.sip.message import ParseError
        from sipsuite.testing.sandbox import dry_run

        if not isinstance(message, str) or not message.strip():
            raise RpcError(INVALID_PARAMS, "message: expected the SIP message as text")
        try:
            return await dry_run(core, message, source, core.clock, bool(wire))
        except (ParseError, ValueError) as exc:
            raise RpcError(INVALID_PARAMS, f"cannot route it: {exc}") from None

    registry.register("route.explain", explain,
                      "route.explain(message, source=None, wire=false): route MESSAGE (SIP text)"
                      " from SOURCE (transport:host:port; default: its top Via) in dry-run mode:"
                      " nothing sent, nothing stored; the decisions, with hook and file:line")
