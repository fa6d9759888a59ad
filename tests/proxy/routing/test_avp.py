"""ctx.avp: Kamailio's $avp, values that live with one transaction (issue 14).

The mapping's own semantics (stacks, newest first, the $avp twins), then the
scope through a real core: what request_route sets is seen by branch_route,
reply_route and failure_route of that transaction, and by the hooks of the
branch failure_route starts; the next transaction starts with none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from proxykit import ProxyKit, answer, request

from sipsuite.proxy import RequestContext, Routing
from sipsuite.proxy.routing.avp import Avps
from sipsuite.sip.message import Request, Response

CALLER = "127.0.0.2"
FIRST = "127.0.0.9"
SECOND = "127.0.0.10"


def test_a_name_is_a_stack_and_reads_its_newest_value() -> None:
    avps = Avps()
    assert "x" not in avps and avps.get("x") is None and avps.all("x") == []
    with pytest.raises(KeyError):
        avps["x"]
    avps.add("x", 1)           # $avp(x) = 1
    avps.add("x", "two")       # $avp(x) = "two": pushes, 1 stays below
    assert avps["x"] == "two" and avps.all("x") == ["two", 1]
    avps["x"] = 3              # replaces the newest only
    assert avps.all("x") == [3, 1]
    assert avps.pop("x") == 3  # $avp(x) = $null
    assert avps["x"] == 1 and avps.all("x") == [1]
    assert avps.pop("x") == 1 and "x" not in avps
    assert avps.pop("x", "none") == "none"
    with pytest.raises(KeyError):
        avps.pop("x")


def test_assignment_to_an_unset_name_sets_it_and_del_removes_every_value() -> None:
    avps = Avps()
    avps["oexten"] = "bob"
    assert avps.all("oexten") == ["bob"]
    avps.add("gw", "a")
    avps.add("gw", "b")
    assert len(avps) == 2 and list(avps) == ["oexten", "gw"]
    assert dict(avps.items()) == {"oexten": "bob", "gw": "b"}
    assert avps.as_dict() == {"oexten": ["bob"], "gw": ["b", "a"]}
    del avps["gw"]             # $(avp(gw)[*]) = $null
    assert "gw" not in avps and avps.all("gw") == []
    with pytest.raises(KeyError):
        del avps["gw"]
    copy = avps.as_dict()
    copy["oexten"].append("x")  # a copy: the AVPs do not change
    assert avps.all("oexten") == ["bob"]
    assert repr(avps) == "Avps({'oexten': ['bob']})"


class Serial(Routing):
    """request_route sets AVPs and forks to FIRST; its failure goes on to
    SECOND from failure_route.  Each hook writes down what it saw."""

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self.seen: list[tuple[str, dict[str, list[Any]]]] = []

    def request_route(self, ctx: RequestContext) -> None:
        self.seen.append(("request", ctx.avp.as_dict()))
        if ctx.method != "INVITE":
            ctx.relay()
            return
        ctx.avp["oexten"] = ctx.request.uri.user
        ctx.avp.add("hops", "request")
        ctx.relay([f"sip:bob@{FIRST}:5099"])

    def branch_route(self, ctx: RequestContext, branch: Any) -> None:
        ctx.avp.add("hops", f"branch {branch.uri.host}")
        self.seen.append(("branch", ctx.avp.as_dict()))

    def reply_route(self, ctx: RequestContext, branch: Any, response: Response) -> None:
        self.seen.append((f"reply {response.status}", ctx.avp.as_dict()))

    def failure_route(self, ctx: RequestContext, response: Response) -> None:
        self.seen.append(("failure", ctx.avp.as_dict()))
        if response.status == 486 and "retried" not in ctx.avp:
            ctx.avp["retried"] = True
            ctx.relay([f"sip:{ctx.avp['oexten']}@{SECOND}:5099"])


def _invites(kit: ProxyKit) -> list[tuple[Request, str]]:
    """The INVITEs the core forwarded since the last look (not the ACK of a failure)."""
    return [(m, h) for m, h, _ in kit.take() if isinstance(m, Request) and m.method == "INVITE"]


def test_avps_are_seen_by_every_hook_of_the_transaction_and_its_new_branches(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, modules=())
    routing = Serial(kit.core)
    kit.core.set_routing(routing)

    kit.feed(request("INVITE", "sip:4711@sipsuite.test", call_id="avp-1"), CALLER)
    [(first, host)] = _invites(kit)
    assert host == FIRST
    kit.feed(answer(first, 486, to_tag="busy"), FIRST, 5099)
    [(second, host)] = _invites(kit)
    assert host == SECOND and second.uri.user == "4711"  # built from ctx.avp in failure_route
    kit.feed(answer(second, 200, to_tag="ok"), SECOND, 5099)

    assert routing.seen == [
        ("request", {}),
        ("branch", {"oexten": ["4711"], "hops": ["branch 127.0.0.9", "request"]}),
        ("reply 486", {"oexten": ["4711"], "hops": ["branch 127.0.0.9", "request"]}),
        ("failure", {"oexten": ["4711"], "hops": ["branch 127.0.0.9", "request"]}),
        ("branch", {"oexten": ["4711"], "retried": [True],
                    "hops": ["branch 127.0.0.10", "branch 127.0.0.9", "request"]}),
        ("reply 200", {"oexten": ["4711"], "retried": [True],
                       "hops": ["branch 127.0.0.10", "branch 127.0.0.9", "request"]}),
    ]

    # Another transaction, even of the same call, starts with no AVP.
    routing.seen.clear()
    kit.feed(request("BYE", f"sip:bob@{SECOND}:5099", call_id="avp-1", cseq=2, branch="bye",
                     to_tag="ok"), CALLER)
    assert routing.seen[0] == ("request", {})
