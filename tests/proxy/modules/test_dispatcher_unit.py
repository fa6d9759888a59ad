"""The dispatcher module on its own: set up by its SPEC on a FakeCore (no
ProxyCore), selection and failover with a stand-in request context, the
Attempt in the transaction's CallState, response_in and stop."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fakecore import FakeCore
from proxykit import answer, request

from sipsuite.config import load_config
from sipsuite.proxy import DISPATCHER
from sipsuite.proxy.api import CallState
from sipsuite.proxy.modules.dispatcher.dispatcher import SPEC, Attempt, LoadBalancer
from sipsuite.sip.message import Response
from sipsuite.sip.parser import parse_datagram
from sipsuite.startup import StartupError

GW = ["sip:127.0.0.11:5060", "sip:127.0.0.12:5060", "sip:127.0.0.13:5060"]


def make(tmp_path: Path, text: str) -> FakeCore:
    path = tmp_path / "c.toml"
    path.write_text('[management]\nlisten = ""\n[dispatcher]\nprobe_interval = 0.0\n' + text)
    core = FakeCore(load_config(str(path)))
    core.modules.setup_all([SPEC], core.config)
    return core


def with_sets(tmp_path: Path, uris: list[str] = GW, alg_line: str = "") -> tuple[FakeCore, LoadBalancer]:
    core = make(tmp_path, alg_line + "[dispatcher.sets]\n1 = [" +
                ", ".join(f'"{u}"' for u in uris) + "]\n")
    ds = core.modules.get(DISPATCHER)
    assert isinstance(ds, LoadBalancer)
    return core, ds


class FakeBranch:
    def __init__(self, response_ctx: FakeResponseCtx, dest: Any) -> None:
        self.response_ctx = response_ctx
        self.dest = dest
        self.done = False
        self.provisional = False
        self.response: Response | None = None
        self.local_tag = "ours"


class FakeResponseCtx:
    def __init__(self) -> None:
        self.branches: list[FakeBranch] = []
        self.cancelled = False
        self.local_tag = "ours"


class FakeCtx:
    """What the dispatcher uses of a RequestContext: the request, its call
    state and vars, and relay() making one branch per destination."""

    def __init__(self, method: str = "INVITE", call_id: str = "call-1") -> None:
        self.request = parse_datagram(request(method, "sip:+4930123@sipsuite.test", call_id=call_id))
        self.call = CallState()
        self.vars: dict[str, Any] = {}
        self.response: FakeResponseCtx | None = None

    def relay(self, targets: list[Any]) -> None:
        if self.response is None:
            self.response = FakeResponseCtx()
        for t in targets:
            self.response.branches.append(FakeBranch(self.response, t))


def calls(ds: LoadBalancer) -> list[int]:
    return [d.calls for d in ds.sets[1]]


def test_spec_follows_the_config(tmp_path: Path) -> None:
    none = make(tmp_path, "")
    assert none.modules.get(DISPATCHER) is None and none.modules.by_name("dispatcher") is None
    assert none.hooks.response_in == ()
    core, ds = with_sets(tmp_path)
    assert core.modules.by_name("dispatcher") is ds
    assert [owner for owner, _ in core.hooks.response_in] == ["dispatcher"]
    assert [d.uri for d in ds.sets[1]] == GW
    assert ds.stats() == {"sets": 1, "destinations": 3, "calls": 0}


def test_list_file_and_a_bad_one(tmp_path: Path) -> None:
    listf = tmp_path / "d.list"
    listf.write_text(f"2 {GW[0]}\n2 {GW[1]} 0 5\n")
    core = make(tmp_path, f'list_file = "{listf}"\n')
    ds: Any = core.modules.get(DISPATCHER)
    assert [d.uri for d in ds.sets[2]] == [GW[1], GW[0]]  # priority first
    listf.write_text("1 sip:192.0.2.1 0 0 weight=heavy\n")
    with pytest.raises(StartupError, match=rf"^dispatcher: {listf}:1: attrs: weight"):
        make(tmp_path, f'list_file = "{listf}"\n')


def test_relay_keeps_the_attempt_in_the_call_state(tmp_path: Path) -> None:
    core, ds = with_sets(tmp_path)
    ctx: Any = FakeCtx()
    assert ds.attempt(ctx) is None
    assert ds.relay(ctx, 1, "round-robin") is True
    attempt = ctx.call.peek(Attempt)
    assert attempt is not None and ds.attempt(ctx) is attempt
    assert ctx.vars["dispatcher"] is attempt  # deprecated name, same object
    assert attempt.current is ds.sets[1][0]
    [branch] = ctx.response.branches
    assert attempt.branch is branch
    # An IP destination: the Request-URI is kept, sent to the address ($du).
    assert str(branch.dest.uri) == "sip:+4930123@sipsuite.test"
    assert (branch.dest.dst.host, branch.dest.dst.port) == ("127.0.0.11", 5060)
    assert calls(ds) == [1, 0, 0]
    assert core.stats == {"dispatcher.relayed": 1}
    # Round robin: the next call starts on the next one.
    other: Any = FakeCtx(call_id="call-2")
    ds.relay(other, 1, 4)
    assert other.response.branches[0].dest.dst.host == "127.0.0.12"
    # An unknown set: nothing sent, nothing remembered but an empty walk.
    empty: Any = FakeCtx(call_id="call-3")
    assert ds.relay(empty, 9) is False and empty.response is None


def test_failover_and_call_counts_from_response_in(tmp_path: Path) -> None:
    core, ds = with_sets(tmp_path)
    ctx: Any = FakeCtx()
    ds.relay(ctx, 1, "least-calls")
    [first] = ctx.response.branches
    assert calls(ds) == [1, 0, 0]
    # A provisional answer and another branch's failure end nothing.
    core.response_in(ctx, first, answer(ctx.request, 180, to_tag="gw1"))
    stranger = FakeBranch(ctx.response, None)
    core.response_in(ctx, stranger, answer(ctx.request, 503, to_tag="x"))
    assert calls(ds) == [1, 0, 0]
    # The destination's failure ends its call, as it arrives (before reply_route)...
    failure = answer(ctx.request, 503, to_tag="gw1")
    core.response_in(ctx, first, failure)
    assert calls(ds) == [0, 0, 0]
    # ...and a script's on_reply, still called, does not end it again.
    ds.on_reply(ctx, failure)
    first.done, first.response = True, failure
    assert ds.next(ctx, failure) is True
    second = ctx.response.branches[-1]
    assert ds.attempt(ctx).current is ds.sets[1][1]  # type: ignore[union-attr]
    assert ds.attempt(ctx).branch is second  # type: ignore[union-attr]
    assert calls(ds) == [0, 1, 0]
    ds.on_reply(ctx, failure)  # late, from the first: the second's call stays
    core.response_in(ctx, first, failure)
    assert calls(ds) == [0, 1, 0]
    assert core.stats["dispatcher.failover"] == 1
    # A busy answer is not failed over; the call ends all the same.
    busy = answer(ctx.request, 486, to_tag="gw2")
    core.response_in(ctx, second, busy)
    second.done, second.response = True, busy
    assert ds.next(ctx, busy) is False
    assert calls(ds) == [0, 0, 0]
    ds.call_ended("call-1")  # the BYE's, after the count went: no harm
    assert calls(ds) == [0, 0, 0]


def test_on_reply_of_a_balancer_built_by_hand(tmp_path: Path) -> None:
    """Without SPEC's hook (a LoadBalancer made directly), on_reply still
    ends the call, as it did before response_in."""
    core, _ = with_sets(tmp_path)
    ds = LoadBalancer(core)  # type: ignore[arg-type]
    ctx: Any = FakeCtx()
    ds.relay(ctx, 1, 8)
    assert calls(ds) == [1, 0, 0]
    ds.on_reply(ctx, answer(ctx.request, 500))
    assert calls(ds) == [0, 0, 0]


def test_start_stop_and_reconfigure(tmp_path: Path) -> None:
    core, ds = with_sets(tmp_path)
    core.modules.start()
    assert len(core.clock.getDelayedCalls()) == 1  # the prober looks at the interval again
    new = dataclasses.replace(core.config, dispatcher=dataclasses.replace(
        core.config.dispatcher, probe_mode="inactive", call_timeout=60.0))
    old, core.config = core.config, new
    core.modules.reconfigure(old, new)
    assert core.modules.get(DISPATCHER) is ds  # the sets are read at start-up only
    assert ds.cfg.call_timeout == 60.0  # read at use
    assert core.modules.stop() == []
    assert core.clock.getDelayedCalls() == []
