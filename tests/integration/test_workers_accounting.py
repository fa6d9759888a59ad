"""Accounting with worker processes ([proxy] workers = 2, issue 15): one
record per call, whichever worker the BYE lands on.  ``twistd sip-proxy``
with a test redis-server, sipp and raw UDP callers and callees on loopback
ports chosen at run time, one ``[accounting] file`` for both workers.

A call's 2xx goes upstream from the worker that got its INVITE, which holds
the call; its BYE is in-dialog and the kernel gives it to a worker by its
source address:

- sipp callees that hang up (hangup_uas.xml): all their BYEs come from
  one socket, so they land on one worker, while the callers' INVITEs
  (a socket per call) are spread: for the calls of the other worker the
  BYE's worker passes it over the link;
- raw callers that send their BYE from a new port (allowed over UDP):
  spread independently of their INVITEs;
- busy and unknown callees: one missed / failed record each;
- SIGKILL of a worker holding answered calls: their records are lost,
  logged and counted (``supervisor.lost_call_records``); the others are
  written when their BYEs come, whichever worker gets them.

Every line of the file is one whole JSON record (the workers append to
it at once).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs
import pytest
from procs import (
    LOCALHOST,
    SCENARIOS,
    CalleeBehaviour,
    ProxyFactory,
    RawCallee,
    SipMessage,
    SippProcess,
    UdpEndpoint,
    build_ack_for_2xx,
    build_invite,
    build_request,
    is_final,
    run_sipp,
)
from test_accounting import REJECTED_UAC
from test_workers import PER_CALL_SOCKETS, wait_log, worker_pids

DOMAIN = "sipsuite.test"
HOLD = 1.0  # s between the answer and the BYE
#: How far a record's duration may be from the hold time seen by the test
#: (the proxy stamps the 2xx and the BYE's answer; loopback, a loaded host).
SLACK = 0.4


@dataclass
class Host:
    proxy: procs.ProxyProcess
    acc_file: Path
    hangup_port: int
    answering: RawCallee
    busy: RawCallee

    def diag(self) -> str:
        return self.proxy.diagnostics(150)


@pytest.fixture(scope="module")
def host(proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    answering = RawCallee(behaviour=CalleeBehaviour(provisional=(180,), final=200, dialog=True))
    busy = RawCallee(behaviour=CalleeBehaviour(provisional=(180,), final=486, final_delay=0.2))
    hangup_port = procs.free_port()
    acc_file = tmp_path_factory.mktemp("workersacc") / "calls.jsonl"
    try:
        proxy = proxy_factory(
            "workers-acc", plugin="sip-proxy", extra_proxy={"workers": 2},
            static={"gw": [f"sip:gw@{LOCALHOST}:{hangup_port}"],
                    "ann": [answering.uri("ann")], "busy": [busy.uri("busy")]},
            tables={"redis": {"url": redis.url(9)}, "features": {"accounting": True},
                    "accounting": {"file": str(acc_file)}})
        ready = wait_log(proxy, r"worker [01]: sip proxy ready", 2)
        assert ready, "both workers did not come up\n" + proxy.diagnostics(120)
        yield Host(proxy, acc_file, hangup_port, answering, busy)
    finally:
        answering.close()
        busy.close()
        redis.close()


def all_records(path: Path) -> list[dict[str, Any]]:
    """Every line of the file, each one whole record (json.loads fails on
    a line two writers cut into each other)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a record cut short"
    return [json.loads(line) for line in data.splitlines()]


def records(path: Path, prefix: str, count: int, timeout: float = 8.0) -> list[dict[str, Any]]:
    """The records whose Call-ID starts with ``prefix`` once ``count`` are
    there, and then a moment more (so a second record of a call shows)."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [r for r in all_records(path) if r["call_id"].startswith(prefix)]
        if len(found) >= count:
            time.sleep(0.5)
            return [r for r in all_records(path) if r["call_id"].startswith(prefix)]
        time.sleep(0.1)
    return found


def stats(proxy: procs.ProxyProcess) -> dict[str, Any]:
    res = proxy.ctl("--json", "stats")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def per_worker(figures: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Worker -> the figures this test follows."""
    out = {}
    for n, w in figures["workers"].items():
        acc = w.get("accounting") or {}
        out[n] = {"INVITE": w["requests_by_method"].get("INVITE", 0),
                  "BYE": w["requests_by_method"].get("BYE", 0),
                  "passed": acc.get("byes_passed", 0), "taken": acc.get("byes_taken", 0),
                  "calls": acc.get("calls", 0)}
    return out


def delta(before: dict[str, dict[str, int]],
          after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {n: {k: v - before[n][k] for k, v in w.items()} for n, w in after.items()}


def one_answered_each(recs: list[dict[str, Any]], calls: int, ended_by: str,
                      holds: dict[str, float] | None = None) -> str:
    """Exactly one "answered" record per call, each ended by ``ended_by``,
    its duration the hold time (per Call-ID in ``holds``, else HOLD)."""
    by_call: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_call.setdefault(r["call_id"], []).append(r)
    twice = {c: [r["ended_by"] for r in rs] for c, rs in by_call.items() if len(rs) > 1}
    assert not twice, f"calls written more than once: {twice}"
    assert len(by_call) == calls, f"{len(by_call)} of {calls} calls written"
    wrong = [(r["call_id"], r["kind"], r["ended_by"], r["duration"]) for r in recs
             if r["kind"] != "answered" or r["ended_by"] != ended_by or r.get("bye_code") != 200
             or abs(r["duration"] - (holds or {}).get(r["call_id"], HOLD)) > SLACK]
    assert not wrong, f"records not as the calls went: {wrong}"
    return f"durations {sorted(r['duration'] for r in recs)}"


# --------------------------------------------------------------------------- raw callers


class Call:
    """A raw caller: INVITE and ACK from its own port, the BYE from another
    (a new socket, so the kernel picks the worker afresh)."""

    def __init__(self, host: Host, call_id: str) -> None:
        self.host = host
        self.ep = UdpEndpoint()
        self.invite = SipMessage.parse(build_invite(
            f"sip:ann@{DOMAIN}", sent_by=self.ep.sent_by, call_id=call_id.removesuffix(f"@{DOMAIN}")))
        self.call_id = self.invite.call_id or ""
        self.ok: SipMessage | None = None
        self.answered = 0.0
        self.ended = 0.0

    def start(self) -> None:
        self.ep.send(self.invite.raw, self.host.proxy.address)

    def answer(self, timeout: float = 5.0) -> None:
        got = self.ep.recv_until(is_final, timeout)
        assert got is not None and got.msg.status == 200, f"{self.call_id}: {got}\n{self.host.diag()}"
        self.answered = time.monotonic()
        self.ok = got.msg
        self.ep.send(build_ack_for_2xx(self.invite, got.msg, sent_by=self.ep.sent_by),
                     self.host.proxy.address)

    def hang_up(self, timeout: float = 5.0) -> int | None:
        assert self.ok is not None
        with UdpEndpoint() as other:
            ok = self.ok
            bye = build_request(
                "BYE", procs.uri_of(ok.header("contact") or ""), sent_by=other.sent_by,
                call_id=self.call_id.removesuffix(f"@{DOMAIN}"),
                from_uri=f"sip:alice@{DOMAIN}", from_tag=tag(self.invite.header("from")),
                to_uri=f"sip:ann@{DOMAIN}", to_tag=tag(ok.header("to")), cseq=2,
                extra=[("Route", r) for r in reversed(ok.header_values("record-route"))])
            other.send(bye, self.host.proxy.address)
            got = other.recv_until(is_final, timeout)
            self.ended = time.monotonic()
            return got.msg.status if got is not None else None

    def close(self) -> None:
        self.ep.close()


def tag(header: str | None) -> str:
    return (header or "").split(";tag=", 1)[1].split(";")[0]


def place_calls(host: Host, prefix: str, count: int) -> list[Call]:
    calls = [Call(host, f"{prefix}-{i}") for i in range(count)]
    for c in calls:
        c.start()
    for c in calls:
        c.answer()
    return calls


# --------------------------------------------------------------------------- tests


def test_callee_hangups_are_written_once_whichever_worker_gets_the_bye(
        sipp_bin: str, host: Host, tmp_path: Path) -> None:
    """40 sipp calls whose callee hangs up after HOLD: the callers' INVITEs
    are spread over both workers, the callee's BYEs (one socket) land on
    one; one record per call all the same, ended by the callee."""
    proxy = host.proxy
    calls = 40
    before = per_worker(stats(proxy))
    uas = SippProcess(SCENARIOS / "hangup_uas.xml", name="uas", workdir=tmp_path,
                      local_port=host.hangup_port, calls=calls, timeout_s=40, service="gw",
                      duration_ms=int(HOLD * 1000))
    uas.wait_bound()
    uac = run_sipp(SCENARIOS / "hungup_uac.xml", name="uac", workdir=tmp_path,
                   remote=proxy.address, local_port=procs.free_port(), calls=calls, rate=20,
                   timeout_s=40, service="gw",
                   extra=[*PER_CALL_SOCKETS, "-cid_str", "hangup-%u-%p@sipp"])
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{host.diag()}"
    assert (uac.rc, uac.successful, uac.failed) == (0, calls, 0), "caller side failed" + diag
    assert (res.rc, res.successful, res.failed) == (0, calls, 0), "callee side failed" + diag
    recs = records(host.acc_file, "hangup-", calls)
    figures = delta(before, per_worker(stats(proxy)))
    diag = f"\nper worker {figures}" + diag
    durations = one_answered_each(recs, calls, "callee")
    # Both workers took INVITEs; the BYEs of the calls the other worker
    # holds went over the link and were all taken by it.
    assert all(w["INVITE"] > 0 for w in figures.values()), diag
    passed = sum(w["passed"] for w in figures.values())
    assert passed > 0, "no BYE landed on the other worker than its INVITE" + diag
    assert sum(w["taken"] for w in figures.values()) == passed, diag
    for w in figures.values():  # a worker takes only BYEs it did not get itself
        assert not (w["passed"] and w["taken"]), diag
    assert all(w["calls"] == 0 for w in figures.values()), diag
    print(f"\ncallee hangups: per worker {figures}; {durations}")


def test_caller_hangups_from_another_port(host: Host) -> None:
    """24 calls whose caller sends its BYE from a new port after about HOLD:
    INVITEs and BYEs both spread, independently; one record per call, ended
    by the caller, its duration the caller's own."""
    proxy = host.proxy
    count = 24
    before = per_worker(stats(proxy))
    calls = place_calls(host, "caller-bye", count)
    try:
        time.sleep(HOLD)
        finals = [c.hang_up() for c in calls]
    finally:
        for c in calls:
            c.close()
    diag = f"\nfinals {finals}\n{host.diag()}"
    assert finals == [200] * count, diag
    holds = {c.call_id: c.ended - c.answered for c in calls}
    recs = records(host.acc_file, "caller-bye-", count)
    figures = delta(before, per_worker(stats(proxy)))
    diag = f"\nper worker {figures}" + diag
    durations = one_answered_each(recs, count, "caller", holds)
    assert all(w["INVITE"] > 0 and w["BYE"] > 0 for w in figures.values()), diag
    passed = sum(w["passed"] for w in figures.values())
    assert passed > 0, "no BYE landed on the other worker than its INVITE" + diag
    assert sum(w["taken"] for w in figures.values()) == passed, diag
    print(f"\ncaller hangups: per worker {figures}; {durations}")


def test_missed_and_failed_calls_once_each(sipp_bin: str, host: Host, tmp_path: Path) -> None:
    for service, code, kind in (("busy", 486, "missed"), ("nobody", 404, "failed")):
        scenario = tmp_path / f"rejected_{code}.xml"
        scenario.write_text(REJECTED_UAC.replace("CODE", str(code)))
        uac = run_sipp(scenario, name=f"uac-{service}", workdir=tmp_path, remote=host.proxy.address,
                       local_port=procs.free_port(), calls=12, rate=20, timeout_s=30,
                       service=service,
                       extra=[*PER_CALL_SOCKETS, "-cid_str", f"{service}-%u-%p@sipp"])
        assert (uac.rc, uac.successful) == (0, 12), uac.summary() + host.diag()
        recs = records(host.acc_file, f"{service}-", 12)
        assert len({r["call_id"] for r in recs}) == len(recs) == 12, recs
        assert {(r["kind"], r["code"]) for r in recs} == {(kind, code)}, recs


def test_sigkill_loses_the_held_calls_and_counts_them(host: Host) -> None:
    """Answered calls in both workers; worker 1 killed: the calls it held
    are logged and counted lost, and get no record; the calls worker 0
    holds are written when their BYEs come, whichever worker gets them
    (worker 1 started again, or worker 0)."""
    proxy = host.proxy
    assert proxy.proc is not None
    count = 16
    lost_before = stats(proxy)["supervisor"]["lost_call_records"]
    calls = place_calls(host, "killed", count)
    try:
        time.sleep(1.5)  # a heartbeat of each worker after the answers
        held = {n: w["calls"] for n, w in per_worker(stats(proxy)).items()}
        assert sum(held.values()) == count and all(held.values()), f"held {held}\n{host.diag()}"
        starts = proxy.log_text().count("worker 1: sip proxy ready")
        os.kill(worker_pids(proxy.proc.pid)[1], signal.SIGKILL)
        assert wait_log(proxy, rf"worker 1 held {held['1']} answered call\(s\) for accounting:"
                        " their records are lost", 1, 5.0), host.diag()
        assert wait_log(proxy, r"worker 1: sip proxy ready", starts + 1, 15.0), host.diag()
        lost = stats(proxy)["supervisor"]["lost_call_records"] - lost_before
        assert lost == held["1"], f"lost {lost}, held {held}"
        finals = [c.hang_up() for c in calls]
    finally:
        for c in calls:
            c.close()
    diag = f"\nfinals {finals} held {held}\n{host.diag()}"
    assert finals == [200] * count, diag
    recs = records(host.acc_file, "killed-", held["0"])
    time.sleep(1.0)  # nothing more comes
    recs = [r for r in all_records(host.acc_file) if r["call_id"].startswith("killed-")]
    assert len(recs) == len({r["call_id"] for r in recs}) == held["0"], f"{recs}" + diag
    assert {(r["kind"], r["ended_by"]) for r in recs} == {("answered", "caller")}, diag


def test_every_line_of_the_shared_file_is_one_record(host: Host) -> None:
    recs = all_records(host.acc_file)
    assert len(recs) >= 40 + 24 + 24
    assert all(r["call_id"] and r["kind"] in ("answered", "missed", "failed") for r in recs)
