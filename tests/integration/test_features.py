"""The [features] switches of the default routing (kamailio.cfg's WITH_*),
each ON and OFF, with real sipp callers and callees through a real proxy.

Proxies (one port each on 127.0.0.1, started once for the module):

    on       debug, pstn, voicemail, block3xx, block401407 on; the PSTN
             gateway and the voicemail server are sipp UASes on GW / VM
    off      the same settings, every switch off
    nogw     pstn on but pstn.gw_ip = "" (PSTN routing disabled); debug is
             switched on and off here with `sipsuite-ctl cfg set`
    ipauth   auth on, trusted = 127.0.0.0/8, ipauth on
    noipauth auth on, trusted = 127.0.0.0/8, ipauth off

Static bindings (both `on` and `off`) name callees the tests start:
    bob     -> uas_answer.xml  (answers)       busy   -> uas_reject.xml 486
    redir   -> uas_reject.xml 302              chal401 / chal407 -> 401 / 407
    ring    -> RawCallee: 180, then nothing    (timer C, 2 s: 408)
natsipping starts a proxy of its own per setting (a sipp phone registers from
behind NAT and listens for OPTIONS); test_registration.py has the removal of
an unanswering binding and the CRLF bytes.
"""

from __future__ import annotations

import json
import re
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
    RawCallee,
    SippProcess,
    SippResult,
    UdpEndpoint,
    build_request,
    is_final,
    parse_sipp_messages,
    run_sipp,
    sipp_dir,
)

DOMAIN = "sipsuite.test"
NUMBER = "+4930123456"


@dataclass
class Net:
    on: ProxyProcess
    off: ProxyProcess
    nogw: ProxyProcess
    ipauth: ProxyProcess
    noipauth: ProxyProcess
    ports: dict[str, int]


@pytest.fixture(scope="module")
def net(proxy_factory: ProxyFactory) -> Iterator[Net]:
    ports = {name: procs.free_port() for name in ("bob", "busy", "redir", "chal401", "chal407",
                                                  "gw", "vm")}
    static = {name: [f"sip:{name}@{LOCALHOST}:{ports[name]}"]
              for name in ("bob", "busy", "redir", "chal401", "chal407")}
    ring = RawCallee()  # rings, never answers
    static["ring"] = [f"sip:ring@{LOCALHOST}:{ring.port}"]
    settings = {
        "pstn": {"gw_ip": LOCALHOST, "gw_port": ports["gw"]},
        "voicemail": {"srv_ip": LOCALHOST, "srv_port": ports["vm"]},
    }
    switches = ("debug", "pstn", "voicemail", "block3xx", "block401407")
    on = proxy_factory("feat-on", static=static,
                       tables={**settings, "features": dict.fromkeys(switches, True)})
    off = proxy_factory("feat-off", static=static,
                        tables={**settings, "features": dict.fromkeys(switches, False)})
    nogw = proxy_factory("feat-nogw", static=static,
                         tables={"features": {"pstn": True}, "pstn": {"gw_ip": ""}})
    auth = {"auth": True}
    ipauth = proxy_factory("feat-ipauth", static=static, trusted=["127.0.0.0/8"],
                           tables={"features": {**auth, "ipauth": True}})
    noipauth = proxy_factory("feat-noipauth", static=static, trusted=["127.0.0.0/8"],
                             tables={"features": {**auth, "ipauth": False}})
    try:
        yield Net(on, off, nogw, ipauth, noipauth, ports)
    finally:
        ring.close()


# --------------------------------------------------------------------------- helpers


def start_uas(scenario: Path, workdir: Path, port: int, name: str = "uas",
              keys: dict[str, str] | None = None, calls: int = 1) -> SippProcess:
    extra = [arg for k, v in (keys or {}).items() for arg in ("-key", k, v)]
    uas = SippProcess(scenario, name=name, workdir=workdir, local_port=port, calls=calls,
                      timeout_s=20, service=name, trace_msg=True, extra=extra)
    uas.wait_bound()
    return uas


def rejecting_uas(workdir: Path, port: int, status: int) -> SippProcess:
    hdr = {
        302: f"Contact: <sip:elsewhere@{LOCALHOST}:9>",
        401: 'WWW-Authenticate: Digest realm="far.example", nonce="n1"',
        407: 'Proxy-Authenticate: Digest realm="far.example", nonce="n1"',
    }.get(status, "X-Why: refused")
    template = (procs.SCENARIOS / "uas_reject.xml").read_text()
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / f"uas_reject_{status}.xml"
    scenario.write_text(template.replace("REJECT_STATUS", str(status)))
    return start_uas(scenario, workdir, port, name=f"uas{status}",
                     keys={"reason": "Refused", "hdr": hdr})


def call_ok(proxy: ProxyProcess, workdir: Path, user: str, calls: int = 1) -> SippResult:
    """call_uac.xml to sip:USER@proxy: every call answered, ACKed and ended."""
    return run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=workdir,
                    remote=proxy.address, local_port=procs.free_port(), calls=calls, rate=10,
                    duration_ms=100, timeout_s=20, service=user, trace_msg=True)


def call_fails(proxy: ProxyProcess, workdir: Path, user: str, status: int,
               from_host: str = LOCALHOST) -> SippResult:
    """A call to sip:USER@proxy that must end with ``status`` (sipp fails otherwise)."""
    template = (procs.SCENARIOS / "uac_expect_final.xml").read_text()
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / f"uac_expect_{status}.xml"
    scenario.write_text(template.replace("EXPECTED_STATUS", str(status)))
    return run_sipp(scenario, name=f"uac{status}", workdir=workdir, remote=proxy.address,
                    local_port=procs.free_port(), calls=1, timeout_s=15, service=user,
                    trace_msg=True, extra=["-key", "from_host", from_host])


def invites(result: SippResult) -> list[procs.SipMessage]:
    return [t.msg for t in parse_sipp_messages(result.messages_path)
            if t.direction == "received" and not t.msg.is_response and t.msg.method == "INVITE"]


def final_reason(result: SippResult) -> str:
    finals = [t.msg.start_line for t in parse_sipp_messages(result.messages_path)
              if t.direction == "received" and t.msg.is_response and t.msg.status >= 200]
    return finals[-1] if finals else ""


def assert_ok(*results: SippResult, proxy: ProxyProcess) -> None:
    diag = "".join("\n" + r.summary() for r in results) + "\n" + proxy.diagnostics()
    for r in results:
        assert (r.rc, r.successful, r.failed) == (0, r.created, 0), f"sipp {r.name} failed" + diag


# --------------------------------------------------------------------------- pstn


@pytest.mark.parametrize("dialled", [NUMBER, "004930123456"])
def test_pstn_on_sends_numbers_to_the_gateway(net: Net, tmp_path: Path, dialled: str) -> None:
    """[features] pstn: +4930123456 and 004930123456 both reach the gateway
    (a sipp UAS on pstn.gw_ip:gw_port) as sip:+4930123456@GW, and the call works."""
    gw = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["gw"], name="gw")
    uac = call_ok(net.on, tmp_path, dialled)
    res = gw.wait()
    assert_ok(uac, res, proxy=net.on)
    got = invites(res)
    assert [m.request_uri for m in got] == [f"sip:{NUMBER}@{LOCALHOST}:{net.ports['gw']}"], got


def test_pstn_refuses_callers_from_other_domains(net: Net, tmp_path: Path) -> None:
    """Only local callers use the gateway: From sip:caller@foreign.example -> 403 Not Allowed."""
    uac = call_fails(net.on, tmp_path, NUMBER, 403, from_host="foreign.example")
    assert_ok(uac, proxy=net.on)
    assert final_reason(uac) == "SIP/2.0 403 Not Allowed"


def test_pstn_off_or_without_gateway_is_a_local_lookup(net: Net, tmp_path: Path) -> None:
    """Switch off, or on with pstn.gw_ip = "": the number is looked up as a local
    user, and there is none -> 404."""
    off = call_fails(net.off, tmp_path / "off", NUMBER, 404)
    nogw = call_fails(net.nogw, tmp_path / "nogw", "004930123456", 404)
    assert_ok(off, proxy=net.off)
    assert_ok(nogw, proxy=net.nogw)


# --------------------------------------------------------------------------- voicemail


def test_voicemail_on_unregistered_user(net: Net, tmp_path: Path) -> None:
    """[features] voicemail: a call to a local user with no binding is answered by
    the voicemail server, as sip:DIALLED@srv_ip:srv_port."""
    vm = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["vm"], name="vm")
    uac = call_ok(net.on, tmp_path, "nobody")
    res = vm.wait()
    assert_ok(uac, res, proxy=net.on)
    assert [m.request_uri for m in invites(res)] == [f"sip:nobody@{LOCALHOST}:{net.ports['vm']}"]


def test_voicemail_on_busy(net: Net, tmp_path: Path) -> None:
    """A registered callee that answers 486: the call lands on voicemail, for the
    user the caller dialled."""
    busy = rejecting_uas(tmp_path, net.ports["busy"], 486)
    vm = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["vm"], name="vm")
    uac = call_ok(net.on, tmp_path, "busy")
    busy_res, vm_res = busy.wait(), vm.wait()
    assert_ok(uac, busy_res, vm_res, proxy=net.on)
    assert [m.request_uri for m in invites(vm_res)] == [f"sip:busy@{LOCALHOST}:{net.ports['vm']}"]


def test_voicemail_on_no_answer(net: Net, tmp_path: Path) -> None:
    """A callee that rings and never answers: after timer C (408) the call goes
    to voicemail."""
    vm = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["vm"], name="vm")
    uac = call_ok(net.on, tmp_path, "ring")
    res = vm.wait()
    assert_ok(uac, res, proxy=net.on)
    assert [m.request_uri for m in invites(res)] == [f"sip:ring@{LOCALHOST}:{net.ports['vm']}"]


def test_voicemail_off(net: Net, tmp_path: Path) -> None:
    """Switch off: the unregistered user gets 404, and the busy callee's 486 (and
    the 408 of one that does not answer) reaches the caller."""
    nobody = call_fails(net.off, tmp_path, "nobody", 404)
    busy = rejecting_uas(tmp_path, net.ports["busy"], 486)
    uac = call_fails(net.off, tmp_path, "busy", 486)
    assert_ok(nobody, uac, busy.wait(), proxy=net.off)
    ring = call_fails(net.off, tmp_path, "ring", 408)
    assert_ok(ring, proxy=net.off)


# --------------------------------------------------------------------------- block3xx / block401407


@pytest.mark.parametrize(("user", "status"), [("redir", 302), ("chal401", 401), ("chal407", 407)])
def test_blocked_answers_become_404(net: Net, tmp_path: Path, user: str, status: int) -> None:
    """block3xx / block401407 on: the callee's 302 / 401 / 407 goes to the caller
    as 404 Not Found."""
    uas = rejecting_uas(tmp_path, net.ports[user], status)
    uac = call_fails(net.on, tmp_path, user, 404)
    assert_ok(uac, uas.wait(), proxy=net.on)
    assert final_reason(uac) == "SIP/2.0 404 Not Found"


@pytest.mark.parametrize(("user", "status"), [("redir", 302), ("chal401", 401), ("chal407", 407)])
def test_unblocked_answers_reach_the_caller(net: Net, tmp_path: Path, user: str, status: int) -> None:
    """Switches off: the 302 / 401 / 407 reaches the caller as it is."""
    uas = rejecting_uas(tmp_path, net.ports[user], status)
    uac = call_fails(net.off, tmp_path, user, status)
    assert_ok(uac, uas.wait(), proxy=net.off)


# --------------------------------------------------------------------------- ipauth


def test_ipauth_on_trusted_caller_is_not_challenged(net: Net, tmp_path: Path) -> None:
    """auth + ipauth: a call from a trusted network goes through without credentials."""
    uas = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["bob"], name="bob")
    uac = call_ok(net.ipauth, tmp_path, "bob")
    assert_ok(uac, uas.wait(), proxy=net.ipauth)


def test_ipauth_off_trusted_caller_is_challenged(net: Net, tmp_path: Path) -> None:
    """auth without ipauth: the same trusted caller (From one of our domains) is
    challenged like anyone (407)."""
    uac = call_fails(net.noipauth, tmp_path, "bob", 407)
    assert_ok(uac, proxy=net.noipauth)


def test_ipauth_never_spares_register(net: Net) -> None:
    """ipauth covers requests other than REGISTER: a REGISTER from the trusted
    network still gets 401."""
    with UdpEndpoint() as ep:
        req = build_request("REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by,
                            from_uri=f"sip:bob@{DOMAIN}", to_uri=f"sip:bob@{DOMAIN}",
                            contact=f"sip:bob@{ep.sent_by}")
        ep.send(req, net.ipauth.address)
        got = ep.recv_until(is_final, 5.0)
    assert got is not None and got.msg.status == 401, f"{got}\n{net.ipauth.diagnostics()}"


# --------------------------------------------------------------------------- debug


def route_lines(proxy: ProxyProcess, call_id: str) -> list[str]:
    time.sleep(0.3)  # the file log is written by the reactor loop
    return [line for line in proxy.log_text().splitlines() if f"cid={call_id}:" in line]


def test_debug_on_logs_every_routing_step(net: Net, tmp_path: Path) -> None:
    """[features] debug: one info line per routing step of each request of the
    call (INVITE: auth, location, relay; ACK and BYE: within dialog), none of
    them at error or warn level."""
    uas = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["bob"], name="bob")
    uac = call_ok(net.on, tmp_path, "bob")
    assert_ok(uac, uas.wait(), proxy=net.on)
    call_id = invites(uas.wait())[0].call_id
    lines = route_lines(net.on, call_id)
    text = "\n".join(lines) + "\n" + net.on.diagnostics()
    assert lines and all("#info] route " in line for line in lines), text
    expect = [
        r"route INVITE sip:bob@\S+ cid=\S+: auth: off$",
        rf"route INVITE sip:bob@\S+ cid=\S+: location: 'bob': 1 binding\(s\) -> relay to "
        rf"sip:bob@{LOCALHOST}:{net.ports['bob']}$",
        r"route ACK \S+ cid=\S+: within dialog: loose-routed -> relay$",
        r"route BYE \S+ cid=\S+: within dialog: loose-routed -> relay$",
    ]
    for pattern in expect:
        assert any(re.search(pattern, line) for line in lines), f"no line like {pattern}\n{text}"


def test_debug_on_logs_failure_route_decisions(net: Net, tmp_path: Path) -> None:
    """The failure route says what it did with the answer (here: block3xx)."""
    uas = rejecting_uas(tmp_path, net.ports["redir"], 302)
    uac = call_fails(net.on, tmp_path, "redir", 404)
    assert_ok(uac, uas.wait(), proxy=net.on)
    call_id = invites(uas.wait())[0].call_id
    lines = route_lines(net.on, call_id)
    assert any("failure route: 302 blocked (block3xx) -> 404 Not Found" in line for line in lines), (
        "\n".join(lines) + net.on.diagnostics())


def test_debug_off_logs_no_routing_steps(net: Net, tmp_path: Path) -> None:
    """Switch off: the same call leaves no routing-step line."""
    uas = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["bob"], name="bob")
    uac = call_ok(net.off, tmp_path, "bob")
    assert_ok(uac, uas.wait(), proxy=net.off)
    call_id = invites(uas.wait())[0].call_id
    assert route_lines(net.off, call_id) == []
    assert " route INVITE " not in net.off.log_text()


def test_debug_switched_at_run_time(net: Net, tmp_path: Path) -> None:
    """`sipsuite-ctl cfg set features.debug true|false` turns the step log on and
    off for the next request, without a restart."""
    proxy = net.nogw  # started with debug off
    uas = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, net.ports["bob"], name="bob", calls=3)
    results = []
    for n, value in enumerate(("false", "true", "false")):
        res = proxy.ctl("cfg", "set", "features.debug", value)
        assert res.returncode == 0, res.stderr + res.stdout
        results.append(call_ok(proxy, tmp_path / f"call{n}", "bob"))
    done = uas.wait()
    assert_ok(*results, done, proxy=proxy)
    call_ids = [m.call_id for m in invites(done)]
    assert len(call_ids) == 3, call_ids
    lines = [route_lines(proxy, cid) for cid in call_ids]
    assert lines[0] == [] and lines[2] == [], lines
    assert any("location: 'bob': 1 binding(s) -> relay" in line for line in lines[1]), (
        "\n".join(lines[1]) + proxy.diagnostics())


# --------------------------------------------------------------------------- natsipping


@pytest.mark.parametrize("natsipping", [True, False])
def test_natsipping_pings_a_natted_sipp_phone_with_options(
        proxy_factory: ProxyFactory, tmp_path: Path, natsipping: bool) -> None:
    """[features] natsipping: a sipp phone registers from behind NAT (its
    Contact names a private address) and listens for 3 s. On: OPTIONS
    keep-alives reach it at the address it registered from, each answered
    200 by sipp's out-of-call scenario, and the binding stays. Off: no
    OPTIONS at all (the keep-alives are CRLF datagrams)."""
    proxy = proxy_factory(f"natsip{int(natsipping)}", tables={
        "features": {"natsipping": natsipping},
        "nat": {"keepalive_interval": 0.5, "keepalive_timeout": 5.0}})
    scenarios = Path(__file__).parent / "scenarios"
    phone = run_sipp(scenarios / "natping_uac.xml", name="phone", workdir=tmp_path,
                     local_port=procs.free_port(), calls=1, timeout_s=20,
                     remote=proxy.address, service="natted", duration_ms=3000,
                     trace_msg=True, extra=["-oocsf", str(scenarios / "natping_ooc.xml")])
    assert (phone.rc, phone.successful) == (0, 1), phone.summary() + proxy.diagnostics()
    got = parse_sipp_messages(phone.messages_path)
    options = [m for m in got if m.direction == "received" and m.msg.method == "OPTIONS"]
    shown = json.loads(proxy.ctl("--json", "ul", "show", "natted").stdout)
    bound = [b for entry in shown for b in entry["bindings"]]
    assert len(bound) == 1 and bound[0]["nat"], shown
    if natsipping:
        assert len(options) >= 3, phone.summary() + proxy.diagnostics()
        assert all(m.msg.request_uri.startswith("sip:natted@10.9.8.7:") for m in options)
        answered = [m for m in got
                    if m.direction == "sent" and m.msg.is_response and m.msg.status == 200]
        assert len(answered) >= len(options) - 1  # the last one may be in flight
    else:
        assert options == [], [m.msg.request_uri for m in options]
