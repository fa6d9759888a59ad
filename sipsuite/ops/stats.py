"""The proxy's figures for ``sipsuite-ctl stats`` / ``uptime`` and ``/metrics``.

Nothing here runs per message: the core keeps plain counters and
:func:`collect_stats` asks for a snapshot of them (``core.figures()``) and
each module for its own (``stats()``) when asked. The
Prometheus endpoint uses a custom collector over one such snapshot per
scrape, so no prometheus-client call is ever made on the SIP path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet import defer
from twisted.web import resource, server

from sipsuite.log import get_logger

if TYPE_CHECKING:
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.core.proxy import ProxyCore

log = get_logger("sipsuite.proxy.stats")

__all__ = ["MetricsResource", "collect_stats", "register_stats_methods", "uptime"]


def uptime(core: ProxyCore, wall: Callable[[], float] = time.time) -> dict[str, Any]:
    """Start time (epoch and ISO 8601 UTC) and seconds up."""
    up = core.figures().uptime
    started = wall() - up
    return {
        "started": round(started, 3),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "uptime": round(up, 3),
    }


async def _module_figure(core: ProxyCore, module: str, key: str, default: Any) -> Any:
    """``key`` of a module's stats() (the location module's "registrations",
    the subscribers module's "subscriber_cache"); ``default`` without the module."""
    found = core.modules.by_name(module)
    if found is None:
        return default
    figures = found.stats()
    if isinstance(figures, defer.Deferred):
        figures = await figures
    return figures.get(key, default)


async def _relay(core: ProxyCore, registry: RpcRegistry | None) -> dict[str, Any] | None:
    """Relay figures: the in-process relay's (``twistd sipsuite``), else what
    this proxy's relay client holds."""
    out: dict[str, Any] = {}
    if registry is not None and "relay.stats" in registry:
        relay = await registry.call("relay.stats")
        out["sessions"] = relay.get("sessions_active")
        out["sessions_created"] = relay.get("sessions_created")
        out["packets_relayed"] = relay.get("packets_relayed")
    media = core.modules.by_name("media")
    if media is not None:
        # calls_anchored, offers, answers, deletes, failures, refused
        figures = media.stats()
        out.update(await figures if isinstance(figures, defer.Deferred) else figures)
    return out or None


async def collect_stats(core: ProxyCore, registry: RpcRegistry | None = None) -> dict[str, Any]:
    """Every figure, as ``stats`` returns it."""
    f = core.figures()
    server, client = f.transactions
    figures: dict[str, Any] = {
        "requests": f.requests,
        "requests_by_method": dict(f.requests_by_method),
        "responses_received": f.responses,
        "replies_sent_by_class": dict(f.replies_by_class),
        "retransmissions": f.retransmissions,
        "transactions": {"server": server, "client": client},
        "registrations": await _module_figure(core, "location", "registrations",
                                              {"aors": None, "bindings": None}),
        "subscriber_cache": await _module_figure(core, "subscribers", "subscriber_cache", None),
        "relay": await _relay(core, registry),
        "events": await _module_figure(core, "events", "events", None),
        "hep": await _module_figure(core, "hep", "hep", None),
        "drops": dict(f.drops),
        "uptime": round(f.uptime, 3),
    }
    accounting = core.modules.by_name("accounting")
    if accounting is not None:
        # calls (answered, held for their BYE), records, write_errors; with
        # workers, byes_passed / byes_taken (modules/accounting.py).
        acc = accounting.stats()
        figures["accounting"] = dict(await acc if isinstance(acc, defer.Deferred) else acc)
    siblings = core.transport.siblings
    if siblings is not None:
        # A worker's channel (net/siblings.py): messages it handed to the
        # worker holding a phone's connection, responses it passed back.
        figures["channel"] = {"handed_over": siblings.handed, "passed_back": siblings.relayed,
                              "connections_known": len(siblings.table)}
    return figures


def register_stats_methods(registry: RpcRegistry, core: ProxyCore) -> None:
    """``stats`` and ``uptime`` on the management registry."""

    async def stats() -> dict[str, Any]:
        return await collect_stats(core, registry)

    registry.register("stats", stats,
                      "stats(): requests per method, replies per class, retransmissions,"
                      " transactions, registrations, subscriber cache, relay sessions,"
                      " drops by cause")
    registry.register("uptime", lambda: uptime(core),
                      "uptime(): when the proxy started, and seconds since")


# ---------------------------------------------------------------------------
# Prometheus.


class _Snapshot:
    """A collector over one stats dict (taken just before the scrape)."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        by_method = CounterMetricFamily("sipsuite_requests", "SIP requests received, by method",
                                        labels=["method"])
        for method, n in f["requests_by_method"].items():
            by_method.add_metric([method], n)
        yield by_method
        replies = CounterMetricFamily("sipsuite_replies_sent",
                                      "SIP replies sent upstream (relayed or our own), by class",
                                      labels=["class"])
        for cls, n in f["replies_sent_by_class"].items():
            replies.add_metric([cls], n)
        yield replies
        yield CounterMetricFamily("sipsuite_responses_received", "SIP responses received",
                                  value=f["responses_received"])
        yield CounterMetricFamily("sipsuite_retransmissions",
                                  "request retransmissions absorbed by server transactions",
                                  value=f["retransmissions"])
        txs = GaugeMetricFamily("sipsuite_transactions", "current transactions", labels=["kind"])
        for kind, n in f["transactions"].items():
            txs.add_metric([kind], n)
        yield txs
        reg = f["registrations"]
        if reg.get("aors") is not None:
            yield GaugeMetricFamily("sipsuite_registered_aors", "AORs with a current binding",
                                    value=reg["aors"])
        if reg.get("bindings") is not None:
            yield GaugeMetricFamily("sipsuite_registered_bindings", "current bindings (contacts)",
                                    value=reg["bindings"])
        cache = f.get("subscriber_cache")
        if cache is not None:
            yield GaugeMetricFamily("sipsuite_subscriber_cache_entries",
                                    "subscriber records held by this node's cache",
                                    value=cache["entries"])
            lookups = CounterMetricFamily("sipsuite_subscriber_cache_lookups",
                                          "subscriber reads, by whether the cache answered",
                                          labels=["result"])
            lookups.add_metric(["hit"], cache["hits"])
            lookups.add_metric(["miss"], cache["misses"])
            yield lookups
        relay = f.get("relay") or {}
        if relay.get("sessions") is not None:
            yield GaugeMetricFamily("sipsuite_relay_sessions", "sessions on the in-process RTP relay",
                                    value=relay["sessions"])
        if relay.get("calls_anchored") is not None:
            yield GaugeMetricFamily("sipsuite_relay_calls", "calls this proxy holds on media relays",
                                    value=relay["calls_anchored"])
        events = f.get("events") or {}
        if events.get("subscribers"):
            # Per subscriber: a user service losing events is the one to name.
            lost = CounterMetricFamily("sipsuite_events_dropped",
                                       "events a user service's subscriber lost (backlog full)",
                                       labels=["subscriber"])
            for name, sub in events.get("by_subscriber", {}).items():
                lost.add_metric([name], sub.get("dropped", 0))
            yield lost
        hep = f.get("hep")
        if hep is not None:
            packets = CounterMetricFamily("sipsuite_hep_packets",
                                          "HEP3 packets to the capture server, by result",
                                          labels=["result"])
            packets.add_metric(["sent"], hep["sent"])
            packets.add_metric(["failed"], hep["errors"])
            yield packets
        drops = CounterMetricFamily("sipsuite_drops", "messages dropped, by cause", labels=["cause"])
        for cause, n in f["drops"].items():
            drops.add_metric([cause], n)
        yield drops
        yield GaugeMetricFamily("sipsuite_uptime_seconds", "seconds since the proxy started",
                                value=f["uptime"])


def render_metrics(figures: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(figures))
    return generate_latest(registry)


class MetricsResource(resource.Resource):
    """GET /metrics: the Prometheus text format of :func:`collect_stats`."""

    isLeaf = True

    def __init__(self, core: ProxyCore, registry: RpcRegistry | None = None) -> None:
        super().__init__()
        self.core = core
        self.registry = registry

    def render_GET(self, request: server.Request) -> Any:
        finished = False

        def gone(_: Any) -> None:
            nonlocal finished
            finished = True

        request.notifyFinish().addErrback(gone)

        def reply(body: bytes) -> None:
            if finished:
                return
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            log.failure("/metrics failed", failure)
            if not finished:
                request.setResponseCode(500)
                request.finish()

        d = defer.ensureDeferred(collect_stats(self.core, self.registry))
        d.addCallback(render_metrics)
        d.addCallbacks(reply, failed)
        return server.NOT_DONE_YET
