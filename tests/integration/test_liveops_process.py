"""Live operations against a real ``twistd sipsuite`` with real sipp traffic:
``sipsuite-ctl debug``, ``cfg get|set``, ``stats``, ``uptime``, ``/metrics``,
and ``routing reload`` (and SIGHUP) during a run of calls.

Every sipp run is bounded in calls and time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import procs
import pytest
from common import free_port_range
from procs import (
    LOCALHOST,
    SCENARIOS,
    ProxyFactory,
    SippProcess,
    parse_sipp_messages,
    run_sipp,
    sipp_dir,
)
from prometheus_client.parser import text_string_to_metric_families

CALLS = 10


def ctl_json(proxy: procs.ProxyProcess, *args: str) -> Any:
    res = proxy.ctl("--json", *args)
    assert res.returncode == 0, f"sipsuite-ctl {' '.join(args)}: rc={res.returncode} {res.stderr}"
    return json.loads(res.stdout)


def metrics(proxy: procs.ProxyProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = proxy.management_url.rstrip("/") + "/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def start_uas(workdir: Path, port: int, calls: int) -> SippProcess:
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=workdir, local_port=port,
                      calls=calls, timeout_s=60, service="bob", trace_msg=True)
    uas.wait_bound()
    return uas


# ---------------------------------------------------------------------------
# debug, cfg, stats, uptime, /metrics


@pytest.fixture(scope="module")
def plain(proxy_factory: ProxyFactory) -> Iterator[tuple[procs.ProxyProcess, int]]:
    uas_port = procs.free_port()
    proxy = proxy_factory("liveops", static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]})
    yield proxy, uas_port


def test_debug_reads_and_sets_the_log_level(plain: tuple[procs.ProxyProcess, int]) -> None:
    proxy, _ = plain
    res = proxy.ctl("debug")
    assert (res.returncode, res.stdout.strip()) == (0, "log level: info"), res.stderr
    # the management access line is logged at debug: absent now
    assert "[sipsuite.management#debug]" not in proxy.log_text()
    res = proxy.ctl("debug", "4")  # kamctl fifo debug 4
    assert (res.returncode, res.stdout.strip()) == (0, "log level set to debug"), res.stderr
    proxy.ctl("debug")
    deadline = time.monotonic() + 5
    while "[sipsuite.management#debug]" not in proxy.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "[sipsuite.management#debug]" in proxy.log_text(), "debug lines do not appear after debug 4\n" + \
        proxy.diagnostics()
    assert ctl_json(proxy, "cfg", "get", "log.level") == {"log.level": "debug"}
    # a bad level is a usage error; nothing is sent, nothing changes
    res = proxy.ctl("debug", "verbose")
    assert res.returncode == 2 and "bad level 'verbose'" in res.stderr, res
    # ... and the server refuses it too (a raw RPC)
    res = proxy.ctl("rpc", "debug", "level=verbose")
    assert res.returncode == 1 and "bad log level 'verbose'" in res.stderr, res
    assert ctl_json(proxy, "debug") == {"level": "debug"}
    res = proxy.ctl("debug", "2")
    assert (res.returncode, res.stdout.strip()) == (0, "log level set to info"), res.stderr


def test_cfg_get_and_set_at_run_time(plain: tuple[procs.ProxyProcess, int]) -> None:
    proxy, _ = plain
    res = proxy.ctl("cfg", "get", "timers.t1")
    assert res.returncode == 0 and res.stdout.split("\n")[1].split() == ["timers.t1", "0.5"], res
    everything = ctl_json(proxy, "cfg", "get")
    assert "proxy.listen" not in everything and "redis.url" not in everything
    assert everything["proxy.server_header"] == "sipsuite"

    before = procs.options_ping(LOCALHOST, proxy.port, timeout=2)
    assert before is not None and before.header("Server") == "sipsuite"
    res = proxy.ctl("cfg", "set", "proxy.server_header", '"sipsuite-live"')
    assert (res.returncode, res.stdout.strip()) == (
        0, 'proxy.server_header: "sipsuite" -> "sipsuite-live"'), res.stderr
    after = procs.options_ping(LOCALHOST, proxy.port, timeout=2)
    assert after is not None and after.header("Server") == "sipsuite-live", "the change did not apply"

    res = proxy.ctl("cfg", "set", "timers.t1", "fast")
    assert res.returncode == 1, res
    assert "timers.t1: expected a number of seconds above 0, got 'fast'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = proxy.ctl("cfg", "set", "timers.t2", "0.1")  # below t1: the cross-key rule
    assert res.returncode == 1 and "timers.t2: expected a value not below timers.t1" in res.stderr
    res = proxy.ctl("cfg", "set", "proxy.listen", '["udp:127.0.0.1:9"]')
    assert res.returncode == 1 and "proxy.listen: not a run-time setting" in res.stderr
    assert ctl_json(proxy, "cfg", "get", "timers.t2") == {"timers.t2": 4.0}
    res = proxy.ctl("cfg", "set", "timers.t1", "0.25")
    assert res.returncode == 0 and res.stdout.strip() == "timers.t1: 0.5 -> 0.25", res
    proxy.ctl("cfg", "set", "proxy.server_header", "sipsuite")


def test_stats_metrics_and_uptime_after_calls(
    sipp_bin: str, plain: tuple[procs.ProxyProcess, int], tmp_path: Path,
) -> None:
    proxy, uas_port = plain
    first = ctl_json(proxy, "uptime")
    base = ctl_json(proxy, "stats")
    reg = run_sipp(SCENARIOS / "register_uac.xml", name="reg", workdir=tmp_path / "reg",
                   remote=proxy.address, local_port=procs.free_port(), calls=1, timeout_s=10,
                   service="alice")
    assert (reg.rc, reg.successful) == (0, 1), reg.summary() + proxy.diagnostics()
    uas = start_uas(tmp_path / "uas", uas_port, CALLS)
    uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path / "uac",
                   remote=proxy.address, local_port=procs.free_port(), calls=CALLS, rate=20,
                   duration_ms=100, timeout_s=30, service="bob")
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{proxy.diagnostics()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, CALLS, 0), diag

    stats = ctl_json(proxy, "stats")

    def delta(method: str) -> int:
        return stats["requests_by_method"].get(method, 0) - base["requests_by_method"].get(method, 0)

    assert (delta("INVITE"), delta("ACK"), delta("BYE"), delta("REGISTER")) == (CALLS, CALLS, CALLS, 1), \
        f"{stats}\n{diag}"
    replies = {k: v - base["replies_sent_by_class"][k] for k, v in stats["replies_sent_by_class"].items()}
    # per call: 100 Trying and the callee's 180, then 200 for INVITE and BYE; 200 for the REGISTER
    assert replies["2xx"] == 2 * CALLS + 1 and replies["1xx"] >= CALLS, f"{replies}\n{diag}"
    assert stats["registrations"] == {"aors": 1, "bindings": 1}
    assert stats["transactions"].keys() == {"server", "client"}
    assert stats["retransmissions"] >= 0 and isinstance(stats["drops"], dict)
    # twistd sipsuite runs the RTP relay in the same process: its sessions are shown
    assert stats["relay"]["sessions"] == 0, stats["relay"]

    text = proxy.ctl("stats")
    assert text.returncode == 0
    rows = dict(line.split(None, 1) for line in text.stdout.splitlines()[1:])
    assert rows["requests_by_method.INVITE"].strip() == str(stats["requests_by_method"]["INVITE"])
    assert rows["registrations.aors"].strip() == "1"

    m = metrics(proxy)
    for method in ("INVITE", "ACK", "BYE", "REGISTER"):
        assert m[("sipsuite_requests_total", (("method", method),))] == \
            stats["requests_by_method"][method]
    assert m[("sipsuite_replies_sent_total", (("class", "2xx"),))] == \
        stats["replies_sent_by_class"]["2xx"]
    assert m[("sipsuite_registered_aors", ())] == 1
    assert m[("sipsuite_registered_bindings", ())] == 1
    assert ("sipsuite_transactions", (("kind", "server"),)) in m
    assert m[("sipsuite_relay_sessions", ())] == stats["relay"]["sessions"]
    assert m[("sipsuite_uptime_seconds", ())] >= first["uptime"]

    # JSON-RPC still answers at / beside /metrics
    assert ctl_json(proxy, "debug")["level"] in ("debug", "info", "warn", "error")
    time.sleep(1.1)
    later = ctl_json(proxy, "uptime")
    assert later["uptime"] >= first["uptime"] + 1, (first, later)
    assert later["started_utc"] == first["started_utc"]
    res = proxy.ctl("uptime")
    assert res.returncode == 0 and res.stdout.startswith("up ") and "since" in res.stdout


# ---------------------------------------------------------------------------
# routing reload during calls

ROUTING = textwrap.dedent('''
    """A user routing module the test rewrites while calls run."""
    from sipsuite.proxy.routing.default import DefaultRouting

    VERSION = {version}


    class Versioned(DefaultRouting):
        def branch_route(self, ctx, branch):
            branch.request.add_header("X-Routing-Version", str(VERSION), top=False)
''')


@pytest.fixture(scope="module")
def versioned(proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory,
              ) -> Iterator[tuple[procs.ProxyProcess, int, Path]]:
    moddir = tmp_path_factory.mktemp("routing-module")
    module = moddir / "liveops_versioned.py"
    module.write_text(ROUTING.format(version=1))
    uas_port = procs.free_port()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(moddir), old) if p)
    try:
        proxy = proxy_factory("liveops-reload", static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                              extra_proxy={"routing": "liveops_versioned:Versioned"})
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    yield proxy, uas_port, module


def versions_seen(uas_dir: Path) -> list[str | None]:
    """X-Routing-Version of each INVITE the callee got, in arrival order."""
    return [t.msg.header("X-Routing-Version")
            for t in parse_sipp_messages(uas_dir / "uas.msg.log")
            if t.direction == "received" and not t.msg.is_response and t.msg.method == "INVITE"]


def run_calls(proxy: procs.ProxyProcess, uas_port: int, workdir: Path, calls: int) -> list[str | None]:
    uas = start_uas(workdir, uas_port, calls)
    uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=workdir, remote=proxy.address,
                   local_port=procs.free_port(), calls=calls, rate=20, duration_ms=100,
                   timeout_s=30, service="bob")
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{proxy.diagnostics()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, calls, 0), diag
    return versions_seen(workdir)


def test_routing_reload_during_calls_loses_none(
    sipp_bin: str, versioned: tuple[procs.ProxyProcess, int, Path], tmp_path: Path,
) -> None:
    proxy, uas_port, module = versioned
    calls = 20
    uas = start_uas(tmp_path, uas_port, calls)
    uac = SippProcess(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path,
                      remote=proxy.address, local_port=procs.free_port(), calls=calls, rate=10,
                      duration_ms=500, timeout_s=40, service="bob")
    time.sleep(0.9)  # some calls set up, some in their pause
    module.write_text(ROUTING.format(version=2))
    res = proxy.ctl("routing", "reload")
    assert res.returncode == 0, res.stderr + proxy.diagnostics()
    assert res.stdout.strip() == "routing reloaded: liveops_versioned:Versioned (module re-imported)"
    caller = uac.wait()
    callee = uas.wait()
    diag = f"\n{caller.summary()}\n{callee.summary()}\n{proxy.diagnostics()}"
    assert (caller.rc, caller.successful, caller.failed) == (0, calls, 0), "calls lost" + diag
    assert (callee.rc, callee.successful) == (0, calls), diag
    seen = versions_seen(tmp_path)
    assert len(seen) == calls, diag
    assert "1" in seen and "2" in seen, f"versions {seen}" + diag
    # in order: every call after the reload got the new routing
    assert seen == sorted(seen), f"versions {seen}"


def test_broken_module_is_refused_and_calls_keep_flowing(
    sipp_bin: str, versioned: tuple[procs.ProxyProcess, int, Path], tmp_path: Path,
) -> None:
    proxy, uas_port, module = versioned
    module.write_text(ROUTING.format(version=7))
    assert proxy.ctl("routing", "reload").returncode == 0
    module.write_text(ROUTING.format(version=8) + "\ndef broken(:\n")
    res = proxy.ctl("routing", "reload")
    assert res.returncode == 1, res
    assert "routing reload refused: SyntaxError" in res.stderr, res.stderr
    assert "liveops_versioned.py" in res.stderr
    assert "routing reload refused" in proxy.log_text()
    module.write_text(ROUTING.format(version=9).replace("DefaultRouting)", "DefaultRouting, Nope)"))
    res = proxy.ctl("routing", "reload")
    assert res.returncode == 1 and "NameError: name 'Nope' is not defined" in res.stderr, res.stderr
    assert run_calls(proxy, uas_port, tmp_path, 5) == ["7"] * 5, proxy.diagnostics()


def test_sighup_reloads_the_routing(
    sipp_bin: str, versioned: tuple[procs.ProxyProcess, int, Path], tmp_path: Path,
) -> None:
    proxy, uas_port, module = versioned
    assert proxy.proc is not None
    module.write_text(ROUTING.format(version=3))
    reloaded = proxy.log_text().count("routing reloaded")
    os.kill(proxy.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while proxy.log_text().count("routing reloaded") == reloaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.alive(), "SIGHUP stopped the proxy\n" + proxy.diagnostics()
    assert proxy.log_text().count("routing reloaded") > reloaded, proxy.diagnostics()
    assert run_calls(proxy, uas_port, tmp_path, 5) == ["3"] * 5, proxy.diagnostics()


# ---------------------------------------------------------------------------
# relay sessions in stats and /metrics


def test_relay_sessions_are_counted_during_a_call(
    sipp_bin: str, proxy_factory: ProxyFactory, tmp_path: Path,
) -> None:
    uas_port = procs.free_port()
    low, high = free_port_range(16)
    proxy = proxy_factory("liveops-media", static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          tables={"features": {"nat": True}, "media": {"relay": "always"},
                                  "relay": {"media_addresses": [LOCALHOST], "ports": f"{low}-{high}"}})
    assert ctl_json(proxy, "stats")["relay"]["sessions"] == 0
    uas = start_uas(tmp_path, uas_port, 1)
    uac = SippProcess(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path,
                      remote=proxy.address, local_port=procs.free_port(), calls=1,
                      duration_ms=3000, timeout_s=30, service="bob")
    during: dict[str, Any] = {}
    seen_metric = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and uac.proc.poll() is None:
        stats = ctl_json(proxy, "stats")
        if stats["relay"]["sessions"] == 1:
            during = stats["relay"]
            seen_metric = metrics(proxy).get(("sipsuite_relay_sessions", ()))
            break
        time.sleep(0.2)
    caller, callee = uac.wait(), uas.wait()
    diag = f"\n{caller.summary()}\n{callee.summary()}\n{proxy.diagnostics()}"
    assert (caller.rc, caller.successful, callee.successful) == (0, 1, 1), diag
    assert during.get("sessions") == 1, "no relay session shown during the call" + diag
    assert during["calls_anchored"] == 1 and during["offers"] >= 1, during
    assert seen_metric == 1, f"/metrics said {seen_metric}" + diag
    deadline = time.monotonic() + 5
    while ctl_json(proxy, "stats")["relay"]["sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ctl_json(proxy, "stats")["relay"]["sessions"] == 0, "session left after the BYE" + diag
