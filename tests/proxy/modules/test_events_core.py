"""Events (sipsuite.api): whole calls through an in-process ProxyCore on a
task.Clock, and what a subscriber receives, when, and what it costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxykit import ProxyKit, answer, request
from twisted.internet import defer

from sipsuite.eventbus import Event
from sipsuite.ops.liveops import cfg_set
from sipsuite.proxy.services import EVENTS
from sipsuite.sip.message import Request

CALLER = "127.0.0.2"
CALLEE = "127.0.0.9"
STATIC = {"bob": f"sip:bob@{CALLEE}:5099"}
ROUTE = "<sip:127.0.0.1:5060;lr>"


def bus(kit: ProxyKit) -> Any:
    return kit.core.modules.require(EVENTS).bus


def collect(kit: ProxyKit, names: Any, **kw: Any) -> list[Event]:
    got: list[Event] = []
    bus(kit).subscribe(names, got.append, **kw)
    return got


def invite(kit: ProxyKit, call_id: str = "call-1") -> Request:
    kit.take()
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", call_id=call_id, branch=f"i-{call_id}"),
             CALLER)
    return [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")][-1]


def callee_says(kit: ProxyKit, fwd: Request, *statuses: int) -> None:
    for status in statuses:
        kit.feed(answer(fwd, status, to_tag="callee" if status > 100 else None), CALLEE, 5099)


def bye_from_caller(kit: ProxyKit, call_id: str = "call-1") -> None:
    kit.take()
    kit.feed(request("BYE", f"sip:bob@{CALLEE}:5099", call_id=call_id, branch=f"bye-{call_id}",
                     cseq=2, from_tag="caller", to_tag="callee", route=ROUTE), CALLER)
    fwd = [m for m, h, _ in kit.sent if h == CALLEE and not hasattr(m, "status")][-1]
    kit.feed(answer(fwd, 200), CALLEE, 5099)


def owners(kit: ProxyKit) -> set[str]:
    points = kit.core.hooks
    return {owner for p in ("request_in", "request_received", "branch_out", "response_in",
                            "response_out") for owner, _ in getattr(points, p)}


def test_nothing_is_hooked_until_someone_subscribes(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, static=STATIC)
    callee_says(kit, invite(kit), 180, 200)
    assert "events" not in owners(kit)
    assert not bus(kit).wants("call.ended")
    collect(kit, "call.ended")
    assert "events" in owners(kit)


def test_answered_call_events_arrive_in_a_later_turn(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, static=STATIC)
    got = collect(kit, "call.*")
    fwd = invite(kit)
    assert got == []  # not from inside the SIP path
    kit.clock.advance(0)
    assert [e.name for e in got] == ["call.started"]
    kit.clock.advance(1.5)
    callee_says(kit, fwd, 180, 200)
    kit.clock.advance(30.25)
    bye_from_caller(kit)
    kit.clock.advance(0)
    started, answered, ended = got
    assert answered.name == "call.answered" and answered["setup_time"] == 1.5
    assert answered["code"] == 200
    assert ended.name == "call.ended"
    assert ended.data == {
        "call_id": "call-1", "from": "sip:alice@sipsuite.test", "to": "sip:bob@sipsuite.test",
        "ruri": "sip:bob@sipsuite.test", "source": f"udp:{CALLER}:5070", "code": 200,
        "setup_time": 1.5, "answered": True, "cause": "caller-hangup", "reason": "BYE",
        "bye_code": 200, "duration": 30.25}
    assert ended.to_dict()["event"] == "call.ended"


def test_busy_callee_ends_an_unanswered_call(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, static=STATIC)
    got = collect(kit, ["call.started", "call.ended"])
    fwd = invite(kit)
    kit.clock.advance(2)
    callee_says(kit, fwd, 180, 486)
    kit.clock.advance(0)
    assert [e.name for e in got] == ["call.started", "call.ended"]
    ended = got[1]
    assert (ended["answered"], ended["cause"], ended["code"], ended["duration"]) == (
        False, "busy", 486, 0.0)
    assert ended["setup_time"] == 2.0


def test_an_invite_answered_here_is_no_call(tmp_path: Path) -> None:
    """404 for an unknown user: a request answered, no call started or ended."""
    kit = ProxyKit(tmp_path, static=STATIC)
    got = collect(kit, ["call.*", "request.*"])
    kit.feed(request("INVITE", "sip:nobody@sipsuite.test"), CALLER)
    kit.clock.advance(0)
    assert [(e.name, e["method"], e.data.get("code")) for e in got] == [
        ("request.received", "INVITE", None), ("request.answered", "INVITE", 404)]


def test_a_slow_subscriber_has_a_bounded_backlog_and_counts_drops(tmp_path: Path) -> None:
    """One event in flight (its Deferred not fired), two queued, the rest
    dropped; the SIP side never waits, and delivery resumes in order."""
    kit = ProxyKit(tmp_path, static=STATIC)
    pending: list[defer.Deferred[None]] = []
    seen: list[str] = []

    def slow(event: Event) -> defer.Deferred[None]:
        seen.append(event["call_id"])
        d: defer.Deferred[None] = defer.Deferred()
        pending.append(d)
        return d

    sub = bus(kit).subscribe("call.started", slow, backlog=2)
    for i in range(6):
        invite(kit, f"c{i}")
        kit.clock.advance(0)
    assert seen == ["c0"]
    assert (len(sub.queue), sub.dropped) == (2, 3)
    assert kit.core.modules.by_name("events").stats()["events"]["dropped"] == 3
    pending[0].callback(None)
    kit.clock.advance(0)
    assert seen == ["c0", "c1"]
    pending[1].callback(None)
    kit.clock.advance(0)
    pending[2].callback(None)
    kit.clock.advance(0)
    assert seen == ["c0", "c1", "c2"] and sub.delivered == 3


def test_a_raising_subscriber_is_counted_and_goes_on(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, static=STATIC)
    calls: list[str] = []

    def broken(event: Event) -> None:
        calls.append(event["call_id"])
        raise RuntimeError("bug")

    sub = bus(kit).subscribe("call.started", broken)
    invite(kit, "a")
    invite(kit, "b")
    kit.clock.advance(0)
    assert calls == ["a", "b"] and sub.failed == 2


def test_registration_events(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    got = collect(kit, "registration.*")

    def register(expires: int, cseq: int, phone: str = "127.0.0.2") -> None:
        data = request("REGISTER", "sip:sipsuite.test", call_id=f"reg-{phone}",
                       branch=f"r{cseq}{phone}", cseq=cseq, host=phone).decode()
        data = data.replace("To: <sip:bob@sipsuite.test>", "To: <sip:alice@sipsuite.test>")
        data = data.replace(f"Contact: <sip:alice@{phone}:5070>",
                            f"Contact: <sip:alice@{phone}:5070>;expires={expires}")
        kit.feed(data.encode(), phone)

    register(300, 1)
    register(300, 1, phone="127.0.0.3")  # alice's second phone
    kit.clock.advance(0)
    assert [(e.name, e["aor"], e["contact"], e["expires"]) for e in got] == [
        ("registration.added", "alice", "sip:alice@127.0.0.2:5070", 300),
        ("registration.added", "alice", "sip:alice@127.0.0.3:5070", 300)]
    del got[:]
    register(300, 2)  # refreshes the first phone only
    register(0, 3)
    kit.clock.advance(0)
    assert [(e.name, e["aor"], e["contact"]) for e in got] == [
        ("registration.refreshed", "alice", "sip:alice@127.0.0.2:5070"),
        ("registration.removed", "alice", "sip:alice@127.0.0.2:5070")]


def test_config_changed(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    got = collect(kit, "config.changed")
    cfg_set(kit.core, "timers.t1", 0.25)
    kit.clock.advance(0)
    assert [e["changed"] for e in got] == [["timers.t1"]]


def test_unknown_event_name_is_refused(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path)
    try:
        bus(kit).subscribe("call.hangup", lambda e: None)
    except ValueError as e:
        assert "unknown event 'call.hangup'" in str(e)
    else:
        raise AssertionError("subscribe accepted an unknown event")


def test_dispatcher_destination_down_and_up(tmp_path: Path) -> None:
    """The prober's verdicts (FakeCore: the test answers its OPTIONS)."""
    from fakecore import FakeCore

    from sipsuite.config import load_config
    from sipsuite.proxy.modules.dispatcher.dispatcher import SPEC as DISPATCHER_SPEC
    from sipsuite.proxy.modules.events import SPEC as EVENTS_SPEC
    from sipsuite.proxy.net.listener import Listener
    from sipsuite.sip.message import make_response
    from sipsuite.sip.parser import parse_datagram

    gw = "sip:127.0.0.11:5060"
    path = tmp_path / "c.toml"
    path.write_text('[management]\nlisten = ""\n[dispatcher]\nprobe_interval = 10.0\n'
                    f'probe_failures = 1\n[dispatcher.sets]\n1 = ["{gw}"]\n')
    core = FakeCore(load_config(str(path)))
    core.net.listeners.append(Listener("udp", "127.0.0.1", 5060, "127.0.0.1"))
    core.modules.setup_all([EVENTS_SPEC, DISPATCHER_SPEC], core.config)
    core.modules.start()
    got: list[Event] = []
    core.modules.require(EVENTS).bus.subscribe("dispatcher.*", got.append)
    core.clock.advance(10.0)
    core.uac.requests[-1].result.callback(None)  # no answer: down
    core.clock.advance(10.0)
    ok = make_response(parse_datagram(request("OPTIONS", gw)), 200, "OK")
    core.uac.requests[-1].result.callback(ok)  # answered: up again
    core.clock.advance(0)
    assert [(e.name, e["setid"], e["uri"]) for e in got] == [
        ("dispatcher.down", 1, gw), ("dispatcher.up", 1, gw)]


def test_deferreds_already_fired_count_as_delivered_or_failed(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, static=STATIC)
    results = [defer.succeed(None), defer.fail(RuntimeError("bad")), defer.succeed(None)]
    sub = bus(kit).subscribe("call.started", lambda e: results.pop(0))
    for i in range(3):
        invite(kit, f"d{i}")
    kit.clock.advance(0)
    assert (sub.delivered, sub.failed, len(sub.queue)) == (2, 1, 0)


def test_an_answered_call_without_a_bye_ends_at_max_duration(tmp_path: Path) -> None:
    kit = ProxyKit(tmp_path, static=STATIC, accounting={"max_duration": 100.0})
    got = collect(kit, "call.ended")
    callee_says(kit, invite(kit), 200)
    kit.clock.advance(99)
    assert got == []
    kit.clock.advance(61)  # the timer wakes at least once a minute
    [ended] = got
    assert (ended["cause"], ended["duration"], ended["answered"]) == ("timeout", 100.0, True)
    assert kit.core.modules.by_name("events").calls == {}


def worker_kit(tmp_path: Path, index: int) -> tuple[ProxyKit, Any]:
    """A ProxyKit core as worker ``index`` of two: the link to its
    supervisor provided before the modules are set up, as build_core does."""
    import io

    from sipsuite.proxy.build import BUILTIN_MODULES
    from sipsuite.proxy.services import WORKER_LINK
    from sipsuite.proxy.workerlink import WorkerLink

    (tmp_path / f"w{index}").mkdir()
    kit = ProxyKit(tmp_path / f"w{index}", static=STATIC, modules=())
    link = WorkerLink(index, io.StringIO())
    kit.core.modules.provide(WORKER_LINK, link)
    kit.core.modules.setup_all(BUILTIN_MODULES, kit.core.config)
    kit.core.modules.start()
    return kit, link


def test_a_bye_on_another_worker_ends_the_call_once_from_its_holder(tmp_path: Path) -> None:
    """Worker 0 answered the call; the caller's BYE lands on worker 1, which
    holds nothing: it sends ev_bye, the supervisor passes it to worker 0
    (workers.py), and worker 0 raises call.ended with the BYE's time and
    side, once.  Worker 1 raises none."""
    import json

    from sipsuite.proxy.workerlink import encode

    w0, link0 = worker_kit(tmp_path, 0)
    w1, link1 = worker_kit(tmp_path, 1)
    got0, got1 = collect(w0, "call.ended"), collect(w1, "call.ended")
    fwd = invite(w0)
    callee_says(w0, fwd, 180, 200)
    w0.clock.advance(4.0)
    w1.clock.advance(4.0)  # one host, one clock
    bye_from_caller(w1)
    w1.clock.advance(0.1)
    assert got1 == []
    sent = [json.loads(line) for line in link1._out.getvalue().splitlines()]
    [msg] = [m for m in sent if m["sipsuite_link"] == "ev_bye"]
    assert (msg["call_id"], msg["from_tag"], msg["to_tag"], msg["code"]) == (
        "call-1", "caller", "callee", 200)
    w0.clock.advance(2.0)  # late on the link: the BYE's own time counts
    relayed = encode("ev_bye", **{k: v for k, v in msg.items() if k != "sipsuite_link"}, by=1)
    link0.feed(relayed)
    link0.feed(relayed)  # passed twice: still one event
    link1.feed(relayed)  # a worker that holds nothing raises nothing
    w0.clock.advance(0.1)
    w1.clock.advance(0.1)
    [ended] = got0
    assert (ended["cause"], ended["duration"], ended["code"]) == ("caller-hangup", 4.0, 200)
    assert got1 == []
    events0 = w0.core.modules.require(EVENTS)
    assert (events0.byes_taken, events0.bad_link_messages) == (1, 0)
    link0.feed(encode("ev_bye", call_id="call-1", from_tag="a", to_tag="b", end="soon", code=200))
    assert events0.bad_link_messages == 1
