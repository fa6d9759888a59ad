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
from pathlib import Path
from typing import Any

import procs
from common import free_port_range
from procs import LOCALHOST, SippProcess, sipp_dir
from sipsuite.trace.ladder import TIME, WIDTH
from test_media_relay import media_tables, sipp_media

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
