"""The accounting module on its own: set up by its SPEC on a FakeCore and
fed response_out calls, no ProxyCore."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fakecore import FakeCore, FakeTx
from proxykit import answer, request

from sipsuite.config import load_config
from sipsuite.proxy.modules.accounting import SPEC, iso
from sipsuite.proxy.net.listener import Source
from sipsuite.sip.parser import parse_datagram


def make(tmp_path: Path, on: bool = True) -> FakeCore:
    path = tmp_path / "c.toml"
    path.write_text(f'[features]\naccounting = {str(on).lower()}\n'
                    f'[accounting]\nfile = "{tmp_path / "calls.jsonl"}"\n'
                    '[management]\nlisten = ""\n')
    core = FakeCore(load_config(str(path)))
    core.modules.setup_all([SPEC], core.config)
    return core


def records(core: FakeCore) -> list[dict[str, Any]]:
    path = Path(core.config.accounting.file)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tx() -> FakeTx:
    req = parse_datagram(request("INVITE", "sip:bob@sipsuite.test"))
    return FakeTx(req, Source("udp", "127.0.0.2", 5070, None))


def test_spec_follows_the_switch(tmp_path: Path) -> None:
    assert make(tmp_path, on=False).hooks.response_out == ()
    core = make(tmp_path)
    assert [owner for owner, _ in core.hooks.response_out] == ["accounting"]


def test_answered_call_start_lives_in_the_call_state(tmp_path: Path) -> None:
    core = make(tmp_path)
    t = tx()
    core.response_out(t, answer(t.request, 100))
    core.clock.advance(2)
    core.response_out(t, answer(t.request, 200, to_tag="callee"))
    core.response_out(t, answer(t.request, 200, to_tag="callee"))  # retransmitted
    acc: Any = core.modules.by_name("accounting")
    assert len(acc.calls) == 1
    core.clock.advance(3)
    assert core.modules.stop() == []
    [rec] = records(core)
    assert (rec["ended_by"], rec["setup_time"], rec["duration"]) == ("shutdown", 2.0, 3.0)
    assert core.stats == {"accounting.records": 1}


def test_missed_call(tmp_path: Path) -> None:
    core = make(tmp_path)
    t = tx()
    core.response_out(t, answer(t.request, 100))
    core.clock.advance(1)
    core.response_out(t, answer(t.request, 486, to_tag="callee"))
    [rec] = records(core)
    assert (rec["kind"], rec["code"], rec["setup_time"]) == ("missed", 486, 1.0)


def test_switched_off_writes_calls_up_as_disabled(tmp_path: Path) -> None:
    core = make(tmp_path)
    t = tx()
    core.response_out(t, answer(t.request, 100))
    core.response_out(t, answer(t.request, 200, to_tag="callee"))
    core.clock.advance(4)
    old = core.config
    new = dataclasses.replace(old, features=dataclasses.replace(old.features, accounting=False))
    core.modules.reconfigure(old, new)
    [rec] = records(core)
    assert (rec["ended_by"], rec["duration"]) == ("disabled", 4.0)
    assert core.modules.by_name("accounting") is None and core.hooks.response_out == ()


# --------------------------------------------------------------------------- worker processes


def worker(tmp_path: Path, index: int) -> tuple[FakeCore, Any]:
    """Worker ``index`` of two, appending to the one file, with its link
    writing into a buffer (the test plays the supervisor)."""
    import io

    from sipsuite.proxy.services import WORKER_LINK
    from sipsuite.proxy.workerlink import WorkerLink

    path = tmp_path / f"w{index}.toml"
    path.write_text(f'[features]\naccounting = true\n[accounting]\nfile = "{tmp_path / "calls.jsonl"}"\n'
                    '[management]\nlisten = ""\n')
    core = FakeCore(load_config(str(path)))
    link = WorkerLink(index, io.StringIO())
    core.modules.provide(WORKER_LINK, link)
    core.modules.setup_all([SPEC], core.config)
    core.modules.start()
    return core, link


def link_lines(link: Any) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in link._out.getvalue().splitlines()]
    link._out.seek(0)
    link._out.truncate()
    return lines


def bye_tx(from_tag: str, to_tag: str, call_id: str = "call-1") -> FakeTx:
    req = parse_datagram(request("BYE", "sip:bob@127.0.0.9", call_id=call_id, branch="bye",
                                 cseq=2, from_tag=from_tag, to_tag=to_tag))
    return FakeTx(req, Source("udp", "127.0.0.9", 5099, None))


def test_a_bye_on_another_worker_is_written_by_the_holder(tmp_path: Path) -> None:
    """Worker 0 sent the 2xx and holds the call; the BYE (the callee's) and
    its 200 pass worker 1: worker 1 writes nothing and sends acc_bye, which
    the supervisor passes to worker 0, which writes the record with the
    BYE's time and side, once."""
    from sipsuite.proxy.workerlink import encode

    w0, link0 = worker(tmp_path, 0)
    w1, link1 = worker(tmp_path, 1)
    t = tx()
    w0.response_out(t, answer(t.request, 100))
    w0.clock.advance(1.0)
    w0.response_out(t, answer(t.request, 200, to_tag="callee"))
    w0.clock.advance(7.0)
    w1.clock.advance(8.25)  # one host, one clock: worker 1 is at the BYE's time
    b = bye_tx("callee", "caller")  # the callee hung up
    w1.response_out(b, answer(b.request, 200))
    assert records(w0) == []
    [msg] = [m for m in link_lines(link1) if m["sipsuite_link"] == "acc_bye"]
    assert (msg["call_id"], msg["from_tag"], msg["to_tag"], msg["code"]) == (
        "call-1", "callee", "caller", 200)
    assert w1.modules.by_name("accounting").stats()["byes_passed"] == 1
    assert "accounting.records" not in w1.stats
    # The supervisor passes it on (workers.py); the holder writes.
    w0.clock.advance(5.0)  # late on the link: the BYE's time counts
    link0.feed(encode("acc_bye", **{k: v for k, v in msg.items() if k != "sipsuite_link"}, by=1))
    [rec] = records(w0)
    assert (rec["kind"], rec["ended_by"], rec["bye_code"]) == ("answered", "callee", 200)
    assert (rec["setup_time"], rec["duration"]) == (1.0, 7.25)
    assert rec["end"] == iso(w1.clock.seconds())
    acc0: Any = w0.modules.by_name("accounting")
    assert acc0.calls == {}
    assert acc0.stats() == {"calls": 0, "records": 1, "write_errors": 0, "byes_passed": 0,
                            "byes_taken": 1, "bad_link_messages": 0}
    # Passed again (a second BYE crossing it) or to a worker that holds
    # nothing: no second record.
    link0.feed(encode("acc_bye", **{k: v for k, v in msg.items() if k != "sipsuite_link"}, by=1))
    link1.feed(encode("acc_bye", **{k: v for k, v in msg.items() if k != "sipsuite_link"}, by=0))
    assert len(records(w0)) == 1
    assert w1.modules.by_name("accounting").stats()["byes_taken"] == 0
    # The holder's own BYE path sends nothing.
    t2 = tx()
    w0.response_out(t2, answer(t2.request, 200, to_tag="other"))
    link_lines(link0)
    b2 = bye_tx("caller", "other")
    w0.response_out(b2, answer(b2.request, 200))
    assert [r["ended_by"] for r in records(w0)] == ["callee", "caller"]
    assert link_lines(link0) == []


def test_bad_acc_bye_messages_are_dropped(tmp_path: Path) -> None:
    from sipsuite.proxy.workerlink import encode

    w0, link0 = worker(tmp_path, 0)
    t = tx()
    w0.response_out(t, answer(t.request, 200, to_tag="callee"))
    good = {"call_id": "call-1", "from_tag": "caller", "to_tag": "callee", "end": 1.0, "code": 200}
    for bad in ({"end": "soon"}, {"end": float("nan")}, {"code": True}, {"call_id": None},
                {"to_tag": 5}):
        link0.feed(encode("acc_bye", **{**good, **bad}))
    link0.feed(b'{"sipsuite_link":"acc_bye"}\n')
    acc0: Any = w0.modules.by_name("accounting")
    assert records(w0) == [] and acc0.bad_link_messages == 6
    assert len(acc0.calls) == 1


def test_the_held_calls_go_in_the_heartbeat(tmp_path: Path) -> None:
    """What the supervisor counts lost if this worker is killed."""
    from types import SimpleNamespace

    from sipsuite.proxy.workerlink import start_heartbeat

    w0, link0 = worker(tmp_path, 0)
    beat = start_heartbeat(SimpleNamespace(unanswered=lambda: 0), link0, w0.clock)
    t = tx()
    w0.response_out(t, answer(t.request, 200, to_tag="callee"))
    w0.clock.advance(1.0)
    beats = [m for m in link_lines(link0) if m["sipsuite_link"] == "load"]
    assert [b.get("acc_calls") for b in beats] == [0, 1]
    w0.modules.stop()  # the module goes: its gauge too
    w0.clock.advance(1.0)
    assert [m.get("acc_calls") for m in link_lines(link0)] == [None]
    beat.stop()


# --------------------------------------------------------------------------- one file, many writers

WRITER = """
import sys, time
from types import SimpleNamespace
from sipsuite.proxy.modules.accounting import AccountingLog

path, me, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
core = SimpleNamespace(config=SimpleNamespace(accounting=SimpleNamespace(file=path)),
                       stats=SimpleNamespace(count=lambda key: None),
                       clock=SimpleNamespace(seconds=time.time))
log = AccountingLog(core)
sys.stdin.readline()  # all start together
for n in range(count):
    assert log.write({"writer": me, "n": n, "pad": me * (size + n % 7)})
"""


def test_records_of_several_processes_never_interleave(tmp_path: Path) -> None:
    """Four processes (as four workers) append records longer than a pipe's
    atomic size and Python's buffer to one file at once: every line is one
    whole record. Each record is one write() on an O_APPEND descriptor."""
    import os
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from sipsuite.proxy.modules.accounting import AccountingLog

    path = tmp_path / "shared.jsonl"
    count, size = 150, 24 * 1024
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), me, str(count), str(size)],
                                stdin=subprocess.PIPE, env=env) for me in "abcd"]
    time.sleep(0.5)
    for p in writers:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
    assert [p.wait(60) for p in writers] == [0] * 4
    seen: dict[str, list[int]] = {}
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    for line in lines:
        rec = json.loads(line)
        me = rec["writer"]
        assert rec["pad"] == me * (size + rec["n"] % 7)
        seen.setdefault(me, []).append(rec["n"])
    assert seen == {me: list(range(count)) for me in "abcd"}
    # The descriptor itself: append mode.
    core = SimpleNamespace(config=SimpleNamespace(accounting=SimpleNamespace(file=str(path))),
                           stats=SimpleNamespace(count=lambda key: None),
                           clock=SimpleNamespace(seconds=time.time))
    log = AccountingLog(core)  # type: ignore[arg-type]
    assert log.write({"kind": "x"})
    flags = int(Path(f"/proc/self/fdinfo/{log._fd}").read_text().split("flags:")[1].split()[0], 8)
    assert flags & os.O_APPEND
    log.close()
