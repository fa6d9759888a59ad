"""The dispatcher without a reactor: the list format, each selection
algorithm, the probe thresholds on a task.Clock (probes and answers through
an in-process ProxyCore), failover in failure_route with the example
routing class, reload / set_state and the dispatcher.* RPC methods."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from proxykit import ProxyKit, answer, request

from sipsuite.config import ConfigError, load_config
from sipsuite.config.values import parse_dispatcher_entry
from sipsuite.ops.errors import RpcError
from sipsuite.ops.server import RpcRegistry
from sipsuite.proxy.api import CallState
from sipsuite.proxy.modules.dispatcher.dispatcher import (
    PROBE_BRANCH,
    Dispatcher,
    DsDestination,
    LoadBalancer,
    register_dispatcher_methods,
)
from sipsuite.proxy.modules.dispatcher.lists import (
    ListError,
    algorithm_number,
    candidates,
    parse_list,
    stable_hash,
)
from sipsuite.sip.uri import URI
from sipsuite.startup import StartupError

GW = ["sip:127.0.0.11:5060", "sip:127.0.0.12:5060", "sip:127.0.0.13:5060"]
ROUTING = "examples.dispatcher_routing:DispatcherRouting"


# --------------------------------------------------------------------------- the list format


def test_parse_list_kamailio_format() -> None:
    text = (
        "# set 1: the gateways\n"
        "\n"
        "1 sip:192.0.2.10:5060 0 10 weight=50;duid=gw1\n"
        "1\tsip:192.0.2.11:5060;transport=tcp   2  5\n"
        "2 sip:gw.example.com   # a comment after the entry\n"
        "  2 sip:[2001:db8::1]:5080 4 0 weight=0;maxload=20;socket=udp:127.0.0.1:5060\n"
    )
    sets = parse_list(text, "d.list")
    assert sorted(sets) == [1, 2]
    a, b = sets[1]
    assert (a.uri, a.flags, a.priority, a.attr("weight"), a.attr("duid")) == (
        "sip:192.0.2.10:5060", 0, 10, "50", "gw1")
    assert (b.uri, b.flags, b.priority, b.attrs) == ("sip:192.0.2.11:5060;transport=tcp", 2, 5, ())
    c, d = sets[2]
    assert (c.uri, c.flags, c.priority) == ("sip:gw.example.com", 0, 0)
    assert (d.flags, d.attr("maxload"), d.attr("socket")) == (4, "20", "udp:127.0.0.1:5060")


@pytest.mark.parametrize(("line", "problem"), [
    ("x sip:192.0.2.1", "SETID a whole number"),
    ("1 http://192.0.2.1", "expected a 'sip:' or 'sips:' URI"),
    ("1 sip:192.0.2.1 zero", "flags: expected a whole number"),
    ("1 sip:192.0.2.1 0 high", "priority: expected a whole number"),
    ("1 sip:192.0.2.1 99", "flags: expected 0 to 15"),
    ("1 sip:192.0.2.1 0 0 weight", "attrs: expected 'name=value;...'"),
    ("1 sip:192.0.2.1 0 0 weight=-5", "weight: expected a whole number from 0 to 9999"),
    ("1 sip:192.0.2.1 0 0 weight=1 extra", "got 5 fields"),
    ("1", "expected a destination URI"),
])
def test_parse_list_error_names_file_and_line(line: str, problem: str) -> None:
    with pytest.raises(ListError) as info:
        parse_list(f"# ok\n1 sip:192.0.2.9\n{line}\n", "/etc/d.list")
    message = str(info.value)
    assert message.startswith("/etc/d.list:3: "), message
    assert problem in message
    assert "\n" not in message


def test_parse_list_refuses_a_destination_twice_in_a_set() -> None:
    with pytest.raises(ListError, match=r"^l:2: sip:192.0.2.9 is already in set 1$"):
        parse_list("1 sip:192.0.2.9\n1 sip:192.0.2.9 0 5\n2 sip:192.0.2.9\n", "l")


def test_config_sets_use_the_same_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[dispatcher.sets]\n1 = ["sip:192.0.2.1:5060 0 5 weight=30", "sip:192.0.2.2"]\n')
    sets = load_config(str(path)).dispatcher.sets
    assert [(e.uri, e.priority, e.attr("weight")) for e in sets[1]] == [
        ("sip:192.0.2.1:5060", 5, "30"), ("sip:192.0.2.2", 0, None)]
    path.write_text('[dispatcher.sets]\n1 = ["sip:192.0.2.1 0 0 weight=x"]\n')
    with pytest.raises(ConfigError, match=r"dispatcher\.sets\.1\[0\]: expected 'URI \[FLAGS"):
        load_config(str(path))
    path.write_text('[dispatcher.sets]\ngw = ["sip:192.0.2.1"]\n')
    with pytest.raises(ConfigError, match=r"dispatcher\.sets\.gw: expected a set id"):
        load_config(str(path))


def test_algorithm_numbers_and_names() -> None:
    assert [algorithm_number(a) for a in (0, "1", "hash-to", "ruri", "round-robin", "rr", 8,
                                          "weight", "least-calls", "10")] == [0, 1, 2, 3, 4, 4, 8,
                                                                                9, 10, 10]
    for bad in (5, "7", "random", True, None):
        with pytest.raises(ValueError, match="unknown dispatcher algorithm"):
            algorithm_number(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- algorithms


def dests(n: int, **kw: Any) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=f"d{i}", usable=True, weight=1, calls=0, maxload=0, **kw)
            for i in range(n)]


def names(chosen: list[Any]) -> list[str]:
    return [d.name for d in chosen]


def test_hash_is_stable_and_skips_unusable_destinations() -> None:
    # crc32 is the same in every process: this pins the choice across restarts.
    assert stable_hash("call-1") == 0xDA39A280
    ds = dests(3)
    start = stable_hash("abc@example.com") % 3
    first = names(candidates(1, ds, "abc@example.com", 0))
    assert first == [f"d{(start + i) % 3}" for i in range(3)]
    # The chosen one goes down: its calls move to the next one, nobody else's move.
    ds[start].usable = False
    assert names(candidates(1, ds, "abc@example.com", 0)) == first[1:]
    spread = Counter(candidates(0, dests(3), f"call-{i}", 0)[0].name for i in range(300))
    assert set(spread) == {"d0", "d1", "d2"} and min(spread.values()) > 60


def test_round_robin_cycles_over_usable_ones() -> None:
    ds = dests(3)
    assert [candidates(4, ds, "", c)[0].name for c in range(4)] == ["d0", "d1", "d2", "d0"]
    ds[1].usable = False
    assert [candidates(4, ds, "", c)[0].name for c in range(3)] == ["d0", "d2", "d2"]
    assert names(candidates(4, ds, "", 1)) == ["d2", "d0"]


def test_priority_keeps_the_configured_order() -> None:
    ds = dests(3)
    ds[0].usable = False
    assert names(candidates(8, ds, "x", 7)) == ["d1", "d2"]


def test_weight_shares_first_choices() -> None:
    ds = dests(2)
    ds[0].weight, ds[1].weight = 80, 20
    firsts = Counter(candidates(9, ds, f"call-{i}@h", 0)[0].name for i in range(2000))
    assert 1450 < firsts["d0"] < 1750, firsts
    # The others stay available for failover.
    assert len(candidates(9, ds, "call-1@h", 0)) == 2
    ds[0].usable = False
    assert names(candidates(9, ds, "call-1@h", 0)) == ["d1"]


def test_least_calls_and_maxload() -> None:
    ds = dests(3)
    ds[0].calls, ds[1].calls, ds[2].calls = 5, 2, 2
    assert names(candidates(10, ds, "", 0)) == ["d1", "d2", "d0"]
    ds[1].maxload = 2  # full
    assert names(candidates(10, ds, "", 0)) == ["d2", "d0"]


# --------------------------------------------------------------------------- probing


def kit_with(tmp_path: Path, *, sets: dict[str, list[str]] | None = None, list_file: str = "",
             routing: str = ROUTING, **dispatcher: Any) -> tuple[ProxyKit, LoadBalancer]:
    tables: dict[str, dict[str, Any]] = {
        "proxy": {"routing": routing},
        "timers": {"t1": 0.5, "t2": 4.0},
        "dispatcher": {"probe_interval": 10.0, "probe_timeout": 2.0, "list_file": list_file,
                       **dispatcher},
    }
    if sets is not None:
        tables["dispatcher.sets"] = sets
    kit = ProxyKit(tmp_path, **tables)
    # Set up by its SPEC, as proxy/service.py does; started as the core starts it.
    ds = kit.core.modules.by_name("dispatcher")
    assert isinstance(ds, LoadBalancer)
    ds.start()
    return kit, ds


def probes(kit: ProxyKit) -> list[tuple[Any, str, int]]:
    return [(m, h, p) for m, h, p in kit.take()
            if getattr(m, "method", None) == "OPTIONS" and m.top_via.branch.startswith(PROBE_BRANCH)]


def state(ds: LoadBalancer, uri: str, setid: int = 1) -> str:
    d = ds.find(setid, uri)
    assert d is not None
    return d.state


def test_probe_thresholds_mark_down_and_up(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": GW[:2]}, probe_failures=2, probe_successes=2)
    kit.clock.advance(9.9)
    assert probes(kit) == []  # the first round comes one interval after start
    kit.clock.advance(0.1)
    sent = probes(kit)
    assert sorted((h, p) for _, h, p in sent) == [("127.0.0.11", 5060), ("127.0.0.12", 5060)]
    opt = sent[0][0]
    assert opt.header("from").startswith("<sip:dispatcher@localhost>;tag=")
    assert str(opt.uri) in GW[:2]
    # Both answer 200 but only the first is fed back; the second stays silent.
    for m, h, _ in sent:
        if h == "127.0.0.11":
            kit.feed(answer(m, 200), h, 5060)
    kit.clock.advance(2.0)  # probe_timeout
    assert state(ds, GW[0]) == "active" and state(ds, GW[1]) == "active"
    assert ds.find(1, GW[1]).failures == 1  # type: ignore[union-attr]
    assert ds.dump()[0]["destinations"][1]["flags"] == "TP"  # trying
    assert ds.dump()[0]["destinations"][1]["last_probe"] == "timeout"
    kit.clock.advance(8.0)
    for m, h, _ in probes(kit):
        if h == "127.0.0.11":
            kit.feed(answer(m, 200), h, 5060)
    kit.clock.advance(2.0)
    assert state(ds, GW[1]) == "inactive"  # 2 failures in a row
    assert ds.dump()[0]["destinations"][1]["flags"] == "IP"
    assert state(ds, GW[0]) == "active"
    # Back after two answered probes, not one.
    for step, expected in ((8.0, "inactive"), (10.0, "active")):
        kit.clock.advance(step)
        for m, h, _ in probes(kit):
            kit.feed(answer(m, 200), h, 5060)
        assert state(ds, GW[1]) == expected
    assert ds.dump()[0]["destinations"][1]["last_probe"] == "200 OK"


def test_probe_retransmits_over_udp_and_counts_reply_codes(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": GW[:1]}, probe_reply_codes=[405])
    kit.clock.advance(10.0)
    first = probes(kit)
    assert len(first) == 1
    kit.clock.advance(0.5)  # T1
    again = probes(kit)
    assert len(again) == 1 and again[0][0].top_via.branch == first[0][0].top_via.branch
    kit.clock.advance(1.0)  # 2*T1
    assert len(probes(kit)) == 1
    kit.feed(answer(first[0][0], 405), "127.0.0.11", 5060)
    assert state(ds, GW[0]) == "active"  # 405 accepted as alive here
    kit.clock.advance(10.0)
    m = probes(kit)[0][0]
    kit.feed(answer(m, 404), "127.0.0.11", 5060)
    assert state(ds, GW[0]) == "inactive"  # 404 is not in the list
    assert ds.find(1, GW[0]).last_probe == "404 Not Found"  # type: ignore[union-attr]


def test_probe_mode_inactive_and_disabled(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": [GW[0], f"{GW[1]} 1", f"{GW[2]} 4"]},
                       probe_mode="inactive")
    kit.clock.advance(10.0)
    # Only the destination with the probing flag: GW[1] (flag 1, inactive) has none...
    assert probes(kit) == []
    ds.set_state(1, GW[1], "probing")  # kamcmd's "ip"
    kit.clock.advance(10.0)
    sent = probes(kit)
    assert [h for _, h, _ in sent] == ["127.0.0.12"]
    kit.feed(answer(sent[0][0], 200), "127.0.0.12", 5060)
    assert state(ds, GW[1]) == "active"
    assert ds.find(1, GW[1]).probing is False  # type: ignore[union-attr]
    # ...and the disabled one is never probed, even in mode "all".
    kit.core.config = dataclasses.replace(
        kit.core.config, dispatcher=dataclasses.replace(kit.core.config.dispatcher, probe_mode="all"))
    kit.clock.advance(10.0)
    assert sorted(h for _, h, _ in probes(kit)) == ["127.0.0.11", "127.0.0.12"]
    assert state(ds, GW[2]) == "disabled"


def test_probe_interval_read_at_run_time(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": GW[:1]}, probe_interval=0.0)
    kit.clock.advance(60.0)
    assert probes(kit) == []  # probing off
    kit.core.config = dataclasses.replace(
        kit.core.config, dispatcher=dataclasses.replace(kit.core.config.dispatcher,
                                                        probe_interval=1.0))
    kit.clock.advance(5.0)  # off: the setting is looked at again every 5 s
    kit.clock.advance(1.0)
    assert len(probes(kit)) >= 1
    ds.stop()
    kit.clock.advance(10.0)
    assert probes(kit) == []


# --------------------------------------------------------------------------- routing and failover


def invite(user: str = "+4930123456", call_id: str = "call-1", branch: str = "b1") -> bytes:
    return request("INVITE", f"sip:{user}@sipsuite.test", call_id=call_id, branch=branch)


def invites(kit: ProxyKit) -> list[tuple[Any, str, int]]:
    return [(m, h, p) for m, h, p in kit.take() if getattr(m, "method", None) == "INVITE"]


def upstream(sent: list[tuple[Any, str, int]]) -> list[int]:
    return [m.status for m, h, _ in sent if h == "127.0.0.2" and not hasattr(m, "method")]


def test_round_robin_relays_and_fails_over(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": GW})
    kit.feed(invite(call_id="c1", branch="1"), "127.0.0.2")
    (fwd, host, port), = invites(kit)
    assert (host, port) == ("127.0.0.11", 5060)
    assert str(fwd.uri) == "sip:+4930123456@sipsuite.test"  # Request-URI kept ($du)
    assert fwd.header("record-route") is not None
    assert ds.find(1, GW[0]).calls == 1  # type: ignore[union-attr]
    # 503 from the first: failure_route tries the next one of the set.
    kit.feed(answer(fwd, 503, to_tag="gw1"), host, port)
    sent = kit.take()
    nxt = [(m, h) for m, h, _ in sent if getattr(m, "method", None) == "INVITE"]
    assert [h for _, h in nxt] == ["127.0.0.12"]
    assert 503 not in upstream(sent)
    # It answered: not counted against the first one.
    assert ds.find(1, GW[0]).failures == 0 and ds.find(1, GW[0]).calls == 0  # type: ignore[union-attr]
    kit.feed(answer(nxt[0][0], 200, to_tag="gw2"), "127.0.0.12", 5060)
    assert 200 in upstream(kit.take())
    assert ds.find(1, GW[1]).calls == 1  # type: ignore[union-attr]
    # The next call starts on the next destination (round robin); the BYE ends the count.
    kit.feed(request("BYE", "sip:+4930123456@127.0.0.12:5060", call_id="c1", branch="bye",
                     to_tag="gw2", cseq=2), "127.0.0.2")
    assert ds.find(1, GW[1]).calls == 0  # type: ignore[union-attr]
    kit.take()
    kit.feed(invite(call_id="c2", branch="2"), "127.0.0.2")
    assert [h for _, h, _ in invites(kit)] == ["127.0.0.12"]
    assert kit.core.stats.get("dispatcher.failover") == 1


def test_timeouts_count_toward_down_and_exhaustion_answers_upstream(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": GW[:2]}, probe_interval=0.0, probe_failures=1)
    kit.feed(invite(), "127.0.0.2")
    assert [h for _, h, _ in invites(kit)] == ["127.0.0.11"]
    kit.clock.advance(32.0)  # timer B (64*T1): no answer at all
    sent = kit.take()
    # (Retransmissions to the first one before it.)
    assert [h for m, h, _ in sent if getattr(m, "method", None) == "INVITE"][-1] == "127.0.0.12"
    assert state(ds, GW[0]) == "inactive"  # marked down by the call it did not answer
    assert kit.core.stats.get("dispatcher.no_answer") == 1
    kit.clock.advance(32.0)
    sent = kit.take()
    # Both timed out: nothing left, the best failure (408) goes upstream.
    assert upstream(sent) == [408]
    assert state(ds, GW[1]) == "inactive"
    # No usable destination: the example answers 503 at once.
    kit.feed(invite(call_id="c9", branch="9"), "127.0.0.2")
    assert upstream(kit.take())[-1] == 503


def test_global_failure_fails_over(tmp_path: Path) -> None:
    """A 6xx from one gateway still reaches failure_route (as in Kamailio),
    so the call goes on to the next destination of the set."""
    kit, ds = kit_with(tmp_path, sets={"1": GW[:2]})
    kit.feed(invite(), "127.0.0.2")
    (fwd, host, port), = invites(kit)
    kit.feed(answer(fwd, 603, to_tag="gw1"), host, port)
    sent = kit.take()
    assert [h for m, h, _ in sent if getattr(m, "method", None) == "INVITE"] == ["127.0.0.12"]
    assert 603 not in upstream(sent)
    assert kit.core.stats.get("dispatcher.failover") == 1


def test_busy_is_not_failed_over(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": GW[:2]})
    kit.feed(invite(), "127.0.0.2")
    (fwd, host, port), = invites(kit)
    kit.feed(answer(fwd, 486, to_tag="gw1"), host, port)
    sent = kit.take()
    assert [m for m, _, _ in sent if getattr(m, "method", None) == "INVITE"] == []
    assert 486 in upstream(sent)
    assert ds.find(1, GW[0]).calls == 0  # type: ignore[union-attr]


def test_tls_ip_destination_defaults_to_5061() -> None:
    """As the resolver and the probes do: a tls destination without a port is
    on 5061, else calls and probes would go to different ports."""
    for uri, port in (("sip:192.0.2.10;transport=tls", 5061), ("sip:192.0.2.10", 5060),
                      ("sip:[2001:db8::1];transport=tls", 5061)):
        dest = DsDestination(1, parse_dispatcher_entry(uri))
        assert dest.target is not None and dest.target.port == port, uri


def test_host_name_destination_goes_in_the_request_uri(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": ["sip:gw.invalid:5080;transport=tcp"]})
    ctx = SimpleNamespace(request=SimpleNamespace(uri=URI.parse("sip:+4930@sipsuite.test")))
    dest = ds._destination(ctx, ds.sets[1][0], rewrite=False)  # type: ignore[arg-type]
    assert str(dest.uri) == "sip:+4930@gw.invalid:5080;transport=tcp" and dest.dst is None
    # The caller's maddr / transport do not steer the call away from the gateway.
    ctx.request.uri = URI.parse("sip:+4930@sipsuite.test;maddr=198.51.100.1;transport=udp")
    dest = ds._destination(ctx, ds.sets[1][0], rewrite=False)  # type: ignore[arg-type]
    assert str(dest.uri) == "sip:+4930@gw.invalid:5080;transport=tcp"


def test_set_state_inactive_stops_traffic(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": GW[:2]}, probe_interval=0.0)
    ds.set_state(1, GW[0], "i")
    for i in range(4):
        kit.feed(invite(call_id=f"c{i}", branch=f"x{i}"), "127.0.0.2")
    assert {h for _, h, _ in invites(kit)} == {"127.0.0.12"}
    with pytest.raises(ValueError, match="unknown state"):
        ds.set_state(1, GW[0], "sleeping")
    with pytest.raises(KeyError):
        ds.set_state(2, GW[0], "active")


def test_priority_orders_the_set(tmp_path: Path) -> None:
    kit, ds = kit_with(tmp_path, sets={"1": [f"{GW[0]} 0 1", f"{GW[1]} 0 9", f"{GW[2]} 0 5"]})
    assert [d.uri for d in ds.sets[1]] == [GW[1], GW[2], GW[0]]


def test_reload_adds_and_refuses_a_broken_file(tmp_path: Path) -> None:
    listf = tmp_path / "dispatcher.list"
    listf.write_text(f"1 {GW[0]}\n")
    kit, ds = kit_with(tmp_path, list_file=str(listf), sets={"2": GW[2:]})
    assert {k: [d.uri for d in v] for k, v in ds.sets.items()} == {1: [GW[0]], 2: [GW[2]]}
    ds.set_state(1, GW[0], "inactive")
    listf.write_text(f"1 {GW[0]}\n1 {GW[1]} 0 0 weight=5\n")
    assert ds.reload() == {"sets": 2, "destinations": 3}
    assert [d.uri for d in ds.sets[1]] == [GW[0], GW[1]]
    assert state(ds, GW[0]) == "inactive"  # run-time state kept across the reload
    listf.write_text(f"1 {GW[0]}\n1 sip:bad host\n")
    with pytest.raises(ListError, match=r"dispatcher\.list:2: "):
        ds.reload()
    assert [d.uri for d in ds.sets[1]] == [GW[0], GW[1]]  # the old sets stay


# --------------------------------------------------------------------------- management


@pytest_twisted.ensureDeferred
async def test_rpc_methods(tmp_path: Path) -> None:
    listf = tmp_path / "d.list"
    listf.write_text(f"1 {GW[0]} 0 3 weight=7;duid=gw1\n")
    kit, ds = kit_with(tmp_path, list_file=str(listf))
    registry = RpcRegistry()
    register_dispatcher_methods(registry, kit.core)
    dump = await registry.call("dispatcher.dump")
    d = dump[0]["destinations"][0]
    assert dump[0]["setid"] == 1
    assert (d["uri"], d["state"], d["flags"], d["priority"], d["weight"], d["duid"], d["calls"]) == (
        GW[0], "active", "AP", 3, 7, "gw1", 0)
    assert await registry.call("dispatcher.set_state", {"setid": 1, "uri": GW[0],
                                                        "state": "ip"}) == {
        "setid": 1, "uri": GW[0], "state": "inactive", "probing": True}
    with pytest.raises(RpcError) as info:
        await registry.call("dispatcher.set_state", [1, "sip:192.0.2.99", "active"])
    assert info.value.code == -32012
    with pytest.raises(RpcError) as info:
        await registry.call("dispatcher.set_state", [1, GW[0], "up"])
    assert info.value.code == -32602
    listf.write_text("1 nonsense\n")
    with pytest.raises(RpcError) as info:
        await registry.call("dispatcher.reload")
    assert info.value.code == -32011 and "d.list:1:" in info.value.message
    # No dispatcher module: the methods are there all the same and say so.
    plain = ProxyKit(tmp_path)
    registry = RpcRegistry()
    register_dispatcher_methods(registry, plain.core)
    with pytest.raises(RpcError) as info:
        await registry.call("dispatcher.dump")
    assert info.value.code == -32010


def test_bad_list_file_stops_start_up_with_file_and_line(tmp_path: Path) -> None:
    listf = tmp_path / "dispatcher.list"
    listf.write_text("1 sip:192.0.2.1\n2 sip:192.0.2.2 0 0 weight=heavy\n")
    with pytest.raises(StartupError) as info:
        ProxyKit(tmp_path, dispatcher={"list_file": str(listf)})  # sets the modules up
    assert str(info.value) == (f"dispatcher: {listf}:2: attrs: weight: expected a whole number"
                               " from 0 to 9999, got 'heavy'")
    # No [dispatcher] destinations: no dispatcher at all.
    plain = ProxyKit(tmp_path)
    assert plain.core.modules.by_name("dispatcher") is None
    assert plain.core.dispatcher is None


def test_module_is_the_service_and_the_old_names(tmp_path: Path) -> None:
    """The DISPATCHER service is the module; core.dispatcher (routing classes
    written before) and the class's old name still reach it."""
    from sipsuite.proxy import DISPATCHER

    kit, ds = kit_with(tmp_path, sets={"1": GW})
    assert kit.core.modules.get(DISPATCHER) is ds
    assert kit.core.dispatcher is ds
    assert Dispatcher is LoadBalancer
    assert [owner for owner, _ in kit.core.hooks.response_in] == ["dispatcher"]


def test_ctl_dump_table(tmp_path: Path) -> None:
    from sipsuite.ops.ctl.cli import show_dispatcher

    kit, ds = kit_with(tmp_path, sets={"1": [f"{GW[0]} 0 0 weight=50", f"{GW[1]} 1"]})
    text = show_dispatcher(ds.dump(), None)  # type: ignore[arg-type]
    assert text.splitlines() == [
        "SET  URI                  FLAGS  STATE     PRIO  WEIGHT  CALLS  LAST-PROBE",
        "1    sip:127.0.0.11:5060  AP     active    0     50      0      -",
        "1    sip:127.0.0.12:5060  IP     inactive  0     1       0      -",
    ]
    assert show_dispatcher([], None) == "no destination sets"  # type: ignore[arg-type]


def test_select_hashes_the_right_header(tmp_path: Path) -> None:
    from sipsuite.sip.parser import parse_datagram

    kit, ds = kit_with(tmp_path, sets={"1": GW})

    def first(alg: int | str, ruri: str, call_id: str) -> str:
        req = parse_datagram(request("INVITE", ruri, call_id=call_id))
        ctx = SimpleNamespace(request=req, vars={}, call=CallState())
        return ds.select(ctx, 1, alg)[0].uri  # type: ignore[arg-type]

    # Request-URI hash: the same number always goes to the same gateway.
    by_ruri = {first("hash-ruri", "sip:+4930111@sipsuite.test", f"c{i}") for i in range(20)}
    assert len(by_ruri) == 1
    assert len({first(3, f"sip:+4930{i}@sipsuite.test", "c") for i in range(30)}) == 3
    # Call-ID hash: one call, one gateway; calls spread.
    assert len({first(0, f"sip:+4930{i}@sipsuite.test", "same") for i in range(20)}) == 1
    assert len({first("callid", "sip:+4930@sipsuite.test", f"c{i}") for i in range(30)}) == 3
    # From / To hash: the test requests all come from alice and go to bob.
    assert len({first(1, "sip:+49@sipsuite.test", f"c{i}") for i in range(20)}) == 1
    assert len({first(2, "sip:+49@sipsuite.test", f"c{i}") for i in range(20)}) == 1
    assert ds.select(SimpleNamespace(request=parse_datagram(request("INVITE", "sip:x@h")),
                                     vars={}, call=CallState()), 7, 4) == []  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ds.select(SimpleNamespace(request=None, vars={}, call=CallState()), 1,  # type: ignore[arg-type]
                  "random")
