"""relay.session.created / .ended and relay_sessions() from the proxy's media
module (sipsuite.proxy.media.sessions): the split deployment's view of the
sessions it holds on relays, checked against a real relay command handler
and session table; nothing for a relay in this process."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fakecore import FakeCore
from memoryrelay import MemoryPorts
from test_media import invite, media_config, run
from test_media_limits import CALLER, sdp

from sipsuite.api import Handle
from sipsuite.eventbus import Event
from sipsuite.proxy.api import CallState
from sipsuite.proxy.media.local import LOCAL_RELAY_URI, LocalRelayClient
from sipsuite.proxy.media.manager import MediaManager
from sipsuite.proxy.modules import nat as nat_module
from sipsuite.proxy.modules.events import SPEC as EVENTS_SPEC
from sipsuite.proxy.modules.media import add_media
from sipsuite.proxy.services import EVENTS
from sipsuite.rtprelay.control import ControlHandler
from sipsuite.rtprelay.table import SessionTable


def setup(**client: Any) -> tuple[FakeCore, MediaManager, SessionTable]:
    core = FakeCore(media_config("always", max_sessions_per_source=0))
    core.modules.setup_all([EVENTS_SPEC, nat_module.SPEC], core.config)
    table = SessionTable(MemoryPorts(30000, 30999))
    handler = ControlHandler(table, table.ports, ["127.0.0.1"])  # type: ignore[arg-type]
    media = add_media(core, LocalRelayClient(lambda: handler, reactor=core.clock, **client))
    return core, media, table


def subscribe(core: FakeCore, names: str = "relay.session.*") -> list[Event]:
    got: list[Event] = []
    core.modules.require(EVENTS).bus.subscribe(names, got.append)
    return got


def offer(media: MediaManager, call_id: str, streams: int = 1) -> None:
    req = invite(body=sdp(streams))
    req.set_header("Call-ID", call_id)
    assert run(media.offer(SimpleNamespace(request=req, source=SimpleNamespace(
        host=CALLER, listener=SimpleNamespace(advertise="127.0.0.1")), vars={},
        call=CallState()))) is True


def seen(core: FakeCore, got: list[Event]) -> list[tuple[Any, ...]]:
    core.clock.advance(0)  # delivery is in a later reactor turn
    out = [(e.name.rsplit(".", 1)[1], e["call_id"], e["from_tag"], e["relay"],
            *((e["reason"],) if "reason" in e.data else ())) for e in got]
    got.clear()
    return out


def test_one_created_per_stream_and_ended_on_delete() -> None:
    core, media, table = setup()
    got = subscribe(core)
    offer(media, "c1", streams=2)
    # The same values the relay's own table holds (what the in-process
    # events carry): the wire Call-ID and the offerer's tag;N.
    assert sorted((s.call_id, s.from_tag) for s in table) == [("c1", "ft;1"), ("c1", "ft;2")]
    assert seen(core, got) == [("created", "c1", "ft;1", LOCAL_RELAY_URI),
                               ("created", "c1", "ft;2", LOCAL_RELAY_URI)]
    offer(media, "c1", streams=2)  # a re-offer finds the sessions: no new event
    assert seen(core, got) == []
    assert run(media.delete("c1", "ft")) is True
    assert len(table) == 0
    assert seen(core, got) == [("ended", "c1", "ft;1", LOCAL_RELAY_URI, "deleted"),
                               ("ended", "c1", "ft;2", LOCAL_RELAY_URI, "deleted")]


def test_ended_says_why_the_proxy_let_go() -> None:
    core, media, table = setup(call_idle_time=100, max_calls=2)
    got = subscribe(core, "relay.session.ended")
    offer(media, "gone")
    table.delete("gone", "ft")  # the relay ended it itself: D finds nothing
    assert run(media.delete("gone", "ft")) is False
    offer(media, "idle")
    core.clock.advance(101)
    media.client._purge_idle()
    offer(media, "old")
    offer(media, "mid")
    offer(media, "new")  # max_calls 2: "old" is pushed out
    assert [(c, r) for _, c, _, _, r in seen(core, got)] == [
        ("gone", "gone"), ("idle", "idle"), ("old", "evicted")]


def test_relay_sessions_lists_what_the_proxy_holds() -> None:
    core, media, _table = setup()
    handle = Handle(core)  # type: ignore[arg-type]
    assert handle.relay_sessions() == []
    core.clock.advance(5)
    offer(media, "c2")
    assert handle.relay_sessions() == [{"call_id": "c2", "from_tag": "ft;1",
                                        "relay": LOCAL_RELAY_URI, "created": core.wall()}]
    run(media.delete("c2", "ft"))
    assert handle.relay_sessions() == []


def test_nothing_for_the_relay_in_this_process() -> None:
    # twistd sipsuite: that relay's own table raises its events.
    core, media, table = setup()
    media.sessions.in_process = frozenset({LOCAL_RELAY_URI})
    got = subscribe(core)
    offer(media, "c3")
    run(media.delete("c3", "ft"))
    assert seen(core, got) == [] and media.sessions.sessions() == []
    assert table.sessions_created == 1


def test_no_event_built_without_a_subscriber() -> None:
    core, media, _table = setup()
    bus = core.modules.require(EVENTS).bus
    built: list[str] = []
    original = bus.emit
    bus.emit = lambda name, **data: (built.append(name), original(name, **data))  # type: ignore[method-assign]
    offer(media, "c4")
    run(media.delete("c4", "ft"))
    assert built == []
    subscribe(core, "relay.session.ended")
    offer(media, "c5")
    run(media.delete("c5", "ft"))
    assert built == ["relay.session.ended"]
