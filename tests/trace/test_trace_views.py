"""The views of a recorded call: the pcap (read back by tshark, over UDP,
TCP and IPv6), the ladder's columns, and the merge of what several
worker processes recorded."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from sipsuite.trace.ladder import columns, draw
from sipsuite.trace.pcap import write_pcap
from sipsuite.trace.query import list_calls, merge_lists, merge_traces


def sip(t: float, direction: str, remote: tuple[str, int], first: str, call_id: str = "x",
        transport: str = "udp", local: tuple[str, int] = ("127.0.0.1", 5060)) -> dict[str, Any]:
    cseq = "1 INVITE" if "INVITE" in first or first.startswith("SIP/") else "1 " + first.split()[0]
    data = (f"{first}\r\nVia: SIP/2.0/{transport.upper()} h;branch=z9hG4bK1\r\n"
            f"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq}\r\nContent-Length: 0\r\n\r\n")
    return {"type": "sip", "t": t, "dir": direction, "transport": transport,
            "local": list(local), "remote": list(remote), "data": data}


def tshark(path: Path) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-e",
                          "frame.protocols", "-e", "ip.src", "-e", "ipv6.src", "-e", "sip.Method",
                          "-e", "sip.Status-Code", "-e", "sip.Call-ID"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_pcap_over_udp_tcp_and_ipv6_reads_as_sip(tmp_path: Path) -> None:
    events = [
        sip(1.0, "in", ("127.0.0.2", 5070), "INVITE sip:b@h SIP/2.0"),
        sip(1.001, "out", ("127.0.0.2", 5070), "SIP/2.0 100 Trying"),
        sip(1.002, "out", ("127.0.0.3", 5080), "INVITE sip:b@127.0.0.3 SIP/2.0", transport="tcp"),
        sip(1.003, "in", ("127.0.0.3", 5080), "SIP/2.0 200 OK", transport="tcp"),
        sip(1.004, "in", ("::1", 5090), "OPTIONS sip:h SIP/2.0", call_id="v6",
            local=("::1", 5060)),
        {"type": "route", "t": 1.0, "hook": "request_route", "action": "relay", "detail": "",
         "where": "x.py:1"},
    ]
    path = tmp_path / "t.pcap"
    with path.open("wb") as f:
        assert write_pcap(f, events) == 5
    rows = tshark(path)
    assert [(r[0].split(":")[-2:], r[1] or r[2], r[3] or r[4]) for r in rows] == [
        (["udp", "sip"], "127.0.0.2", "INVITE"),
        (["udp", "sip"], "127.0.0.1", "100"),
        (["tcp", "sip"], "127.0.0.1", "INVITE"),
        (["tcp", "sip"], "127.0.0.3", "200"),
        (["udp", "sip"], "::1", "OPTIONS"),
    ], rows


def test_ladder_columns_for_a_forked_call_with_a_relay() -> None:
    events = [
        sip(0.0, "in", ("10.0.0.1", 5060), "INVITE sip:b@h SIP/2.0"),
        {"type": "relay", "t": 0.01, "relay": "udp:127.0.0.1:7722", "command": "U x 1.2.3.4 5 t",
         "reply": "30000"},
        sip(0.02, "out", ("10.0.0.2", 5060), "INVITE sip:b@10.0.0.2 SIP/2.0"),
        sip(0.02, "out", ("10.0.0.3", 5060), "INVITE sip:b@10.0.0.3 SIP/2.0"),
        sip(0.5, "in", ("10.0.0.3", 5060), "SIP/2.0 486 Busy Here"),
    ]
    assert [t for _, t in columns(events)] == ["caller", "proxy", "callee-1", "callee-2", "relay"]
    drawn = draw({"call_id": "x", "events": events, "result": 486, "reason": "Busy Here"},
                 full=True)
    assert "x" in drawn.splitlines()[0] and "486 Busy Here" in drawn.splitlines()[0]
    busy = next(ln for ln in drawn.splitlines() if "486" in ln and ln.startswith("+"))
    # From callee-2 (the fourth line) back to the proxy (the second).
    assert busy.index("<") < busy.index("486") < busy.rindex("|")
    assert "relay udp:127.0.0.1:7722: U x 1.2.3.4 5 t" in drawn


def test_merge_of_two_workers_traces_and_lists() -> None:
    first = {"call_id": "c", "start": 1.0, "dropped": 0, "bytes": 10, "events": [
        sip(1.0, "in", ("10.0.0.1", 5060), "INVITE sip:b@h SIP/2.0", call_id="c"),
        sip(1.5, "out", ("10.0.0.1", 5060), "SIP/2.0 200 OK", call_id="c")]}
    second = {"call_id": "c", "start": 9.0, "dropped": 1, "bytes": 5, "events": [
        sip(9.0, "in", ("10.0.0.2", 5060), "BYE sip:a@h SIP/2.0", call_id="c"),
        sip(9.1, "out", ("10.0.0.2", 5060), "SIP/2.0 200 OK", call_id="c")]}
    second["events"][1]["data"] = second["events"][1]["data"].replace("1 INVITE", "1 BYE")
    merged = merge_traces([None, second, first], "c")
    assert merged is not None
    assert [e["t"] for e in merged["events"]] == [1.0, 1.5, 9.0, 9.1]
    assert (merged["result"], merged["duration"], merged["dropped"]) == (200, 7.6, 1)

    rows = merge_lists([{"calls": [{"call_id": "c", "start": 1.0, "result": 200,
                                    "method": "INVITE"}], "stats": {"calls": 1}},
                        {"calls": [{"call_id": "c", "start": 0.5, "result": None},
                                   {"call_id": "d", "start": 3.0, "result": 486}],
                         "stats": {"calls": 2}}])
    assert [(r["call_id"], r["start"], r["result"]) for r in rows["calls"]] == [
        ("d", 3.0, 486), ("c", 0.5, 200)]
    assert rows["stats"] == {"calls": 3}


def test_list_filters() -> None:
    rows = [{"call_id": "a", "start": 1.0, "method": "INVITE", "from": "sip:alice@h",
             "to": "sip:bob@h", "result": 200},
            {"call_id": "b", "start": 2.0, "method": "INVITE", "from": "sip:carol@h",
             "to": "sip:bob@h", "result": 486},
            {"call_id": "c", "start": 3.0, "method": "REGISTER", "from": "sip:alice@h",
             "to": "sip:alice@h", "result": 200},
            {"call_id": "d", "start": 4.0, "method": "INVITE", "from": "sip:alice@h",
             "to": "sip:dave@h", "result": None}]

    def ids(**kw: Any) -> list[str]:
        return [r["call_id"] for r in list_calls(rows, **kw)]

    assert ids() == ["d", "b", "a"]
    assert ids(every=True) == ["d", "c", "b", "a"]
    assert ids(user="alice") == ["d", "a"]
    assert ids(result="failed") == ["b"]
    assert ids(result="4xx") == ["b"]
    assert ids(result="answered") == ["a"]
    assert ids(result="none") == ["d"]
    assert ids(since=1.5) == ["d", "b"]
    assert ids(limit=1) == ["d"]
