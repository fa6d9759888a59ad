"""The core's hook points and their registration.

Each point is a tuple of ``(owner, hook)`` pairs, rebuilt when a module
registers or goes, so the core runs a point with one loop over a tuple (an
empty one when no module is set up).  Hooks run in module set-up order
(``rank``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["POINTS", "HookPoints", "ScopedHooks"]

POINTS = ("request_in", "request_received", "branch_out", "response_in", "response_out",
          "routing_action")

Entry = tuple[str, Callable[..., Any]]


class HookPoints:
    """The hook lists; also :class:`~sipsuite.proxy.api.Hooks` for
    registrations made by hand (owner "core", after every module)."""

    def __init__(self) -> None:
        self.request_in: tuple[Entry, ...] = ()
        self.request_received: tuple[Entry, ...] = ()
        self.branch_out: tuple[Entry, ...] = ()
        self.response_in: tuple[Entry, ...] = ()
        self.response_out: tuple[Entry, ...] = ()
        self.routing_action: tuple[Entry, ...] = ()
        self._ranked: dict[str, list[tuple[float, str, Callable[..., Any]]]] = {p: [] for p in POINTS}

    def add(self, point: str, owner: str, rank: float, fn: Callable[..., Any]) -> None:
        ranked = self._ranked[point]
        ranked.append((rank, owner, fn))
        ranked.sort(key=lambda item: item[0])  # stable: same rank keeps registration order
        self._rebuild(point)

    def remove_owner(self, owner: str) -> None:
        for point, ranked in self._ranked.items():
            kept = [item for item in ranked if item[1] != owner]
            if len(kept) != len(ranked):
                self._ranked[point] = kept
                self._rebuild(point)

    def _rebuild(self, point: str) -> None:
        setattr(self, point, tuple((owner, fn) for _, owner, fn in self._ranked[point]))

    def on_request_in(self, fn: Callable[..., Any]) -> None:
        self.add("request_in", "core", float("inf"), fn)

    def on_request_received(self, fn: Callable[..., Any]) -> None:
        self.add("request_received", "core", float("inf"), fn)

    def on_branch_out(self, fn: Callable[..., Any]) -> None:
        self.add("branch_out", "core", float("inf"), fn)

    def on_response_in(self, fn: Callable[..., Any]) -> None:
        self.add("response_in", "core", float("inf"), fn)

    def on_response_out(self, fn: Callable[..., Any]) -> None:
        self.add("response_out", "core", float("inf"), fn)

    def on_routing_action(self, fn: Callable[..., Any]) -> None:
        self.add("routing_action", "core", float("inf"), fn)


class ScopedHooks:
    """The Hooks one module registers through: each hook is recorded as its
    own, so switching the module off removes them all."""

    def __init__(self, points: HookPoints, owner: str, rank: float) -> None:
        self._points = points
        self._owner = owner
        self._rank = rank

    def _add(self, point: str, fn: Callable[..., Any]) -> None:
        self._points.add(point, self._owner, self._rank, fn)

    def on_request_in(self, fn: Callable[..., Any]) -> None:
        self._add("request_in", fn)

    def on_request_received(self, fn: Callable[..., Any]) -> None:
        self._add("request_received", fn)

    def on_branch_out(self, fn: Callable[..., Any]) -> None:
        self._add("branch_out", fn)

    def on_response_in(self, fn: Callable[..., Any]) -> None:
        self._add("response_in", fn)

    def on_response_out(self, fn: Callable[..., Any]) -> None:
        self._add("response_out", fn)

    def on_routing_action(self, fn: Callable[..., Any]) -> None:
        self._add("routing_action", fn)
