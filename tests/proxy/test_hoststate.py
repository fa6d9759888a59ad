"""The supervisor's host-wide state (proxy/hoststate.py) and the link's
line format (proxy/workerlink.py), without processes: the integration
side is tests/integration/test_workers_host.py."""

from __future__ import annotations

import io
from typing import Any

from sipsuite.proxy.hoststate import HostState
from sipsuite.proxy.modules.antiflood import FloodTable
from sipsuite.proxy.workerlink import LINK_KEY, LineSplitter, WorkerLink, encode

LIMITS = {"limit": 10, "window": 2.0, "ban_time": 60.0, "max_sources": 100}


def batch(counts: dict[str, int], bans: dict[str, float] | None = None) -> dict[str, Any]:
    return {LINK_KEY: "flood", "counts": counts, "bans": bans or {}, **LIMITS}


def test_batches_of_two_workers_add_up_to_a_ban() -> None:
    host = HostState()
    assert host.flood_batch(batch({"192.0.2.1": 6, "192.0.2.2": 1}), 0.0) == []
    # Another worker's 5 in the same window: 11 > 10 for the host.
    assert host.flood_batch(batch({"192.0.2.1": 5}), 0.5) == [("192.0.2.1", 60.0)]
    # Banned: more counts start no second ban.
    assert host.flood_batch(batch({"192.0.2.1": 50}), 1.0) == []
    assert [a for a, _ in host.flood.banned(1.0)] == ["192.0.2.1"]
    # A new window starts from nothing.
    assert host.flood_batch(batch({"192.0.2.2": 9}), 3.0) == []
    # Unbanned by the operator (flood.unban passed on): forgotten.
    host.remember("flood.unban", ["192.0.2.1"], {"address": "192.0.2.1", "unbanned": True})
    assert host.flood.banned(3.0) == []


def test_a_worker_ban_goes_to_the_others_once() -> None:
    host = HostState()
    assert host.flood_batch(batch({}, {"192.0.2.9": 30.0}), 0.0) == [("192.0.2.9", 30.0)]
    assert host.flood_batch(batch({}, {"192.0.2.9": 30.0}), 0.1) == []


def test_bad_batches_are_ignored() -> None:
    host = HostState()
    assert host.flood_batch({LINK_KEY: "flood", "counts": {"a": 99}}, 0.0) == []
    bad = batch({"192.0.2.1": True, "192.0.2.2": -5, "192.0.2.3": "x"})  # type: ignore[dict-item]
    assert host.flood_batch(bad, 0.0) == []
    assert host.flood.windows == {}


def test_flood_table_add_and_ban() -> None:
    table = FloodTable()
    assert not table.add("a", 5, 0.0, 10, 2.0, 60.0, 100)
    assert table.add("a", 6, 1.0, 10, 2.0, 60.0, 100)
    assert not table.ban("a", 2.0, 10.0, 100)  # already banned, for longer
    assert table.bans["a"] == 61.0
    assert table.ban("b", 2.0, 10.0, 100) and table.bans["b"] == 12.0
    exempt = FloodTable(lambda addr: addr == "me")
    assert not exempt.add("me", 50, 0.0, 10, 2.0, 60.0, 100) and exempt.bans == {}


def test_live_operations_remembered_last_per_setting_in_order() -> None:
    host = HostState()
    host.remember("cfg.set", ["antiflood.requests", "20"], {})
    host.remember("debug", ["debug"], {})
    host.remember("debug", [], {"level": "debug"})  # a question: nothing to replay
    host.remember("cfg.set", {"name": "antiflood.requests", "value": "30"}, {})
    host.remember("routing.reload", [], {})  # a restarted worker reads the file anyway
    ops = host.ops_after(0)
    assert [(name, params) for _, name, params in ops] == [
        ("debug", ["debug"]), ("cfg.set", {"name": "antiflood.requests", "value": "30"})]
    assert host.ops_after(ops[-1][0]) == []
    host.remember("cfg.set", ["log.level", "warn"], {})  # the same setting as debug
    assert [name for _, name, _ in host.ops_after(0)] == ["cfg.set", "cfg.set"]


def test_dispatcher_states_remembered() -> None:
    host = HostState()
    host.remember("dispatcher.set_state", [1, "sip:gw", "d"],
                  {"setid": 1, "uri": "sip:gw", "state": "disabled", "probing": False})
    assert host.dispatcher_state(2, "sip:other", "ip")
    assert not host.dispatcher_state(2, "sip:other", "nonsense")
    assert not host.dispatcher_state(True, "sip:other", "a")
    assert host.ds == {(1, "sip:gw"): "d", (2, "sip:other"): "ip"}


def test_a_death_counts_the_transactions_of_the_last_heartbeat() -> None:
    host = HostState()
    host.heartbeat(1, {LINK_KEY: "load", "server": 7, "acc_calls": 3})
    host.heartbeat(1, {LINK_KEY: "load", "server": 7, "acc_calls": 4})
    host.heartbeat(0, {LINK_KEY: "load", "server": 2})
    # Nonsense leaves the last good figure.
    host.heartbeat(1, {LINK_KEY: "load", "server": True, "acc_calls": -1})
    assert host.died(1) == (7, 4) and host.died(1) == (0, 0)
    assert (host.lost_transactions, host.lost_call_records, host.deaths) == (7, 4, 2)
    assert host.died(0) == (2, 0)


def test_the_heartbeat_carries_the_gauges() -> None:
    out = io.StringIO()
    link = WorkerLink(1, out)
    held = [5]
    link.gauge("acc_calls", lambda: held[0])
    assert link.gauges() == {"acc_calls": 5}
    held[0] = 6
    assert link.gauges() == {"acc_calls": 6}
    link.gauge("acc_calls", None)
    assert link.gauges() == {}


def test_link_lines_and_log_lines_are_told_apart() -> None:
    got: list[dict[str, Any]] = []
    other: list[bytes] = []
    splitter = LineSplitter(got.append, other.append)
    line = encode("load", server=3)
    splitter.feed(b'\x1e{"log_format": "x"}\n' + line[:5])
    splitter.feed(line[5:] + b'{"sipsuite_link": broken\npartial')
    assert got == [{LINK_KEY: "load", "server": 3}]
    assert other == [b'\x1e{"log_format": "x"}', b'{"sipsuite_link": broken']
    splitter.flush()
    assert other[-1] == b"partial"


def test_worker_link_sends_and_dispatches() -> None:
    out = io.StringIO()
    link = WorkerLink(1, out)
    link.send("ready", private_ports=[40000])
    assert out.getvalue() == '{"sipsuite_link":"ready","private_ports":[40000]}\n'
    seen: list[dict[str, Any]] = []

    def boom(msg: dict[str, Any]) -> None:
        raise RuntimeError("a handler's bug")

    link.on("siblings", boom)
    link.on("siblings", seen.append)
    link.feed(encode("siblings", ports=[1, 2]) + encode("other"))
    assert seen == [{LINK_KEY: "siblings", "ports": [1, 2]}]
    link.off("siblings", seen.append)
    link.feed(encode("siblings", ports=[3]))
    assert len(seen) == 1
