"""A user service: POST sipsuite events as JSON to a URL (docs/embedding.md).

    [services]
    load = ["examples.services.webhook:make_service"]

    [services.webhook]
    url = "http://127.0.0.1:8080/sip-events"
    events = ["call.ended"]            # any names of sipsuite.api.EVENTS, or "call.*"

Each event is one POST of ``event.to_dict()`` (``{"event": "call.ended",
"time": ..., "call_id": ..., "from": ..., "to": ..., "duration": ...,
"cause": ...}``) with Twisted's HTTP client.  A refused connection, a
timeout or an answer other than 2xx is retried after ``backoff`` seconds,
doubled each time up to ``max_backoff``, ``retries`` times; then the event
is logged as lost.  Events go out one at a time, in order: the delivery
returns a Deferred, so the event bus holds the next ones in this
subscriber's queue (``backlog`` long; beyond it they are dropped and
counted, never delaying a call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from sipsuite.api import Event, Handle, Subscription, service_factory

log = Logger(namespace="webhook")


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    events: list[str] = field(default_factory=lambda: ["call.ended"])
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 5.0
    backlog: int = 1000


class Webhook(service.Service):
    def __init__(self, handle: Handle, config: WebhookConfig) -> None:
        self.handle = handle
        self.config = config
        self.reactor: Any = handle.reactor
        self.agent = Agent(self.reactor, connectTimeout=config.timeout)
        self.subscription: Subscription | None = None
        self.sent = 0
        self.lost = 0

    def startService(self) -> None:
        super().startService()
        self.subscription = self.handle.events.subscribe(
            self.config.events, self.deliver, backlog=self.config.backlog, label="webhook")

    def stopService(self) -> Any:
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        return super().stopService()

    async def deliver(self, event: Event) -> None:
        body = json.dumps(event.to_dict()).encode()
        delay = self.config.backoff
        for attempt in range(self.config.retries + 1):
            problem = await self._post(body)
            if problem is None:
                self.sent += 1
                return
            if attempt == self.config.retries or not self.running:
                break
            log.info("webhook: {e} to {u} failed ({p}); again in {d:g} s",
                     e=event.name, u=self.config.url, p=problem, d=delay)
            await task.deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, self.config.max_backoff)
        self.lost += 1
        log.warn("webhook: {e} {c} lost after {n} attempt(s)", e=event.name,
                 c=event.data.get("call_id", ""), n=self.config.retries + 1)

    async def _post(self, body: bytes) -> str | None:
        """None when the server took it (2xx), else what went wrong."""
        try:
            d = self.agent.request(
                b"POST", self.config.url.encode(),
                Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"sipsuite"]}),
                FileBodyProducer(BytesIO(body)))
            d.addTimeout(self.config.timeout, self.reactor)
            response = await d
            await readBody(response)
        except defer.CancelledError:
            return "timeout"
        except Exception as e:  # noqa: BLE001 - any failure is retried
            return f"{type(e).__name__}: {e}"
        if not 200 <= response.code < 300:
            return f"HTTP {response.code}"
        return None


@service_factory("webhook", WebhookConfig)
def make_service(handle: Handle, config: WebhookConfig) -> Webhook:
    return Webhook(handle, config)
