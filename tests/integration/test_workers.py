"""Worker processes ([proxy] workers = 2, issue 15) as an operator runs them:
``twistd sip-proxy`` with a test redis-server, sipp callers and callees and
raw UDP peers on loopback ports chosen at run time.

- sipp 200 calls over UDP through the two workers, 0 failed; both workers
  forward (the callee sees both private Via ports), Record-Route names the
  shared port; the requests leave from the shared port and the callee's
  answers to it reach the worker holding the call;
- 50 calls from a TCP caller;
- the supervisor's ``stats`` adds the workers' counters up and shows each
  worker's (both carry load); ``routing reload`` and ``debug`` reach both;
- a retransmitted INVITE is absorbed (one INVITE downstream);
- CANCEL: every caller gets 200 for it and 487 for its INVITE;
- SIGKILL one worker: the other keeps answering, the supervisor logs why
  the worker died and starts it again;
- SIGTERM to the supervisor stops every worker, and it exits;
- a REGISTER's Authorization replayed to the other worker is challenged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
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
    SippProcess,
    UdpEndpoint,
    build_ack_for,
    build_invite,
    is_final,
    options_ping,
    parse_sipp_messages,
    run_sipp,
    sipp_dir,
    statuses,
    via_sent_by,
)

CALLS = 200
RATE = 40
CANCEL_CALLS = 10
DOMAIN = "sipsuite.test"
# sipp: a socket per call, so the calls come from many sources and the
# kernel spreads them over the workers (one socket would pin them to one).
PER_CALL_SOCKETS = ("-t", "un", "-max_socket", "1000")


@dataclass
class Setup:
    proxy: procs.ProxyProcess
    uas_port: int
    cancel_port: int
    busy: RawCallee

    def diag(self) -> str:
        return self.proxy.diagnostics(120)


def worker_pids(supervisor: int) -> dict[int, int]:
    """index -> pid of the supervisor's worker processes."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == supervisor and b"sipsuite.proxy.worker" in args:
            found[int(args[args.index(b"--index") + 1])] = int(entry)
    return found


def wait_log(proxy: procs.ProxyProcess, pattern: str, count: int = 1, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, proxy.log_text())) >= count:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def setup(proxy_factory: ProxyFactory) -> Iterator[Setup]:
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    busy = RawCallee()
    ports = {name: procs.free_port() for name in ("uas", "cancel")}
    static = {
        "bob": [f"sip:bob@{LOCALHOST}:{ports['uas']}"],
        "carol": [f"sip:carol@{LOCALHOST}:{ports['cancel']}"],
        "busy": [f"sip:busy@{LOCALHOST}:{busy.port}"],
    }
    try:
        proxy = proxy_factory("workers", plugin="sip-proxy", static=static,
                              extra_proxy={"workers": 2}, tables={"redis": {"url": redis.url(5)}})
        ready = wait_log(proxy, r"worker [01]: sip proxy ready", 2)
        assert ready, "both workers did not come up\n" + proxy.diagnostics(120)
        yield Setup(proxy, ports["uas"], ports["cancel"], busy)
    finally:
        busy.close()
        redis.close()


def test_two_workers_serve_200_udp_calls(sipp_bin: str, setup: Setup, tmp_path: Path) -> None:
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=tmp_path,
                      local_port=setup.uas_port, calls=CALLS, timeout_s=40, service="bob",
                      trace_msg=True)
    uas.wait_bound()
    uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path,
                   remote=setup.proxy.address, local_port=procs.free_port(), calls=CALLS,
                   rate=RATE, duration_ms=100, timeout_s=40, service="bob",
                   extra=PER_CALL_SOCKETS)
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{setup.diag()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, CALLS, 0), "caller side failed" + diag
    assert (res.rc, res.successful, res.failed) == (0, CALLS, 0), "callee side failed" + diag

    shared = f"{LOCALHOST}:{setup.proxy.port}"
    invites = [t.msg for t in parse_sipp_messages(res.messages_path)
               if t.direction == "received" and not t.msg.is_response and t.msg.method == "INVITE"]
    senders = {via_sent_by(m.vias[0]) for m in invites}
    # Each worker names its own port in its Via (and sends from the shared
    # one; sipp answers to the source: see test_retransmitted_invite_is_absorbed):
    # two workers, two ports.
    assert len(senders) == 2 and shared not in senders, f"proxy Vias seen: {senders}" + diag
    for m in invites:
        rr = m.header_values("record-route")
        assert any(shared in v and ";lr" in v for v in rr), f"Record-Route {rr}" + diag
    for n in (0, 1):  # and each logs as itself
        assert re.search(rf"worker {n}: ", setup.proxy.log_text()), diag


def test_calls_over_tcp(sipp_bin: str, setup: Setup, tmp_path: Path) -> None:
    """A caller on TCP: its connection, and so its whole call, stays with the
    worker that accepted it; the callee is reached over UDP from that
    worker's own port. (Not yet: a request for a phone whose connection
    another worker holds.)"""
    calls = 50
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=tmp_path,
                      local_port=setup.uas_port, calls=calls, timeout_s=30, service="bob")
    uas.wait_bound()
    uac = run_sipp(sipp_dir() / "call_uac.xml", name="uac", workdir=tmp_path,
                   remote=setup.proxy.address, local_port=procs.free_port(), calls=calls,
                   rate=25, duration_ms=100, timeout_s=30, service="bob", transport="tcp")
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{setup.diag()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, calls, 0), "caller side failed" + diag
    assert (res.rc, res.successful, res.failed) == (0, calls, 0), "callee side failed" + diag


def test_stats_add_up_both_workers(setup: Setup) -> None:
    """After the calls: the supervisor's ``stats`` counts every INVITE once,
    and shows each worker's share (both carried load)."""
    res = setup.proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr + setup.diag()
    stats = json.loads(res.stdout)
    workers = stats["workers"]
    assert sorted(workers) == ["0", "1"], workers
    shares = [w["requests_by_method"].get("INVITE", 0) for w in workers.values()]
    assert all(n > 0 for n in shares), f"INVITEs per worker: {shares}"
    assert stats["requests_by_method"]["INVITE"] == sum(shares) >= CALLS, stats
    table = setup.proxy.ctl("stats")
    assert table.returncode == 0 and "workers.1.requests " in table.stdout, table.stdout
    metrics = urllib.request.urlopen(setup.proxy.management_url + "metrics", timeout=10).read()
    assert f'sipsuite_requests_total{{method="INVITE"}} {sum(shares)}.0'.encode() in metrics, metrics


def test_live_operations_reach_every_worker(setup: Setup) -> None:
    proxy = setup.proxy
    res = proxy.ctl("routing", "reload")
    assert res.returncode == 0, res.stderr + setup.diag()
    for n in (0, 1):
        assert wait_log(proxy, rf"worker {n}: routing reloaded", 1, 5.0), setup.diag()
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)  # to the supervisor, which passes it on
    for n in (0, 1):
        assert wait_log(proxy, rf"worker {n}: SIGHUP: reloading the routing", 1, 5.0), setup.diag()
    res = proxy.ctl("debug", "info")
    assert res.returncode == 0, res.stderr + setup.diag()
    for n in (0, 1):
        assert wait_log(proxy, rf"worker {n}: log level set to info", 1, 5.0), setup.diag()


def test_retransmitted_invite_is_absorbed(setup: Setup) -> None:
    setup.busy.reset(CalleeBehaviour(provisional=(180,), final=486, final_delay=1.0))
    seen: list[Received] = []
    with UdpEndpoint() as caller:
        req = build_invite(f"sip:busy@{DOMAIN}", sent_by=caller.sent_by)
        for _ in range(3):
            caller.send(req, setup.proxy.address)
            seen += caller.collect(0.25)
        final = next((r for r in seen if is_final(r.msg)), None)
        final = final or caller.recv_until(is_final, 4.0, seen)
        if final is not None:
            caller.send(build_ack_for(req, final.msg), setup.proxy.address)
    diag = f"\ncaller saw {statuses(seen)}\n{setup.diag()}"
    assert final is not None and final.msg.status == 486, diag
    acks = setup.busy.wait_for("ACK", 1, timeout=1.0)
    assert len(setup.busy.messages("INVITE")) == 1, "the retransmissions reached the callee" + diag
    assert acks, "the worker holding the INVITE did not ACK the 486" + diag
    # NAT-safe: the INVITE left from the shared port (a phone behind a
    # port-restricted NAT lets only that through) with the worker's private
    # port in its Via; the callee answered to the source, the shared port,
    # and the worker there passed the answers to the one holding the call.
    invite = setup.busy.messages("INVITE")[0]
    shared = (LOCALHOST, setup.proxy.port)
    assert tuple(invite.addr[:2]) == shared, f"INVITE came from {invite.addr}" + diag
    assert via_sent_by(invite.msg.vias[0]) != f"{LOCALHOST}:{setup.proxy.port}", diag


def test_cancel_gets_487(sipp_bin: str, setup: Setup, tmp_path: Path) -> None:
    uas = SippProcess(sipp_dir() / "cancel_uas.xml", name="uas", workdir=tmp_path,
                      local_port=setup.cancel_port, calls=CANCEL_CALLS, timeout_s=30,
                      service="carol")
    uas.wait_bound()
    uac = run_sipp(sipp_dir() / "cancel_uac.xml", name="uac", workdir=tmp_path,
                   remote=setup.proxy.address, local_port=procs.free_port(),
                   calls=CANCEL_CALLS, rate=10, timeout_s=30, service="carol",
                   extra=PER_CALL_SOCKETS)
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{setup.diag()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, CANCEL_CALLS, 0), diag
    assert (res.rc, res.successful) == (0, CANCEL_CALLS), diag


def test_a_killed_worker_is_restarted_and_the_other_serves(setup: Setup) -> None:
    proxy = setup.proxy
    assert proxy.proc is not None
    before = worker_pids(proxy.proc.pid)
    assert sorted(before) == [0, 1], f"workers {before}\n{setup.diag()}"
    os.kill(before[1], signal.SIGKILL)
    assert wait_log(proxy, r"worker 1 killed by signal 9 \(SIGKILL\); restarting it"), setup.diag()
    # Reaped: its socket has left the group, the survivor answers every source.
    # (What sat in the dead one's receive queue is lost; UDP peers retransmit.)
    answered = sum(options_ping(proxy.host, proxy.port, timeout=1.0) is not None for _ in range(10))
    assert answered == 10, f"{answered}/10 OPTIONS answered with one worker down\n{setup.diag()}"
    assert wait_log(proxy, r"worker 1: sip proxy ready", 2), "worker 1 not restarted\n" + setup.diag()
    after = worker_pids(proxy.proc.pid)
    assert after.get(0) == before[0] and after.get(1) not in (None, before[1]), (before, after)
    assert sum(options_ping(proxy.host, proxy.port, timeout=1.0) is not None for _ in range(10)) == 10


def test_sigterm_stops_every_worker(setup: Setup) -> None:
    proxy = setup.proxy
    assert proxy.proc is not None
    workers = worker_pids(proxy.proc.pid)
    assert len(workers) == 2
    proxy.proc.send_signal(signal.SIGTERM)  # the supervisor alone: it passes it on
    rc = proxy.proc.wait(15)
    # twistd ends by re-raising the signal that stopped it, as with one process.
    assert rc in (0, -signal.SIGTERM), setup.diag()
    assert wait_log(proxy, r"worker 0 exited with status 0", 1, 1.0), setup.diag()
    assert wait_log(proxy, r"worker 1 exited with status 0", 1, 1.0), setup.diag()
    for pid in workers.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert wait_log(proxy, r"stopping 2 worker\(s\)", 1, 1.0), setup.diag()


# --------------------------------------------------------------------------- nonce-count replays


@pytest.fixture(scope="module")
def auth_proxy(proxy_factory: ProxyFactory) -> Iterator[procs.ProxyProcess]:
    """Two workers with digest auth, sharing [auth] secret (so a nonce one
    worker issued is good at the other) and Redis."""
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    try:
        proxy = proxy_factory("workers-auth", plugin="sip-proxy", extra_proxy={"workers": 2},
                              tables={"redis": {"url": redis.url(6)}, "features": {"auth": True},
                                      "auth": {"realm": DOMAIN, "secret": "shared-by-workers",
                                               "algorithms": ["MD5"]}})
        ready = wait_log(proxy, r"worker [01]: sip proxy ready", 2)
        assert ready, "both workers did not come up\n" + proxy.diagnostics(120)
        yield proxy
    finally:
        redis.close()


def registers_per_worker(proxy: procs.ProxyProcess) -> dict[str, int]:
    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return {n: w["requests_by_method"].get("REGISTER", 0)
            for n, w in json.loads(res.stdout)["workers"].items()}


def test_nonce_replay_to_the_other_worker_is_refused(auth_proxy: procs.ProxyProcess) -> None:
    """A REGISTER's Authorization sent again from other sources (the kernel
    gives some of them to the other worker) is challenged every time, as a
    replay to the same worker is: the nonce-count check is in Redis."""
    from digestclient import challenges, credentials

    proxy = auth_proxy
    assert proxy.ctl("user", "add", "erin", "pw-erin").returncode == 0, proxy.diagnostics()

    def register(ep: UdpEndpoint, cseq: int, auth: str | None = None) -> procs.SipMessage:
        msg = procs.build_request(
            "REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by, from_uri=f"sip:erin@{DOMAIN}",
            to_uri=f"sip:erin@{DOMAIN}", cseq=cseq, call_id="replay-1",
            contact=f"sip:erin@{ep.sent_by}",
            extra=[("Expires", "60")] + ([("Authorization", auth)] if auth else []))
        ep.send(msg, proxy.address)
        got = ep.recv_until(is_final, 5.0)
        assert got is not None, "no answer\n" + proxy.diagnostics()
        return got.msg

    with UdpEndpoint() as phone:
        first = register(phone, 1)
        assert first.status == 401, first.start_line
        auth = credentials(challenges(first, "www-authenticate")[0], "erin", "pw-erin",
                           "REGISTER", f"sip:{DOMAIN}")
        ok = register(phone, 2, auth)
        assert ok.status == 200, ok.start_line
    before = registers_per_worker(proxy)
    home = max(before, key=lambda n: before[n])  # the worker that took the phone's two
    elsewhere = 0
    for cseq in range(3, 19):
        with UdpEndpoint() as thief:
            replay = register(thief, cseq, auth)
        assert replay.status == 401, f"replayed nonce-count accepted: {replay.start_line}"
        assert "stale" not in (replay.header_values("www-authenticate") or [""])[0].lower()
        now = registers_per_worker(proxy)
        elsewhere = sum(v for n, v in now.items() if n != home) - sum(
            v for n, v in before.items() if n != home)
        if elsewhere >= 2:
            break
    assert elsewhere >= 1, f"no replay reached the other worker: {registers_per_worker(proxy)}"
