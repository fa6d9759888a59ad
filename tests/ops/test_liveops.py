"""Live operations in-process (no reactor): debug level, cfg get/set with the
config file's validators, routing reload (good, broken, in flight, SIGHUP),
and the counters behind ``stats`` / ``/metrics``."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from proxykit import ProxyKit, answer, request
from twisted.internet import defer

from sipsuite import log as sipsuite_log
from sipsuite.ops import liveops
from sipsuite.ops.errors import INVALID_PARAMS, REFUSED, RpcError
from sipsuite.ops.liveops import (
    ReloadFailed,
    SettingError,
    cfg_get,
    cfg_set,
    parse_debug_level,
    parse_value,
    register_liveops_methods,
    reload_routing,
    settable_keys,
)
from sipsuite.ops.server import RpcRegistry
from sipsuite.ops.stats import collect_stats, render_metrics, uptime
from sipsuite.proxy.registrar.location import Binding, MemoryLocationStore
from sipsuite.sip.message import Request, Response


@pytest.fixture(autouse=True)
def keep_log_level() -> Iterator[None]:
    before = sipsuite_log.get_level()
    yield
    sipsuite_log.set_level(before)


def call(registry: RpcRegistry, method: str, **params: Any) -> Any:
    d = defer.ensureDeferred(registry.call(method, params))
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    assert d.called, "an in-memory RPC call should finish at once"
    return d.result


def responses(kit: ProxyKit) -> list[Response]:
    """The responses the core sent since the last take()."""
    return [m for m, _, _ in kit.take() if isinstance(m, Response)]


@pytest.fixture
def kit(tmp_path: Path) -> ProxyKit:
    return ProxyKit(tmp_path, static={"bob": "sip:bob@127.0.0.9:5099"})


@pytest.fixture
def rpc(kit: ProxyKit) -> RpcRegistry:
    registry = RpcRegistry()
    register_liveops_methods(registry, kit.core)
    return registry


# ---------------------------------------------------------------------------
# debug


@pytest.mark.parametrize(("given", "level"), [
    ("debug", "debug"), ("INFO", "info"), ("warn", "warn"), ("warning", "warn"),
    ("error", "error"), ("notice", "info"),
    (4, "debug"), (3, "debug"), (2, "info"), (1, "info"), (0, "warn"), (-1, "error"),
    (-3, "error"), (9, "debug"), ("4", "debug"), ("-1", "error"), ("0", "warn"),
])
def test_debug_level_names_and_kamailio_numbers(given: Any, level: str) -> None:
    assert parse_debug_level(given) == level


@pytest.mark.parametrize("bad", ["loud", "", "3.5", True, None, [], "1e3"])
def test_bad_debug_levels_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="bad log level"):
        parse_debug_level(bad)


def test_debug_reads_and_sets_the_level(kit: ProxyKit, rpc: RpcRegistry) -> None:
    sipsuite_log.set_level("info")
    assert call(rpc, "debug") == {"level": "info"}
    assert call(rpc, "debug", level="4") == {"level": "debug"}  # kamctl fifo debug 4
    assert sipsuite_log.get_level() == "debug"
    assert call(rpc, "debug") == {"level": "debug"}
    # [log] level follows, so cfg get says the same
    assert cfg_get(kit.core, "log.level") == {"log.level": "debug"}
    assert call(rpc, "debug", level=0) == {"level": "warn"}
    with pytest.raises(RpcError) as err:
        call(rpc, "debug", level="verbose")
    assert err.value.code == INVALID_PARAMS and "bad log level 'verbose'" in err.value.message
    assert sipsuite_log.get_level() == "warn", "a bad level changed the level"


# ---------------------------------------------------------------------------
# cfg get / set


def test_allow_list_offers_run_time_keys_only() -> None:
    keys = settable_keys()
    for name in ("timers.t1", "timers.timer_c", "registrar.max_expires", "auth.nonce_expires",
                 "nat.keepalive_interval", "features.auth", "features.debug", "log.level",
                 "proxy.trusted"):
        assert name in keys
    for name in ("proxy.listen", "proxy.advertise", "proxy.routing", "redis.url", "auth.secret",
                 "auth.realm", "management.listen", "relay.control", "media.relays",
                 "features.nat"):
        assert name not in keys
    # every name on the list exists in this build's schema
    from sipsuite.config import load_config

    config = load_config(None)
    for name in keys:
        section, key = name.split(".")
        assert hasattr(getattr(config, section), key), name


def test_features_and_new_sections_are_settable_when_they_exist() -> None:
    from sipsuite.config import FeaturesConfig

    keys = settable_keys()
    import dataclasses

    for f in dataclasses.fields(FeaturesConfig):
        if f.name == "nat":  # wired at start-up: the media manager exists or not
            assert "features.nat" not in keys
        else:
            assert f"features.{f.name}" in keys
    # sections added by other parts of the suite are offered once they exist
    from sipsuite.config import Config

    sections = {f.metadata.get("section") for f in dataclasses.fields(Config)}
    for name in ("pstn.gw_ip", "voicemail.srv_ip", "antiflood.requests"):
        if name.split(".")[0] in sections:
            assert name in keys


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("false", False), ("5", 5), ("0.5", 0.5), ('"a b"', "a b"),
    ("192.0.2.1", "192.0.2.1"), ("gw.example.com", "gw.example.com"),
    ('["10.0.0.0/8", "192.168.0.0/16"]', ["10.0.0.0/8", "192.168.0.0/16"]),
    ("1 = 2", "1 = 2"), ("x\ny = 1", "x\ny = 1"),
])
def test_values_are_toml_else_bare_text(text: str, value: Any) -> None:
    assert parse_value(text) == value


def test_cfg_get_all_and_one(kit: ProxyKit, rpc: RpcRegistry) -> None:
    everything = call(rpc, "cfg.get")
    assert list(everything) == sorted([*settable_keys(), "features.nat"])
    assert everything["timers.t1"] == 0.5
    assert everything["proxy.domains"] == ["sipsuite.test"]
    assert call(rpc, "cfg.get", name="registrar.max_expires") == {"registrar.max_expires": 7200}
    with pytest.raises(RpcError, match="proxy.listen: not a run-time setting"):
        call(rpc, "cfg.get", name="proxy.listen")
    assert call(rpc, "cfg.list") == settable_keys()


def test_cfg_get_shows_start_up_only_keys_and_whole_sections(kit: ProxyKit,
                                                            rpc: RpcRegistry) -> None:
    """features.nat is shown (set only at start-up: cfg set says so), and a
    section name gets that section's settings, as kamcmd cfg.get GROUP."""
    assert call(rpc, "cfg.get", name="features.nat") == {"features.nat": kit.core.config.features.nat}
    with pytest.raises(RpcError, match="features.nat: read at start-up only"):
        call(rpc, "cfg.set", name="features.nat", value="true")
    timers = call(rpc, "cfg.get", name="timers")
    assert timers == {k: v for k, v in call(rpc, "cfg.get").items() if k.startswith("timers.")}
    assert timers["timers.t1"] == 0.5 and len(timers) >= 4
    assert "features.nat" in call(rpc, "cfg.get", name="features")
    for bad, message in (("nosuch", "nosuch: no run-time settings in such a section"),
                         ("relay", "relay: no run-time settings"),
                         ("a.b.c", "bad setting name 'a.b.c'")):
        with pytest.raises(RpcError, match=message):
            call(rpc, "cfg.get", name=bad)


def test_cfg_set_timers_reach_new_transactions(kit: ProxyKit, rpc: RpcRegistry) -> None:
    core = kit.core
    assert call(rpc, "cfg.set", name="timers.t1", value="1") == {
        "name": "timers.t1", "old": 0.5, "value": 1.0}
    assert core.config.timers.t1 == 1.0
    assert core.timers.t1 == 1.0
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", call_id="t1"), "127.0.0.2")
    holder = next(iter(core.client_txs.values()))
    assert holder.tx.timers.t1 == 1.0, "a new client transaction still has the old T1"


def test_cfg_set_registrar_limits_reach_the_registrar(kit: ProxyKit) -> None:
    core = kit.core
    cfg_set(kit.core, "registrar.default_expires", "120")
    assert core.registrar.cfg is core.config.registrar
    kit.take()
    kit.feed(request("REGISTER", "sip:sipsuite.test", call_id="reg-1"), "127.0.0.2")
    finals = responses(kit)
    assert [m.status for m in finals] == [200]
    assert "expires=120" in finals[0].header("contact")


def test_cfg_set_auth_and_proxy_sections_are_pushed(kit: ProxyKit) -> None:
    core = kit.core
    cfg_set(core, "auth.nonce_expires", "90")
    assert core.auth.cfg.nonce_expires == 90.0 and core.auth.nonces.lifetime == 90.0
    cfg_set(core, "registrar.retry_after", "7")
    assert core.auth.retry_after == "7"
    cfg_set(core, "proxy.trusted", '["10.0.0.0/8"]')
    assert core.is_trusted("10.1.2.3") and not core.is_trusted("192.0.2.1")
    cfg_set(core, "proxy.domains", '["example.org"]')
    assert core.is_local_domain("example.org") and not core.is_local_domain("sipsuite.test")
    cfg_set(core, "proxy.server_header", '"sipsuite-test"')
    assert core.server_header == "sipsuite-test"
    cfg_set(core, "nat.keepalive_timeout", "30")
    # natping reads it at each ping (tests/proxy/modules/test_natping.py)
    assert core.config.nat.keepalive_timeout == 30.0
    cfg_set(core, "log.level", "error")
    assert sipsuite_log.get_level() == "error"


def test_keepalive_interval_restarts_the_loop(kit: ProxyKit) -> None:
    keepalive = kit.core.keepalive
    keepalive.start()
    assert keepalive.loop is not None and keepalive.loop.interval == 20.0
    cfg_set(kit.core, "nat.keepalive_interval", "5")
    assert keepalive.loop is not None and keepalive.loop.running and keepalive.loop.interval == 5.0
    cfg_set(kit.core, "nat.keepalive_interval", "0")  # off
    assert keepalive.loop is None
    cfg_set(kit.core, "nat.keepalive_interval", "7")
    assert keepalive.loop is None, "the loop came back although the proxy never ran it"
    keepalive.stop()


def test_routing_config_is_the_live_config(kit: ProxyKit) -> None:
    core = kit.core
    cfg_set(core, "features.auth", "true")
    assert core.routing.config is core.config
    assert core.routing.config.features.auth is True


@pytest.mark.parametrize(("name", "value", "message"), [
    ("timers.t1", "-1", "timers.t1: expected a number of seconds above 0, got -1"),
    ("timers.t1", "fast", "timers.t1: expected a number of seconds above 0, got 'fast'"),
    ("features.auth", "yes", "features.auth: expected true or false, got 'yes'"),
    ("registrar.max_contacts_policy", "maybe", "registrar.max_contacts_policy: expected"),
    ("proxy.trusted", '["10.0.0.0/33"]', "proxy.trusted[0]: expected"),
    # the cross-key rules of the config file run too
    ("timers.t2", "0.1", "timers.t2: expected a value not below timers.t1"),
    ("registrar.min_expires", "4000", "registrar.default_expires: expected a value from"),
    ("proxy.listen", '"udp:0.0.0.0:5070"', "proxy.listen: not a run-time setting"),
    ("redis.url", '"redis://127.0.0.1"', "redis.url: not a run-time setting"),
    ("auth.secret", "x", "auth.secret: not a run-time setting"),
    ("nosuch.key", "1", "nosuch.key: not a run-time setting"),
    ("timers", "1", "bad setting name 'timers'"),
])
def test_bad_settings_are_refused_naming_the_key(
    kit: ProxyKit, rpc: RpcRegistry, name: str, value: str, message: str,
) -> None:
    before = kit.core.config
    with pytest.raises(SettingError) as err:
        cfg_set(kit.core, name, value)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert kit.core.config is before, "a refused setting changed the config"
    with pytest.raises(RpcError) as rpc_err:
        call(rpc, "cfg.set", name=name, value=value)
    assert rpc_err.value.code == INVALID_PARAMS and rpc_err.value.message == str(err.value)


def test_a_value_a_component_refuses_leaves_the_old_config(
        kit: ProxyKit, rpc: RpcRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation passed but applying it failed (here the keep-alive loop
    would not restart): the old config is put back and the error named."""
    before = kit.core.config
    kit.core.transport.listeners.append(object())  # as if listening: the loop restarts
    monkeypatch.setattr(kit.core.keepalive, "start", lambda: (_ for _ in ()).throw(
        RuntimeError("no timer for that")))
    with pytest.raises(RpcError, match="nat.keepalive_interval: not applied, the old value"
                                       " stays: no timer for that"):
        call(rpc, "cfg.set", name="nat.keepalive_interval", value=5)
    assert kit.core.config.nat == before.nat


def test_json_values_are_taken_as_they_are(kit: ProxyKit, rpc: RpcRegistry) -> None:
    call(rpc, "cfg.set", name="registrar.max_contacts", value=3)
    assert kit.core.config.registrar.max_contacts == 3
    with pytest.raises(RpcError, match="features.auth: expected true or false, got 1"):
        call(rpc, "cfg.set", name="features.auth", value=1)


# ---------------------------------------------------------------------------
# routing reload

ROUTING_V = textwrap.dedent('''
    from twisted.internet import defer
    from sipsuite.proxy.routing.base import Routing

    PENDING = []

    class R(Routing):
        def __init__(self, core):
            super().__init__(core)
            self.version = {version}

        async def request_route(self, ctx):
            if ctx.request.uri.user == "wait":
                d = defer.Deferred()
                PENDING.append(d)
                await d
            ctx.reply(486, "Version {version}")
''')


_module_numbers = itertools.count(1)


@pytest.fixture
def user_routing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 ) -> Iterator[tuple[ProxyKit, Path, str]]:
    name = f"liveops_routing_{next(_module_numbers)}"
    pkg = tmp_path / "mods"
    pkg.mkdir()
    path = pkg / f"{name}.py"
    path.write_text(ROUTING_V.format(version=1))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, name, raising=False)
    kit = ProxyKit(tmp_path, proxy={"routing": f"{name}:R"})
    yield kit, path, name
    sys.modules.pop(name, None)


def reason_of(kit: ProxyKit, user: str, call_id: str) -> str:
    kit.take()
    kit.feed(request("OPTIONS", f"sip:{user}@sipsuite.test", call_id=call_id, branch=call_id),
             "127.0.0.2")
    finals = [m for m in responses(kit) if m.status >= 200]
    assert len(finals) == 1, finals
    return finals[0].reason


def test_reload_picks_up_the_edited_module(user_routing: tuple[ProxyKit, Path, str]) -> None:
    kit, path, name = user_routing
    assert reason_of(kit, "x", "c1") == "Version 1"
    # Same size and (likely) the same second as the first version: a stale
    # .pyc would be used by a plain reload.
    path.write_text(ROUTING_V.format(version=2))
    result = reload_routing(kit.core)
    assert result == {"routing": f"{name}:R", "module_reloaded": True}
    assert kit.core.routing.version == 2
    assert reason_of(kit, "x", "c2") == "Version 2"


@pytest.mark.parametrize(("source", "expected"), [
    ("def broken(:\n", "SyntaxError"),
    ("import no_such_module_here_at_all\n", "ModuleNotFoundError: No module named"),
    (ROUTING_V.format(version=3).replace("self.version = 3", "raise RuntimeError('boom')"),
     "RuntimeError: boom (at "),
    ("class R:\n    pass\n", "is not a subclass of sipsuite.proxy.routing.Routing"),
    ("X = 1\n", "is not a subclass"),
    ("raise ValueError('top level')\n", "ValueError: top level"),
])
def test_broken_module_is_refused_and_old_routing_keeps_running(
    user_routing: tuple[ProxyKit, Path, str], source: str, expected: str,
) -> None:
    kit, path, name = user_routing
    old_routing = kit.core.routing
    old_module = sys.modules[name]
    path.write_text(source)
    with pytest.raises(ReloadFailed) as err:
        reload_routing(kit.core)
    assert expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)
    assert kit.core.routing is old_routing
    assert sys.modules[name] is old_module and hasattr(old_module, "R"), "the loaded module was damaged"
    assert reason_of(kit, "x", "c9") == "Version 1"
    # and once fixed, the reload goes through
    path.write_text(ROUTING_V.format(version=4))
    reload_routing(kit.core)
    assert reason_of(kit, "x", "c10") == "Version 4"


def test_refused_reload_is_an_rpc_error(user_routing: tuple[ProxyKit, Path, str]) -> None:
    kit, path, _ = user_routing
    registry = RpcRegistry()
    register_liveops_methods(registry, kit.core)
    path.write_text("def broken(:\n")
    with pytest.raises(RpcError) as err:
        call(registry, "routing.reload")
    assert err.value.code == REFUSED  # refused, the old class stays (as a TLS or list reload)
    assert err.value.message.startswith("routing reload refused: SyntaxError")


def test_request_in_flight_finishes_with_the_routing_that_took_it(
    user_routing: tuple[ProxyKit, Path, str],
) -> None:
    kit, path, name = user_routing
    kit.feed(request("OPTIONS", "sip:wait@sipsuite.test", call_id="w1", branch="w1"), "127.0.0.2")
    pending = sys.modules[name].PENDING
    assert len(pending) == 1
    path.write_text(ROUTING_V.format(version=5))
    reload_routing(kit.core)
    kit.take()
    pending[0].callback(None)  # the v1 hook resumes after the swap
    finals = [m for m in responses(kit) if m.status >= 200]
    assert [(m.status, m.reason) for m in finals] == [(486, "Version 1")]
    assert reason_of(kit, "x", "after") == "Version 5"


def test_default_routing_gets_a_new_instance_only(kit: ProxyKit) -> None:
    old = kit.core.routing
    assert reload_routing(kit.core)["module_reloaded"] is False
    assert kit.core.routing is not old and type(kit.core.routing) is type(old)


class _Reactor:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802 - Twisted's name
        self.calls.append((f, args))


def test_sighup_reloads_the_routing(user_routing: tuple[ProxyKit, Path, str]) -> None:
    kit, path, _ = user_routing
    reactor = _Reactor()
    svc = liveops.LiveOpsService(kit.core, reactor)
    before = signal.getsignal(signal.SIGHUP)
    svc.startService()
    try:
        path.write_text(ROUTING_V.format(version=6))
        os.kill(os.getpid(), signal.SIGHUP)
        assert len(reactor.calls) == 1, "SIGHUP did not schedule a reload"
        assert kit.core.routing.version == 1, "the reload ran inside the signal handler"
        f, args = reactor.calls[0]
        f(*args)
        assert kit.core.routing.version == 6
        # a broken module on SIGHUP: logged, old one kept, nothing raised
        path.write_text("def broken(:\n")
        os.kill(os.getpid(), signal.SIGHUP)
        f, args = reactor.calls[1]
        f(*args)
        assert kit.core.routing.version == 6
    finally:
        svc.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


# ---------------------------------------------------------------------------
# stats


def test_counters_per_method_and_reply_class(kit: ProxyKit) -> None:
    core = kit.core
    inv = request("INVITE", "sip:bob@sipsuite.test", call_id="s1")
    kit.feed(inv, "127.0.0.2")
    kit.feed(inv, "127.0.0.2")  # retransmission
    forwarded = [m for m, _, _ in kit.take() if isinstance(m, Request) and m.method == "INVITE"]
    assert len(forwarded) == 1
    kit.feed(answer(forwarded[0], 180, "t"), "127.0.0.9", 5099)
    kit.feed(answer(forwarded[0], 486, "t"), "127.0.0.9", 5099)
    kit.feed(request("OPTIONS", "sip:nobody@sipsuite.test", call_id="s2"), "127.0.0.2")
    kit.feed(request("FROBNICATE", "sip:bob@sipsuite.test", call_id="s3"), "127.0.0.2")
    figures = defer.ensureDeferred(collect_stats(core)).result
    assert figures["requests_by_method"]["INVITE"] == 2
    assert figures["requests_by_method"]["OPTIONS"] == 1
    assert figures["requests_by_method"]["OTHER"] == 1
    assert "FROBNICATE" not in figures["requests_by_method"]
    assert figures["retransmissions"] == 1
    classes = figures["replies_sent_by_class"]
    # 100 Trying + the 180 relayed; the 486 relayed and the OPTIONS' 404
    assert classes == {"1xx": 2, "2xx": 0, "3xx": 0, "4xx": 2, "5xx": 0, "6xx": 0}
    assert figures["transactions"]["server"] == len(core.server_txs) > 0
    assert figures["responses_received"] == 2


def test_drops_by_cause_include_core_and_transport(kit: ProxyKit) -> None:
    core = kit.core
    core.count("drop.scanner")
    core.count("drop.scanner")
    core.transport.stats_drop("parse")
    figures = defer.ensureDeferred(collect_stats(core)).result
    assert figures["drops"] == {"scanner": 2, "transport.parse": 1}


def test_memory_store_counts_current_bindings_only() -> None:
    now = [1000.0]
    store = MemoryLocationStore(lambda: now[0])

    def put(*bindings: Binding) -> Any:
        def change(current: list[Binding], _now: float) -> None:
            current.extend(bindings)
        return change

    defer.ensureDeferred(store.update("alice", put(Binding("sip:a@h1", 1010.0),
                                                   Binding("sip:a@h2", 1100.0))))
    defer.ensureDeferred(store.update("bob", put(Binding("sip:b@h1", None))))
    assert defer.ensureDeferred(store.counts()).result == (2, 3)
    now[0] = 1050.0
    assert defer.ensureDeferred(store.counts()).result == (2, 2)
    now[0] = 1200.0
    assert defer.ensureDeferred(store.counts()).result == (1, 1)


def test_metrics_text_parses_with_the_same_numbers(kit: ProxyKit) -> None:
    core = kit.core
    kit.feed(request("OPTIONS", "sip:nobody@sipsuite.test", call_id="m1"), "127.0.0.2")
    core.count("drop.scanner")
    figures = defer.ensureDeferred(collect_stats(core)).result
    text = render_metrics(figures).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("sipsuite_requests_total", (("method", "OPTIONS"),))] == 1
    assert samples[("sipsuite_replies_sent_total", (("class", "4xx"),))] == \
        figures["replies_sent_by_class"]["4xx"]
    assert samples[("sipsuite_drops_total", (("cause", "scanner"),))] == 1
    assert samples[("sipsuite_registered_aors", ())] == figures["registrations"]["aors"]
    assert ("sipsuite_uptime_seconds", ()) in samples


def test_metrics_carry_the_subscriber_cache(kit: ProxyKit) -> None:
    figures = defer.ensureDeferred(collect_stats(kit.core)).result
    assert figures["subscriber_cache"] is None  # in-memory stores: no cache
    figures["subscriber_cache"] = {"live": True, "entries": 7, "hits": 40, "misses": 3}
    text = render_metrics(figures).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("sipsuite_subscriber_cache_entries", ())] == 7
    assert samples[("sipsuite_subscriber_cache_lookups_total", (("result", "hit"),))] == 40
    assert samples[("sipsuite_subscriber_cache_lookups_total", (("result", "miss"),))] == 3


def test_uptime_grows_with_the_clock(kit: ProxyKit) -> None:
    first = uptime(kit.core)
    kit.clock.advance(42)
    second = uptime(kit.core)
    assert second["uptime"] - first["uptime"] == pytest.approx(42)
    assert second["started_utc"].endswith("Z")
