"""Antiflood (kamailio.cfg WITH_ANTIFLOOD) and the REQINIT scanner drop,
with real sipp traffic through a real proxy process.

Two proxies, UDP/TCP on 127.0.0.1 at ports chosen at run time:

    flood  [features] antiflood, 10 requests / 2 s, ban 300 s;
           trusted = 127.0.0.64/26
    open   antiflood off (the default), the default scanner list

The flooders send from 127.0.0.2, .3 ... (sipp -i), never from 127.0.0.1:
that is the proxy's own address, which is never banned. Every sipp run is
bounded (-m, -timeout, and -recv_timeout so an unanswered ping fails in 1 s).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
from procs import (
    ProxyFactory,
    ProxyProcess,
    SippResult,
    UdpEndpoint,
    build_request,
    run_sipp,
    sipp_dir,
)

LIMIT = 10
BURST = 30
RATE = 100  # pings/s: the burst takes 0.3 s, well inside one 2 s window
TRUSTED_NET = "127.0.0.64/26"


@dataclass
class Proxies:
    flood: ProxyProcess
    open: ProxyProcess


@pytest.fixture(scope="module")
def proxies(proxy_factory: ProxyFactory) -> Iterator[Proxies]:
    flood = proxy_factory(
        "flood", trusted=[TRUSTED_NET],
        tables={"features": {"antiflood": True},
                "antiflood": {"requests": LIMIT, "window": 2.0, "ban_time": 300.0}})
    open_ = proxy_factory("open")
    yield Proxies(flood, open_)


def pings(proxy: ProxyProcess, workdir: Path, source: str, calls: int, *, name: str = "ping",
          scenario: Path | None = None) -> SippResult:
    """``calls`` OPTIONS pings (options_uac.xml) at RATE/s from ``source``."""
    return run_sipp(
        scenario or sipp_dir() / "options_uac.xml", name=name, workdir=workdir,
        remote=proxy.address, local_port=procs.free_port("udp"), calls=calls, rate=RATE,
        timeout_s=20, timeout_error=False, extra=["-i", source, "-recv_timeout", "1000"],
    )


def flood_state(proxy: ProxyProcess) -> dict:
    out = proxy.ctl("--json", "flood", "show")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def banned(proxy: ProxyProcess) -> list[str]:
    return [b["address"] for b in flood_state(proxy)["banned"]]


def udp_ping(proxy: ProxyProcess, source: str, wait: float = 1.0) -> int | None:
    """One OPTIONS from ``source``; the status of the answer, None if none came."""
    with UdpEndpoint(source) as ep:
        ep.send(build_request("OPTIONS", f"sip:{proxy.hostport}", sent_by=ep.sent_by,
                              to_uri=f"sip:{proxy.hostport}"), proxy.address)
        got = ep.recv(wait)
        return got.msg.status if got is not None else None


def test_burst_is_banned_then_unbanned(sipp_bin: str, proxies: Proxies, tmp_path: Path) -> None:
    proxy = proxies.flood
    res = pings(proxy, tmp_path, "127.0.0.2", BURST)
    diag = f"\n{res.summary()}\n{proxy.diagnostics()}"
    # The first LIMIT are answered, every later one (and its retransmissions) is not.
    assert (res.successful, res.failed) == (LIMIT, BURST - LIMIT), diag
    assert banned(proxy) == ["127.0.0.2"], diag
    state = flood_state(proxy)
    assert 290 < state["banned"][0]["seconds_left"] <= 300
    assert "antiflood: banning 127.0.0.2 for 300 s" in proxy.log_text()
    assert proxy.log_text().count("antiflood: banning 127.0.0.2") == 1

    table = proxy.ctl("flood", "show")
    assert table.returncode == 0 and "127.0.0.2" in table.stdout, table
    assert "BANNED" in table.stdout and "antiflood on" in table.stdout, table.stdout

    # Still banned: a lone ping, well after the burst, gets nothing.
    assert udp_ping(proxy, "127.0.0.2") is None, diag
    # Others are not affected.
    assert udp_ping(proxy, "127.0.0.4") == 200, diag

    out = proxy.ctl("flood", "unban", "127.0.0.2")
    assert (out.returncode, out.stdout.strip()) == (0, "unbanned 127.0.0.2"), out
    assert banned(proxy) == []
    again = pings(proxy, tmp_path, "127.0.0.2", 3, name="after-unban")
    assert (again.successful, again.failed) == (3, 0), again.summary() + proxy.diagnostics()

    out = proxy.ctl("flood", "unban", "not-an-address")
    assert out.returncode == 1 and "not an IP address" in out.stderr, out


def test_trusted_network_is_never_banned(sipp_bin: str, proxies: Proxies, tmp_path: Path) -> None:
    proxy = proxies.flood
    res = pings(proxy, tmp_path, "127.0.0.70", BURST)
    assert (res.successful, res.failed) == (BURST, 0), res.summary() + proxy.diagnostics()
    assert "127.0.0.70" not in banned(proxy)


def test_antiflood_off_answers_every_ping(sipp_bin: str, proxies: Proxies, tmp_path: Path) -> None:
    proxy = proxies.open
    res = pings(proxy, tmp_path, "127.0.0.3", BURST)
    assert (res.successful, res.failed) == (BURST, 0), res.summary() + proxy.diagnostics()
    state = flood_state(proxy)
    assert state["enabled"] is False and state["banned"] == []


def scenario_with_user_agent(tmp_path: Path, user_agent: str) -> Path:
    text = (sipp_dir() / "options_uac.xml").read_text()
    marker = "      Accept: application/sdp\n"
    assert marker in text
    path = tmp_path / f"options_ua_{len(user_agent)}.xml"
    path.write_text(text.replace(marker, f"      User-Agent: {user_agent}\n" + marker))
    return path


@pytest.mark.parametrize("user_agent", ["friendly-scanner", "SIPVicious 0.3.4", "sipcli/v1.8"])
def test_scanner_gets_no_answer(
    sipp_bin: str, proxies: Proxies, tmp_path: Path, user_agent: str
) -> None:
    proxy = proxies.open
    res = pings(proxy, tmp_path, "127.0.0.5", 3, name="scanner",
                scenario=scenario_with_user_agent(tmp_path, user_agent))
    assert (res.successful, res.failed) == (0, 3), res.summary() + proxy.diagnostics()


def test_normal_user_agent_is_answered(sipp_bin: str, proxies: Proxies, tmp_path: Path) -> None:
    proxy = proxies.open
    res = pings(proxy, tmp_path, "127.0.0.5", 3, name="phone",
                scenario=scenario_with_user_agent(tmp_path, "Yealink SIP-T46S 66.86.0.15"))
    assert (res.successful, res.failed) == (3, 0), res.summary() + proxy.diagnostics()
