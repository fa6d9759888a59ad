"""The flight recorder seen from outside: a sipp call through a real proxy
process, then ``sipsuite-ctl calls``, ``trace`` (the ladder, --full) and
``trace --pcap`` read back with tshark.

- ``twistd sip-proxy``: sipp call_uac.xml -> proxy -> sipp uas_answer.xml.
- ``twistd sipsuite`` with RTP through the relay in its process: the relay's
  U/L/D commands are in the trace too, in their own column.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import procs
from common import free_port_range
from procs import LOCALHOST, SippProcess, sipp_dir
from test_media_relay import media_tables, sipp_media

from sipsuite.trace.ladder import TIME, WIDTH

LADDER = ["INVITE", "100 Trying", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"]


def one_call(proxy: procs.ProxyProcess, uas_port: int, work: Path, rtp: bool = False) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if rtp:
        shutil.copy(sipp_dir() / "tone_440hz_1s.alaw", work / "tone_440hz_1s.alaw")
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                      local_port=uas_port, calls=1, timeout_s=30, service="bob",
                      extra=sipp_media("-rtp_echo") if rtp else ())
    uas.wait_bound()
    caller = SippProcess(sipp_dir() / ("call_uac_rtp.xml" if rtp else "call_uac.xml"),
                         name="uac", workdir=work, remote=proxy.address,
                         local_port=procs.free_port(), calls=1, timeout_s=30, service="bob",
                         duration_ms=1000, extra=sipp_media() if rtp else ())
    uac, res = caller.wait(), uas.wait()
    assert (uac.rc, uac.successful, res.successful) == (0, 1, 1), (
        f"call failed\n{uac.summary()}\n{res.summary()}\n{proxy.diagnostics()}")


def ctl_json(proxy: procs.ProxyProcess, *args: str) -> Any:
    shown = proxy.ctl("--json", *args)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def sip_arrows(ladder: str) -> list[tuple[str, int, int]]:
    """(label, from column, to column) of each arrow of a drawn ladder,
    the columns numbered from 0 (the caller) as the header lists them."""
    out = []
    for row in ladder.splitlines():
        if not row.startswith("+"):
            continue
        body = row[TIME:]
        first = min(i for i in (body.find("<"), body.find("-")) if i >= 0)
        last = max(body.rfind(">"), body.rfind("-"))
        a, b = (first - 1) // WIDTH, (last + 1) // WIDTH
        label = body[first:last + 1].strip("<>-").strip()
        out.append((label, b, a) if body[first] == "<" else (label, a, b))
    return out


def check_call_ladder(proxy: procs.ProxyProcess, call_id: str) -> str:
    shown = proxy.ctl("trace", call_id)
    assert shown.returncode == 0, shown.stderr
    ladder = shown.stdout
    drawn = sip_arrows(ladder)
    # caller = column 0, proxy = 1, callee = 2
    expected = [("INVITE", 0, 1), ("100 Trying", 1, 0), ("INVITE", 1, 2), ("100 Trying", 2, 1),
                ("180 Ringing", 2, 1), ("180 Ringing", 1, 0), ("200 OK", 2, 1), ("200 OK", 1, 0),
                ("ACK", 0, 1), ("ACK", 1, 2), ("BYE", 0, 1), ("BYE", 1, 2), ("200 OK", 2, 1),
                ("200 OK", 1, 0)]
    assert [a for a in drawn if a[0] in LADDER] == expected, ladder
    header = ladder.splitlines()[1]
    assert header.split()[:3] == ["caller", "proxy", "callee"], ladder
    return ladder


def tshark_sip(path: Path) -> list[tuple[str, int]]:
    """(method or status, UDP destination port) of each SIP packet, in order."""
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "sip", "-T", "fields",
                          "-e", "sip.Method", "-e", "sip.Status-Line", "-e", "ip.src",
                          "-e", "udp.srcport", "-e", "udp.dstport"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.splitlines():
        method, status, _src, _sport, dport = line.split("\t")
        rows.append((method or " ".join(status.split()[1:]), int(dport)))
    return rows


def test_sip_proxy_call_is_recorded_drawn_and_written_as_pcap(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    uas_port = procs.free_port()
    proxy = proxy_factory("recorder", plugin="sip-proxy",
                          static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          tables={"trace": {"memory": "4MB"}})
    one_call(proxy, uas_port, tmp_path / "sipp")

    listed = ctl_json(proxy, "calls")["calls"]
    assert len(listed) == 1, listed
    call = listed[0]
    assert (call["result"], call["from"].split("@")[0], call["to"].split("@")[0]) == (
        200, "sip:caller", "sip:bob"), call
    assert call["duration"] is not None and 0.5 < call["duration"] < 10, call
    table = proxy.ctl("calls").stdout
    assert call["call_id"] in table and "200 OK" in table, table
    assert call["call_id"] in proxy.ctl("calls", "--result", "answered").stdout
    assert "no calls recorded" in proxy.ctl("calls", "--result", "failed").stdout
    assert "no calls recorded" in proxy.ctl("calls", "--user", "nobody-else").stdout

    check_call_ladder(proxy, call["call_id"])

    full = proxy.ctl("trace", "--full", call["call_id"]).stdout
    # The routing decisions beside the messages, with the line that made them.
    assert re.search(r"request_route: relay to sip:bob@127\.0\.0\.1:\d+ .*"
                     r"\[sipsuite/proxy/routing/default\.py:\d+\]", full), full
    assert re.search(r"request_route: record_route\s+\[sipsuite/proxy/routing/default\.py:\d+\]",
                     full), full
    assert "Call-ID: " + call["call_id"] in full

    pcap = tmp_path / "call.pcap"
    wrote = proxy.ctl("trace", "--pcap", str(pcap), call["call_id"])
    assert wrote.returncode == 0 and "wrote 14 packet(s)" in wrote.stdout, wrote.stdout + wrote.stderr
    seen = tshark_sip(pcap)
    p = proxy.port
    caller = int(call["from"].rsplit(":", 1)[1])  # sipp's From: sip:caller@127.0.0.1:PORT
    assert seen == [("INVITE", p), ("100 Trying", caller), ("INVITE", uas_port),
                    ("100 Trying", p), ("180 Ringing", p), ("180 Ringing", caller), ("200 OK", p),
                    ("200 OK", caller), ("ACK", p), ("ACK", uas_port), ("BYE", p),
                    ("BYE", uas_port), ("200 OK", p), ("200 OK", caller)], seen


def test_suite_call_with_rtp_shows_the_relay_commands(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    ports = free_port_range(40)
    uas_port = procs.free_port()
    proxy = proxy_factory("recorder-rtp", static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          tables=media_tables(ports))
    one_call(proxy, uas_port, tmp_path / "sipp", rtp=True)
    call = ctl_json(proxy, "calls")["calls"][0]
    assert call["result"] == 200, call
    ladder = check_call_ladder(proxy, call["call_id"])
    assert ladder.splitlines()[1].split()[3] == "relay", ladder
    verbs = [a[0] for a in sip_arrows(ladder) if a[1] == 3 or a[2] == 3]
    # U before the INVITE goes on, L with the 200, D with the BYE; each answered.
    assert [v for v in verbs if v in ("U", "L", "D")] == ["U", "L", "D"], ladder
    trace = ctl_json(proxy, "trace", call["call_id"])
    relay = [e for e in trace["events"] if e["type"] == "relay"]
    assert [e["command"].split()[0][0].upper() for e in relay] == ["U", "L", "D"], relay
    assert all(not e["reply"].startswith(("failed", "E")) for e in relay), relay


def register_with_digest(proxy: procs.ProxyProcess, work: Path) -> dict[str, Any]:
    added = proxy.ctl("user", "add", "alice", "secret")
    assert added.returncode == 0, added.stderr
    reg = procs.run_sipp(sipp_dir() / "register_auth_uac.xml", name="reg", workdir=work,
                         remote=proxy.address, local_port=procs.free_port(), calls=1,
                         timeout_s=10, service="alice", extra=["-au", "alice", "-ap", "secret"])
    assert (reg.rc, reg.successful) == (0, 1), reg.summary() + proxy.diagnostics()
    every = ctl_json(proxy, "calls", "--all", "--user", "alice")["calls"]
    # (The harness's start-up OPTIONS ping is there too: --all lists every exchange.)
    rows = [r for r in every if r["method"] != "OPTIONS"]
    assert [(r["method"], r["result"]) for r in rows] == [("REGISTER", 200)], every
    assert ctl_json(proxy, "calls")["calls"] == [], "a REGISTER listed as a call"
    return ctl_json(proxy, "trace", rows[0]["call_id"])


def test_authorization_is_masked_in_the_trace_unless_asked_for(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    proxy = proxy_factory("recorder-auth", plugin="sip-proxy",
                          tables={"features": {"auth": True}})
    trace = register_with_digest(proxy, tmp_path / "masked")
    texts = [e["data"] for e in trace["events"] if e["type"] == "sip"]
    assert [t.split(" ", 1)[0] for t in texts] == ["REGISTER", "SIP/2.0", "REGISTER", "SIP/2.0"]
    auth = re.search(r"\r\nAuthorization:([^\r\n]*)", texts[2])
    assert auth is not None, texts[2]
    assert 'username="alice"' in auth.group(1) and 'response="***"' in auth.group(1), auth.group(1)
    assert not re.search(r'response="[0-9a-f]{32}"', texts[2])
    decisions = [(e["action"], e["detail"]) for e in trace["events"] if e["type"] == "route"]
    assert ("auth_check", "'alice' (www): no valid credentials (challenged or refused)") in decisions
    assert ("auth_check", "'alice' (www): valid credentials") in decisions
    # The 401 made by the auth module for the script's auth_check: both named.
    challenge = next(e for e in trace["events"] if e["type"] == "route" and e["action"] == "reply")
    assert challenge["detail"].startswith("401") and "(by auth." in challenge["where"], challenge

    shown = proxy_factory("recorder-creds", plugin="sip-proxy",
                          tables={"features": {"auth": True}, "trace": {"show_credentials": True}})
    trace = register_with_digest(shown, tmp_path / "shown")
    texts = [e["data"] for e in trace["events"] if e["type"] == "sip"]
    assert re.search(r'response="[0-9a-f]{32}"', texts[2]), texts[2]


def test_many_calls_into_a_small_memory_keep_the_newest_and_the_failed_one(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    """[trace] memory = "48kB" holds a handful of calls: after a first call,
    a failed one (404: nobody registered) and 60 more at 30 calls/s, the
    store is within its bound, the first call is gone, the failed one is
    still there, and what is left of the answered calls is the newest."""
    uas_port = procs.free_port()
    proxy = proxy_factory("recorder-bound", plugin="sip-proxy",
                          static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          tables={"trace": {"memory": "48kB"}})
    one_call(proxy, uas_port, tmp_path / "first")
    first = ctl_json(proxy, "calls")["calls"][0]["call_id"]
    scenario = tmp_path / "expect_404.xml"
    scenario.write_text((procs.SCENARIOS / "uac_expect_final.xml").read_text()
                        .replace("EXPECTED_STATUS", "404"))
    failed = procs.run_sipp(scenario, name="fail", workdir=tmp_path / "fail", remote=proxy.address,
                            local_port=procs.free_port(), calls=1, timeout_s=10, service="nobody",
                            extra=["-key", "from_host", "sipsuite.test"])
    assert (failed.rc, failed.successful) == (0, 1), failed.summary() + proxy.diagnostics()
    failed_id = ctl_json(proxy, "calls", "--result", "404")["calls"][0]["call_id"]

    work = tmp_path / "many"
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                      local_port=uas_port, calls=60, timeout_s=40, service="bob")
    uas.wait_bound()
    many = SippProcess(sipp_dir() / "call_uac.xml", name="uac", workdir=work,
                       remote=proxy.address, local_port=procs.free_port(), calls=60,
                       timeout_s=40, service="bob", rate=30, duration_ms=100)
    uac, res = many.wait(), uas.wait()
    assert (uac.successful, res.successful) == (60, 60), uac.summary() + proxy.diagnostics()

    listed = ctl_json(proxy, "calls", "--limit", "1000")
    stats, rows = listed["stats"], listed["calls"]
    assert 0 < stats["bytes"] <= stats["memory"] == 48 * 1024, stats
    ids = [r["call_id"] for r in rows]
    assert first not in ids and failed_id in ids, ids
    assert stats["evicted"] >= 50, stats
    answered = [int(r["call_id"].split("-")[0]) for r in rows if r["result"] == 200]
    # sipp numbers its calls 1..60: the newest are kept, without a gap.
    assert answered and sorted(answered) == list(range(61 - len(answered), 61)), answered


def test_with_workers_the_supervisor_asks_every_worker(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    """[proxy] workers = 2: calls and trace through the supervisor's
    management port find the call whichever worker carried it (the other
    has no such call: not an error while one has it)."""
    import redisproc

    redis = redisproc.RedisServer()
    redis.start()
    try:
        workers_call(proxy_factory, redis.url(3), tmp_path)
    finally:
        redis.close()


def workers_call(proxy_factory: procs.ProxyFactory, redis_url: str, tmp_path: Path) -> None:
    uas_port = procs.free_port()
    proxy = proxy_factory("recorder-workers", plugin="sip-proxy",
                          static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          extra_proxy={"workers": 2}, tables={"redis": {"url": redis_url}})
    deadline = time.monotonic() + 20
    while len(re.findall(r"worker [01]: sip proxy ready", proxy.log_text())) < 2:
        assert time.monotonic() < deadline, proxy.diagnostics(80)
        time.sleep(0.1)
    one_call(proxy, uas_port, tmp_path / "sipp")
    listed = ctl_json(proxy, "calls")["calls"]
    assert [(c["result"], c["to"].split("@")[0]) for c in listed] == [(200, "sip:bob")], listed
    check_call_ladder(proxy, listed[0]["call_id"])
    missing = proxy.ctl("trace", "no-such-call")
    assert missing.returncode == 1 and "no call 'no-such-call' recorded" in missing.stderr
