"""Antiflood (pike + ipban) and the scanner drop (User-Agent, From/To/Contact): the FloodTable
on its own, then the hook at the top of ProxyCore.receive_request in an
in-process core on a task.Clock, then the flood.* management methods."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from proxykit import ProxyKit, request

from sipsuite.ops.errors import RpcError
from sipsuite.ops.server import RpcRegistry
from sipsuite.proxy.modules.antiflood import FloodTable, register_flood_methods

LIMIT, WINDOW, BAN, CAP = 16, 2.0, 300.0, 1000


def hit(table: FloodTable, addr: str, now: float, cap: int = CAP) -> bool:
    return table.hit(addr, now, LIMIT, WINDOW, BAN, cap)


# --------------------------------------------------------------------------- FloodTable


def test_more_than_limit_in_window_bans() -> None:
    table = FloodTable()
    assert not any(hit(table, "192.0.2.9", 100.0 + i * 0.01) for i in range(LIMIT))
    assert hit(table, "192.0.2.9", 100.5)  # the 17th within 2 s
    assert table.banned(100.5) == [("192.0.2.9", BAN)]
    # Banned: dropped for ban_time, then let through again.
    assert hit(table, "192.0.2.9", 100.5 + BAN - 1)
    assert not hit(table, "192.0.2.9", 100.5 + BAN)
    assert table.banned(100.5 + BAN) == []


def test_limit_per_window_is_not_a_ban() -> None:
    table = FloodTable()
    # 16 every 2 s, for a minute: at the limit, never over it.
    for second in range(0, 60, 2):
        for i in range(LIMIT):
            assert not hit(table, "192.0.2.9", 1000.0 + second + i * 0.1)
    assert table.bans == {}


def test_sources_are_counted_apart() -> None:
    table = FloodTable()
    for i in range(LIMIT):
        for addr in ("192.0.2.1", "192.0.2.2"):
            assert not hit(table, addr, 10.0 + i * 0.01)
    assert hit(table, "192.0.2.1", 10.5)
    assert not hit(table, "192.0.2.3", 10.5)


def test_exempt_sources_are_never_banned() -> None:
    table = FloodTable(exempt=lambda addr: addr.startswith("10."))
    results = [hit(table, "10.1.1.1", 50.0 + i * 0.001) for i in range(10 * LIMIT)]
    assert not any(results)
    assert table.bans == {}


def test_unban_lifts_ban_and_resets_count() -> None:
    table = FloodTable()
    for i in range(LIMIT + 1):
        hit(table, "192.0.2.9", 1.0 + i * 0.01)
    assert table.unban("192.0.2.9") is True
    assert not hit(table, "192.0.2.9", 1.5)
    assert table.unban("192.0.2.9") is False


def test_spoofed_source_flood_keeps_memory_bounded() -> None:
    table = FloodTable()
    cap = 200
    for i in range(20_000):
        addr = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        hit(table, addr, 5.0 + i * 1e-5, cap)
        assert len(table.windows) <= cap
    # And every spoofed source that floods hard enough to be banned too.
    for i in range(2 * cap):
        addr = f"172.16.{i >> 8}.{i & 255}"
        for k in range(LIMIT + 1):
            hit(table, addr, 7.0 + k * 1e-4, cap)
        assert len(table.bans) <= cap
    assert len(table.windows) <= cap


def test_expired_windows_are_pruned_first() -> None:
    table = FloodTable()
    cap = 100
    for i in range(cap):
        hit(table, f"10.0.0.{i}", 1.0, cap)
    hit(table, "192.0.2.50", 1.1, cap)  # full of fresh entries: the oldest goes
    assert len(table.windows) == cap
    hit(table, "192.0.2.51", 10.0, cap)  # all expired: pruned at once
    assert set(table.windows) == {"192.0.2.51"}


# --------------------------------------------------------------------------- in the core

FLOOD = {"requests": 4, "window": 2.0, "ban_time": 60.0}


def options(n: int, host: str = "127.0.0.2", ua: str = "") -> bytes:
    return request("OPTIONS", "sip:127.0.0.1:5060", host=host, call_id=f"opt-{host}-{n}",
                   branch=f"o{n}", user_agent=ua)


def burst(kit: ProxyKit, count: int, host: str = "127.0.0.2") -> list[int]:
    """Send ``count`` OPTIONS pings; the status each got (0: no answer)."""
    out = []
    for n in range(count):
        kit.take()
        kit.feed(options(n, host), host)
        got = [m.status for m, h, _ in kit.sent if h == host]
        out.append(got[0] if got else 0)
    return out


def test_flood_in_core_drops_silently_after_limit(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, features={"antiflood": True}, antiflood=FLOOD)
    assert burst(kit, 8) == [200, 200, 200, 200, 0, 0, 0, 0]
    assert kit.core.stats["drop.flood"] == 4
    # An INVITE from the banned source gets not even 100 Trying, and no
    # transaction is created for it.
    kit.take()
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", host="127.0.0.2"), "127.0.0.2")
    assert kit.sent == []
    assert not any(key[-1] == "INVITE" for key in kit.core.server_txs)
    # Another source is unaffected.
    assert burst(kit, 1, "127.0.0.3") == [200]
    # The ban ends after ban_time.
    kit.clock.advance(61)
    assert burst(kit, 1) == [200]


def test_retransmissions_count_too(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, features={"antiflood": True}, antiflood=FLOOD)
    data = options(1)
    for _ in range(5):  # the same request 5 times: retransmissions
        kit.feed(data, "127.0.0.2")
    assert kit.core.stats["drop.flood"] == 1
    assert kit.core.stats["retransmissions"] == 3


def test_antiflood_off_answers_all(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, antiflood=FLOOD)
    assert burst(kit, 20) == [200] * 20
    assert "drop.flood" not in kit.core.stats


def switch_antiflood(core: Any, on: bool) -> None:
    """``cfg set features.antiflood``: the registry sets the module up or stops it."""
    from sipsuite.ops.liveops import cfg_set

    cfg_set(core, "features.antiflood", on)


def test_antiflood_switched_at_run_time(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, antiflood=FLOOD)
    core = kit.core
    assert core.modules.by_name("antiflood") is None
    switch_antiflood(core, True)
    assert burst(kit, 6) == [200] * 4 + [0, 0]
    # The limits are read at use: no reconfigure needed for them.
    core.config = dataclasses.replace(
        core.config, antiflood=dataclasses.replace(core.config.antiflood, requests=100))
    kit.clock.advance(61)
    assert burst(kit, 20) == [200] * 20
    # Off again: the module and its hook go, a burst is answered in full.
    switch_antiflood(core, False)
    assert core.modules.by_name("antiflood") is None
    assert [owner for owner, _ in core.hooks.request_in] == ["scanners"]
    kit.clock.advance(61)
    assert burst(kit, 120) == [200] * 120


def test_trusted_and_own_addresses_never_banned(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, features={"antiflood": True}, antiflood=FLOOD,
                   proxy={"trusted": ["127.0.0.64/26"]})
    assert burst(kit, 20, "127.0.0.70") == [200] * 20
    assert burst(kit, 20, "127.0.0.1") == [200] * 20  # the proxy's own address
    assert kit.core.modules.by_name("antiflood").table.bans == {}
    assert burst(kit, 6, "127.0.0.2") == [200] * 4 + [0, 0]


def test_ban_is_logged_once(tmp_path: Path, caplog_events: list[dict[str, Any]]) -> None:
    kit = ProxyKit(tmp_path, features={"antiflood": True}, antiflood=FLOOD)
    burst(kit, 12)
    bans = [e for e in caplog_events if "banning" in e.get("log_format", "")]
    assert len(bans) == 1
    assert bans[0]["a"] == "127.0.0.2" and bans[0]["t"] == 60.0


@pytest.fixture
def caplog_events() -> Any:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# --------------------------------------------------------------------------- scanners


@pytest.mark.parametrize("ua", ["friendly-scanner", "Friendly-Scanner 1.0", "sipcli/v1.8",
                                "SIPVicious", "VaxSIPUserAgent/3.1", "PPLSIP"])
def test_scanner_user_agent_dropped_silently(tmp_path: Path, ua: str) -> None:
    kit = ProxyKit(tmp_path)
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", user_agent=ua), "127.0.0.2")
    kit.feed(options(1, ua=ua), "127.0.0.2")
    assert kit.sent == []  # no 100 Trying, no answer
    assert kit.core.server_txs == {}
    assert kit.core.stats["drop.scanner"] == 2


def test_normal_user_agent_answered(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    kit.feed(options(1, ua="Linphone/5.2 (belle-sip/5.2)"), "127.0.0.2")
    assert [m.status for m, _, _ in kit.sent] == [200]
    assert "drop.scanner" not in kit.core.stats


def test_empty_scanner_list_drops_none(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, proxy={"drop_user_agents": []})
    kit.feed(options(1, ua="friendly-scanner"), "127.0.0.2")
    assert [m.status for m, _, _ in kit.sent] == [200]


def test_scanner_list_switched_by_cfg_set(tmp_path: Path) -> None:
    from sipsuite.ops.liveops import cfg_set

    kit = ProxyKit(tmp_path)
    core = kit.core
    cfg_set(core, "proxy.drop_user_agents", "[]")
    assert core.modules.by_name("scanners") is None
    kit.feed(options(1, ua="friendly-scanner"), "127.0.0.2")
    cfg_set(core, "proxy.drop_user_agents", '["friendly-scanner"]')
    kit.feed(options(2, ua="friendly-scanner"), "127.0.0.2")
    assert [m.status for m, _, _ in kit.sent] == [200]
    assert core.stats["drop.scanner"] == 1


def test_scanner_list_read_at_use_time(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    core = kit.core
    core.config = dataclasses.replace(
        core.config, proxy=dataclasses.replace(core.config.proxy, drop_user_agents=["EvilBot"]))
    kit.feed(options(1, ua="friendly-scanner"), "127.0.0.2")
    kit.feed(options(2, ua="my evilbot 2"), "127.0.0.2")
    assert [m.status for m, _, _ in kit.sent] == [200]
    assert core.stats["drop.scanner"] == 1


def svmap_compact(host: str = "127.0.0.2", fromname: str = "sipvicious") -> bytes:
    """svmap -c's OPTIONS as it is on the wire: compact headers, no User-Agent,
    the tool's name in the From and To display names."""
    return (f"OPTIONS sip:100@127.0.0.1 SIP/2.0\r\n"
            f"v: SIP/2.0/UDP {host}:5060;branch=z9hG4bK-1;rport\r\n"
            f't: "{fromname}"<sip:100@1.1.1.1>\r\n'
            f'f: "{fromname}"<sip:100@1.1.1.1>;tag=6134\r\n'
            "i: 1234\r\nm: sip:100@1.1.1.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Accept: application/sdp\r\nContent-Length: 0\r\n\r\n").encode()


def with_header(data: bytes, name: str, value: str) -> bytes:
    """``data`` with its ``name:`` line replaced by ``name: value``."""
    lines = data.decode().split("\r\n")
    out = [f"{name}: {value}" if line.lower().startswith(name.lower() + ":") else line
           for line in lines]
    return "\r\n".join(out).encode()


def test_scanner_without_user_agent_dropped_by_from(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    kit.feed(svmap_compact(), "127.0.0.2")
    assert kit.sent == []
    assert kit.core.stats["drop.scanner_address"] == 1
    assert "drop.scanner" not in kit.core.stats


@pytest.mark.parametrize(("header", "value"), [
    ("From", '"Friendly-Scanner" <sip:alice@sipsuite.test>;tag=a'),
    ("To", "<sip:sipvicious@sipsuite.test>"),
    ("Contact", "<sip:PPLSIP@127.0.0.2:5070>"),
])
def test_scanner_name_in_each_address_header_dropped(tmp_path: Path, header: str,
                                                     value: str) -> None:
    kit = ProxyKit(tmp_path)
    kit.feed(with_header(options(1), header, value), "127.0.0.2")
    assert kit.sent == []
    assert kit.core.stats["drop.scanner_address"] == 1


def test_scanner_name_in_a_host_is_not_a_scanner(tmp_path: Path) -> None:
    """Only display name and user are searched: sipclient.example.net is a real
    domain, not sipcli."""
    kit = ProxyKit(tmp_path)
    data = with_header(options(1), "From", "<sip:alice@sipclient.example.net>;tag=a")
    kit.feed(with_header(data, "Contact", "<sip:alice@sipvicious.example.org>"), "127.0.0.2")
    assert [m.status for m, _, _ in kit.sent] == [200]
    assert "drop.scanner_address" not in kit.core.stats


def test_user_agent_and_address_drops_counted_apart(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    kit.feed(options(1, ua="friendly-scanner"), "127.0.0.2")
    kit.feed(svmap_compact(), "127.0.0.2")
    kit.feed(svmap_compact(fromname="SIPcli"), "127.0.0.2")
    assert kit.sent == []
    assert kit.core.stats["drop.scanner"] == 1
    assert kit.core.stats["drop.scanner_address"] == 2


def test_scanner_drops_in_stats_and_metrics(tmp_path: Path) -> None:
    from twisted.internet import defer

    from sipsuite.ops.stats import collect_stats, render_metrics

    kit = ProxyKit(tmp_path)
    kit.feed(options(1, ua="friendly-scanner"), "127.0.0.2")
    kit.feed(svmap_compact(), "127.0.0.2")
    figures = defer.ensureDeferred(collect_stats(kit.core)).result
    assert figures["drops"] == {"scanner": 1, "scanner_address": 1}
    text = render_metrics(figures).decode()
    assert 'sipsuite_drops_total{cause="scanner"} 1.0' in text
    assert 'sipsuite_drops_total{cause="scanner_address"} 1.0' in text


def test_empty_scanner_list_looks_at_no_address(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, proxy={"drop_user_agents": []})
    kit.feed(svmap_compact(), "127.0.0.2")
    assert len(kit.sent) == 1  # answered (404: no user 100 here), not dropped
    assert not [k for k in kit.core.stats if k.startswith("drop.")]


# --------------------------------------------------------------------------- management


@pytest_twisted.ensureDeferred
async def test_flood_show_and_unban(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, features={"antiflood": True}, antiflood=FLOOD)
    registry = RpcRegistry()
    register_flood_methods(registry, kit.core)
    burst(kit, 6)
    burst(kit, 2, "127.0.0.3")
    kit.clock.advance(10)
    shown = await registry.call("flood.show")
    assert shown["enabled"] is True
    assert shown["banned"] == [{"address": "127.0.0.2", "seconds_left": 50.0}]
    assert shown["requests"] == 4 and shown["ban_time"] == 60.0
    burst(kit, 3, "127.0.0.4")
    shown = await registry.call("flood.show", {"top": 1})
    assert shown["top"] == [{"address": "127.0.0.4", "requests": 3}]
    assert await registry.call("flood.unban", ["127.0.0.2"]) == {
        "address": "127.0.0.2", "unbanned": True}
    assert (await registry.call("flood.show"))["banned"] == []
    assert burst(kit, 1) == [200]
    assert await registry.call("flood.unban", {"address": "127.0.0.2"}) == {
        "address": "127.0.0.2", "unbanned": False}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("params", [["not-an-ip"], [5], {"address": "example.com"}])
async def test_flood_unban_bad_address(tmp_path: Path, params: Any) -> None:
    kit = ProxyKit(tmp_path)
    registry = RpcRegistry()
    register_flood_methods(registry, kit.core)
    with pytest.raises(RpcError) as info:
        await registry.call("flood.unban", params)
    assert info.value.code == -32602


@pytest_twisted.ensureDeferred
async def test_flood_show_bad_top(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    registry = RpcRegistry()
    register_flood_methods(registry, kit.core)
    with pytest.raises(RpcError) as info:
        await registry.call("flood.show", {"top": -1})
    assert info.value.code == -32602


# --------------------------------------------------------------------------- sipsuite-ctl


def test_ctl_flood_formatters() -> None:
    import argparse

    from sipsuite.ops.ctl.cli import show_flood, show_unban

    args = argparse.Namespace()
    shown = show_flood({"enabled": True, "requests": 16, "window": 2.0, "ban_time": 300.0,
                        "banned": [{"address": "192.0.2.9", "seconds_left": 287.4}],
                        "top": [{"address": "192.0.2.7", "requests": 5}], "tracked": 2}, args)
    assert shown.splitlines() == [
        "antiflood on: more than 16 requests in 2 s bans for 300 s",
        "BANNED     SECONDS-LEFT",
        "192.0.2.9  287",
        "SOURCE     REQUESTS-IN-WINDOW",
        "192.0.2.7  5",
    ]
    off = show_flood({"enabled": False, "requests": 16, "window": 2.0, "ban_time": 300.0,
                      "banned": [], "top": [], "tracked": 0}, args)
    assert off.splitlines() == [
        "antiflood off ([features] antiflood = false): more than 16 requests in 2 s bans for 300 s",
        "no banned addresses",
    ]
    assert show_unban({"address": "192.0.2.9", "unbanned": True}, args) == "unbanned 192.0.2.9"
    assert show_unban({"address": "192.0.2.9", "unbanned": False}, args) == "192.0.2.9 was not banned"
