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
from sipsuite.proxy.modules.accounting import SPEC
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
