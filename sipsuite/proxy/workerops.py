"""The management interface of a supervisor of proxy workers
(docs/architecture.md "Worker processes").

Each worker serves JSON-RPC on a loopback port of its own that the
supervisor chose; the supervisor serves [management] listen and passes
every call on:

- ``stats`` (and ``GET /metrics``): every worker's figures, the counters
  added up, and each worker's own under ``workers`` (``workers.N.requests``); figures of what the
  workers share (registrations in Redis) or keep per process (subscriber
  cache, relay) are worker 0's;
- the live operations (:data:`FAN_OUT`: ``debug``, ``cfg.set``,
  ``routing.reload``, ``dispatcher.*``, ``flood.unban``, ``tls.reload``):
  to every worker up, answering the lowest-numbered one's result, or the
  first error; remembered for a worker started again (hoststate.py);
- ``calls.list`` and ``calls.trace`` (:data:`MERGED`): to every worker up,
  the answers merged (each worker's flight recorder has what it handled);
- anything else (``ul.*``, ``user.*``, ``cfg.get``, ``shv.*``...): to the
  lowest-numbered worker up (worker 0 unless it is being restarted); what
  these read and write is in Redis (workers need it), which every worker
  shares, so one of them serves the call for all.

A worker that is down (being restarted, or not yet given the live state)
is left out of ``stats`` (listed as down) and of a fanned-out call; the
supervisor remembers the changes made (proxy/hoststate.py) and gives them
to a worker started again before it counts in.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from sipsuite.log import get_logger
from sipsuite.ops.errors import INTERNAL_ERROR, RpcError
from sipsuite.ops.server import RpcRegistry
from sipsuite.ops.stats import CONTENT_TYPE_LATEST, render_metrics
from sipsuite.proxy.hoststate import HostState
from sipsuite.trace.query import merge_lists, merge_traces

log = get_logger("sipsuite.proxy.workerops")

#: Calls that change a worker's state: every worker must get them.
FAN_OUT = frozenset({"debug", "cfg.set", "routing.reload", "dispatcher.reload",
                     "dispatcher.set_state", "flood.unban", "tls.reload"})
#: Calls every worker answers from its own data, merged (each worker's
#: flight recorder holds the messages it handled).
MERGED = frozenset({"calls.list", "calls.trace"})
#: Counters added up over the workers (the rest of ``stats`` is worker 0's).
SUMMED = ("requests", "requests_by_method", "responses_received", "replies_sent_by_class",
          "retransmissions", "transactions", "drops", "channel", "accounting", "hep")
#: How long a call to one worker may take (s).
TIMEOUT = 10.0


def add_up(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Worker 0's figures with the :data:`SUMMED` counters of all added up."""
    total = dict(figures[0])
    for key in SUMMED:
        total[key] = _sum([f.get(key) for f in figures])
    total["uptime"] = max(f.get("uptime", 0) for f in figures)
    return total


def _sum(values: list[Any]) -> Any:
    if all(isinstance(v, dict) for v in values):
        keys = sorted({k for v in values for k in v})
        return {k: _sum([v[k] for v in values if k in v]) for k in keys}
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return sum(numbers) if numbers else values[0]


class WorkersRegistry(RpcRegistry):
    """Serves the supervisor's management interface by asking the workers.
    ``ports()``: worker index -> its management port, for the workers up."""

    def __init__(self, ports: Callable[[], dict[int, int]], workers: int, reactor: Any,
                 host: HostState | None = None,
                 done: Callable[[str, Any, Any], None] | None = None) -> None:
        super().__init__()
        self.ports = ports
        self.workers = workers
        self.reactor = reactor
        self.host = host
        # done(name, params, result) after a fanned-out call: the supervisor
        # remembers it for the workers not up yet.
        self.done = done
        self.agent = Agent(reactor)
        self.token = ""  # [management] token: the workers' listeners require it too
        self.register("stats", self._stats,
                      "stats(): every worker's figures added up, and each worker's under 'workers'")

    async def call(self, name: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        if name == "stats":
            return await super().call(name, params)
        ports = self.ports()
        if not ports:
            raise RpcError(INTERNAL_ERROR, f"{name}: no worker is up; try again")
        first = min(ports)
        if name in MERGED:
            return await self._merged(name, params, ports)
        if name in FAN_OUT:
            # The workers up now; one starting again gets the change from
            # the supervisor's memory (hoststate.py) before it counts in.
            results = await defer.gatherResults(
                [defer.ensureDeferred(self.ask(port, name, params)) for port in ports.values()],
                consumeErrors=True).addErrback(lambda f: f.value.subFailure.raiseException())
            result = results[list(ports).index(first)]
            if self.done is not None:
                self.done(name, params, result)
            return result
        return await self.ask(ports[first], name, params)

    async def _merged(self, name: str, params: Any, ports: dict[int, int]) -> Any:
        """Ask every worker up; a worker's error (no such call there) is
        that worker having nothing, unless every worker says so."""
        # An errback returning the Failure would go on failing: keep it in a list.
        answers = await defer.gatherResults(
            [defer.ensureDeferred(self.ask(port, name, params)).addErrback(lambda f: [f])
             for port in ports.values()])
        good = [a for a in answers if not (isinstance(a, list) and a and isinstance(a[0], Failure))]
        if not good:
            answers[0][0].raiseException()
        if name == "calls.trace":
            call_id = params.get("call_id") if isinstance(params, dict) else (params or [""])[0]
            return merge_traces(good, str(call_id))
        limit = params.get("limit", 100) if isinstance(params, dict) else 100
        return merge_lists(good, limit)

    def ask_worker(self, ports: dict[int, int]) -> Callable[[int, str, Any], Awaitable[Any]]:
        """ask() by worker index (the supervisor's replay)."""

        async def ask(index: int, name: str, params: Any) -> Any:
            return await self.ask(ports[index], name, params)

        return ask

    async def _stats(self) -> dict[str, Any]:
        ports = self.ports()
        order = sorted(ports)
        answers = await defer.gatherResults(
            [defer.ensureDeferred(self.ask(ports[i], "stats", None)) for i in order],
            consumeErrors=True)
        per_worker = dict(zip(order, answers, strict=True))
        if not per_worker:
            raise RpcError(INTERNAL_ERROR, "stats: no worker is up; try again")
        first = per_worker[min(per_worker)]
        total = add_up([first, *(per_worker[i] for i in order if i != min(per_worker))])
        # Keyed by number (as text: JSON), so sipsuite-ctl stats shows
        # rows like workers.1.requests.
        total["workers"] = {
            str(i): ({k: per_worker[i].get(k) for k in SUMMED} if i in per_worker
                     else {"down": True})
            for i in range(self.workers)}
        if self.host is not None:
            # lost_transactions: server transactions in progress in workers
            # that died (their last heartbeat's count): their callers got no
            # answer from us.  lost_call_records: answered calls the dead
            # workers held for accounting, never written.
            total["supervisor"] = {"worker_deaths": self.host.deaths,
                                   "lost_transactions": self.host.lost_transactions,
                                   "lost_call_records": self.host.lost_call_records}
        return total

    async def ask(self, port: int, name: str, params: Any) -> Any:
        """One JSON-RPC call to the worker listening on 127.0.0.1:``port``."""
        body = json.dumps({"jsonrpc": "2.0", "method": name, "id": 1,
                           **({"params": params} if params is not None else {})}).encode()
        headers = Headers({b"content-type": [b"application/json"]})
        if self.token:
            headers.addRawHeader(b"authorization", b"Bearer " + self.token.encode("ascii"))
        d = self.agent.request(b"POST", f"http://127.0.0.1:{port}/".encode(), headers,
                               FileBodyProducer(BytesIO(body)))
        d.addTimeout(TIMEOUT, self.reactor)
        response = await d
        reply = json.loads(await readBody(response))
        if "error" in reply:
            error = reply["error"]
            raise RpcError(error.get("code", INTERNAL_ERROR), error.get("message", ""),
                           error.get("data"))
        return reply.get("result")


class WorkersMetrics(resource.Resource):
    """GET /metrics: the Prometheus text of the added-up ``stats``."""

    isLeaf = True

    def __init__(self, registry: WorkersRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: server.Request) -> Any:
        def reply(body: bytes) -> None:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            log.failure("/metrics failed", failure)
            request.setResponseCode(500)
            request.finish()

        d = defer.ensureDeferred(self.registry.call("stats"))
        d.addCallback(render_metrics)
        d.addCallbacks(reply, failed)
        return server.NOT_DONE_YET
