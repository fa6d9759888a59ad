"""Calls through a real proxy process: sipp callers and callees, raw UDP peers.

One proxy serves the whole module (``python -m twisted sipsuite``, UDP and TCP on
one port of 127.0.0.1 chosen at run time), configured with static bindings that
point at the callees the tests run:

    bob     -> sipp uas_answer.xml on UDP          (calls, 200 at 50 calls/s)
    bobtcp  -> sipp uas_answer.xml on TCP          (the same over TCP)
    carol   -> sipp examples/sipp/cancel_uas.xml (CANCEL)
    ring    -> RawCallee: 180, then nothing       (timer C after a provisional)
    silent  -> RawCallee: never answers            (timer C without a provisional)
    busy    -> RawCallee: 180, 486 after 1 s       (INVITE retransmissions)
    closed  -> a UDP port nobody listens on        (dead next hop)
    nohost  -> sip:nohost@nohost.invalid           (unresolvable next hop)

timer_c is 2 s so that timer C tests are quick; every sipp run is bounded.
On failure the assertion shows sipp's error log and screen and the proxy log tail.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
from procs import (
    LOCALHOST,
    CalleeBehaviour,
    ProxyFactory,
    RawCallee,
    Received,
    SipMessage,
    SippProcess,
    Transport,
    UdpEndpoint,
    build_ack_for,
    build_invite,
    build_request,
    is_final,
    parse_sipp_messages,
    run_sipp,
    sipp_dir,
    statuses,
    via_branch,
    via_sent_by,
    via_transport,
)

CALLS = 200
RATE = 50
CANCEL_CALLS = 20
TIMER_C = 2.0
DOMAIN = "sipsuite.test"


@dataclass
class Topology:
    proxy: procs.ProxyProcess
    uas_udp_port: int
    uas_tcp_port: int
    cancel_port: int
    ring: RawCallee
    silent: RawCallee
    busy: RawCallee
    closed_port: int

    def diag(self) -> str:
        return self.proxy.diagnostics()


@pytest.fixture(scope="module")
def topo(proxy_factory: ProxyFactory) -> Iterator[Topology]:
    ring, silent, busy = RawCallee(), RawCallee(), RawCallee()
    ports = {name: procs.free_port() for name in ("uas_udp", "uas_tcp", "cancel", "closed")}
    static = {
        "bob": [f"sip:bob@{LOCALHOST}:{ports['uas_udp']}"],
        "bobtcp": [f"sip:bob@{LOCALHOST}:{ports['uas_tcp']};transport=tcp"],
        "carol": [f"sip:carol@{LOCALHOST}:{ports['cancel']}"],
        "ring": [f"sip:ring@{LOCALHOST}:{ring.port}"],
        "silent": [f"sip:silent@{LOCALHOST}:{silent.port}"],
        "busy": [f"sip:busy@{LOCALHOST}:{busy.port}"],
        "closed": [f"sip:closed@{LOCALHOST}:{ports['closed']}"],
        "closedtcp": [f"sip:closed@{LOCALHOST}:{ports['closed']};transport=tcp"],
        "nohost": ["sip:nohost@nohost.invalid"],
    }
    try:
        proxy = proxy_factory("calls", static=static, timer_c=TIMER_C, dns_timeout=1.0)
        yield Topology(
            proxy, ports["uas_udp"], ports["uas_tcp"], ports["cancel"], ring, silent, busy,
            ports["closed"],
        )
    finally:
        for callee in (ring, silent, busy):
            callee.close()


# --------------------------------------------------------------------------- helpers


def start_uas(
    scenario: Path, workdir: Path, port: int, calls: int, transport: Transport = "udp",
    service: str = "bob",
) -> SippProcess:
    uas = SippProcess(
        scenario, name="uas", workdir=workdir, local_port=port, calls=calls, timeout_s=40,
        transport=transport, service=service, trace_msg=True,
    )
    uas.wait_bound()
    return uas


def caller_response_problems(path: Path, caller_port: int) -> list[str]:
    """Every response the caller got carries exactly its own Via (the proxy removed
    its own value, RFC 3261 16.7 step 3, and added nothing)."""
    problems = []
    for t in parse_sipp_messages(path):
        if t.direction == "received" and t.msg.is_response:
            vias = t.msg.vias
            if len(vias) != 1 or not via_sent_by(vias[0]).endswith(f":{caller_port}"):
                problems.append(f"caller got {t.msg.start_line!r} ({t.msg.cseq}) with Via {vias}")
    return problems


def received_by_method(path: Path) -> dict[str, list[SipMessage]]:
    out: dict[str, list[SipMessage]] = defaultdict(list)
    for t in parse_sipp_messages(path):
        if t.direction == "received" and not t.msg.is_response:
            out[t.msg.method].append(t.msg)
    return out


def invite(ep: UdpEndpoint, user: str) -> bytes:
    return build_invite(f"sip:{user}@{DOMAIN}", sent_by=ep.sent_by)


# --------------------------------------------------------------------------- tests


def test_sipp_scenarios_work_without_proxy(sipp_bin: str, tmp_path: Path) -> None:
    """Harness check: call_uac.xml straight to uas_answer.xml (no proxy) works here,
    so a failure below is about the proxy, not sipp or the scenarios."""
    port = procs.free_port()
    uas = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, port, 5)
    uac = run_sipp(
        sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path, remote=(LOCALHOST, port),
        local_port=procs.free_port(), calls=5, rate=50, duration_ms=100, timeout_s=20, service="bob",
    )
    res = uas.wait()
    assert (uac.rc, uac.successful, res.rc, res.successful) == (0, 5, 0, 5), uac.summary() + res.summary()


def test_options_to_the_proxy_itself(topo: Topology) -> None:
    """OPTIONS sip:127.0.0.1:P (no user) is answered 200 by the proxy, on UDP and on TCP."""
    resp = procs.options_ping(LOCALHOST, topo.proxy.port, timeout=2.0)
    assert resp is not None and resp.status == 200, f"UDP OPTIONS got {resp}\n{topo.diag()}"
    port = topo.proxy.port
    req = build_request(
        "OPTIONS", f"sip:{LOCALHOST}:{port}", sent_by=f"{LOCALHOST}:9", transport="TCP",
        to_uri=f"sip:{LOCALHOST}:{port}",
    )
    resp = procs.tcp_exchange(topo.proxy.address, req, timeout=3.0)
    assert resp is not None and resp.status == 200, f"TCP OPTIONS got {resp}\n{topo.diag()}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_calls_through_the_proxy(
    sipp_bin: str, topo: Topology, tmp_path: Path, transport: Transport
) -> None:
    """200 calls at 50 calls/s, call_uac.xml -> proxy -> uas_answer.xml: all succeed,
    and INVITE, ACK and BYE all reach the callee THROUGH the proxy (its Via on top of
    the caller's; ACK/BYE follow the Record-Route, the proxy's Route value removed)."""
    uas_port = topo.uas_udp_port if transport == "udp" else topo.uas_tcp_port
    user = "bob" if transport == "udp" else "bobtcp"
    uas = start_uas(sipp_dir() / "uas_answer.xml", tmp_path, uas_port, CALLS, transport)
    caller_port = procs.free_port()
    uac = run_sipp(
        sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path, remote=topo.proxy.address,
        local_port=caller_port, calls=CALLS, rate=RATE, duration_ms=100, timeout_s=40,
        transport=transport, service=user, trace_msg=True,
    )
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{topo.diag()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, CALLS, 0), "caller side failed" + diag
    assert (res.rc, res.successful, res.failed) == (0, CALLS, 0), "callee side failed" + diag

    proxy_hop = f"{LOCALHOST}:{topo.proxy.port}"
    got = received_by_method(res.messages_path)
    problems = caller_response_problems(uac.messages_path, caller_port)
    for method in ("INVITE", "ACK", "BYE"):
        msgs = got.get(method, [])
        calls = {m.call_id for m in msgs}
        if len(calls) != CALLS:
            problems.append(f"{method} reached the callee in {len(calls)} calls, expected {CALLS}")
        for m in msgs:
            vias = m.vias
            if len(vias) != 2 or via_sent_by(vias[0]) != proxy_hop:
                problems.append(f"{method} {m.call_id}: Via {vias}, expected the proxy's {proxy_hop} "
                                "on top of the caller's")
            elif via_transport(vias[0]) != transport.upper():
                problems.append(f"{method} {m.call_id}: proxy Via {vias[0]!r} is not {transport.upper()}")
            if method == "INVITE":
                rr = m.header_values("record-route")
                if not any(proxy_hop in v and ";lr" in v for v in rr):
                    problems.append(f"INVITE {m.call_id}: no Record-Route ;lr for {proxy_hop}: {rr}")
            elif routes := m.header_values("route"):
                problems.append(f"{method} {m.call_id}: Route not removed by the proxy: {routes}")
    assert not problems, "\n".join(problems[:15]) + f"\n({len(problems)} problems)" + diag


def test_cancel_through_the_proxy(sipp_bin: str, topo: Topology, tmp_path: Path) -> None:
    """cancel_uac.xml -> proxy -> callee that rings: every caller gets 200 for its
    CANCEL and 487 for the INVITE; the callee gets the proxy's own CANCEL (one Via,
    the branch of the INVITE the proxy sent: RFC 3261 9.1/16.10) and the proxy's
    hop-by-hop ACK for the 487 (RFC 3261 17.1.1.3), never the caller's ACK.

    The callee, examples/sipp/cancel_uas.xml, answers the INVITE with a 487 carrying
    the INVITE's Vias (the next test covers one built from the CANCEL's)."""
    uas = start_uas(sipp_dir() / "cancel_uas.xml", tmp_path, topo.cancel_port,
                    CANCEL_CALLS, service="carol")
    caller_port = procs.free_port()
    uac = run_sipp(
        sipp_dir() / "cancel_uac.xml", name="uac", workdir=tmp_path, remote=topo.proxy.address,
        local_port=caller_port, calls=CANCEL_CALLS, rate=10, timeout_s=30, service="carol",
        trace_msg=True,
    )
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{topo.diag()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, CANCEL_CALLS, 0), "caller side failed" + diag
    assert (res.rc, res.successful) == (0, CANCEL_CALLS), "callee side failed" + diag

    got = received_by_method(res.messages_path)
    proxy_hop = f"{LOCALHOST}:{topo.proxy.port}"
    invite_branch = {m.call_id: via_branch(m.vias[0]) for m in got["INVITE"]}
    problems = caller_response_problems(uac.messages_path, caller_port)
    for method in ("CANCEL", "ACK"):
        for m in got[method]:
            if len(m.vias) != 1 or via_sent_by(m.vias[0]) != proxy_hop:
                problems.append(f"{method} {m.call_id}: Via {m.vias}, expected only the proxy's")
            elif via_branch(m.vias[0]) != invite_branch.get(m.call_id):
                problems.append(f"{method} {m.call_id}: branch {via_branch(m.vias[0])} != INVITE's "
                                f"{invite_branch.get(m.call_id)}")
    cancelled = {m.call_id for m in got["CANCEL"]}
    if len(cancelled) != CANCEL_CALLS:
        problems.append(f"CANCEL reached the callee in {len(cancelled)} calls, expected {CANCEL_CALLS}")
    assert not problems, "\n".join(problems[:15]) + diag


def test_cancel_487_built_from_the_cancel_reaches_the_caller(
    sipp_bin: str, topo: Topology, tmp_path: Path
) -> None:
    """scenarios/cancel_uas_cancel_via.xml answers the INVITE with a 487 copied from
    the CANCEL's Via, i.e. with only the proxy's Via. Dropping it (RFC 3261 16.7
    step 3) would leave the caller with no final answer; the proxy restores the
    caller's Vias from the INVITE, so every caller still gets its 487."""
    calls = 5
    uas = start_uas(procs.SCENARIOS / "cancel_uas_cancel_via.xml", tmp_path, topo.cancel_port,
                    calls, service="carol")
    caller_port = procs.free_port()
    uac = run_sipp(
        sipp_dir() / "cancel_uac.xml", name="uac", workdir=tmp_path, remote=topo.proxy.address,
        local_port=caller_port, calls=calls, rate=10, timeout_s=30, service="carol",
        trace_msg=True,
    )
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{topo.diag()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, calls, 0), "caller side failed" + diag
    problems = caller_response_problems(uac.messages_path, caller_port)
    assert not problems, "\n".join(problems[:15]) + diag


def test_timer_c_fires_after_ringing(topo: Topology) -> None:
    """Callee sends 180 and then nothing, not even to the CANCEL: TIMER_C s after
    the 180 the proxy CANCELs the branch (RFC 3261 16.8: a provisional was
    received) and the caller gets 408 (timer_c is documented as 'CANCELs it and
    answers 408 upstream')."""
    topo.ring.reset(CalleeBehaviour(provisional=(180,), final=None))
    seen: list[Received] = []
    with UdpEndpoint() as caller:
        req = invite(caller, "ring")
        sent = time.monotonic()
        caller.send(req, topo.proxy.address)
        final = caller.recv_until(is_final, TIMER_C + 8, seen)
        if final is not None:
            caller.send(build_ack_for(req, final.msg), topo.proxy.address)
    diag = f"\ncaller saw {statuses(seen)}\n{topo.diag()}"
    assert final is not None, f"no final response within {TIMER_C + 8} s" + diag
    assert final.msg.status == 408, f"expected 408, got {final.msg.start_line}" + diag
    ringing = [r.at for r in seen if r.msg.status == 180]
    assert ringing, "the 180 was not relayed to the caller" + diag
    waited = final.at - ringing[0]
    assert TIMER_C - 0.3 <= waited <= TIMER_C + 3, (
        f"408 came {waited:.2f} s after the 180 ({final.at - sent:.2f} s after the INVITE); "
        f"timer C is {TIMER_C} s" + diag
    )
    invites = topo.ring.messages("INVITE")
    cancels = topo.ring.wait_for("CANCEL", 1, timeout=1.0)
    assert len(invites) == 1, f"callee got {len(invites)} INVITEs" + diag
    assert cancels, "the proxy did not CANCEL the ringing branch (RFC 3261 16.8)" + diag
    assert via_branch(cancels[0].msg.vias[0]) == via_branch(invites[0].msg.vias[0]), (
        f"CANCEL branch differs from the INVITE's:\n{cancels[0].msg}\n{invites[0].msg}" + diag
    )


def test_timer_c_fires_without_provisional(topo: Topology) -> None:
    """Callee never answers at all: the caller gets 100 Trying at once (RFC 3261
    17.2.1) and, when timer C fires (2 s, far shorter than timer B's 32 s), 480:
    the branch failed as if 408 arrived (16.8), and as no binding of the user
    answered anything the default routing says Temporarily Unavailable; no
    CANCEL goes to a branch that never answered (RFC 3261 9.1)."""
    topo.silent.reset(CalleeBehaviour(provisional=(), final=None))
    seen: list[Received] = []
    with UdpEndpoint() as caller:
        req = invite(caller, "silent")
        sent = time.monotonic()
        caller.send(req, topo.proxy.address)
        final = caller.recv_until(is_final, TIMER_C + 8, seen)
        if final is not None:
            caller.send(build_ack_for(req, final.msg), topo.proxy.address)
    diag = f"\ncaller saw {statuses(seen)}\n{topo.diag()}"
    assert final is not None, f"no final response within {TIMER_C + 8} s" + diag
    assert final.msg.status == 480, f"expected 480, got {final.msg.start_line}" + diag
    assert TIMER_C - 0.3 <= final.at - sent <= TIMER_C + 3, f"480 after {final.at - sent:.2f} s" + diag
    trying = [r.at - sent for r in seen if r.msg.status == 100]
    assert trying and trying[0] < 0.5, f"no 100 Trying within 0.5 s: {trying}" + diag
    invites = topo.silent.messages("INVITE")
    assert invites, "the INVITE never reached the callee" + diag
    branches = {via_branch(r.msg.vias[0]) for r in invites}
    assert len(branches) == 1, f"the proxy sent {len(branches)} different INVITEs: {branches}" + diag
    time.sleep(0.5)
    assert not topo.silent.messages("CANCEL"), "CANCEL sent to a branch with no provisional" + diag


# user -> the finals accepted, and why. Each is a binding of a local user that
# answers nothing at all, so the default routing's failure_route turns the
# branch's failure into 480 Temporarily Unavailable (the user is known but not
# reachable now); what the branch itself failed with is in the comments.
UNREACHABLE = {
    # Linux reports no ICMP port-unreachable on an unconnected UDP socket, so the
    # branch stays silent and timer C (2 s) ends it as if 408 came (16.8).
    "closed": (480,),
    # TCP says so at once (connection refused): a transport error -> 503 (18.4).
    "closedtcp": (480,),
    # DNS failure = transport error: the branch behaves as if it got 503 (RFC 3261
    # 16.7/18.4, RFC 3263).
    "nohost": (480,),
}


@pytest.mark.parametrize("user", sorted(UNREACHABLE))
def test_unreachable_next_hop(topo: Topology, user: str) -> None:
    """The binding points at a closed UDP port / an unresolvable name: the caller
    gets a final answer promptly (well before timer B's 32 s); see UNREACHABLE."""
    seen: list[Received] = []
    with UdpEndpoint() as caller:
        req = invite(caller, user)
        sent = time.monotonic()
        caller.send(req, topo.proxy.address)
        final = caller.recv_until(is_final, 8.0, seen)
        if final is not None:
            caller.send(build_ack_for(req, final.msg), topo.proxy.address)
    diag = f"\ncaller saw {statuses(seen)}\n{topo.diag()}"
    assert final is not None, "no final response within 8 s" + diag
    assert final.msg.status in UNREACHABLE[user], (
        f"got {final.msg.start_line}, expected one of {UNREACHABLE[user]}" + diag
    )
    assert final.at - sent <= TIMER_C + 3, f"final response after {final.at - sent:.2f} s" + diag


def test_invite_retransmissions_are_absorbed(topo: Topology) -> None:
    """The caller sends one INVITE three times (UDP retransmissions, 0.25 s apart)
    and once more after the final response: the callee gets exactly ONE INVITE
    (RFC 3261 17.2.1: the server transaction absorbs them), every retransmission
    in Proceeding is answered with the last provisional, the 486 reaches the
    caller, and the proxy ACKs the 486 to the callee itself with the INVITE's
    branch (RFC 3261 17.1.1.3)."""
    topo.busy.reset(CalleeBehaviour(provisional=(180,), final=486, final_delay=1.0))
    seen: list[Received] = []
    with UdpEndpoint() as caller:
        req = invite(caller, "busy")
        for _ in range(3):
            caller.send(req, topo.proxy.address)
            seen += caller.collect(0.25)
        final = next((r for r in seen if is_final(r.msg)), None)
        final = final or caller.recv_until(is_final, 4.0, seen)
        if final is not None:
            caller.send(req, topo.proxy.address)  # a late retransmission
            seen += caller.collect(0.3)
            caller.send(build_ack_for(req, final.msg), topo.proxy.address)
    diag = f"\ncaller saw {statuses(seen)}\n{topo.diag()}"
    assert final is not None and final.msg.status == 486, f"final {final and final.msg.start_line}" + diag
    provisional = [s for s in statuses(seen) if 100 < s < 200]
    assert len(provisional) >= 3, f"expected a 180 for each INVITE copy, got {provisional}" + diag
    acks = topo.busy.wait_for("ACK", 1, timeout=1.0)
    invites = topo.busy.messages("INVITE")
    assert len(invites) == 1, (
        f"callee got {len(invites)} INVITEs (branches "
        f"{Counter(via_branch(r.msg.vias[0]) for r in invites)})" + diag
    )
    assert acks, "the proxy did not ACK the 486 to the callee" + diag
    ack = acks[0].msg
    assert via_branch(ack.vias[0]) == via_branch(invites[0].msg.vias[0]) and ack.cseq[1] == "ACK", (
        f"ACK does not match the INVITE:\n{ack}\n{invites[0].msg}" + diag
    )
    assert all(len(r.msg.vias) == 1 for r in acks), "the caller's own ACK was forwarded" + diag
