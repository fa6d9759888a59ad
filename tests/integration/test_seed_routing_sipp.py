"""examples/seed_routing.py in a real twistd proxy, with sipp on each side:
the caller-id rewrite toward a PSTN gateway (ctx.replace_from) seen from
both ends of the dialog, the voicemail Request-URI built from ctx.avp and
values changed with ``sipsuite-ctl cfg set`` just before the call, and a
forged restore parameter that the proxy ignores and logs.

    alice (sipp UAC) --> proxy --> gateway (sipp UAS, [pstn] gw_port)
                               --> bob (sipp UAS, 486) --> voicemail (sipp UAS)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
from procs import (
    LOCALHOST,
    ProxyFactory,
    ProxyProcess,
    SippProcess,
    SippResult,
    UdpEndpoint,
    parse_sipp_messages,
    run_sipp,
    sipp_dir,
)

SECRET = "seed-routing-sipp-secret-0123456789"
NUMBER = "+4930999"
EXTENSION = "1001"


@dataclass
class Seed:
    proxy: ProxyProcess
    gw_port: int
    bob_port: int


def start_seed_proxy(proxy_factory: ProxyFactory, name: str, gw_port: int, bob_port: int,
                     port: int | None = None) -> ProxyProcess:
    return proxy_factory(
        name, port=port, static={EXTENSION: [f"sip:bob@{LOCALHOST}:{bob_port}"]},
        extra_proxy={"routing": "examples.seed_routing:SeedRouting"},
        tables={
            "features": {"pstn": True, "voicemail": False},
            "pstn": {"gw_ip": LOCALHOST, "gw_port": gw_port},
            # Nobody listens there: the test sets the real values at run time.
            "voicemail": {"srv_ip": LOCALHOST, "srv_port": 9},
            "uac": {"secret": SECRET},
        })


@pytest.fixture(scope="module")
def seed(proxy_factory: ProxyFactory) -> Iterator[Seed]:
    gw_port, bob_port = procs.free_port(), procs.free_port()
    yield Seed(start_seed_proxy(proxy_factory, "seed-routing", gw_port, bob_port), gw_port, bob_port)


def uas(scenario: Path, workdir: Path, port: int, name: str) -> SippProcess:
    process = SippProcess(scenario, name=name, workdir=workdir, local_port=port, calls=1,
                          timeout_s=20, service=name, trace_msg=True)
    process.wait_bound()
    return process


def alice(scenario: Path, proxy: ProxyProcess, workdir: Path, service: str) -> SippResult:
    return run_sipp(scenario, name="alice", workdir=workdir, remote=proxy.address,
                    local_port=procs.free_port(), calls=1, timeout_s=20, service=service,
                    trace_msg=True)


def assert_calls_ok(proxy: ProxyProcess, *results: SippResult) -> None:
    for res in results:
        assert res.rc == 0 and res.successful == 1, res.summary() + "\n" + proxy.diagnostics()


def test_the_gateway_sees_the_caller_id_and_alice_her_own_from_when_she_hangs_up(
        seed: Seed, tmp_path: Path) -> None:
    gw = uas(procs.SCENARIOS / "seed_gw_uas.xml", tmp_path, seed.gw_port, "gw")
    caller = alice(procs.SCENARIOS / "seed_alice_uac.xml", seed.proxy, tmp_path, NUMBER)
    gateway = gw.wait()
    # The scenarios' ereg checks: alice's 200 and the 200 of her BYE carry
    # her From; the gateway's INVITE, ACK and BYE the company's caller-id.
    assert_calls_ok(seed.proxy, caller, gateway)
    [invite] = [t.msg for t in parse_sipp_messages(gateway.messages_path)
                if t.direction == "received" and t.msg.start_line.startswith("INVITE")]
    assert invite.request_uri == f"sip:{NUMBER}@{LOCALHOST}:{seed.gw_port}"
    # What the gateway can read of our Record-Route does not name alice.
    assert "alice" not in (invite.header("record-route") or "").lower()


def test_the_gateways_bye_reaches_alice_with_her_own_from_as_to(
        seed: Seed, tmp_path: Path) -> None:
    gw = uas(procs.SCENARIOS / "seed_gw_hangup_uas.xml", tmp_path, seed.gw_port, "gw")
    caller = alice(procs.SCENARIOS / "seed_alice_hungup_uac.xml", seed.proxy, tmp_path, NUMBER)
    assert_calls_ok(seed.proxy, caller, gw.wait())


def test_busy_goes_to_voicemail_built_from_the_avp_and_cfg_set(
        seed: Seed, tmp_path: Path) -> None:
    vm_port = procs.free_port()
    template = (procs.SCENARIOS / "seed_voicemail_uas.xml").read_text()
    vm_scenario = tmp_path / "seed_voicemail_uas.xml"
    vm_scenario.write_text(template.replace("EXTENSION", EXTENSION))
    reject = (procs.SCENARIOS / "uas_reject.xml").read_text().replace("REJECT_STATUS", "486")
    bob_scenario = tmp_path / "uas_reject_486.xml"
    bob_scenario.write_text(reject)
    for key, value in (("features.voicemail", "true"), ("voicemail.srv_port", str(vm_port))):
        res = seed.proxy.ctl("cfg", "set", key, value)
        assert res.returncode == 0, res.stdout + res.stderr
    bob = SippProcess(bob_scenario, name="bob", workdir=tmp_path, local_port=seed.bob_port,
                      calls=1, timeout_s=20, service="bob", trace_msg=True,
                      extra=["-key", "reason", "Busy Here", "-key", "hdr", "X-Why: busy"])
    bob.wait_bound()
    vm = uas(vm_scenario, tmp_path, vm_port, "vm")
    caller = run_sipp(sipp_dir() / "call_uac.xml", name="alice", workdir=tmp_path,
                      remote=seed.proxy.address, local_port=procs.free_port(), calls=1,
                      timeout_s=20, service=EXTENSION, duration_ms=100, trace_msg=True)
    voicemail = vm.wait()
    assert_calls_ok(seed.proxy, caller, bob.wait(), voicemail)
    [invite] = [t.msg for t in parse_sipp_messages(voicemail.messages_path)
                if t.direction == "received" and t.msg.start_line.startswith("INVITE")]
    assert invite.request_uri == f"sip:{EXTENSION}@{LOCALHOST}:{vm_port}"


def _record_route(seed: Seed, workdir: Path) -> tuple[str, str, str]:
    """A real call's Record-Route, Call-ID and the caller's From tag, as the gateway saw them."""
    gw = uas(procs.SCENARIOS / "seed_gw_uas.xml", workdir, seed.gw_port, "gw")
    caller = alice(procs.SCENARIOS / "seed_alice_uac.xml", seed.proxy, workdir, NUMBER)
    gateway = gw.wait()
    assert_calls_ok(seed.proxy, caller, gateway)
    [invite] = [t.msg for t in parse_sipp_messages(gateway.messages_path)
                if t.direction == "received" and t.msg.start_line.startswith("INVITE")]
    ftag = (invite.header("from") or "").split(";tag=")[1]
    return invite.header("record-route") or "", invite.header("call-id") or "", ftag


ACME = '"ACME" <sip:+4930123456@sipsuite.test>'


def gateway_bye(proxy: ProxyProcess, route: str, call_id: str, ftag: str,
                branch: str) -> procs.Received | None:
    """A BYE from the gateway's side of the dialog (To: the caller-id it was
    shown) to a phone standing in for alice: what reaches her."""
    with UdpEndpoint() as alice_phone, UdpEndpoint() as gateway:
        bye = "\r\n".join([
            f"BYE sip:alice@{alice_phone.sent_by} SIP/2.0",
            f"Via: SIP/2.0/UDP {gateway.sent_by};branch=z9hG4bK{branch};rport",
            f"Route: {route}",
            "Max-Forwards: 70",
            f"From: <sip:{NUMBER}@sipsuite.test>;tag=gw1",
            f"To: {ACME};tag={ftag}",
            f"Call-ID: {call_id}",
            "CSeq: 5 BYE",
            "Content-Length: 0", "", ""]).encode()
        gateway.send(bye, proxy.address)
        return alice_phone.recv(5)


def test_a_restarted_proxy_restores_from_the_record_route_alone(
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    gw_port, port = procs.free_port(), procs.free_port()
    first = start_seed_proxy(proxy_factory, "seed-before", gw_port, procs.free_port(), port)
    route, call_id, ftag = _record_route(Seed(first, gw_port, 0), tmp_path)
    first.stop()
    again = start_seed_proxy(proxy_factory, "seed-after", gw_port, procs.free_port(), port)
    got = gateway_bye(again, route, call_id, ftag, "restart1")
    diag = "\n" + again.diagnostics()
    assert got is not None and got.msg.start_line.startswith("BYE"), "the BYE was not relayed" + diag
    assert got.msg.header("to") == f'"Alice" <sip:alice@sipsuite.test>;tag={ftag}', diag


def test_a_forged_restore_parameter_is_ignored_and_logged(seed: Seed, tmp_path: Path) -> None:
    route, call_id, ftag = _record_route(seed, tmp_path)
    start = route.index(";uac=") + 5
    # One character of the sealed value changed: what a UA trying to make the
    # proxy "restore" a From of its choosing would have to do.
    forged = route[:start + 10] + ("B" if route[start + 10] != "B" else "C") + route[start + 11:]
    got = gateway_bye(seed.proxy, forged, call_id, ftag, "forged1")
    diag = "\n" + seed.proxy.diagnostics()
    assert got is not None and got.msg.start_line.startswith("BYE"), "the BYE was not relayed" + diag
    assert got.msg.header("to") == f"{ACME};tag={ftag}", "the To was changed" + diag
    deadline = time.monotonic() + 5
    while "restore parameter ignored" not in seed.proxy.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "restore parameter ignored" in seed.proxy.log_text(), diag
