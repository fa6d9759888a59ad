"""[relay] max_sessions_per_call: one controller's call (Kamailio sends a U
per m= line) cannot take the relay's whole port range (issue 11, defect 6)."""

from __future__ import annotations

import random

import pytest

from sipsuite.rtprelay.control import ControlHandler
from sipsuite.rtprelay.ports import PortAllocator
from sipsuite.rtprelay.table import DEFAULT_MAX_SESSIONS_PER_CALL, SessionTable, TooManySessions

A = ("192.0.2.10", 4000)


class MemoryPorts(PortAllocator):
    bind_address = "127.0.0.1"

    def start(self, session: object) -> None:
        pass

    def address_of(self, leg: object) -> str | None:
        return "127.0.0.1"


def test_table_refuses_a_session_past_the_cap_and_creates_nothing() -> None:
    t = SessionTable(PortAllocator(30000, 30999, random.Random(1)), max_sessions_per_call=3)
    for n in range(1, 4):
        t.update("c", f"ft;{n}", None, A, 0.0)
    used = t.ports.used_count
    with pytest.raises(TooManySessions):
        t.update("c", "ft;4", None, A, 0.0)
    assert (len(t), t.ports.used_count, t.sessions_refused) == (3, used, 1)
    # The call's own streams still work (a retransmission, an answer)...
    assert t.update("c", "ft;2", None, A, 0.1)[1].port is not None
    assert t.lookup("c", "ft;3", "tt;3", A, 0.2) is not None
    # ...other calls are not affected, and a D makes room again.
    t.update("other", "ft;1", None, A, 0.0)
    assert t.delete("c", "ft;1") == 1
    t.update("c", "ft;4", None, A, 0.3)
    assert len(t) == 4 and len([s for s in t if s.call_id == "c"]) == 3


def test_kamailio_style_flood_of_streams_gets_e98_after_the_cap() -> None:
    ports = MemoryPorts(30000, 39999)
    table = SessionTable(ports)
    dispatcher = ControlHandler(table, ports, ["127.0.0.1"])  # type: ignore[arg-type]
    replies = [dispatcher.handle(f"k{n} U flood@h 192.0.2.10 {4000 + 2 * n} ft;{n}".encode())
               for n in range(1, 201)]
    cap = DEFAULT_MAX_SESSIONS_PER_CALL
    assert all(r.split()[1].isdigit() and r.split()[1] != b"0" for r in replies[:cap])
    assert replies[cap:] == [f"k{n} E98\n".encode() for n in range(cap + 1, 201)]
    assert len(table) == cap and ports.used_count == cap  # U: the callee leg's pair
    assert dispatcher.handle(b"d1 D flood@h ft") == b"d1 0\n"
    assert ports.used_count == 0

