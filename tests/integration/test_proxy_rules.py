"""RFC 3261 section 16 rules, one per test, against a real proxy process.

Raw SIP over sockets on loopback (127.0.0.1, 127.0.0.5, ::1), every port chosen
at run time. Four proxies, each started on first use and shared by the module:

    main     udp/tcp 127.0.0.1:P, no trusted network. Static bindings:
               one     -> RawCallee ``one`` (UDP)          most single-callee tests
               fork    -> RawCallees ``fork_a``, ``fork_b`` parallel forking
               dbl     -> RawCallee ``tcp`` (TCP)          double Record-Route
               loop    -> sip:loop@127.0.0.1:P             the proxy itself, same user
               spiral  -> sip:one@127.0.0.1:P              the proxy itself, new user
    ipv6     udp/tcp [::1]:P6 only;  v6 -> RawCallee on [::1] (UDP)
    idle     like main with tcp_idle_timeout = 1.0
    trusted  like main with trusted = ["127.0.0.0/8"]

A callee that is not ours, ``outsider``, listens on 127.0.0.5 (127/8 is all
loopback on Linux; 127.0.0.1 is the proxy's own address, so a Request-URI
naming it would be a local domain).

Every assertion message carries what the caller saw and the proxy's log tail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import procs
import pytest
from procs import (
    LOCALHOST,
    LOCALHOST6,
    CalleeBehaviour,
    ProxyFactory,
    ProxyProcess,
    RawCallee,
    Received,
    SipMessage,
    TcpEndpoint,
    TcpServerEndpoint,
    UdpEndpoint,
    build_ack_for,
    build_ack_for_2xx,
    build_invite,
    build_request,
    is_final,
    statuses,
    via_branch,
    via_sent_by,
    via_transport,
)

DOMAIN = "sipsuite.test"
OUTSIDER_HOST = "127.0.0.5"
FINAL_WAIT = 5.0  # s for a final answer that should come at once (timer C is 2 s)
QUIET = 0.6  # s of silence that counts as "nothing more came"


# --------------------------------------------------------------------------- fixtures


@dataclass
class Net:
    proxy: ProxyProcess
    one: RawCallee
    fork_a: RawCallee
    fork_b: RawCallee
    tcp: RawCallee

    def diag(self) -> str:
        return "\n" + self.proxy.diagnostics()


@pytest.fixture(scope="module")
def net(proxy_factory: ProxyFactory) -> Iterator[Net]:
    one, fork_a, fork_b = RawCallee(), RawCallee(), RawCallee()
    tcp = RawCallee(transport="tcp")
    port = procs.free_port()
    me = procs.hostport(LOCALHOST, port)
    static = {
        "one": [one.uri("one")],
        "fork": [fork_a.uri("fork"), fork_b.uri("fork")],
        "dbl": [tcp.uri("dbl")],
        "loop": [f"sip:loop@{me}"],
        "spiral": [f"sip:one@{me}"],
    }
    try:
        yield Net(proxy_factory("rules", port=port, static=static), one, fork_a, fork_b, tcp)
    finally:
        for callee in (one, fork_a, fork_b, tcp):
            callee.close()


@dataclass
class V6:
    proxy: ProxyProcess
    callee: RawCallee


@pytest.fixture(scope="module")
def v6(proxy_factory: ProxyFactory) -> Iterator[V6]:
    callee = RawCallee(host=LOCALHOST6)
    port = procs.free_port(host=LOCALHOST6)
    try:
        proxy = proxy_factory(
            "ipv6", port=port, listen=procs.default_listen(port, LOCALHOST6),
            static={"v6": [callee.uri("v6")]},
        )
        yield V6(proxy, callee)
    finally:
        callee.close()


@pytest.fixture(scope="module")
def idle_proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    return proxy_factory("idle", extra_proxy={"tcp_idle_timeout": 1.0})


@pytest.fixture(scope="module")
def trusted_proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    return proxy_factory("trusted", trusted=["127.0.0.0/8"])


@pytest.fixture(scope="module")
def outsider() -> Iterator[RawCallee]:
    callee = RawCallee(host=OUTSIDER_HOST)
    yield callee
    callee.close()


# --------------------------------------------------------------------------- helpers


@dataclass
class Exchange:
    """One request sent by a UDP caller and everything that came back."""

    request: bytes
    seen: list[Received]
    final: Received | None

    @property
    def finals(self) -> list[SipMessage]:
        return [r.msg for r in self.seen if is_final(r.msg)]

    def describe(self) -> str:
        return f"\ncaller sent:\n{SipMessage.parse(self.request)}\ncaller saw {statuses(self.seen)}"


def exchange(
    caller: UdpEndpoint, proxy: ProxyProcess, request: bytes, *, wait: float = FINAL_WAIT,
    linger: float = QUIET,
) -> Exchange:
    """Send ``request`` to the proxy, wait for the first final answer, ACK it at
    once when it is a non-2xx to an INVITE (hop-by-hop, 17.1.1.3), then keep
    listening ``linger`` s for anything more (a second final, a retransmission)."""
    seen: list[Received] = []
    caller.send(request, proxy.address)
    final = caller.recv_until(is_final, wait, seen)
    if final is not None and final.msg.cseq[1] == "INVITE" and final.msg.status >= 300:
        caller.send(build_ack_for(request, final.msg), proxy.address)
    seen += caller.collect(linger)
    return Exchange(request, seen, final)


def message(
    caller: UdpEndpoint, ruri: str, *, max_forwards: int | None = 70,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A MESSAGE from ``caller`` (a non-INVITE any RawCallee answers 200)."""
    return build_request("MESSAGE", ruri, sent_by=caller.sent_by, max_forwards=max_forwards, extra=extra)


def nothing_arrives(callee: RawCallee, wait: float = QUIET) -> list[Received]:
    """What the callee got within ``wait`` s (expected: nothing)."""
    time.sleep(wait)
    return callee.messages()


def show(received: list[Received]) -> str:
    return "\n".join(f"--- from {r.addr}:\n{r.msg}" for r in received) or "(nothing)"


# --------------------------------------------------------------------------- 1. IPv6


def test_ipv6_options_answered_over_udp_and_tcp(v6: V6) -> None:
    """OPTIONS sip:[::1]:P to a proxy listening on udp:[::1]:P and tcp:[::1]:P is
    answered 200 over both, with the caller's bracketed Via."""
    proxy = v6.proxy
    resp = procs.options_ping(LOCALHOST6, proxy.port, timeout=2.0)
    assert resp is not None and resp.status == 200, f"UDP OPTIONS got {resp}\n{proxy.diagnostics()}"
    with TcpEndpoint(proxy.address) as conn:
        uri = f"sip:{proxy.hostport}"
        conn.send(build_request("OPTIONS", uri, sent_by=conn.sent_by, transport="TCP", to_uri=uri))
        got = conn.recv_until(is_final, 3.0)
    assert got is not None and got.msg.status == 200, f"TCP OPTIONS got {got and got.msg}\n{proxy.diagnostics()}"
    assert [via_sent_by(v) for v in got.msg.vias] == [conn.sent_by.lower()], (
        f"TCP answer Via {got.msg.vias}, expected only the caller's {conn.sent_by}"
    )


def test_ipv6_invite_reaches_ipv6_callee(v6: V6) -> None:
    """An INVITE from an IPv6 UDP caller for a user bound to sip:v6@[::1]:Q reaches
    that callee with the proxy's Via and Record-Route written [::1]:P, and the
    callee's 200 reaches the caller with only the caller's Via."""
    proxy, callee = v6.proxy, v6.callee
    callee.reset(CalleeBehaviour(provisional=(180,), final=200, dialog=True))
    with UdpEndpoint(LOCALHOST6) as caller:
        ex = exchange(caller, proxy, build_invite(f"sip:v6@{DOMAIN}", sent_by=caller.sent_by))
        if ex.final is not None and ex.final.msg.status == 200:
            caller.send(build_ack_for_2xx(ex.request, ex.final.msg, sent_by=caller.sent_by), proxy.address)
    diag = ex.describe() + "\n" + proxy.diagnostics()
    assert ex.final is not None and ex.final.msg.status == 200, "caller got no 200" + diag
    assert [via_sent_by(v) for v in ex.final.msg.vias] == [caller.sent_by.lower()], (
        f"200 Via {ex.final.msg.vias}" + diag
    )
    invites = callee.messages("INVITE")
    assert len(invites) == 1, f"callee got {len(invites)} INVITEs" + diag
    inv = invites[0].msg
    assert inv.request_uri == callee.uri("v6"), f"R-URI {inv.request_uri}" + diag
    top = inv.vias[0]
    assert via_sent_by(top) == proxy.hostport and via_transport(top) == "UDP", (
        f"proxy Via {top!r}, expected SIP/2.0/UDP {proxy.hostport}" + diag
    )
    rr = inv.header_values("record-route")
    assert rr == [f"<sip:{proxy.hostport};lr>"], f"Record-Route {rr}" + diag
    acks = callee.wait_for("ACK", 1, timeout=2.0)
    assert acks and not acks[0].msg.header_values("route"), (
        f"the ACK for the 200 did not reach the callee along the Record-Route:\n{show(acks)}" + diag
    )


# --------------------------------------------------------------------------- 2. TCP


def test_tcp_idle_connection_is_closed(idle_proxy: ProxyProcess) -> None:
    """tcp_idle_timeout = 1.0: a connection that carried one OPTIONS (answered
    200) and then nothing is closed by the proxy about 1 s later (< 3 s)."""
    with TcpEndpoint(idle_proxy.address) as conn:
        uri = f"sip:{idle_proxy.hostport}"
        conn.send(build_request("OPTIONS", uri, sent_by=conn.sent_by, transport="TCP", to_uri=uri))
        got = conn.recv_until(is_final, 3.0)
        assert got is not None and got.msg.status == 200, (
            f"TCP OPTIONS got {got and got.msg}\n{idle_proxy.diagnostics()}"
        )
        closed = conn.wait_closed(4.0)
    assert closed is not None, "the proxy kept the idle connection open > 4 s\n" + idle_proxy.diagnostics()
    idle = closed - got.at
    assert 0.5 <= idle <= 3.0, f"closed {idle:.2f} s after the last message (timeout 1.0 s)"
    assert not conn.late, f"unexpected messages before the close:\n{show(conn.late)}"


def test_tcp_responses_reuse_the_connection(net: Net) -> None:
    """An INVITE received over TCP gets every response (100, 180, 486) on the
    connection it came in on (RFC 3261 18.2.2), none on a new connection to its
    Via sent-by; the ACK sent on that connection is absorbed."""
    net.one.reset(CalleeBehaviour(provisional=(180,), final=486, final_delay=0.3))
    with TcpServerEndpoint() as trap, TcpEndpoint(net.proxy.address) as conn:
        # sent-by names the trap: answers must not go there but on ``conn``
        req = build_invite(f"sip:one@{DOMAIN}", sent_by=trap.sent_by, transport="TCP")
        conn.send(req)
        seen: list[Received] = []
        final = conn.recv_until(is_final, FINAL_WAIT, seen)
        if final is not None:
            conn.send(build_ack_for(req, final.msg))
        seen += conn.collect(QUIET)
        trap.recv(0.1)  # accept whatever connected meanwhile
        open_after = conn.closed_at is None
    diag = f"\ncaller saw {statuses(seen)}" + net.diag()
    assert final is not None and final.msg.status == 486, "no 486 on the caller's connection" + diag
    got = statuses(seen)
    assert got[:1] == [100] and 180 in got, f"expected 100, 180, 486 on the connection, got {got}" + diag
    assert got.count(486) == 1, f"the 486 came {got.count(486)} times (TCP: no retransmission)" + diag
    assert not trap.accepted, f"the proxy opened connections to the Via sent-by: {trap.accepted}" + diag
    assert open_after, "the proxy closed the caller's connection" + diag
    acks = net.one.wait_for("ACK", 1, timeout=1.0)
    assert len(acks) == 1 and len(acks[0].msg.vias) == 1, (
        f"callee should get only the proxy's own ACK for the 486:\n{show(acks)}" + diag
    )


# --------------------------------------------------------------------------- 3. double Record-Route


def test_double_record_route_udp_to_tcp(net: Net) -> None:
    """UDP in, TCP out (binding ;transport=tcp): the callee's INVITE carries two
    Record-Route values of the proxy, the top one (the TCP side) with
    transport=tcp, the other for the UDP side; the 200 (which copies them)
    reaches the caller with both, and the caller's ACK routed over both reaches
    the callee over TCP with no Route left (16.4 removes both)."""
    net.tcp.reset(CalleeBehaviour(provisional=(180,), final=200, dialog=True))
    me = net.proxy.hostport
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, build_invite(f"sip:dbl@{DOMAIN}", sent_by=caller.sent_by))
        if ex.final is not None and ex.final.msg.status == 200:
            caller.send(build_ack_for_2xx(ex.request, ex.final.msg, sent_by=caller.sent_by),
                        net.proxy.address)
    diag = ex.describe() + net.diag()
    invites = net.tcp.messages("INVITE")
    assert len(invites) == 1, f"TCP callee got {len(invites)} INVITEs" + diag
    inv = invites[0].msg
    assert via_transport(inv.vias[0]) == "TCP", f"proxy Via {inv.vias[0]!r} is not TCP" + diag
    rr = inv.header_values("record-route")
    assert len(rr) >= 2, f"callee saw Record-Route {rr}, expected two of the proxy's" + diag
    top, second = procs.uri_of(rr[0]), procs.uri_of(rr[1])
    assert top.startswith(f"sip:{me};") and "transport=tcp" in top and ";lr" in top, (
        f"top Record-Route {rr[0]!r}: expected sip:{me};transport=tcp;lr" + diag
    )
    assert second.startswith(f"sip:{me}") and "transport=tcp" not in second and ";lr" in second, (
        f"second Record-Route {rr[1]!r}: expected sip:{me};lr (UDP side)" + diag
    )
    assert len(rr) == 2, f"callee saw Record-Route {rr}: more than the proxy's two" + diag
    assert ex.final is not None and ex.final.msg.status == 200, "caller got no 200" + diag
    assert ex.final.msg.header_values("record-route") == rr, (
        f"caller's 200 Record-Route {ex.final.msg.header_values('record-route')} != callee's {rr}" + diag
    )
    acks = net.tcp.wait_for("ACK", 1, timeout=2.0)
    assert len(acks) == 1, f"TCP callee got {len(acks)} ACKs for the 200:\n{show(acks)}" + diag
    ack = acks[0].msg
    assert not ack.header_values("route"), f"Route left in the ACK:\n{ack}" + diag
    assert ack.request_uri == net.tcp.uri("callee"), f"ACK R-URI {ack.request_uri}" + diag


# --------------------------------------------------------------------------- 4. loops and spirals


def test_loop_is_answered_482(net: Net) -> None:
    """sip:loop@sipsuite.test is bound to sip:loop@127.0.0.1:P, the proxy itself:
    the first return is a spiral (new Request-URI), the next arrives with the
    same Request-URI and everything else the branch hash covers, so the proxy
    finds its own Via with that hash and answers 482 (16.3 step 4), which
    comes back to the caller as the one final answer, long before Max-Forwards
    (70) runs out (483)."""
    with UdpEndpoint() as caller:
        req = build_invite(f"sip:loop@{DOMAIN}", sent_by=caller.sent_by)
        start = time.monotonic()
        ex = exchange(caller, net.proxy, req)
    diag = ex.describe() + net.diag()
    assert ex.final is not None, "no final answer" + diag
    assert ex.final.msg.status == 482, f"expected 482 Loop Detected, got {ex.final.msg.start_line}" + diag
    assert ex.final.at - start < 2.0, f"482 after {ex.final.at - start:.2f} s" + diag
    assert len(ex.finals) == 1, f"caller got {len(ex.finals)} finals (ACK not absorbed?)" + diag


def test_spiral_is_not_a_loop(net: Net) -> None:
    """sip:spiral@sipsuite.test is bound to sip:one@127.0.0.1:P: the request comes
    back to the proxy with another Request-URI (a spiral, 16.3 step 4) and is
    routed on to one's callee, passing the proxy twice (two Vias of it)."""
    net.one.reset(CalleeBehaviour(provisional=(180,), final=200, dialog=True))
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, build_invite(f"sip:spiral@{DOMAIN}", sent_by=caller.sent_by))
        if ex.final is not None and ex.final.msg.status == 200:
            caller.send(build_ack_for_2xx(ex.request, ex.final.msg, sent_by=caller.sent_by),
                        net.proxy.address)
    diag = ex.describe() + net.diag()
    assert ex.final is not None and ex.final.msg.status == 200, "spiral did not reach the callee" + diag
    invites = net.one.messages("INVITE")
    assert len(invites) == 1, f"callee got {len(invites)} INVITEs" + diag
    vias = invites[0].msg.vias
    mine = [v for v in vias if via_sent_by(v) == net.proxy.hostport]
    assert len(vias) == 3 and len(mine) == 2, f"expected 2 proxy Vias + the caller's: {vias}" + diag
    assert via_branch(mine[0]) != via_branch(mine[1]), f"same branch twice: {mine}" + diag
    assert invites[0].msg.request_uri == net.one.uri("one"), f"R-URI {invites[0].msg.request_uri}" + diag


# --------------------------------------------------------------------------- 5. Max-Forwards


@pytest.mark.parametrize(("sent", "expected"), [(None, 70), (10, 9)], ids=["absent", "10"])
def test_max_forwards_forwarded(net: Net, sent: int | None, expected: int) -> None:
    """16.6 step 3: absent -> the forwarded request carries 70; present -> one less."""
    net.one.reset()
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, message(caller, f"sip:one@{DOMAIN}", max_forwards=sent))
    diag = ex.describe() + net.diag()
    got = net.one.messages("MESSAGE")
    assert len(got) == 1, f"callee got {len(got)} MESSAGEs" + diag
    mf = got[0].msg.header_lines("max-forwards")
    assert mf == [str(expected)], f"forwarded Max-Forwards {mf}, expected [{expected!r}]" + diag
    assert ex.final is not None and ex.final.msg.status == 200, "callee's 200 did not come back" + diag


def test_max_forwards_zero_is_483(net: Net) -> None:
    """16.3 step 3: Max-Forwards 0 on a request that is not OPTIONS -> 483, and
    nothing is forwarded."""
    net.one.reset()
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, message(caller, f"sip:one@{DOMAIN}", max_forwards=0))
    diag = ex.describe() + net.diag()
    assert ex.final is not None and ex.final.msg.status == 483, (
        f"expected 483, got {ex.final and ex.final.msg.start_line}" + diag
    )
    got = nothing_arrives(net.one)
    assert not got, f"forwarded anyway:\n{show(got)}" + diag


# --------------------------------------------------------------------------- 6. forking


def test_fork_best_of_two_failures(net: Net) -> None:
    """Two branches answer 486 and 404: the caller gets exactly one final, a 4xx
    from one of them (16.7 step 6: the lowest class; within it either), only
    after both answered; the caller's ACK is absorbed by the proxy, each callee
    gets only the proxy's own ACK (17.1.1.3) for its answer."""
    net.fork_a.reset(CalleeBehaviour(provisional=(180,), final=486, final_delay=0.1))
    net.fork_b.reset(CalleeBehaviour(provisional=(180,), final=404, final_delay=0.4))
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, build_invite(f"sip:fork@{DOMAIN}", sent_by=caller.sent_by),
                      linger=1.2)
    diag = ex.describe() + net.diag()
    assert ex.final is not None, "no final answer" + diag
    assert ex.final.msg.status in (486, 404), f"got {ex.final.msg.start_line}" + diag
    assert len(ex.finals) == 1, (
        f"caller got {len(ex.finals)} finals {[m.status for m in ex.finals]} (a second answer, or "
        "retransmissions of one: its ACK was not absorbed)" + diag
    )
    for name, callee in (("fork_a", net.fork_a), ("fork_b", net.fork_b)):
        invites = callee.messages("INVITE")
        acks = callee.messages("ACK")
        assert len(invites) == 1, f"{name} got {len(invites)} INVITEs" + diag
        assert len(acks) == 1, f"{name} got {len(acks)} ACKs:\n{show(acks)}" + diag
        ack = acks[0].msg
        assert len(ack.vias) == 1 and via_branch(ack.vias[0]) == via_branch(invites[0].msg.vias[0]), (
            f"{name}: not the proxy's hop-by-hop ACK of its INVITE:\n{ack}" + diag
        )


def test_fork_200_cancels_the_ringing_branch(net: Net) -> None:
    """One branch rings, the other answers 200: the caller gets the 200 (and only
    it as a final) and the ringing branch gets a CANCEL for its INVITE (16.7
    step 10)."""
    net.fork_a.reset(CalleeBehaviour(provisional=(180,), final=None, answer_cancel=True))
    net.fork_b.reset(CalleeBehaviour(provisional=(180,), final=200, final_delay=0.3, dialog=True))
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, build_invite(f"sip:fork@{DOMAIN}", sent_by=caller.sent_by))
        if ex.final is not None and ex.final.msg.status == 200:
            caller.send(build_ack_for_2xx(ex.request, ex.final.msg, sent_by=caller.sent_by),
                        net.proxy.address)
    diag = ex.describe() + net.diag()
    assert ex.final is not None and ex.final.msg.status == 200, "caller got no 200" + diag
    assert [m.status for m in ex.finals] == [200], f"finals {[m.status for m in ex.finals]}" + diag
    cancels = net.fork_a.wait_for("CANCEL", 1, timeout=2.0)
    invites = net.fork_a.messages("INVITE")
    assert cancels, "the ringing branch got no CANCEL" + diag
    assert via_branch(cancels[0].msg.vias[0]) == via_branch(invites[0].msg.vias[0]), (
        f"CANCEL does not match the INVITE:\n{cancels[0].msg}" + diag
    )
    assert not net.fork_b.messages("CANCEL"), "the answering branch got a CANCEL" + diag


def test_fork_603_cancels_the_ringing_branch(net: Net) -> None:
    """One branch rings, the other declines with 603: the ringing branch is
    CANCELed (16.7 step 5) and the caller gets the 603 promptly (not 487, not
    timer C's 408), as its only final."""
    net.fork_a.reset(CalleeBehaviour(provisional=(180,), final=None, answer_cancel=True))
    net.fork_b.reset(CalleeBehaviour(provisional=(180,), final=603, final_delay=0.3))
    with UdpEndpoint() as caller:
        start = time.monotonic()
        ex = exchange(caller, net.proxy, build_invite(f"sip:fork@{DOMAIN}", sent_by=caller.sent_by))
    diag = ex.describe() + net.diag()
    assert ex.final is not None and ex.final.msg.status == 603, (
        f"expected 603, got {ex.final and ex.final.msg.start_line}" + diag
    )
    assert ex.final.at - start < 1.5, f"603 after {ex.final.at - start:.2f} s" + diag
    assert len(ex.finals) == 1, f"finals {[m.status for m in ex.finals]}" + diag
    cancels = net.fork_a.wait_for("CANCEL", 1, timeout=2.0)
    assert cancels, "the ringing branch got no CANCEL" + diag


def test_fork_every_2xx_is_forwarded(net: Net) -> None:
    """Both branches answer 200 (two dialogs): the caller gets both 200s, the
    second after the first, not swallowed (16.7 step 5: every 2xx goes up;
    the caller ACKs and BYEs the one it does not want)."""
    net.fork_a.reset(CalleeBehaviour(provisional=(180,), final=200, final_delay=0.1, dialog=True))
    net.fork_b.reset(CalleeBehaviour(provisional=(180,), final=200, final_delay=0.1, dialog=True))
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, build_invite(f"sip:fork@{DOMAIN}", sent_by=caller.sent_by),
                      linger=1.0)
    diag = ex.describe() + net.diag()
    oks = [m for m in ex.finals if m.status == 200]
    tags = {m.header("To") for m in oks}
    assert len(tags) == 2, f"caller got 200s from {len(tags)} dialog(s): {tags}" + diag


# --------------------------------------------------------------------------- 7. strict routing


@pytest.mark.parametrize("lr", [";lr", ""])
def test_strict_router_upstream(net: Net, lr: str) -> None:
    """16.4: a strict router upstream put the proxy's Record-Route URI in the
    Request-URI (sip:127.0.0.1:P;lr, or without lr as an RFC 3261 UA does when
    it strict-routes) and the remote target last in Route; the proxy restores
    it: the callee gets the request with Request-URI sip:callee@127.0.0.1:Q
    and without that Route value."""
    net.one.reset()
    target = f"sip:callee@{net.one.sent_by}"
    with UdpEndpoint() as caller:
        req = build_request(
            "BYE", f"sip:{net.proxy.hostport}{lr}", sent_by=caller.sent_by,
            to_uri=f"sip:one@{DOMAIN}", to_tag=procs.new_tag(), cseq=2,
            extra=[("Route", f"<{target}>")],
        )
        ex = exchange(caller, net.proxy, req)
    diag = ex.describe() + net.diag()
    got = net.one.messages("BYE")
    assert len(got) == 1, (
        f"callee got {len(got)} BYEs; caller got {ex.final and ex.final.msg.start_line}" + diag
    )
    bye = got[0].msg
    assert bye.request_uri == target, f"R-URI {bye.request_uri}, expected {target}" + diag
    assert not bye.header_values("route"), f"Route left: {bye.header_values('route')}" + diag
    assert ex.final is not None and ex.final.msg.status == 200, "callee's 200 did not come back" + diag


# --------------------------------------------------------------------------- 8. Proxy-Require / Require


def test_unknown_proxy_require_is_420(net: Net) -> None:
    """16.3 step 5: Proxy-Require with extensions the proxy does not know -> 420
    with Unsupported listing every one of them; nothing is forwarded."""
    net.one.reset()
    with UdpEndpoint() as caller:
        req = message(caller, f"sip:one@{DOMAIN}",
                      extra=[("Proxy-Require", "foo"), ("Proxy-Require", "bar, baz")])
        ex = exchange(caller, net.proxy, req)
    diag = ex.describe() + net.diag()
    assert ex.final is not None and ex.final.msg.status == 420, (
        f"expected 420, got {ex.final and ex.final.msg.start_line}" + diag
    )
    unsupported = sorted(v.lower() for v in ex.final.msg.header_values("unsupported"))
    assert unsupported == ["bar", "baz", "foo"], f"Unsupported {unsupported}" + diag
    got = nothing_arrives(net.one)
    assert not got, f"forwarded anyway:\n{show(got)}" + diag


def test_require_alone_is_forwarded(net: Net) -> None:
    """Require is for the UAS, not the proxy (16.3 step 5 checks Proxy-Require
    only): the request is forwarded with Require unchanged."""
    net.one.reset()
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, message(caller, f"sip:one@{DOMAIN}", extra=[("Require", "foo")]))
    diag = ex.describe() + net.diag()
    got = net.one.messages("MESSAGE")
    assert len(got) == 1, f"callee got {len(got)} MESSAGEs" + diag
    assert got[0].msg.header_values("require") == ["foo"], f"Require {got[0].msg.header_lines('require')}" + diag
    assert ex.final is not None and ex.final.msg.status == 200, "callee's 200 did not come back" + diag


# --------------------------------------------------------------------------- 9. relaying


def test_untrusted_relay_is_403(net: Net, outsider: RawCallee) -> None:
    """A request for a domain that is not ours (sip:x@127.0.0.5:Q) from a source
    outside the trusted networks (none configured) -> 403 Not relaying."""
    outsider.reset()
    with UdpEndpoint() as caller:
        ex = exchange(caller, net.proxy, message(caller, f"sip:x@{outsider.sent_by}"))
    diag = ex.describe() + net.diag()
    assert ex.final is not None and ex.final.msg.status == 403, (
        f"expected 403, got {ex.final and ex.final.msg.start_line}" + diag
    )
    assert ex.final.msg.reason == "Not relaying", f"reason {ex.final.msg.reason!r}" + diag
    got = nothing_arrives(outsider)
    assert not got, f"relayed anyway:\n{show(got)}" + diag


def test_preloaded_route_is_not_followed(net: Net, outsider: RawCallee) -> None:
    """An initial request for a local user with a pre-loaded Route to some
    other host goes to the user's binding, not to that host: the default
    routing drops pre-loaded Routes like kamailio.cfg's remove_hf("Route"),
    else anyone could relay through the proxy by naming a local user."""
    outsider.reset()
    net.one.reset()
    with UdpEndpoint() as caller:
        req = message(caller, f"sip:one@{DOMAIN}", extra=[("Route", f"<sip:{outsider.sent_by};lr>")])
        ex = exchange(caller, net.proxy, req)
    diag = ex.describe() + net.diag()
    assert net.one.wait_for("MESSAGE", 1, timeout=2.0), "the local user got nothing" + diag
    got = nothing_arrives(outsider)
    assert not got, f"followed the pre-loaded Route:\n{show(got)}" + diag


def test_trusted_relay_is_forwarded(trusted_proxy: ProxyProcess, outsider: RawCallee) -> None:
    """The same request from a trusted network (trusted = ["127.0.0.0/8"]) is
    forwarded to the Request-URI's host and port; the callee's 200 comes back."""
    outsider.reset()
    target = f"sip:x@{outsider.sent_by}"
    with UdpEndpoint() as caller:
        ex = exchange(caller, trusted_proxy, message(caller, target))
    diag = ex.describe() + "\n" + trusted_proxy.diagnostics()
    got = outsider.messages("MESSAGE")
    assert len(got) == 1, f"callee got {len(got)} MESSAGEs" + diag
    assert got[0].msg.request_uri == target, f"R-URI {got[0].msg.request_uri}" + diag
    assert ex.final is not None and ex.final.msg.status == 200, (
        f"expected the callee's 200, got {ex.final and ex.final.msg.start_line}" + diag
    )
