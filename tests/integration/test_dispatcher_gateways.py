"""The dispatcher in a real proxy process, with examples/dispatcher_routing.py
as the routing class:

- three sipp gateways (scenarios/dispatcher_gw.xml: answers probes and calls)
  in set 1, round robin, probed every second; a bounded run of calls from a
  sipp UAC; one gateway is killed during the run: no call fails (the ones sent
  to it before the probes found it dead fail over in failure_route after
  timer B), `sipsuite-ctl dispatcher dump` shows it inactive, and it is active
  again within a few probe intervals of being restarted;
- `sipsuite-ctl dispatcher reload` with a changed list file adds a
  destination, a broken file is refused and the old sets stay, and
  `dispatcher set-state ... inactive` stops traffic to a destination.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import procs
import pytest
from procs import (
    LOCALHOST,
    SCENARIOS,
    CalleeBehaviour,
    ProxyFactory,
    RawCallee,
    SippProcess,
    UdpEndpoint,
    build_ack_for,
    build_request,
    parse_sipp_messages,
)

ROUTING = "examples.dispatcher_routing:DispatcherRouting"
NUMBER = "+4930123456"  # the example's prefix "+" sends it to set 1
CALLS = 60
RATE = 10
PROBE_INTERVAL = 1.0
T1 = 0.05  # timer B = 64*T1 = 3.2 s: calls sent to the dead gateway fail over quickly


def dump(proxy: procs.ProxyProcess) -> dict[str, dict[str, Any]]:
    """dispatcher dump --json -> {uri: destination} of set 1."""
    run = proxy.ctl("--json", "dispatcher", "dump")
    assert run.returncode == 0, run.stderr + proxy.diagnostics()
    sets = json.loads(run.stdout)
    return {d["uri"]: d for s in sets if s["setid"] == 1 for d in s["destinations"]}


def wait_state(proxy: procs.ProxyProcess, uri: str, state: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        d = dump(proxy)[uri]
        if d["state"] == state or time.monotonic() > deadline:
            return d
        time.sleep(0.2)


def start_gateway(workdir: Path, port: int, name: str) -> SippProcess:
    gw = SippProcess(SCENARIOS / "dispatcher_gw.xml", name=name, workdir=workdir, local_port=port,
                     calls=100_000, timeout_s=120, timeout_error=False)
    gw.wait_bound()
    return gw


# --------------------------------------------------------------------------- failover


def test_killed_gateway_fails_over_is_marked_down_and_comes_back(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    ports = [procs.free_port("udp") for _ in range(3)]
    uris = [f"sip:{LOCALHOST}:{p}" for p in ports]
    gws = [start_gateway(tmp_path / f"gw{i}", p, f"gw{i}") for i, p in enumerate(ports)]
    try:
        proxy = proxy_factory(
            "dispatcher-failover",
            extra_proxy={"routing": ROUTING},
            tables={
                "timers": {"t1": T1},
                "dispatcher": {"probe_interval": PROBE_INTERVAL, "probe_timeout": 0.8},
                "dispatcher.sets": {"1": uris},
            },
        )
        diag = lambda: "\n" + proxy.diagnostics()  # noqa: E731
        # The first probes have all been answered before the calls start.
        for uri in uris:
            d = wait_state(proxy, uri, "active", 5.0)
            deadline = time.monotonic() + 5.0
            while d["last_probe"] != "200 OK" and time.monotonic() < deadline:
                time.sleep(0.2)
                d = dump(proxy)[uri]
            assert d["last_probe"] == "200 OK", f"{uri}: {d}" + diag()

        uac_dir = tmp_path / "uac"
        uac = SippProcess(SCENARIOS / "dispatcher_uac.xml", name="uac", workdir=uac_dir,
                          remote=proxy.address, local_port=procs.free_port("udp"), calls=CALLS,
                          rate=RATE, timeout_s=60, service=NUMBER, trace_msg=True)
        time.sleep(2.0)  # about 20 calls in
        gws[1].kill()
        killed_at = time.monotonic()
        result = uac.wait()
        summary = "\n" + result.summary() + diag()

        assert result.rc == 0, summary
        assert (result.created, result.successful, result.failed) == (CALLS, CALLS, 0), summary
        log = proxy.log_text()
        assert f"{uris[1]} in set 1 marked inactive" in log, summary
        # Calls went to the dead one before the probes caught it: they failed
        # over to a live gateway (and still count among the successful ones).
        failovers = [line for line in log.splitlines() if "failed over from" in line]
        assert failovers and all(uris[1] in line for line in failovers), summary
        # The only casualties a failover cannot help: a call already connected
        # to the gateway when it died gets 408 to its BYE (at most one or two
        # at 10 calls/s on loopback).
        bye_408 = [t for t in parse_sipp_messages(result.messages_path)
                   if t.direction == "received" and t.msg.is_response and t.msg.status == 408]
        assert len(bye_408) <= 2, summary

        d = dump(proxy)[uris[1]]
        assert d["state"] == "inactive" and d["flags"] == "IP", f"{d}" + diag()
        assert d["last_probe"] == "timeout"
        for uri in (uris[0], uris[2]):
            assert wait_state(proxy, uri, "active", 3.0)["state"] == "active", diag()
        shown = proxy.ctl("dispatcher", "dump")
        row = next(line for line in shown.stdout.splitlines() if uris[1] in line)
        assert "inactive" in row.split() and "IP" in row.split(), shown.stdout
        assert time.monotonic() - killed_at < 30

        # Restarted: active again within a few probe intervals.
        gws[1] = start_gateway(tmp_path / "gw1-again", ports[1], "gw1b")
        restarted = time.monotonic()
        d = wait_state(proxy, uris[1], "active", 4 * PROBE_INTERVAL + 1.0)
        assert d["state"] == "active", f"{d}" + diag()
        assert d["last_probe"] == "200 OK"
        assert time.monotonic() - restarted <= 4 * PROBE_INTERVAL + 1.0
    finally:
        for gw in gws:
            gw.kill()


# --------------------------------------------------------------------------- reload and set-state


@pytest.fixture(scope="module")
def listed(proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[procs.ProxyProcess, Path, RawCallee, RawCallee]]:
    a, b = RawCallee(), RawCallee()
    listf = tmp_path_factory.mktemp("dslist") / "dispatcher.list"
    listf.write_text(f"# gateways\n1 sip:{LOCALHOST}:{a.port}\n")
    try:
        proxy = proxy_factory(
            "dispatcher-list", extra_proxy={"routing": ROUTING},
            tables={"dispatcher": {"list_file": str(listf), "probe_interval": 0.0}})
        yield proxy, listf, a, b
    finally:
        a.close()
        b.close()


def call(proxy: procs.ProxyProcess, n: int) -> list[int]:
    """``n`` INVITEs to the gateway prefix, one after the other; their final statuses."""
    finals = []
    with UdpEndpoint() as caller:
        for _ in range(n):
            req = build_request("INVITE", f"sip:{NUMBER}@sipsuite.test", sent_by=caller.sent_by,
                                contact=f"sip:alice@{caller.sent_by}")
            caller.send(req, proxy.address)
            got = caller.recv_until(lambda m: m.is_response and m.status >= 200, 5)
            assert got is not None, proxy.diagnostics()
            caller.send(build_ack_for(req, got.msg), proxy.address)
            finals.append(got.msg.status)
    return finals


def test_reload_adds_a_destination_and_refuses_a_broken_file(
    listed: tuple[procs.ProxyProcess, Path, RawCallee, RawCallee],
) -> None:
    proxy, listf, a, b = listed
    ua, ub = f"sip:{LOCALHOST}:{a.port}", f"sip:{LOCALHOST}:{b.port}"
    assert list(dump(proxy)) == [ua]
    listf.write_text(f"1 sip:{LOCALHOST}:{a.port}\n1 sip:{LOCALHOST}:{b.port} 0 0 weight=5\n")
    run = proxy.ctl("dispatcher", "reload")
    assert run.returncode == 0 and run.stdout.strip() == "loaded 1 set(s), 2 destination(s)", run
    assert list(dump(proxy)) == [ua, ub]
    assert dump(proxy)[ub]["weight"] == 5

    listf.write_text(f"1 sip:{LOCALHOST}:{a.port}\n1 sip:{LOCALHOST}:{b.port} 0 zero\n")
    run = proxy.ctl("dispatcher", "reload")
    assert run.returncode == 1, run
    assert f"{listf}:2: priority: expected a whole number" in run.stderr, run.stderr
    assert "the old sets stay" in run.stderr
    assert list(dump(proxy)) == [ua, ub]


def test_set_state_inactive_stops_traffic(
    listed: tuple[procs.ProxyProcess, Path, RawCallee, RawCallee],
) -> None:
    proxy, listf, a, b = listed
    ua, ub = f"sip:{LOCALHOST}:{a.port}", f"sip:{LOCALHOST}:{b.port}"
    listf.write_text(f"1 {ua}\n1 {ub}\n")
    assert proxy.ctl("dispatcher", "reload").returncode == 0
    for callee in (a, b):
        callee.reset(CalleeBehaviour(provisional=(), final=486))
    assert call(proxy, 4) == [486] * 4
    assert len(a.messages("INVITE")) == 2 and len(b.messages("INVITE")) == 2  # round robin

    run = proxy.ctl("dispatcher", "set-state", "1", ua, "inactive")
    assert run.returncode == 0 and run.stdout.strip() == f"{ua} in set 1 is now inactive", run
    assert dump(proxy)[ua]["state"] == "inactive"
    for callee in (a, b):
        callee.reset(CalleeBehaviour(provisional=(), final=486))
    assert call(proxy, 4) == [486] * 4
    assert a.messages("INVITE") == [] and len(b.messages("INVITE")) == 4

    run = proxy.ctl("dispatcher", "set-state", "1", ub, "disabled")
    assert run.returncode == 0
    assert call(proxy, 1) == [503]  # nothing usable left: the example answers 503
    run = proxy.ctl("dispatcher", "set-state", "1", "sip:192.0.2.99", "active")
    assert run.returncode == 1 and "no destination sip:192.0.2.99 in set 1" in run.stderr
    for uri in (ua, ub):
        assert proxy.ctl("dispatcher", "set-state", "1", uri, "active").returncode == 0


def test_broken_list_file_stops_start_up(tmp_path: Path) -> None:
    listf = tmp_path / "dispatcher.list"
    listf.write_text("# gateways\n1 sip:127.0.0.1:5099\n1 sip:127.0.0.1:5098 0 0 weight=heavy\n")
    port = procs.free_port()
    cfg = procs.write_config(tmp_path / "sipsuite.toml", port=port,
                             extra_proxy={"routing": ROUTING},
                             tables={"dispatcher": {"list_file": str(listf)}})
    with pytest.raises(procs.ProxyStartError) as info:
        proxy = procs.start_proxy(tmp_path / "run", cfg, port, ready_timeout=15.0)
        proxy.stop()
    out = (tmp_path / "run" / "proxy.out").read_text()
    assert (f"sipsuite: dispatcher: {listf}:3: attrs: weight: expected a whole number from 0"
            " to 9999, got 'heavy'") in out, str(info.value)
    assert "Traceback" not in out, out
