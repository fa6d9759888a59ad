"""Host-wide state of worker processes ([proxy] workers = 2, issue 15):
``twistd sip-proxy`` with a test redis-server and raw UDP peers on loopback
ports chosen at run time (docs/architecture.md "Host-wide state").

- antiflood bans a source flooding both workers (from many source ports,
  which the kernel spreads), though neither saw more than the limit, and
  the ban holds in both; ``flood unban`` lifts it in both;
- dispatcher probing once per host: a dead gateway is marked inactive in
  both workers, and a live one gets one OPTIONS per interval, not two;
- a worker killed and started again gets the live state (``cfg set``,
  ``debug``, dispatcher states) and steering to it works again;
- SIGKILL one worker under load: calls in the other are untouched, the
  transactions it had in progress are counted (``supervisor.lost_transactions``);
- an empty ``[auth] secret``: one random secret for the host, so a phone's
  credentials are good at either worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import procs
import pytest
from procs import (
    LOCALHOST,
    CalleeBehaviour,
    ProxyFactory,
    RawCallee,
    UdpEndpoint,
    build_invite,
    build_request,
    is_final,
)
from test_workers import wait_log, worker_pids

DOMAIN = "sipsuite.test"
LIMIT = 30  # antiflood.requests, per window
WINDOW = 3.0
PROBE_INTERVAL = 1.0
#: A loopback address of the flooder's own (never the proxy's, so bannable).
FLOODER = "127.0.0.7"


class OptionsCounter:
    """A gateway that answers every OPTIONS 200 and notes when it came, and
    from which Via (which worker probed)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            try:
                msg = procs.SipMessage.parse(data)
            except ValueError:
                continue
            if msg.is_response or msg.method != "OPTIONS":
                continue
            self.seen.append((time.monotonic(), msg.vias[0]))
            self.sock.sendto(procs.build_response(msg, 200, "OK", to_tag="gw"), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@dataclass
class Host:
    proxy: procs.ProxyProcess
    gateway: OptionsCounter
    dead: str
    live: str
    callee: RawCallee
    notes: list[str] = field(default_factory=list)

    def diag(self) -> str:
        return "\n".join(self.notes) + "\n" + self.proxy.diagnostics(150)


def worker_rpc(proxy: procs.ProxyProcess, index: int, method: str, *params: Any) -> Any:
    """One JSON-RPC call straight to worker ``index`` (its management port
    is in the --overrides of its command line)."""
    assert proxy.proc is not None
    pid = worker_pids(proxy.proc.pid)[index]
    args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    port = json.loads(args[args.index(b"--overrides") + 1])["management"].rsplit(":", 1)[1]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", body.encode(),
                                 {"content-type": "application/json"})
    reply = json.loads(urllib.request.urlopen(req, timeout=10).read())
    assert "error" not in reply, reply
    return reply["result"]


def stats(proxy: procs.ProxyProcess) -> dict[str, Any]:
    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def ds_states(proxy: procs.ProxyProcess, index: int) -> dict[str, str]:
    return {d["uri"]: d["state"] for s in worker_rpc(proxy, index, "dispatcher.dump")
            for d in s["destinations"]}


@pytest.fixture(scope="module")
def host(proxy_factory: ProxyFactory) -> Iterator[Host]:
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    gateway = OptionsCounter()
    callee = RawCallee()
    dead = f"sip:{LOCALHOST}:{procs.free_port('udp')}"  # nothing listens there
    live = f"sip:{LOCALHOST}:{gateway.port}"
    try:
        proxy = proxy_factory(
            "workers-host", plugin="sip-proxy", extra_proxy={"workers": 2},
            static={"slow": [callee.uri("slow")]},
            tables={"redis": {"url": redis.url(7)}, "features": {"antiflood": True},
                    "timers": {"timer_c": 20.0},
                    "antiflood": {"requests": LIMIT, "window": WINDOW, "ban_time": 120.0},
                    "dispatcher": {"probe_interval": PROBE_INTERVAL, "probe_timeout": 0.8},
                    "dispatcher.sets": {"1": [dead, live]}})
        ready = wait_log(proxy, r"worker [01]: sip proxy ready", 2)
        assert ready, "both workers did not come up\n" + proxy.diagnostics(120)
        yield Host(proxy, gateway, dead, live, callee)
    finally:
        callee.close()
        gateway.close()
        redis.close()


def options_from(addr: str, proxy: procs.ProxyProcess, timeout: float) -> bool:
    """One OPTIONS from ``addr`` at a new source port: answered?"""
    with UdpEndpoint(addr) as ep:
        uri = f"sip:{proxy.host}:{proxy.port}"
        ep.send(build_request("OPTIONS", uri, sent_by=ep.sent_by, to_uri=uri), proxy.address)
        return ep.recv_until(lambda m: m.is_response and m.status >= 200, timeout) is not None


def options_per_worker(proxy: procs.ProxyProcess) -> dict[str, int]:
    workers = stats(proxy)["workers"]
    return {n: w["requests_by_method"].get("OPTIONS", 0) for n, w in workers.items()}


def test_antiflood_bans_a_source_flooding_both_workers(host: Host) -> None:
    proxy = host.proxy
    before = options_per_worker(proxy)
    # A third over the limit inside one window, each from a new port: the
    # kernel spreads them, so neither worker alone sees more than the limit.
    sent = LIMIT + 10
    for _ in range(sent):
        options_from(FLOODER, proxy, 0.05)
    time.sleep(0.5)  # the workers' next batches, the supervisor's ban back
    after = options_per_worker(proxy)
    per_worker = {n: after[n] - before[n] for n in after}
    diag = f"\nOPTIONS per worker {per_worker}\n{host.diag()}"
    assert all(0 < n <= LIMIT for n in per_worker.values()), "not spread over both" + diag
    assert wait_log(proxy, rf"antiflood: banning {FLOODER} on every worker", 1, 2.0), diag
    # The host's sum did it, not one worker's own table.
    assert not re.search(rf"worker \d: antiflood: banning {FLOODER} for", proxy.log_text()), diag
    # Banned in both: whichever worker a new source port lands on drops it.
    answered = sum(options_from(FLOODER, proxy, 0.3) for _ in range(12))
    assert answered == 0, f"{answered}/12 answered while banned" + diag
    drops = {n: w["drops"].get("flood", 0) for n, w in stats(proxy)["workers"].items()}
    assert all(n > 0 for n in drops.values()), f"flood drops per worker {drops}" + diag
    # Other sources are served meanwhile.
    assert options_from("127.0.0.8", proxy, 1.0), diag
    res = proxy.ctl("flood", "unban", FLOODER)
    assert res.returncode == 0, res.stderr + diag
    answered = sum(options_from(FLOODER, proxy, 1.0) for _ in range(8))
    assert answered == 8, f"{answered}/8 answered after the unban" + diag
    # The host's counts restart too: a few more are no ban.
    time.sleep(0.3)
    assert options_from(FLOODER, proxy, 1.0), diag


def test_dispatcher_probes_once_per_host(host: Host) -> None:
    proxy = host.proxy
    deadline = time.monotonic() + 8.0
    states: dict[int, dict[str, str]] = {}
    while time.monotonic() < deadline:
        states = {i: ds_states(proxy, i) for i in (0, 1)}
        if all(s.get(host.dead) == "inactive" and s.get(host.live) == "active"
               for s in states.values()):
            break
        time.sleep(0.3)
    diag = f"\nstates {states}\n{host.diag()}"
    assert all(s[host.dead] == "inactive" for s in states.values()), diag
    assert all(s[host.live] == "active" for s in states.values()), diag
    # Worker 1 learnt it from worker 0's probes, not its own.
    assert wait_log(proxy, r"worker 1: dispatcher: .* is inactive \(found by worker 0\)", 1, 1.0), diag
    # Over some intervals: one probe each, all from one worker's private port.
    start = time.monotonic()
    time.sleep(4 * PROBE_INTERVAL + 0.5)
    window = [(t, via) for t, via in host.gateway.seen if t >= start]
    vias = {via.split()[1].split(";")[0] for _, via in window}
    assert 3 <= len(window) <= 5, f"{len(window)} probes in 4.5 intervals: {window}" + diag
    assert len(vias) == 1, f"probes from {vias}" + diag


def test_a_restarted_worker_gets_the_live_state(host: Host) -> None:
    proxy = host.proxy
    assert proxy.proc is not None
    assert proxy.ctl("cfg", "set", "dispatcher.probe_failures", "3").returncode == 0
    assert proxy.ctl("debug", "warn").returncode == 0
    assert proxy.ctl("dispatcher", "set-state", "1", host.live, "disabled").returncode == 0
    before = worker_pids(proxy.proc.pid)
    os.kill(before[1], signal.SIGKILL)
    assert wait_log(proxy, r"worker 1 killed by signal 9"), host.diag()
    assert wait_log(proxy, r"worker 1: 2 live operation\(s\) replayed", 1, 15.0), host.diag()
    after = worker_pids(proxy.proc.pid)
    assert after[1] != before[1]
    got = worker_rpc(proxy, 1, "cfg.get", "dispatcher.probe_failures")
    assert got == {"dispatcher.probe_failures": 3}, got
    assert worker_rpc(proxy, 1, "debug") == {"level": "warn"}
    deadline = time.monotonic() + 3.0
    while ds_states(proxy, 1).get(host.live) != "disabled" and time.monotonic() < deadline:
        time.sleep(0.2)
    states = ds_states(proxy, 1)
    assert states[host.live] == "disabled" and states[host.dead] == "inactive", states
    # Back as the file has them, for the tests after.
    assert proxy.ctl("dispatcher", "set-state", "1", host.live, "active").returncode == 0
    assert proxy.ctl("debug", "info").returncode == 0
    assert proxy.ctl("cfg", "set", "dispatcher.probe_failures", "1").returncode == 0


def test_sigkill_under_load_counts_the_lost_transactions(host: Host) -> None:
    """INVITEs held ringing in both workers; worker 1 killed: the calls in
    worker 0 get their 200, those in worker 1 no answer, and the supervisor
    counts them lost."""
    proxy = host.proxy
    assert proxy.proc is not None
    host.callee.reset(CalleeBehaviour(provisional=(180,), final=200, final_delay=4.0))
    lost_before = stats(proxy)["supervisor"]["lost_transactions"]
    callers = [UdpEndpoint() for _ in range(16)]
    try:
        invites = []
        for ep in callers:
            req = build_invite(f"sip:slow@{DOMAIN}", sent_by=ep.sent_by)
            ep.send(req, proxy.address)
            invites.append(req)
        host.callee.wait_for("INVITE", len(callers), 3.0)
        time.sleep(1.5)  # a heartbeat of each worker after the INVITEs
        starts = len(re.findall(r"worker 1: sip proxy ready", proxy.log_text()))
        pids = worker_pids(proxy.proc.pid)
        os.kill(pids[1], signal.SIGKILL)
        finals: list[int | None] = []
        deadline = time.monotonic() + 6.0  # the 200s come at 4 s
        for ep in callers:
            got = ep.recv_until(is_final, max(0.2, deadline - time.monotonic()))
            finals.append(got.msg.status if got is not None else None)
    finally:
        for ep in callers:
            ep.close()
    diag = f"\nfinals {finals}\n{host.diag()}"
    # The calls in worker 0 go on; those in worker 1 died with it (its
    # callee's 200 has nowhere to go: no worker holds the transaction).
    answered, unanswered = finals.count(200), finals.count(None)
    assert answered > 0 and unanswered > 0, "the calls were not spread" + diag
    assert answered + unanswered == len(callers), diag
    assert wait_log(proxy, rf"worker 1 had {unanswered} transaction\(s\) in progress", 1, 2.0), diag
    assert wait_log(proxy, r"worker 1: sip proxy ready", starts + 1, 15.0), diag
    lost = stats(proxy)["supervisor"]["lost_transactions"] - lost_before
    assert lost == unanswered, f"lost {lost}" + diag
    # The new worker 1 has a new private port: worker 0 learnt it, so the
    # callee's answers to the shared port are steered to it again.
    host.callee.reset(CalleeBehaviour(provisional=(180,), final=200))
    finals = []
    for _ in range(12):
        with UdpEndpoint() as ep:
            ep.send(build_invite(f"sip:slow@{DOMAIN}", sent_by=ep.sent_by), proxy.address)
            got = ep.recv_until(is_final, 3.0)
            finals.append(got.msg.status if got is not None else None)
    assert finals == [200] * 12, f"after the restart: {finals}" + host.diag()
    per_worker = {n: w["requests_by_method"].get("INVITE", 0)
                  for n, w in stats(proxy)["workers"].items()}
    assert all(per_worker.values()), f"INVITEs per worker since the restart {per_worker}"


# --------------------------------------------------------------------------- one secret per host


@pytest.fixture(scope="module")
def auth_proxy(proxy_factory: ProxyFactory) -> Iterator[procs.ProxyProcess]:
    """Two workers with digest auth and no [auth] secret in the file."""
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    try:
        proxy = proxy_factory("workers-nonces", plugin="sip-proxy", extra_proxy={"workers": 2},
                              tables={"redis": {"url": redis.url(8)}, "features": {"auth": True},
                                      "auth": {"realm": DOMAIN, "algorithms": ["MD5"]}})
        ready = wait_log(proxy, r"worker [01]: sip proxy ready", 2)
        assert ready, "both workers did not come up\n" + proxy.diagnostics(120)
        yield proxy
    finally:
        redis.close()


def test_an_empty_secret_is_one_random_secret_for_the_host(auth_proxy: procs.ProxyProcess) -> None:
    """A phone's credentials for a nonce one worker issued are good at the
    other (its REGISTERs from new source ports land on both): not
    challenged again. The secret is on no command line."""
    from digestclient import challenges, credentials

    proxy = auth_proxy
    assert proxy.ctl("user", "add", "fay", "pw-fay").returncode == 0, proxy.diagnostics()

    def register(ep: UdpEndpoint, cseq: int, auth: str | None = None) -> procs.SipMessage:
        msg = build_request(
            "REGISTER", f"sip:{DOMAIN}", sent_by=ep.sent_by, from_uri=f"sip:fay@{DOMAIN}",
            to_uri=f"sip:fay@{DOMAIN}", cseq=cseq, call_id="secret-1",
            contact=f"sip:fay@{ep.sent_by}",
            extra=[("Expires", "60")] + ([("Authorization", auth)] if auth else []))
        ep.send(msg, proxy.address)
        got = ep.recv_until(is_final, 5.0)
        assert got is not None, "no answer\n" + proxy.diagnostics()
        return got.msg

    with UdpEndpoint() as phone:
        challenge = challenges(register(phone, 1), "www-authenticate")[0]
    before = {n: w["requests_by_method"].get("REGISTER", 0)
              for n, w in stats(proxy)["workers"].items()}
    statuses = []
    for nc in range(1, 17):
        with UdpEndpoint() as phone:
            auth = credentials(challenge, "fay", "pw-fay", "REGISTER", f"sip:{DOMAIN}", nc=nc)
            statuses.append(register(phone, 1 + nc, auth).status)
    after = {n: w["requests_by_method"].get("REGISTER", 0)
             for n, w in stats(proxy)["workers"].items()}
    spread = {n: after[n] - before[n] for n in after}
    assert all(spread.values()), f"REGISTERs per worker {spread}"
    assert statuses == [200] * 16, statuses
    # Handed over in the environment, which only our user can read: the
    # same for both, and on no command line.
    assert proxy.proc is not None
    keys = set()
    for pid in worker_pids(proxy.proc.pid).values():
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        key = next(v.split(b"=", 1)[1] for v in environ if v.startswith(b"SIPSUITE_WORKER_AUTH_SECRET="))
        assert len(key) >= 32 and key not in open(f"/proc/{pid}/cmdline", "rb").read()
        assert os.stat(f"/proc/{pid}/environ").st_mode & 0o077 == 0
        keys.add(key)
    assert len(keys) == 1, "one secret for the host"
