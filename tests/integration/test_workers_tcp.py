"""Worker processes and TCP/TLS phones ([proxy] workers = 2, issue 15): a
phone registered over TCP or TLS keeps its one connection, held by the
worker that accepted it; calls landing on either worker reach the phone
over that connection (net/siblings.py), its 180 and 200 reach the caller,
the caller's ACK reaches it, and its BYE over the connection works.

The phone is a plain TCP client whose Contact names a port nobody listens
on: a worker that tried to open a connection of its own to the phone (to
its Contact or to its source port) would fail the call.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
import tlscerts
from procs import (
    LOCALHOST,
    ProxyFactory,
    SipMessage,
    TcpEndpoint,
    UdpEndpoint,
    build_invite,
    build_request,
    build_response,
    is_final,
    run_sipp,
    sipp_dir,
    statuses,
    via_sent_by,
)
from sipmsg import build_ack_for_2xx, new_tag
from test_workers import worker_pids
from tlsendpoints import TlsClient, client_context

DOMAIN = "sipsuite.test"
#: Calls at most, and at least, before the test looks at which worker took them.
MAX_CALLS = 24
MIN_CALLS = 6


@dataclass
class Setup:
    proxy: procs.ProxyProcess
    tls_port: int
    pki: tlscerts.TestPKI

    def diag(self) -> str:
        return self.proxy.diagnostics(150)


def wait_log(proxy: procs.ProxyProcess, pattern: str, count: int = 1, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, proxy.log_text())) >= count:
            return True
        time.sleep(0.1)
    return False


def per_worker(proxy: procs.ProxyProcess, method: str) -> dict[str, int]:
    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return {n: w["requests_by_method"].get(method, 0)
            for n, w in json.loads(res.stdout)["workers"].items()}


def channel_figures(proxy: procs.ProxyProcess) -> dict[str, dict[str, int]]:
    """Each worker's channel counters (handed_over, passed_back)."""
    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return {n: w["channel"] for n, w in json.loads(res.stdout)["workers"].items()}


def channel_drops(proxy: procs.ProxyProcess) -> dict[str, int]:
    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return {k: v for k, v in json.loads(res.stdout)["drops"].items() if "channel" in k}


@pytest.fixture(scope="module")
def setup(proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    import redisproc

    pki = tlscerts.TestPKI(tmp_path_factory.mktemp("pki") / "ca")
    cert = pki.issue("proxy", dns=["localhost"], ips=[LOCALHOST])
    port, tls_port = procs.free_port(), procs.free_port("tcp")
    redis = redisproc.RedisServer()
    redis.start()
    try:
        proxy = proxy_factory(
            "workers-tcp", plugin="sip-proxy", port=port,
            listen=[*procs.default_listen(port), f"tls:{LOCALHOST}:{tls_port}"],
            extra_proxy={"workers": 2},
            tables={"redis": {"url": redis.url(7)},
                    "tls": {"certificate": str(cert.cert), "private_key": str(cert.key),
                            "ca_list": str(pki.ca_file)}})
        ready = wait_log(proxy, r"worker [01]: sip proxy ready", 2)
        assert ready, "both workers did not come up\n" + proxy.diagnostics(120)
        yield Setup(proxy, tls_port, pki)
    finally:
        redis.close()


class StreamPhone:
    """A phone on one TCP or TLS connection to the proxy, registered as ``user``."""

    def __init__(self, setup: Setup, user: str, transport: str) -> None:
        self.proxy = setup.proxy
        self.user = user
        self.transport = transport
        self.conn: TcpEndpoint | TlsClient
        if transport == "tls":
            self.conn = TlsClient((LOCALHOST, setup.tls_port), client_context(setup.pki.ca_file))
            local = self.conn.local
        else:
            self.conn = TcpEndpoint(setup.proxy.address)
            local = self.conn.address
        # Where nobody listens: the proxy must use the connection.
        self.contact = f"sip:{user}@{LOCALHOST}:{procs.free_port('tcp')};transport={transport}"
        self.via = f"{LOCALHOST}:{local[1]}"

    def send(self, data: bytes) -> None:
        self.conn.send(data)

    def next(self, pred: Callable[[SipMessage], bool], timeout: float = 5.0) -> SipMessage | None:
        got = self.conn.recv_until(pred, timeout)
        return got.msg if isinstance(got, procs.Received) else got

    def register(self) -> SipMessage:
        req = build_request("REGISTER", f"sip:{DOMAIN}", sent_by=self.via,
                            transport=self.transport.upper(), from_uri=f"sip:{self.user}@{DOMAIN}",
                            to_uri=f"sip:{self.user}@{DOMAIN}", contact=self.contact,
                            extra=[("Expires", "300")])
        self.send(req)
        got = self.next(is_final)
        assert got is not None, "no answer to REGISTER\n" + self.proxy.diagnostics()
        return got

    def recv(self, method: str, timeout: float = 5.0) -> SipMessage | None:
        return self.next(lambda m: not m.is_response and m.method == method, timeout)

    @property
    def open(self) -> bool:
        conn = self.conn
        return (conn.closed_at is None) if isinstance(conn, TcpEndpoint) else not conn.closed


def one_call(setup: Setup, phone: StreamPhone, n: int) -> None:
    """A call from a fresh UDP socket (the kernel picks the worker by its
    port) to the phone: ringing, answer, ACK, and the phone's BYE."""
    diag = setup.diag
    with UdpEndpoint() as caller:
        invite = build_invite(f"sip:{phone.user}@{DOMAIN}", sent_by=caller.sent_by)
        caller.send(invite, setup.proxy.address)
        got = phone.recv("INVITE")
        assert got is not None, f"call {n}: the phone got no INVITE on its connection\n{diag()}"
        tag = new_tag()
        routes = got.header_values("record-route")
        phone.send(build_response(got, 180, "Ringing", to_tag=tag))
        # RFC 3261 12.1.1: the 2xx copies the Record-Route, so the ACK and BYE come our way.
        phone.send(build_response(
            got, 200, "OK", to_tag=tag,
            extra=[("Contact", f"<{phone.contact}>"), *(("Record-Route", r) for r in routes)]))
        seen: list[procs.Received] = []
        final = caller.recv_until(is_final, 5.0, seen)
        codes = statuses(seen)
        assert final is not None and final.msg.status == 200, f"call {n}: caller saw {codes}\n{diag()}"
        assert 180 in codes, f"call {n}: no 180 reached the caller: {codes}\n{diag()}"
        caller.send(build_ack_for_2xx(invite, final.msg, sent_by=caller.sent_by),
                    setup.proxy.address)
        assert phone.recv("ACK") is not None, f"call {n}: the ACK did not reach the phone\n{diag()}"
        # The phone hangs up over its connection, on the route set of the INVITE.
        bye = build_request(
            "BYE", f"sip:alice@{caller.sent_by}", sent_by=phone.via, transport=phone.transport.upper(),
            call_id=(got.call_id or "").removesuffix("@sipsuite.test"),
            from_uri=f"sip:{phone.user}@{DOMAIN}", from_tag=tag,
            to_uri="sip:alice@sipsuite.test",
            to_tag=re.search(r";tag=([^;>\s]+)", got.header("from") or "").group(1),  # type: ignore[union-attr]
            cseq=1, extra=[("Route", r) for r in routes])
        # build_request adds "@sipsuite.test" to the Call-ID: the INVITE's has it already.
        phone.send(bye)
        got_bye = caller.recv_until(lambda m: not m.is_response and m.method == "BYE", 5.0)
        assert got_bye is not None, f"call {n}: the phone's BYE did not reach the caller\n{diag()}"
        host, _, port = via_sent_by(got_bye.msg.vias[0]).rpartition(":")
        caller.send(build_response(got_bye.msg, 200, "OK"), (host, int(port)))
        ok = phone.next(lambda m: m.is_response and m.cseq[1] == "BYE")
        assert ok is not None and ok.status == 200, f"call {n}: no 200 for the BYE\n{diag()}"


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_calls_on_either_worker_reach_a_phone_over_its_connection(setup: Setup,
                                                                   transport: str) -> None:
    proxy = setup.proxy
    registers = per_worker(proxy, "REGISTER")
    phone = StreamPhone(setup, f"dave-{transport}", transport)
    try:
        reg = phone.register()
        assert reg.status == 200, f"REGISTER: {reg.start_line}\n{setup.diag()}"
        now = per_worker(proxy, "REGISTER")
        # The worker that took the REGISTER holds the phone's connection.
        holder = next(k for k in now if now[k] > registers.get(k, 0))
        before = per_worker(proxy, "INVITE")
        channel_before = channel_figures(proxy)
        calls = 0
        taken: dict[str, int] = {}
        while calls < MAX_CALLS:
            one_call(setup, phone, calls)
            calls += 1
            now = per_worker(proxy, "INVITE")
            taken = {k: now[k] - before.get(k, 0) for k in now}
            if calls >= MIN_CALLS and all(v >= 2 for v in taken.values()):
                break
        assert sum(taken.values()) == calls, taken
        other = next(k for k in taken if k != holder)
        assert taken[other] >= 1, (f"no call landed on worker {other}, the one without the"
                                   f" phone's connection: {taken}")
        assert taken[holder] >= 1, f"no call landed on worker {holder}: {taken}"
        # The other worker handed its INVITEs and the callers' ACKs to the
        # holder, which passed the phone's 180s and 200s back.
        channel = channel_figures(proxy)
        handed = channel[other]["handed_over"] - channel_before[other]["handed_over"]
        passed = channel[holder]["passed_back"] - channel_before[holder]["passed_back"]
        assert handed >= 2 * taken[other] and passed >= 2 * taken[other], (channel, taken)
        assert channel[holder]["handed_over"] == channel_before[holder]["handed_over"], channel
        # Nothing was refused or garbled on the channel.
        assert not channel_drops(proxy), channel_drops(proxy)
        # The phone's one connection is still up (the proxy used no other: its
        # Contact's port has no listener, and nothing can connect to the phone).
        assert phone.open
    finally:
        phone.conn.close()


def test_a_restarted_worker_learns_the_connections_its_sibling_holds(setup: Setup) -> None:
    """SIGKILL the worker that does not hold the phone's connection: once
    restarted, it asks its sibling for its connections (HELLO), and calls
    landing on it reach the phone over the sibling's connection again."""
    proxy = setup.proxy
    assert proxy.proc is not None
    before = per_worker(proxy, "REGISTER")
    phone = StreamPhone(setup, "erin", "tcp")
    try:
        reg = phone.register()
        assert reg.status == 200, f"REGISTER: {reg.start_line}\n{setup.diag()}"
        after = per_worker(proxy, "REGISTER")
        holder = next(k for k in after if after[k] > before.get(k, 0))
        other = next(k for k in after if k != holder)
        ready = len(re.findall(rf"worker {other}: sip proxy ready", proxy.log_text()))
        os.kill(worker_pids(proxy.proc.pid)[int(other)], signal.SIGKILL)
        assert wait_log(proxy, rf"worker {other}: sip proxy ready", ready + 1), setup.diag()
        calls = 0
        while calls < MAX_CALLS and per_worker(proxy, "INVITE").get(other, 0) < 2:
            one_call(setup, phone, calls)
            calls += 1
        taken = per_worker(proxy, "INVITE").get(other, 0)
        assert taken >= 2, f"{calls} calls, none on the restarted worker {other}"
        assert not channel_drops(proxy), channel_drops(proxy)
        assert phone.open
    finally:
        phone.conn.close()


class AutoAnswer(threading.Thread):
    """The phone, answering by itself on its connection: 180 and 200 to
    each INVITE, 200 to each BYE; counts what it got."""

    def __init__(self, phone: StreamPhone) -> None:
        super().__init__(daemon=True)
        self.phone = phone
        self.got: dict[str, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            msg = self.phone.next(lambda m: not m.is_response, 0.2)
            if msg is None:
                continue
            self.got[msg.method] = self.got.get(msg.method, 0) + 1
            if msg.method == "INVITE":
                tag = new_tag()
                routes = [("Record-Route", r) for r in msg.header_values("record-route")]
                self.phone.send(build_response(msg, 180, "Ringing", to_tag=tag))
                self.phone.send(build_response(msg, 200, "OK", to_tag=tag, extra=[
                    ("Contact", f"<{self.phone.contact}>"), *routes]))
            elif msg.method == "BYE":
                self.phone.send(build_response(msg, 200, "OK"))


def test_sipp_calls_from_many_sources_reach_the_tcp_phone(sipp_bin: str, setup: Setup,
                                                         tmp_path: Path) -> None:
    """sipp 200 calls over UDP, a socket per call so the kernel spreads them
    over both workers, to a phone on one TCP connection: 0 failed, every
    INVITE, ACK and BYE on the phone's connection."""
    calls = 200
    proxy = setup.proxy
    phone = StreamPhone(setup, "frank", "tcp")
    answer = AutoAnswer(phone)
    try:
        assert phone.register().status == 200, setup.diag()
        before = per_worker(proxy, "INVITE")
        answer.start()
        uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path,
                       remote=proxy.address, local_port=procs.free_port(), calls=calls,
                       rate=40, duration_ms=100, timeout_s=40, service="frank",
                       extra=("-t", "un", "-max_socket", "1000"))
        diag = f"\n{uac.summary()}\nphone got {answer.got}\n{setup.diag()}"
        assert (uac.rc, uac.successful, uac.failed) == (0, calls, 0), "caller side failed" + diag
        deadline = time.monotonic() + 5
        while answer.got.get("BYE", 0) < calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answer.got == {"INVITE": calls, "ACK": calls, "BYE": calls}, diag
        now = per_worker(proxy, "INVITE")
        taken = {k: now[k] - before.get(k, 0) for k in now}
        assert all(n > 0 for n in taken.values()), f"INVITEs per worker: {taken}"
        assert phone.open and not channel_drops(proxy), channel_drops(proxy)
    finally:
        answer.halt.set()
        answer.join(5)
        phone.conn.close()
