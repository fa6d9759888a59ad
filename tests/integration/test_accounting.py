"""Call accounting (Kamailio's acc, ``[features] accounting``) with real sipp
calls through a real proxy process: one JSON line per call in the file.

Two proxies, UDP/TCP on 127.0.0.1 at ports chosen at run time, each with
static bindings:

    bob    -> sipp uas_answer.xml      (answered; BYE after the caller's pause)
    carol  -> sipp cancel_uas.xml      (rings until the caller CANCELs: 487)
    busy   -> RawCallee: 180, then 486
    nobody -> (no binding: 404 from the proxy)

``acc`` has accounting on; ``noacc`` has it off with a file configured,
which must never appear. Each sipp caller uses its own Call-ID prefix
(-cid_str) so a test finds its records among the others'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs
import pytest
from procs import (
    CalleeBehaviour,
    ProxyFactory,
    ProxyProcess,
    RawCallee,
    SippProcess,
    SippResult,
    run_sipp,
    sipp_dir,
)

PAUSE_MS = 2000

# A caller whose call is refused: INVITE, [100], [180], the expected final, ACK
# (same branch as the INVITE: it is element 0, the ACK element 4).
REJECTED_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="call refused with CODE">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: "sipp caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"></recv>
  <recv response="180" optional="true"></recv>
  <recv response="CODE"></recv>
  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-4];rport
      Max-Forwards: 70
      From: "sipp caller" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="500"/>
</scenario>
"""


@dataclass
class Net:
    acc: ProxyProcess
    noacc: ProxyProcess
    acc_file: Path
    noacc_file: Path
    uas_port: int
    cancel_port: int
    busy: RawCallee


@pytest.fixture(scope="module")
def net(proxy_factory: ProxyFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    busy = RawCallee(behaviour=CalleeBehaviour(provisional=(180,), final=486, final_delay=0.3))
    uas_port, cancel_port = procs.free_port(), procs.free_port()
    static = {
        "bob": [f"sip:bob@127.0.0.1:{uas_port}"],
        "carol": [f"sip:carol@127.0.0.1:{cancel_port}"],
        "busy": [busy.uri("busy")],
    }
    files = tmp_path_factory.mktemp("accfiles")
    acc_file, noacc_file = files / "acc" / "calls.jsonl", files / "noacc" / "calls.jsonl"
    try:
        acc = proxy_factory("acc", static=static, tables={
            "features": {"accounting": True}, "accounting": {"file": str(acc_file)}})
        noacc = proxy_factory("noacc", static=static, tables={
            "accounting": {"file": str(noacc_file)}})
        yield Net(acc, noacc, acc_file, noacc_file, uas_port, cancel_port, busy)
    finally:
        busy.close()


def records(path: Path, prefix: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The records whose Call-ID starts with ``prefix``, once ``count`` are there."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            found = [r for r in map(json.loads, path.read_text().splitlines())
                     if r["call_id"].startswith(prefix)]
            if len(found) >= count:
                break
        time.sleep(0.1)
    return found


def start_uas(scenario: Path, workdir: Path, port: int, service: str) -> SippProcess:
    uas = SippProcess(scenario, name=f"uas-{service}", workdir=workdir, local_port=port, calls=1,
                      timeout_s=20, service=service)
    uas.wait_bound()
    return uas


def call(proxy: ProxyProcess, workdir: Path, scenario: Path, service: str, prefix: str,
         duration_ms: int | None = None) -> SippResult:
    return run_sipp(scenario, name=f"uac-{prefix}", workdir=workdir, remote=proxy.address,
                    local_port=procs.free_port(), calls=1, timeout_s=20, service=service,
                    duration_ms=duration_ms, extra=["-cid_str", f"{prefix}-%u-%p@sipp"])


def rejected_scenario(workdir: Path, code: int) -> Path:
    path = workdir / f"rejected_{code}.xml"
    path.write_text(REJECTED_UAC.replace("CODE", str(code)))
    return path


def answered_call(net: Net, proxy: ProxyProcess, workdir: Path, prefix: str) -> str:
    uas = start_uas(sipp_dir() / "uas_answer.xml", workdir, net.uas_port, "bob")
    uac = call(proxy, workdir, sipp_dir() / "call_uac.xml", "bob", prefix, duration_ms=PAUSE_MS)
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{proxy.diagnostics()}"
    assert (uac.rc, uac.successful, res.successful) == (0, 1, 1), diag
    return diag


def test_answered_call(sipp_bin: str, net: Net, tmp_path: Path) -> None:
    diag = answered_call(net, net.acc, tmp_path, "answered")
    recs = records(net.acc_file, "answered-", 1)
    assert len(recs) == 1, f"records: {recs}{diag}"
    rec = recs[0]
    assert rec["kind"] == "answered" and rec["code"] == 200, rec
    assert rec["ended_by"] == "caller" and rec["bye_code"] == 200, rec
    # The caller pauses PAUSE_MS between its ACK and its BYE.
    assert PAUSE_MS / 1000 - 0.1 <= rec["duration"] <= PAUSE_MS / 1000 + 1.0, rec
    assert rec["from"].startswith("sip:caller@127.0.0.1:"), rec
    assert rec["to"] == rec["ruri"] == f"sip:bob@{net.acc.hostport}", rec
    for key in ("start", "answer", "end", "time"):
        assert rec[key].endswith("Z") and rec[key][:4].isdigit(), rec
    assert rec["start"] <= rec["answer"] <= rec["end"], rec


def test_busy_is_missed(sipp_bin: str, net: Net, tmp_path: Path) -> None:
    uac = call(net.acc, tmp_path, rejected_scenario(tmp_path, 486), "busy", "busy")
    assert (uac.rc, uac.successful) == (0, 1), uac.summary() + net.acc.diagnostics()
    recs = records(net.acc_file, "busy-", 1)
    assert [(r["kind"], r["code"], r["reason"]) for r in recs] == [("missed", 486, "Busy Here")]
    assert recs[0]["setup_time"] >= 0.25, recs  # the callee waits 0.3 s before its 486


def test_unknown_user_is_failed(sipp_bin: str, net: Net, tmp_path: Path) -> None:
    uac = call(net.acc, tmp_path, rejected_scenario(tmp_path, 404), "nobody", "unknown")
    assert (uac.rc, uac.successful) == (0, 1), uac.summary() + net.acc.diagnostics()
    recs = records(net.acc_file, "unknown-", 1)
    assert [(r["kind"], r["code"]) for r in recs] == [("failed", 404)]
    assert recs[0]["ruri"] == f"sip:nobody@{net.acc.hostport}"


def test_cancelled_call_is_missed(sipp_bin: str, net: Net, tmp_path: Path) -> None:
    uas = start_uas(sipp_dir() / "cancel_uas.xml", tmp_path, net.cancel_port, "carol")
    uac = call(net.acc, tmp_path, sipp_dir() / "cancel_uac.xml", "carol", "cancelled")
    res = uas.wait()
    diag = f"\n{uac.summary()}\n{res.summary()}\n{net.acc.diagnostics()}"
    assert (uac.rc, uac.successful) == (0, 1), diag
    recs = records(net.acc_file, "cancelled-", 1)
    assert [(r["kind"], r["code"]) for r in recs] == [("missed", 487)], diag


def test_accounting_off_writes_no_file(sipp_bin: str, net: Net, tmp_path: Path) -> None:
    answered_call(net, net.noacc, tmp_path, "off-answered")
    uac = call(net.noacc, tmp_path, rejected_scenario(tmp_path, 486), "busy", "off-busy")
    assert uac.successful == 1, uac.summary()
    time.sleep(0.5)
    assert not net.noacc_file.exists()
    assert not net.noacc_file.parent.exists()
