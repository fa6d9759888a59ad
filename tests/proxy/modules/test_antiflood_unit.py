"""The antiflood and scanners modules on their own: set up by their SPECs on
a FakeCore and fed request_in calls, no ProxyCore."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest_twisted
from fakecore import FakeCore
from proxykit import request

from sipsuite.config import load_config
from sipsuite.ops.server import RpcRegistry
from sipsuite.proxy.modules import antiflood, scanners
from sipsuite.proxy.modules.antiflood import register_flood_methods
from sipsuite.proxy.net.listener import Source
from sipsuite.sip.message import Request
from sipsuite.sip.parser import parse_datagram

SPECS = [antiflood.SPEC, scanners.SPEC]


def make(tmp_path: Path, flood: bool = True, agents: str | None = None) -> FakeCore:
    text = (f"[features]\nantiflood = {str(flood).lower()}\n"
            "[antiflood]\nrequests = 4\nwindow = 2.0\nban_time = 60.0\n"
            '[management]\nlisten = ""\n')
    if agents is not None:
        text += f"[proxy]\ndrop_user_agents = {agents}\n"
    path = tmp_path / "c.toml"
    path.write_text(text)
    core = FakeCore(load_config(str(path)))
    core.modules.setup_all(SPECS, core.config)
    return core


def ping(n: int = 1, host: str = "192.0.2.7", ua: str = "") -> Request:
    return parse_datagram(request("OPTIONS", "sip:192.0.2.1", host=host, call_id=f"c{n}",
                                  branch=f"b{n}", user_agent=ua))


def src(host: str = "192.0.2.7") -> Source:
    return Source("udp", host, 5060, None)  # type: ignore[arg-type]


def burst(core: FakeCore, count: int, host: str = "192.0.2.7") -> list[bool]:
    return [core.request_in(ping(n, host), src(host)) for n in range(count)]


def switch(core: FakeCore, **changes: Any) -> None:
    """cfg set: the registry sets up or tears down what flipped."""
    old = core.config
    new = old
    for section, values in changes.items():
        new = dataclasses.replace(new, **{section: dataclasses.replace(
            getattr(new, section), **values)})
    core.config = new
    core.modules.reconfigure(old, new)


def test_both_on_by_default_antiflood_first(tmp_path: Path) -> None:
    core = make(tmp_path)
    assert [owner for owner, _ in core.hooks.request_in] == ["antiflood", "scanners"]
    assert core.modules.names() == ["antiflood", "scanners"]


def test_neither_module_no_hook(tmp_path: Path) -> None:
    core = make(tmp_path, flood=False, agents="[]")
    assert core.hooks.request_in == ()
    assert core.modules.names() == []


def test_flood_from_one_source_is_banned_and_dropped(tmp_path: Path) -> None:
    core = make(tmp_path)
    assert burst(core, 8) == [True] * 4 + [False] * 4
    assert core.stats == {"drop.flood": 4}
    assert burst(core, 1, "192.0.2.8") == [True]  # another source is not affected
    module: Any = core.modules.by_name("antiflood")
    assert [a for a, _ in module.table.banned(core.clock.seconds())] == ["192.0.2.7"]
    assert module.stats() == {"tracked": 1, "banned": 1}
    core.clock.advance(61)  # ban_time passed
    assert burst(core, 1) == [True]


def test_own_address_is_exempt(tmp_path: Path) -> None:
    core = make(tmp_path)
    core.own_addresses.add("192.0.2.1")
    assert burst(core, 20, "192.0.2.1") == [True] * 20
    module: Any = core.modules.by_name("antiflood")
    assert module.table.bans == {}
    assert "drop.flood" not in core.stats


def test_scanner_user_agent_dropped(tmp_path: Path) -> None:
    core = make(tmp_path, flood=False)
    assert core.request_in(ping(ua="friendly-scanner"), src()) is False
    assert core.request_in(ping(ua="Linphone/5.2"), src()) is True
    assert core.stats == {"drop.scanner": 1}


def test_scanner_name_in_from_dropped(tmp_path: Path) -> None:
    core = make(tmp_path, flood=False, agents='["EvilBot"]')
    req = ping()
    req.set_header("from", '"evilbot" <sip:100@192.0.2.7>;tag=x')
    assert core.request_in(req, src()) is False
    assert core.stats == {"drop.scanner_address": 1}


def test_antiflood_switched_off_removes_its_hook(tmp_path: Path) -> None:
    core = make(tmp_path)
    burst(core, 8)
    switch(core, features={"antiflood": False})
    assert core.modules.by_name("antiflood") is None
    assert [owner for owner, _ in core.hooks.request_in] == ["scanners"]
    assert burst(core, 20) == [True] * 20  # the ban went with the module
    switch(core, features={"antiflood": True})
    assert [owner for owner, _ in core.hooks.request_in] == ["antiflood", "scanners"]
    assert burst(core, 6) == [True] * 4 + [False] * 2


def test_scanners_switched_off_and_on_keeps_the_order(tmp_path: Path) -> None:
    core = make(tmp_path)
    switch(core, proxy={"drop_user_agents": []})
    assert [owner for owner, _ in core.hooks.request_in] == ["antiflood"]
    assert core.request_in(ping(ua="friendly-scanner"), src()) is True
    switch(core, proxy={"drop_user_agents": ["sipcli"]})
    assert [owner for owner, _ in core.hooks.request_in] == ["antiflood", "scanners"]
    assert core.request_in(ping(2, ua="sipcli/v1.8"), src()) is False


@pytest_twisted.ensureDeferred
async def test_flood_rpcs_follow_the_module(tmp_path: Path) -> None:
    core = make(tmp_path)
    registry = RpcRegistry()
    register_flood_methods(registry, core)  # type: ignore[arg-type]
    burst(core, 6)
    shown = await registry.call("flood.show")
    assert (shown["enabled"], shown["tracked"]) == (True, 0)
    assert [b["address"] for b in shown["banned"]] == ["192.0.2.7"]
    switch(core, features={"antiflood": False})
    shown = await registry.call("flood.show")
    assert shown == {"enabled": False, "requests": 4, "window": 2.0, "ban_time": 60.0,
                     "banned": [], "top": [], "tracked": 0}
    assert await registry.call("flood.unban", ["192.0.2.7"]) == {
        "address": "192.0.2.7", "unbanned": False}
    switch(core, features={"antiflood": True})
    burst(core, 6)
    assert await registry.call("flood.unban", ["192.0.2.7"]) == {
        "address": "192.0.2.7", "unbanned": True}



def test_worker_batches_its_counts_and_takes_the_hosts_bans(tmp_path: Path) -> None:
    """In a worker process (the WORKER_LINK service): each request is also
    counted for the host, the counts go out in one batch line every BATCH s
    (exempt sources left out), its own bans with them; a ban the
    supervisor sends drops the source here though this worker saw little."""
    import io
    import json

    from sipsuite.proxy.services import WORKER_LINK
    from sipsuite.proxy.workerlink import WorkerLink, encode

    text = ("[features]\nantiflood = true\n[antiflood]\nrequests = 4\nwindow = 2.0\n"
            'ban_time = 60.0\n[management]\nlisten = ""\n')
    (tmp_path / "c.toml").write_text(text)
    core = FakeCore(load_config(str(tmp_path / "c.toml")))
    out = io.StringIO()
    link = WorkerLink(1, out)
    core.modules.provide(WORKER_LINK, link)
    core.modules.setup_all(SPECS, core.config)
    core.modules.start()
    core.own_addresses.add("192.0.2.1")
    assert burst(core, 3) == [True] * 3
    assert burst(core, 2, "192.0.2.1") == [True] * 2
    assert burst(core, 6, "192.0.2.9") == [True] * 4 + [False] * 2  # its own ban
    assert out.getvalue() == ""  # nothing per request
    core.clock.advance(antiflood.BATCH)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    sent = lines[0]
    assert sent["sipsuite_link"] == "flood"
    assert sent["counts"] == {"192.0.2.7": 3, "192.0.2.9": 4}  # ourselves left out
    assert sent["bans"] == {"192.0.2.9": 60.0}
    assert (sent["limit"], sent["window"], sent["ban_time"]) == (4, 2.0, 60.0)
    core.clock.advance(antiflood.BATCH)
    assert len(out.getvalue().splitlines()) == 1  # nothing new: no line
    # The host's ban, from the supervisor.
    link.feed(encode("flood_ban", address="192.0.2.7", seconds=30.0))
    assert burst(core, 1) == [False]
    core.clock.advance(31)
    assert burst(core, 1) == [True]
    # An unban the supervisor passes to a worker still starting.
    link.feed(encode("flood_ban", address="192.0.2.7", seconds=30.0))
    link.feed(encode("flood_unban", address="192.0.2.7"))
    assert burst(core, 1) == [True]
    core.modules.stop()
