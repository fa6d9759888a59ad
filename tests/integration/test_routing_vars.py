"""The routing vocabulary's variables in real proxies (issue 14): one node
with two worker processes (``[proxy] workers = 2``) and a second node, both
on one real redis-server, running a routing class written beside the config.

- ``$var``: a plain attribute of the routing object counts per worker
  process: each worker's count goes up by one per request it served, however
  the requests are spread;
- ``$shv``: ``self.shv.incr`` counts over both workers and the other node
  at once, atomically: the answers carry 1..N, each once;
- ``sipsuite-ctl shv set`` on one node is what ``self.shv.get`` reads in
  every worker and on the other node; ``shv get`` shows what the routing set;
- ``sipsuite-ctl cfg set voicemail.srv_ip`` is what ``self.cfg`` reads in
  both workers at the next request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import procs
import pytest
from procs import LOCALHOST, UdpEndpoint, build_request, start_proxy, write_config

ROUTING = '''
import os

from sipsuite.proxy import Routing


class VarsRouting(Routing):
    def __init__(self, core):
        super().__init__(core)
        self.served = 0  # $var: this process's own

    async def request_route(self, ctx):
        if ctx.method != "OPTIONS":
            ctx.reply(405, "Method Not Allowed")
            return
        self.served += 1
        headers = [("X-Pid", str(os.getpid())), ("X-Var", str(self.served)),
                   ("X-Vm", self.cfg.voicemail.srv_ip or "-")]
        if ctx.ruri_user == "incr":
            headers.append(("X-Shv", str(await self.shv.incr("hits"))))
        elif ctx.ruri_user == "get":
            headers.append(("X-Shv", repr(await self.shv.get("greeting"))))
        elif ctx.ruri_user == "set":
            await self.shv.set("from_routing", ctx.source_port)
        ctx.reply(200, "OK", headers)
'''


@dataclass
class Nodes:
    workers: procs.ProxyProcess  # two worker processes
    single: procs.ProxyProcess   # another node on the same Redis

    def diag(self) -> str:
        return self.workers.diagnostics(80) + self.single.diagnostics(40)


def _wait_log(proxy: procs.ProxyProcess, pattern: str, count: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, proxy.log_text())) >= count:
            return True
        time.sleep(0.1)
    return False


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, redis_url: str, workers: int,
           started: list[procs.ProxyProcess]) -> procs.ProxyProcess:
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "varsrouting.py").write_text(ROUTING)  # found beside the config
    port = procs.free_port()
    cfg = write_config(workdir / "sipsuite.toml", port=port,
                       extra_proxy={"workers": workers, "routing": "varsrouting:VarsRouting"},
                       tables={"redis": {"url": redis_url}})
    proxy = start_proxy(workdir, cfg, port, plugin="sip-proxy")
    started.append(proxy)
    return proxy


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    started: list[procs.ProxyProcess] = []
    try:
        url = redis.url(9)
        both = _start(tmp_path_factory, "vars-workers", url, 2, started)
        assert _wait_log(both, r"worker [01]: sip proxy ready", 2), both.diagnostics(80)
        single = _start(tmp_path_factory, "vars-single", url, 1, started)
        yield Nodes(both, single)
    finally:
        for proxy in started:
            proxy.stop()
        redis.close()


def options(proxy: procs.ProxyProcess, user: str) -> dict[str, str]:
    """One OPTIONS from a fresh socket (so the kernel spreads them over the
    workers); the X- headers of its 200."""
    with UdpEndpoint() as ep:
        ep.send(build_request("OPTIONS", f"sip:{user}@{LOCALHOST}:{proxy.port}", sent_by=ep.sent_by),
                proxy.address)
        got = ep.recv_until(lambda m: m.is_response and m.status >= 200, 5)
    assert got is not None and got.msg.status == 200, f"no 200 for {user}"
    return {name: got.msg.header(name) or "" for name in ("X-Pid", "X-Var", "X-Shv", "X-Vm")}


def test_var_is_per_worker_and_shv_counts_over_workers_and_nodes(nodes: Nodes) -> None:
    answers = []
    for i in range(40):
        proxy = nodes.single if i % 4 == 3 else nodes.workers
        answers.append(options(proxy, "incr"))
    diag = "\n" + nodes.diag()
    # $shv: one counter for all three processes, no lost or doubled increment.
    assert [int(a["X-Shv"]) for a in answers] == list(range(1, 41)), answers
    # $var: each process counts only what it served, one up per request.
    by_pid: dict[str, list[int]] = {}
    for a in answers:
        by_pid.setdefault(a["X-Pid"], []).append(int(a["X-Var"]))
    worker_pids = {a["X-Pid"] for i, a in enumerate(answers) if i % 4 != 3}
    assert len(worker_pids) == 2, f"one worker served everything: {by_pid}" + diag
    assert len(by_pid) == 3, by_pid
    for pid, counts in by_pid.items():
        assert counts == list(range(counts[0], counts[0] + len(counts))), (pid, counts)
    # Shared, they would have counted past each other: the counts overlap.
    firsts = [counts[0] for pid, counts in by_pid.items() if pid in worker_pids]
    lasts = [counts[-1] for pid, counts in by_pid.items() if pid in worker_pids]
    assert max(firsts) < min(lasts), by_pid


def test_ctl_shv_set_reaches_every_worker_and_node(nodes: Nodes) -> None:
    res = nodes.workers.ctl("shv", "set", "greeting", "hello")
    assert res.returncode == 0 and res.stdout.strip() == 'greeting = "hello"', res.stderr + nodes.diag()
    answers = [options(nodes.workers, "get") for _ in range(16)]
    assert {a["X-Shv"] for a in answers} == {"'hello'"}, answers
    assert len({a["X-Pid"] for a in answers}) == 2, "one worker answered all: the other not shown"
    assert options(nodes.single, "get")["X-Shv"] == "'hello'"

    # Digits are an int, quoted digits a string; the routing reads the type back.
    assert nodes.single.ctl("shv", "set", "greeting", "42").returncode == 0
    assert options(nodes.workers, "get")["X-Shv"] == "42"
    assert nodes.single.ctl("shv", "set", "greeting", '"42"').returncode == 0
    assert options(nodes.workers, "get")["X-Shv"] == "'42'"

    # What the routing set, the operator reads on the other node.
    options(nodes.workers, "set")
    res = nodes.single.ctl("--json", "shv", "get", "from_routing")
    assert res.returncode == 0, res.stderr
    assert isinstance(json.loads(res.stdout)["from_routing"], int)
    res = nodes.single.ctl("shv", "get", "nothing")
    assert res.returncode != 0 and "no shv named 'nothing'" in res.stderr


def test_cfg_set_is_read_by_self_cfg_in_every_worker_at_once(nodes: Nodes) -> None:
    assert {options(nodes.workers, "x")["X-Vm"] for _ in range(6)} == {"-"}
    res = nodes.workers.ctl("cfg", "set", "voicemail.srv_ip", "127.0.0.77")
    assert res.returncode == 0, res.stderr + nodes.diag()
    answers = [options(nodes.workers, "x") for _ in range(16)]
    assert {a["X-Vm"] for a in answers} == {"127.0.0.77"}, answers
    assert len({a["X-Pid"] for a in answers}) == 2, "one worker answered all: neither shown"
