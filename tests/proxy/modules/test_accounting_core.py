"""Call accounting: whole calls through an in-process ProxyCore on a
task.Clock (no sockets), and the JSON lines they leave in the file."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from proxykit import START, ProxyKit, answer, request

from sipsuite.ops.liveops import cfg_set
from sipsuite.proxy.modules.accounting import iso
from sipsuite.sip.message import Request

CALLER = "127.0.0.2"
CALLEE = "127.0.0.9"
STATIC = {"bob": f"sip:bob@{CALLEE}:5099"}
ROUTE = "<sip:127.0.0.1:5060;lr>"


def make_kit(tmp_path: Path, on: bool = True, **tables: dict[str, Any]) -> ProxyKit:
    acc = {"file": str(tmp_path / "acc" / "calls.jsonl"), **tables.pop("accounting", {})}
    return ProxyKit(tmp_path, static=STATIC, features={"accounting": on, **tables.pop("features", {})},
                    accounting=acc, **tables)


def records(kit: ProxyKit) -> list[dict[str, Any]]:
    path = Path(kit.core.config.accounting.file)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def acc(kit: ProxyKit) -> Any:
    """The accounting module, None when it is not set up."""
    return kit.core.modules.by_name("accounting")


def invite(kit: ProxyKit, call_id: str = "call-1", user: str = "bob") -> Request:
    """The caller's INVITE; returns it as the proxy forwarded it to the callee."""
    kit.take()
    kit.feed(request("INVITE", f"sip:{user}@sipsuite.test", call_id=call_id, branch=f"i-{call_id}"),
             CALLER)
    forwarded = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]
    return forwarded[-1] if forwarded else None  # type: ignore[return-value]


def callee_says(kit: ProxyKit, fwd: Request, *statuses: int) -> list[int]:
    """Feed the callee's answers; the statuses the caller got."""
    kit.take()
    for status in statuses:
        kit.feed(answer(fwd, status, to_tag="callee" if status > 100 else None), CALLEE, 5099)
    return [m.status for m, h, _ in kit.sent if h == CALLER]


def bye(kit: ProxyKit, call_id: str = "call-1", by: str = "caller", status: int = 200) -> None:
    if by == "caller":
        data = request("BYE", f"sip:bob@{CALLEE}:5099", host=CALLER, call_id=call_id,
                       branch=f"bye-{call_id}", cseq=2, from_tag="caller", to_tag="callee",
                       route=ROUTE)
        src = CALLER
    else:
        # The callee's BYE: its tag in From, the caller's in To.
        text = request("BYE", f"sip:alice@{CALLER}:5070", host=CALLEE, port=5099,
                       call_id=call_id, branch=f"bye-{call_id}", cseq=1, from_tag="callee",
                       to_tag="caller", route=ROUTE).decode()
        text = text.replace("From: <sip:alice@sipsuite.test>", "From: <sip:bob@sipsuite.test>")
        data = text.encode()
        src = CALLEE
    kit.take()
    kit.feed(data, src, 5070 if src == CALLER else 5099)
    dest = CALLEE if by == "caller" else CALLER
    fwd = [m for m, h, _ in kit.sent if h == dest and not hasattr(m, "status")]
    assert fwd, f"BYE not forwarded: {kit.sent}"
    kit.feed(answer(fwd[-1], status), dest, 5099 if dest == CALLEE else 5070)


def test_answered_call_record(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    fwd = invite(kit)
    kit.clock.advance(1.5)  # ringing
    assert callee_says(kit, fwd, 180, 200) == [180, 200]
    kit.clock.advance(30.25)
    assert records(kit) == []  # nothing until the call ends
    bye(kit)
    [rec] = records(kit)
    assert rec["kind"] == "answered"
    assert rec["call_id"] == "call-1"
    assert rec["from"] == "sip:alice@sipsuite.test" and rec["to"] == "sip:bob@sipsuite.test"
    assert rec["ruri"] == "sip:bob@sipsuite.test"
    assert (rec["from_tag"], rec["to_tag"]) == ("caller", "callee")
    assert rec["code"] == 200 and rec["reason"] == "OK"
    assert rec["start"] == iso(START)
    assert rec["answer"] == iso(START + 1.5)
    assert rec["end"] == rec["time"] == iso(START + 31.75)
    assert rec["setup_time"] == 1.5 and rec["duration"] == 30.25
    assert rec["ended_by"] == "caller" and rec["bye_code"] == 200
    assert rec["source"] == f"udp:{CALLER}:5070"
    assert acc(kit).calls == {}
    assert kit.core.stats["accounting.records"] == 1


def test_calls_up_at_shutdown_are_written(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    callee_says(kit, invite(kit), 200)
    kit.clock.advance(12.5)
    assert records(kit) == []
    kit.core.stop()
    [rec] = records(kit)
    assert rec["kind"] == "answered" and rec["ended_by"] == "shutdown"
    assert rec["duration"] == 12.5 and "bye_code" not in rec
    assert acc(kit).calls == {}


def test_2xx_retransmitted_after_the_bye_is_not_a_new_call(tmp_path: Path) -> None:
    """The callee resends its 200 (the ACK was lost) after the BYE: the
    INVITE transaction forwards it, but the call was already written once."""
    kit = make_kit(tmp_path)
    fwd = invite(kit)
    callee_says(kit, fwd, 180, 200)
    kit.clock.advance(1.0)
    bye(kit)
    kit.clock.advance(0.5)
    assert callee_says(kit, fwd, 200) == [200]
    assert acc(kit).calls == {}
    kit.clock.advance(43200 + 61)
    assert [(r["kind"], r["ended_by"]) for r in records(kit)] == [("answered", "caller")]


def test_header_bytes_that_are_not_utf8_keep_the_record(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    kit.take()
    data = request("INVITE", "sip:bob@sipsuite.test", call_id="cid-X", branch="i-x")
    kit.feed(data.replace(b"cid-X", b"cid-\xff\xfe"), CALLER)
    fwd = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")][-1]
    callee_says(kit, fwd, 486)
    [rec] = records(kit)
    assert rec["kind"] == "missed" and rec["call_id"] == "cid-\udcff\udcfe"
    assert "accounting.write_errors" not in kit.core.stats


def test_callee_hangs_up(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    callee_says(kit, invite(kit), 200)
    kit.clock.advance(5)
    bye(kit, by="callee")
    [rec] = records(kit)
    assert rec["ended_by"] == "callee" and rec["duration"] == 5.0


def test_retransmitted_2xx_and_bye_write_once(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    fwd = invite(kit)
    callee_says(kit, fwd, 200, 200, 200)
    bye(kit)
    # A retransmitted BYE: the transaction answers it again, nothing more is written.
    kit.take()
    kit.feed(request("BYE", f"sip:bob@{CALLEE}:5099", call_id="call-1", branch="bye-call-1",
                     cseq=2, to_tag="callee", route=ROUTE), CALLER)
    assert [m.status for m, _, _ in kit.sent] == [200]
    assert [r["kind"] for r in records(kit)] == ["answered"]


def test_missed_and_failed(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    for n, status in enumerate((486, 480, 603, 408, 404, 488, 500)):
        fwd = invite(kit, call_id=f"c{n}")
        kit.clock.advance(2)
        got = callee_says(kit, fwd, 180, status)
        assert got[-1] == status
    kit.feed(request("INVITE", "sip:nobody@sipsuite.test", call_id="c-404", branch="n"), CALLER)
    recs = records(kit)
    assert [(r["kind"], r["code"]) for r in recs] == [
        ("missed", 486), ("missed", 480), ("missed", 603), ("missed", 408),
        ("failed", 404), ("failed", 488), ("failed", 500), ("failed", 404)]
    assert recs[0]["reason"] == "Busy Here" and recs[0]["setup_time"] == 2.0
    assert recs[0]["call_id"] == "c0" and recs[-1]["call_id"] == "c-404"
    assert recs[-1]["ruri"] == "sip:nobody@sipsuite.test"
    assert "duration" not in recs[0]


def test_cancelled_call_is_missed_487(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    fwd = invite(kit)
    callee_says(kit, fwd, 180)
    kit.take()
    cancel = request("CANCEL", "sip:bob@sipsuite.test", call_id="call-1", branch="i-call-1")
    kit.feed(cancel, CALLER)
    fwd_cancel = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]
    kit.feed(answer(fwd_cancel[-1], 200), CALLEE, 5099)
    kit.feed(answer(fwd, 487, to_tag="callee"), CALLEE, 5099)
    [rec] = records(kit)
    assert (rec["kind"], rec["code"], rec["reason"]) == ("missed", 487, "Request Terminated")


def test_challenge_is_not_a_call(tmp_path: Path) -> None:
    kit = make_kit(tmp_path, features={"auth": True})
    kit.take()
    kit.feed(request("INVITE", "sip:bob@sipsuite.test"), CALLER)
    assert [m.status for m, _, _ in kit.sent] == [100, 407]
    assert records(kit) == []


def test_reinvite_is_not_a_new_call(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    callee_says(kit, invite(kit), 200)
    kit.take()
    kit.feed(request("INVITE", f"sip:bob@{CALLEE}:5099", call_id="call-1", branch="re", cseq=3,
                     to_tag="callee", route=ROUTE), CALLER)
    fwd = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")]
    kit.feed(answer(fwd[-1], 491, to_tag="callee"), CALLEE, 5099)
    assert records(kit) == []
    assert len(acc(kit).calls) == 1


def test_call_without_bye_ends_at_max_duration(tmp_path: Path) -> None:
    kit = make_kit(tmp_path, accounting={"max_duration": 100.0})
    callee_says(kit, invite(kit), 200)
    kit.clock.advance(99)
    assert records(kit) == []
    kit.clock.advance(2)
    [rec] = records(kit)
    assert rec["ended_by"] == "timeout" and rec["duration"] == 100.0
    assert "bye_code" not in rec
    assert acc(kit).calls == {}
    bye(kit)  # the BYE that comes after all: nothing more to write
    assert len(records(kit)) == 1


def test_max_duration_read_at_use_time(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)  # 12 h by default
    callee_says(kit, invite(kit), 200)
    core = kit.core
    core.config = dataclasses.replace(
        core.config, accounting=dataclasses.replace(core.config.accounting, max_duration=10.0))
    kit.clock.advance(61)  # the timer waits at most 60 s before it looks again
    kit.clock.advance(1)
    [rec] = records(kit)
    assert rec["ended_by"] == "timeout" and rec["duration"] == 10.0


def test_tracked_calls_are_bounded(tmp_path: Path) -> None:
    kit = make_kit(tmp_path, accounting={"max_calls": 3})
    for n in range(5):
        callee_says(kit, invite(kit, call_id=f"c{n}"), 200)
        kit.clock.advance(1)
    assert len(acc(kit).calls) == 3
    assert [(r["call_id"], r["ended_by"]) for r in records(kit)] == [
        ("c0", "evicted"), ("c1", "evicted")]


def test_off_writes_no_file(tmp_path: Path) -> None:
    kit = make_kit(tmp_path, on=False)
    callee_says(kit, invite(kit), 200)
    bye(kit)
    fwd = invite(kit, call_id="c2")
    callee_says(kit, fwd, 486)
    assert not Path(kit.core.config.accounting.file).exists()
    assert not (tmp_path / "acc").exists()
    assert acc(kit) is None


def test_write_failure_is_logged_not_raised(tmp_path: Path) -> None:
    kit = make_kit(tmp_path, accounting={"file": str(tmp_path)})  # a directory
    fwd = invite(kit)
    assert callee_says(kit, fwd, 486) == [486]  # the call itself goes on
    assert kit.core.stats["accounting.write_errors"] == 1
    # Fixed at run time: the next record goes to the new file.
    good = tmp_path / "good.jsonl"
    core = kit.core
    core.config = dataclasses.replace(
        core.config, accounting=dataclasses.replace(core.config.accounting, file=str(good)))
    callee_says(kit, invite(kit, call_id="c2"), 603)
    assert [json.loads(x)["code"] for x in good.read_text().splitlines()] == [603]


def test_rotated_file_is_reopened(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    callee_says(kit, invite(kit, call_id="c1"), 486)
    path = Path(kit.core.config.accounting.file)
    os.rename(path, path.with_suffix(".1"))
    callee_says(kit, invite(kit, call_id="c2"), 486)
    assert [r["call_id"] for r in records(kit)] == ["c2"]
    old = path.with_suffix(".1").read_text().splitlines()
    assert [json.loads(x)["call_id"] for x in old] == ["c1"]


def test_cfg_set_switches_accounting_at_run_time(tmp_path: Path) -> None:
    kit = make_kit(tmp_path, on=False)
    assert acc(kit) is None and kit.core.hooks.response_out == ()
    cfg_set(kit.core, "features.accounting", True)
    assert acc(kit) is not None
    callee_says(kit, invite(kit), 200)
    kit.clock.advance(5)
    assert records(kit) == []
    # Switched off: the call still up is written now, and nothing more.
    cfg_set(kit.core, "features.accounting", False)
    [rec] = records(kit)
    assert (rec["call_id"], rec["ended_by"], rec["duration"]) == ("call-1", "disabled", 5.0)
    assert acc(kit) is None and kit.core.hooks.response_out == ()
    bye(kit)
    callee_says(kit, invite(kit, call_id="c2"), 486)
    assert len(records(kit)) == 1
