"""The routing test kit: run a routing class in a real proxy core with no
sockets and a fake clock, feed it SIP messages, and see what it decides
(docs/routing.md, "Testing a routing class").

    from sipsuite.testing import OfflineProxy, build_request

    proxy = OfflineProxy(MyRouting, bindings={"bob": ["sip:bob@192.0.2.20:5060"]})
    out = proxy.receive(build_request("INVITE", "sip:bob@127.0.0.1"))
    assert out.decision == "relayed" and out.branch.destination == "udp:192.0.2.20:5060"
    after = out.branch.answer(486)   # failure_route runs
"""

from sipsuite.testing.kit import START, OfflineProxy, build_request, kit_config, message_bytes
from sipsuite.testing.network import Sent
from sipsuite.testing.outcome import Branch, Outcome
from sipsuite.testing.recorder import Step

__all__ = ["START", "Branch", "OfflineProxy", "Outcome", "Sent", "Step", "build_request",
           "kit_config", "message_bytes"]
