"""The relay as a service: drain on shutdown, start-up errors, management
methods, the suite wiring and sipsuite-ctl's relay tables."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from typing import Any

import pytest
import pytest_twisted
from relaynet import (
    Call,
    FakeClock,
    control_addr,
    open_peer,
    relay_config,
    rtp,
    running_relay,
    settle,
)

from sipsuite.config import load_config
from sipsuite.ops.ctl.cli import COMMANDS, build_parser, show_relay_sessions, show_relay_stats
from sipsuite.ops.errors import RpcError
from sipsuite.ops.server import ManagementService, RpcRegistry
from sipsuite.rtprelay.service import RelayService, make_relay_service, register_relay_methods
from sipsuite.service import make_suite_service
from sipsuite.startup import StartupError

RELAY = "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_drain_keeps_relaying_until_the_last_session_ends(reactor: Any) -> None:
    async with running_relay(reactor, relay_config(drain_time=30.0)) as relay:
        call = Call(reactor, relay)
        addr = control_addr(relay)
        try:
            await call.setup()
            stopped = relay.stopService()
            assert not stopped.called and relay.table.draining
            # New sessions are refused; the existing call is relayed and controlled.
            assert await call.control.command(addr, "n U call-2 127.0.0.1 4000 f;1") == "n E99"
            call.caller.send(rtp(1), (RELAY, call.port_for_caller))
            data, _ = await call.callee.recv()
            assert data == rtp(1)
            q = await call.control.command(addr, "q Q call-1 ftag;1 ttag;1")
            assert q.startswith("q ")
            assert await call.control.command(addr, "d D call-1 ftag ttag") == "d 0"
            await stopped  # the last session went: the relay is done
            assert relay.listeners == [] and relay.media.pairs == {}
            call.control.send(b"v V", addr)
            await settle(reactor)
            assert call.control.drain() == []  # the control socket is closed
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_drain_time_cuts_remaining_sessions(reactor: Any) -> None:
    async with running_relay(reactor, relay_config(drain_time=0.2)) as relay:
        call = Call(reactor, relay)
        try:
            await call.setup()
            started = reactor.seconds()
            await relay.stopService()
            assert 0.15 <= reactor.seconds() - started < 5
            assert relay.media.pairs == {} and relay.listeners == []
            # Its ports are closed: nothing is relayed any more.
            call.caller.send(rtp(1), (RELAY, call.port_for_caller))
            await settle(reactor)
            assert call.callee.drain() == []
        finally:
            call.close()


@pytest_twisted.ensureDeferred
async def test_stop_without_sessions_is_immediate(reactor: Any) -> None:
    relay = RelayService(relay_config(), reactor)
    relay.startService()
    await relay.stopService()
    assert relay.listeners == []


@pytest_twisted.ensureDeferred
async def test_drain_ends_when_sessions_time_out(reactor: Any) -> None:
    clock = FakeClock()
    async with running_relay(reactor, relay_config(), clock=clock) as relay:
        call = Call(reactor, relay)
        try:
            await call.setup()
            stopped = relay.stopService()
            clock.advance(61)
            relay.tick()
            await stopped
            assert len(relay.table) == 0
        finally:
            call.close()


def test_control_port_taken_is_a_startup_error_naming_it(reactor: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        relay = RelayService(relay_config(control=[f"udp:127.0.0.1:{port}"]), reactor)
        with pytest.raises(StartupError) as info:
            relay.privilegedStartService()
    assert str(info.value) == (f"cannot listen on relay control udp 127.0.0.1:{port}:"
                               " Address already in use")
    assert not relay.running and relay.listeners == []


def test_foreign_media_address_is_a_startup_error_naming_it(reactor: Any) -> None:
    relay = RelayService(relay_config(addresses=["192.0.2.1"]), reactor)  # TEST-NET-1
    with pytest.raises(StartupError) as info:
        relay.startService()
    assert str(info.value).startswith("cannot bind relay media address 192.0.2.1: ")
    assert "\n" not in str(info.value) and not relay.running


@pytest_twisted.ensureDeferred
async def test_management_methods(reactor: Any) -> None:
    async with running_relay(reactor, relay_config(), clock=FakeClock()) as relay:
        registry = RpcRegistry()
        register_relay_methods(registry, relay)
        call = Call(reactor, relay)
        try:
            await call.setup()
            call.caller.send(rtp(1), (RELAY, call.port_for_caller))
            await call.callee.recv()
            sessions = await registry.call("relay.sessions")
            assert len(sessions) == 1
            s = sessions[0]
            assert (s["call_id"], s["from_tag"], s["to_tag"]) == ("call-1", "ftag;1", "ttag;1")
            assert s["caller"]["packets"] == 1 and s["callee"]["packets"] == 0
            assert s["caller"]["port"] == call.port_for_caller
            assert s["caller"]["address"] == "127.0.0.1"
            assert s["callee"]["signalled"] == f"127.0.0.1:{call.callee.addr[1]}"
            assert await registry.call("relay.sessions", {"call_id": "other"}) == []
            with pytest.raises(RpcError):
                await registry.call("relay.sessions", {"call_id": 5})
            stats = await registry.call("relay.stats")
            assert stats["sessions_active"] == 1 and stats["packets_relayed"] == 1
            assert stats["ports_total"] == 40 and stats["ports_free"] == 36
            assert stats["commands"] == 2 and stats["draining"] is False
            # What sipsuite-ctl prints of them.
            text = show_relay_sessions(sessions, argparse.Namespace())
            assert text.splitlines()[0].split()[:5] == [
                "CALL-ID", "FROM-TAG", "TO-TAG", "CALLER", "CALLEE"]
            assert "call-1" in text and f"<- 127.0.0.1:{call.caller.addr[1]}" in text
            stats_text = show_relay_stats(stats, argparse.Namespace())
            assert "packets_relayed" in stats_text and "draining" in stats_text
            assert show_relay_sessions([], argparse.Namespace()) == "no relayed sessions"
        finally:
            call.close()


def test_ctl_has_relay_commands() -> None:
    words = {c.words: c.method for c in COMMANDS}
    assert words[("relay", "sessions")] == "relay.sessions"
    assert words[("relay", "stats")] == "relay.stats"
    args = build_parser().parse_args(["relay", "sessions", "abc@host"])
    assert args.call_id == "abc@host"


def test_relay_service_serves_its_own_management() -> None:
    config = load_config(None)
    top = make_relay_service(config)
    managers = [s for s in top if isinstance(s, ManagementService)]
    assert len(managers) == 1
    assert "relay.sessions" in managers[0].registry
    assert (managers[0].host, managers[0].wanted_port) == ("127.0.0.1", 7061)  # not the proxy's
    quiet = dataclasses.replace(config, management=dataclasses.replace(config.management,
                                                                       relay_listen=""))
    assert not any(isinstance(s, ManagementService) for s in make_relay_service(quiet))


def test_suite_puts_relay_methods_on_the_proxy_registry() -> None:
    top = make_suite_service(load_config(None, listen=["udp:127.0.0.1:0"]))
    proxy = top.getServiceNamed("sip-proxy")
    relay = top.getServiceNamed("rtp-relay")
    managers = [s for s in proxy if isinstance(s, ManagementService)]
    assert len(managers) == 1
    registry = managers[0].registry
    assert "relay.sessions" in registry and "relay.stats" in registry and "ul.show" in registry
    assert not any(isinstance(s, ManagementService) for s in relay)  # one interface only
    assert isinstance(relay.getServiceNamed("relay"), RelayService)


@pytest_twisted.ensureDeferred
async def test_two_relays_one_host_do_not_share_ports(reactor: Any) -> None:
    """Two relays with overlapping ranges (a restart, a second instance):
    the second skips the pairs the first holds."""
    low = 24000 + 4 * (reactor.seconds().__int__() % 500)
    async with running_relay(reactor, relay_config(ports=(low, low + 7))) as first, \
            running_relay(reactor, relay_config(ports=(low, low + 7))) as second:
        a, b = open_peer(reactor), open_peer(reactor)
        try:
            one = await a.command(control_addr(first), "1 U c 127.0.0.1 4000 f;1")
            two = await b.command(control_addr(second), "2 U c 127.0.0.1 4000 f;1")
            assert one.split()[1] != two.split()[1]
        finally:
            a.port_obj.stopListening()
            b.port_obj.stopListening()


def test_relay_alone_runs_the_gc_policy_and_inside_the_suite_does_not() -> None:
    """Alone, the relay owns the process and freezes survivors out of the
    collector (sipsuite.gcpolicy); inside twistd -n sipsuite the proxy's
    policy covers the process, so a second one must not run."""
    config = load_config(None)
    alone = make_relay_service(config, serve_management=False)
    assert [type(s).__name__ for s in alone].count("_GCService") == 1
    inside = make_relay_service(config, RpcRegistry())
    assert [type(s).__name__ for s in inside].count("_GCService") == 0
