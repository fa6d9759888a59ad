"""A routing hook that raises costs its request an answer and the log one
warning line (issue 11): never a critical line with a traceback, whichever
hook it is and whether it raises at once or after awaiting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from proxykit import ProxyKit, answer, request
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel

from sipsuite import log as sipsuite_log
from sipsuite.sip.message import ParseError

CALLER, CALLEE = "127.0.0.2", "127.0.0.9"


def warnings_and_worse(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_level") in
            (LogLevel.warn, LogLevel.error, LogLevel.critical) or "log_failure" in e]


def one_warning(events: list[dict[str, Any]], hook: str) -> str:
    bad = warnings_and_worse(events)
    assert len(bad) == 1, [e.get("log_format") for e in bad]
    (event,) = bad
    assert event["log_level"] == LogLevel.warn and "log_failure" not in event
    assert event["hook"] == hook
    return str(event["request"]) + " " + str(event["error"])


def kit_for(tmp_path: Path) -> ProxyKit:
    return ProxyKit(tmp_path, static={"bob": f"sip:bob@{CALLEE}:5099"})


def statuses(kit: ProxyKit) -> list[int]:
    return [m.status for m, h, _ in kit.sent if h == CALLER and hasattr(m, "status")]


def boom(*_args: Any) -> None:
    raise ValueError("command part 'a b' is not a single protocol token")


def test_request_route_raising_answers_500_with_one_warning(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    kit = kit_for(tmp_path)
    kit.core.routing.request_route = boom  # type: ignore[method-assign]
    kit.feed(request("OPTIONS", "sip:bob@sipsuite.test", call_id="odd call id"), CALLER)
    assert statuses(kit) == [500]
    text = one_warning(events, "request_route")
    assert "OPTIONS sip:bob@sipsuite.test" in text and "'odd call id'" in text
    assert CALLER in text and "not a single protocol token" in text


def test_async_request_route_raising_after_a_wait(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    kit = kit_for(tmp_path)
    waiting: Deferred[None] = Deferred()

    async def late(ctx: Any) -> None:
        await waiting
        raise KeyError("gone")

    kit.core.routing.request_route = late  # type: ignore[method-assign]
    kit.feed(request("INVITE", "sip:bob@sipsuite.test"), CALLER)
    assert statuses(kit) == [100]
    waiting.callback(None)
    assert statuses(kit) == [100, 500]
    one_warning(events, "request_route")


def test_a_malformed_header_the_hook_reads_gets_the_parsers_400(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    kit = kit_for(tmp_path)

    def reads_bad_header(ctx: Any) -> None:
        raise ParseError(400, "Bad Contact")

    kit.core.routing.request_route = reads_bad_header  # type: ignore[method-assign]
    kit.feed(request("OPTIONS", "sip:bob@sipsuite.test"), CALLER)
    assert statuses(kit) == [400]
    one_warning(events, "request_route")


def test_traceback_goes_to_debug_only(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    kit = kit_for(tmp_path)
    kit.core.routing.request_route = boom  # type: ignore[method-assign]
    before = sipsuite_log.get_level()
    sipsuite_log.set_level("debug")
    try:
        kit.feed(request("OPTIONS", "sip:bob@sipsuite.test"), CALLER)
    finally:
        sipsuite_log.set_level(before)
    one_warning(events, "request_route")
    tracebacks = [e for e in events if e.get("log_level") == LogLevel.debug and "tb" in e]
    assert len(tracebacks) == 1 and "Traceback" in tracebacks[0]["tb"]
    assert "in boom" in tracebacks[0]["tb"]


@pytest.mark.parametrize("hook", ["branch_route", "reply_route", "failure_route"])
def test_other_hooks_raising_leave_the_call_answered(
        tmp_path: Path, events: list[dict[str, Any]], hook: str) -> None:
    kit = kit_for(tmp_path)
    setattr(kit.core.routing, hook, boom)
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", branch="i1"), CALLER)
    forwarded = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]
    assert forwarded, "the INVITE went on despite the failing hook"
    kit.feed(answer(forwarded[-1], 486, to_tag="callee"), CALLEE, 5099)
    # The caller still learns the outcome: the hook's failure lost no answer.
    assert statuses(kit)[-1] == 486
    one_warning(events, hook)


def test_request_received_hook_sees_removed_routes_and_may_take_the_request(
        tmp_path: Path) -> None:
    """request_received runs after 16.4 with the Route entries it removed;
    a hook that answers keeps the script from running."""
    kit = kit_for(tmp_path)
    seen: list[list[str]] = []

    def take(ctx: Any) -> None:
        seen.append([str(r.uri) for r in ctx.removed_routes])
        if ctx.method == "OPTIONS":
            ctx.reply(202, "Taken")

    kit.core.hooks.on_request_received(take)
    kit.core.routing.request_route = boom  # type: ignore[method-assign]
    kit.feed(request("OPTIONS", "sip:bob@sipsuite.test", route="<sip:127.0.0.1:5060;lr>"),
             CALLER)
    assert seen == [["sip:127.0.0.1:5060;lr"]]
    assert statuses(kit) == [202]


def test_request_received_hook_raising_answers_500_with_one_warning(
        tmp_path: Path, events: list[dict[str, Any]]) -> None:
    kit = kit_for(tmp_path)
    kit.core.hooks.on_request_received(boom)
    kit.feed(request("OPTIONS", "sip:bob@sipsuite.test"), CALLER)
    assert statuses(kit) == [500]
    assert "'a b'" in one_warning(events, "core.request_received")


def test_preprocess_routes_returns_the_entries_of_ours_it_removed(tmp_path: Path) -> None:
    from sipsuite.sip.parser import parse_datagram

    kit = kit_for(tmp_path)
    core = kit.core
    core.transport.listeners.append(kit.listener)  # what we record-route with
    ours, theirs = "<sip:127.0.0.1:5060;lr>", "<sip:192.0.2.8;lr>"
    req = parse_datagram(request("BYE", "sip:bob@192.0.2.9", route=f"{ours}, {ours}, {theirs}"))
    loose, removed = core._preprocess_routes(req)
    assert loose and [str(r) for r in removed] == [ours, ours]
    assert req.header_all("route") == [theirs]
    # A strict router put our Record-Route in the Request-URI: loose-routed,
    # the last Route value is the target, and no entry of ours was removed.
    req = parse_datagram(request("BYE", "sip:127.0.0.1:5060", route="<sip:bob@192.0.2.9>"))
    loose, removed = core._preprocess_routes(req)
    assert loose and removed == [] and str(req.uri) == "sip:bob@192.0.2.9"
    req = parse_datagram(request("BYE", "sip:bob@192.0.2.9", route=theirs))
    assert core._preprocess_routes(req) == (False, [])
