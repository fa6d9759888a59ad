"""A user service: the last missed calls of each user, on a small HTTP endpoint.

    [services]
    load = ["examples.services.missed_calls:make_service"]

    [services.missed_calls]
    listen = "tcp:8090:interface=127.0.0.1"   # a Twisted endpoint description
    keep = 20                                 # per user

A call is missed when it ends unanswered because the callee was busy, did
not answer, declined or the caller gave up (``call.ended`` with
``answered = false`` and cause ``busy``, ``no-answer``, ``declined`` or
``cancelled``); the callee is the user part of its To URI.

    GET /missed/USER   the user's missed calls, newest first (JSON list)
    GET /missed        {user: how many kept}
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from twisted.application import service, strports
from twisted.web import resource, server

from sipsuite.api import Event, Handle, Subscription, service_factory

MISSED = frozenset({"busy", "no-answer", "declined", "cancelled"})
MAX_USERS = 100_000  # the least recently missed go first beyond this


@dataclass(frozen=True)
class MissedCallsConfig:
    listen: str = "tcp:8090:interface=127.0.0.1"
    keep: int = 20


def user_of(uri: str) -> str:
    """'sip:bob@example.com;x=y' -> 'bob'."""
    rest = uri.split(":", 1)[-1]
    return rest.split("@", 1)[0] if "@" in rest else ""


class MissedCalls:
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.by_user: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def on_event(self, event: Event) -> None:
        data = event.data
        if data["answered"] or data["cause"] not in MISSED:
            return
        user = user_of(data["to"])
        if not user:
            return
        calls = self.by_user.pop(user, None) or deque(maxlen=self.keep)
        calls.appendleft({"time": event.time, "from": data["from"], "cause": data["cause"],
                          "code": data["code"], "call_id": data["call_id"]})
        self.by_user[user] = calls
        while len(self.by_user) > MAX_USERS:
            self.by_user.popitem(last=False)


class MissedResource(resource.Resource):
    isLeaf = True

    def __init__(self, store: MissedCalls) -> None:
        super().__init__()
        self.store = store

    def render_GET(self, request: Any) -> bytes:
        parts = [p.decode(errors="replace") for p in request.postpath if p]
        request.setHeader(b"Content-Type", b"application/json")
        if parts[:1] != ["missed"] or len(parts) > 2:
            request.setResponseCode(404)
            return b'{"error": "GET /missed or /missed/USER"}'
        if len(parts) == 1:
            return json.dumps({u: len(c) for u, c in self.store.by_user.items()}).encode()
        return json.dumps(list(self.store.by_user.get(parts[1], ()))).encode()


class MissedCallsService(service.MultiService):
    def __init__(self, handle: Handle, config: MissedCallsConfig) -> None:
        super().__init__()
        self.handle = handle
        self.store = MissedCalls(config.keep)
        self.subscription: Subscription | None = None
        site = server.Site(MissedResource(self.store))
        strports.service(config.listen, site).setServiceParent(self)

    def startService(self) -> None:
        self.subscription = self.handle.events.subscribe("call.ended", self.store.on_event,
                                                         label="missed_calls")
        super().startService()

    def stopService(self) -> Any:
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        return super().stopService()


@service_factory("missed_calls", MissedCallsConfig)
def make_service(handle: Handle, config: MissedCallsConfig) -> MissedCallsService:
    if config.keep < 1:
        raise ValueError("keep must be at least 1")
    return MissedCallsService(handle, config)
