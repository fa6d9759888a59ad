"""The core calls branch_out and response_in: each
branch after branch_route, each answer a branch receives before
reply_route; a hook that raises costs one warning and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from proxykit import ProxyKit, answer, request
from twisted.logger import LogLevel

CALLER, CALLEE = "127.0.0.2", "127.0.0.9"


def call(kit: ProxyKit) -> list[int]:
    """An INVITE to bob answered 180 then 486; the statuses the caller got."""
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", branch="i1"), CALLER)
    [fwd] = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]
    kit.feed(answer(fwd, 180, to_tag="callee"), CALLEE, 5099)
    kit.feed(answer(fwd, 486, to_tag="callee"), CALLEE, 5099)
    return [m.status for m, h, _ in kit.sent if h == CALLER and hasattr(m, "status")]


def test_branch_out_and_response_in_in_order(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, static={"bob": f"sip:bob@{CALLEE}:5099"})
    seen: list[Any] = []
    routing = kit.core.routing
    orig_branch, orig_reply = routing.branch_route, routing.reply_route

    def branch_route(ctx: Any, branch: Any) -> Any:
        seen.append("branch_route")
        return orig_branch(ctx, branch)

    def reply_route(ctx: Any, branch: Any, resp: Any) -> Any:
        seen.append(("reply_route", resp.status))
        return orig_reply(ctx, branch, resp)

    routing.branch_route = branch_route  # type: ignore[method-assign]
    routing.reply_route = reply_route  # type: ignore[method-assign]
    branches: list[Any] = []

    def branch_out(ctx: Any, branch: Any) -> None:
        assert ctx.request.method == "INVITE" and branch in ctx.response.branches
        # proxy_ctx: the name docs/routing.md gave it before, kept for scripts.
        assert branch.response_ctx is ctx.response is ctx.proxy_ctx
        branches.append(branch)
        seen.append("branch_out")

    def response_in(ctx: Any, branch: Any, resp: Any) -> None:
        assert branch is branches[0]
        seen.append(("response_in", resp.status))

    kit.core.hooks.on_branch_out(branch_out)
    kit.core.hooks.on_response_in(response_in)
    assert call(kit) == [100, 180, 486]
    assert seen == ["branch_route", "branch_out", ("response_in", 180), ("reply_route", 180),
                    ("response_in", 486), ("reply_route", 486)]


@pytest.mark.parametrize("point", ["branch_out", "response_in"])
def test_a_raising_hook_is_fail_open(tmp_path: Path, events: list[dict[str, Any]],
                                     point: str) -> None:
    kit = ProxyKit(tmp_path, static={"bob": f"sip:bob@{CALLEE}:5099"})

    def boom(*_args: Any) -> None:
        raise ValueError("broken module")

    kit.core.hooks.add(point, "broken", 0, boom)
    assert call(kit) == [100, 180, 486]
    bad = [e for e in events if e.get("log_level") in (LogLevel.warn, LogLevel.error,
                                                       LogLevel.critical)]
    assert {e["hook"] for e in bad} == {f"broken.{point}"}
    assert all(e["log_level"] == LogLevel.warn for e in bad)


def test_the_response_context_keeps_its_old_name() -> None:
    # Routing scripts written before the rename import ProxyContext.
    from sipsuite.proxy.core.context import ProxyContext, ResponseContext
    assert ProxyContext is ResponseContext
