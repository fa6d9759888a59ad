"""The core with no feature module at all carries a call (issue 13).

Nothing is set up in ``core.modules``: no registrar, no auth, no NAT, no
media, no accounting.  A two-line routing class relays every request to its
Request-URI and record-routes; the core alone (RFC 3261 16) must forward the
INVITE with its Via and Record-Route, send the answers back, and pass the ACK
and the BYE along the recorded route.

DefaultRouting on that core is kamailio.cfg with every ``#!ifdef WITH_X`` off
and no registrar or usrloc loaded: a trusted caller's call to a foreign domain
is carried the same way, a REGISTER for our domain gets 501 and a call to one
of our users 404 (nobody can be registered).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from proxykit import ProxyKit, answer, request

from sipsuite.proxy import DefaultRouting, RequestContext, Routing
from sipsuite.sip.message import Request, Response

CALLER = "127.0.0.2"
CALLEE = "127.0.0.9"


class RelayAll(Routing):
    def request_route(self, ctx: RequestContext) -> None:
        if ctx.method == "INVITE":
            ctx.record_route()
        ctx.relay()


def bare_core(tmp_path: Path, routing: type[Routing] = RelayAll) -> ProxyKit:
    """A ProxyKit core with no module set up, routing with ``routing``."""
    kit = ProxyKit(tmp_path, modules=(), proxy={"trusted": [f"{CALLER}/32"]})
    kit.core.set_routing(routing(kit.core))
    return kit


@pytest.mark.parametrize("routing", [RelayAll, DefaultRouting])
def test_a_core_with_no_module_carries_a_call(tmp_path: Path, routing: type[Routing]) -> None:
    bare = bare_core(tmp_path, routing)
    assert bare.core.modules.names() == []

    bare.feed(request("INVITE", f"sip:bob@{CALLEE}:5099", call_id="bare-1"), CALLER, 5070)
    sent = bare.take()
    trying = [m for m, h, _ in sent if isinstance(m, Response)]
    forwarded = [(m, h, p) for m, h, p in sent if isinstance(m, Request)]
    assert [r.status for r in trying] == [100]
    assert len(forwarded) == 1
    invite, host, port = forwarded[0]
    assert (invite.method, host, port) == ("INVITE", CALLEE, 5099)
    vias = invite.header_all("via")
    assert len(vias) == 2 and "127.0.0.1:5060" in vias[0] and vias[0].startswith("SIP/2.0/UDP")
    assert invite.header_all("record-route") == ["<sip:127.0.0.1:5060;lr>"]
    assert invite.max_forwards == 69

    bare.feed(answer(invite, 180, to_tag="callee"), CALLEE, 5099)
    final = answer(invite, 200, to_tag="callee")
    final.add_header("Record-Route", invite.header_all("record-route")[0])  # RFC 3261 12.1.1
    bare.feed(final, CALLEE, 5099)
    upstream = bare.take()
    assert [(m.status, h, p) for m, h, p in upstream] == [(180, CALLER, 5070), (200, CALLER, 5070)]
    ok = upstream[1][0]
    assert len(ok.header_all("via")) == 1  # ours taken off (16.7 step 3)
    assert ok.header_all("record-route") == ["<sip:127.0.0.1:5060;lr>"]

    route = "<sip:127.0.0.1:5060;lr>"
    for method, cseq, branch in (("ACK", 1, "ack1"), ("BYE", 2, "bye1")):
        bare.feed(request(method, "sip:bob@127.0.0.9:5099", call_id="bare-1", cseq=cseq,
                          branch=branch, to_tag="callee", route=route), CALLER, 5070)
        out = bare.take()
        assert [(m.method, h, p) for m, h, p in out] == [(method, CALLEE, 5099)], method
        assert out[0][0].header_all("route") == []  # our own Route entry consumed (16.4)

    bye = out[0][0]
    bare.feed(answer(bye, 200), CALLEE, 5099)
    assert [(m.status, m.header("cseq")) for m, _, _ in bare.take()] == [(200, "2 BYE")]


def test_default_routing_with_no_module_answers_what_it_cannot_do(tmp_path: Path) -> None:
    """No REGISTRAR: REGISTER for our domain is 501 (not the 500 of a missing
    service); no LOCATION: our users have no binding, 404; an untrusted
    caller still may not relay to a foreign domain."""
    bare = bare_core(tmp_path, DefaultRouting)
    assert bare.core.modules.names() == []

    bare.feed(request("REGISTER", "sip:sipsuite.test", call_id="bare-reg"), CALLER, 5070)
    assert [(m.status, m.reason) for m, _, _ in bare.take()] == [(501, "Not Implemented")]

    bare.feed(request("INVITE", "sip:carol@sipsuite.test", call_id="bare-404"), CALLER, 5070)
    assert [(m.status, m.reason) for m, _, _ in bare.take()] == [(100, "Trying"), (404, "Not Found")]

    bare.feed(request("INVITE", f"sip:bob@{CALLEE}:5099", call_id="bare-403", host="127.0.0.3"),
              "127.0.0.3", 5070)
    assert [(m.status, m.reason) for m, _, _ in bare.take()] == [(100, "Trying"),
                                                                  (403, "Not relaying")]
