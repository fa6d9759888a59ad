"""The feature routes of DefaultRouting (sipsuite.proxy.routing.features) without a
reactor: a stand-in core records what the routing answers or relays to, and
the config is swapped between requests the way ``sipsuite-ctl cfg set`` does."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from sipsuite.config import Config, load_config
from sipsuite.config.values import Invalid, host_or_empty, regex
from sipsuite.proxy.core.hooks import HookPoints
from sipsuite.proxy.core.modules import ModuleRegistry
from sipsuite.proxy.registrar.location import Binding
from sipsuite.proxy.registrar.outbound import Flows
from sipsuite.proxy.routing.base import RequestContext
from sipsuite.proxy.routing.default import DefaultRouting
from sipsuite.proxy.routing.features import RouteState, pstn_number, target_uri
from sipsuite.proxy.services import AUTH, FLOWS, LOCATION
from sipsuite.sip.message import make_response
from sipsuite.sip.parser import parse_datagram

PATTERN = r"^(\+|00)[1-9][0-9]{3,20}$"


class FakeCore:
    """What DefaultRouting asks of ProxyCore; answers and relays are recorded."""

    def __init__(self, config: Config, bindings: dict[str, list[Binding]] | None = None) -> None:
        self.config = config
        self.modules = ModuleRegistry(self, HookPoints())  # type: ignore[arg-type]  # none set up
        self.bindings = bindings or {}
        self.trusted_hosts: set[str] = set()
        self.replies: list[tuple[int, str | None]] = []
        self.relays: list[list[str]] = []
        self.identity = self
        self.modules = ModuleRegistry(self, HookPoints())  # type: ignore[arg-type]
        self.modules.provide(FLOWS, Flows(self, ""))  # type: ignore[arg-type]
        self.modules.provide(LOCATION, self)  # type: ignore[arg-type]

    def is_myself(self, host: str, port: int | None) -> bool:
        return host == "sipsuite.test"

    def is_local_domain(self, host: str) -> bool:
        return host == "sipsuite.test"

    def is_trusted(self, host: str) -> bool:
        return host in self.trusted_hosts

    async def lookup(self, user: str) -> list[Binding]:
        return self.bindings.get(user, [])

    def reply(self, ctx: Any, status: int, reason: str | None, headers: Any) -> None:
        self.replies.append((status, reason))

    def relay(self, ctx: Any, targets: list[Any]) -> None:
        self.relays.append([str(getattr(t, "uri", t)) for t in targets])


def config(**sections: dict[str, Any]) -> Config:
    c = load_config(None)
    for name, values in sections.items():
        c = dataclasses.replace(c, **{name: dataclasses.replace(getattr(c, name), **values)})
    return c


def invite(ruri: str, from_host: str = "sipsuite.test", to_tag: str = "") -> Any:
    text = (
        f"INVITE {ruri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKtest1\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{from_host}>;tag=a1\r\n"
        f"To: <{ruri}>{';tag=' + to_tag if to_tag else ''}\r\n"
        "Call-ID: feat-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    return parse_datagram(text.encode())


def route(core: FakeCore, req: Any, source_host: str = "192.0.2.5") -> RequestContext:
    ctx = RequestContext(core, req, SimpleNamespace(host=source_host, port=5060, transport="udp"),
                         False)  # type: ignore[arg-type]
    coro = DefaultRouting(core).request_route(ctx)  # type: ignore[arg-type]
    with pytest.raises(StopIteration):
        coro.send(None)  # the stand-in never waits
    return ctx


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


_PREFIX = re.compile(r"^route \S+ \S+ cid=\S+: ")


def step_of(event: dict[str, Any]) -> str | None:
    """The step of a routing-step log line (what follows "route METHOD URI
    cid=CID: "), None for any other event."""
    if event.get("log_namespace") != "sipsuite.proxy.routing":
        return None
    text = formatEvent(event)
    return text[m.end():] if (m := _PREFIX.match(text)) else None


def route_lines(events: list[dict[str, Any]]) -> list[str]:
    return [s for s in map(step_of, events) if s is not None]


# --- pure helpers --------------------------------------------------------------------


@pytest.mark.parametrize(("user", "number"), [
    ("+4930123456", "+4930123456"), ("004930123456", "+4930123456"), ("+1234", "+1234"),
    ("bob", None), ("4930123456", None), ("+0301234", None), ("+123", None), ("00", None),
])
def test_pstn_number(user: str, number: str | None) -> None:
    assert pstn_number(user, PATTERN) == number


def test_target_uri_escapes_the_user() -> None:
    assert str(target_uri("+4930", "gw.example.net", 5080)) == "sip:+4930@gw.example.net:5080"
    assert str(target_uri("a b@c", "[2001:db8::1]", 5060)) == "sip:a%20b%40c@[2001:db8::1]:5060"


def test_host_or_empty_and_regex_validators() -> None:
    assert host_or_empty("") == ""
    assert host_or_empty("GW.Example.NET") == "gw.example.net"
    assert host_or_empty("2001:db8::1") == "[2001:db8::1]"
    assert host_or_empty("[2001:db8::1]") == "[2001:db8::1]"
    for bad in ("gw example", "10.0.0.1:5060", 5060, "sip:gw"):
        with pytest.raises(Invalid):
            host_or_empty(bad)
    assert regex(PATTERN) == PATTERN
    with pytest.raises(Invalid, match="regular expression"):
        regex("(")


# --- pstn ----------------------------------------------------------------------------


PSTN_ON = {"features": {"pstn": True}, "pstn": {"gw_ip": "192.0.2.99", "gw_port": 5080}}


@pytest.mark.parametrize("dialled", ["+4930123456", "004930123456"])
def test_pstn_relays_to_gateway(dialled: str) -> None:
    core = FakeCore(config(**PSTN_ON))
    route(core, invite(f"sip:{dialled}@sipsuite.test"))
    assert core.relays == [["sip:+4930123456@192.0.2.99:5080"]] and core.replies == []


def test_pstn_foreign_caller_403() -> None:
    core = FakeCore(config(**PSTN_ON))
    route(core, invite("sip:+4930123456@sipsuite.test", from_host="other.example"))
    assert core.replies == [(403, "Not Allowed")] and core.relays == []


def test_pstn_with_auth_needs_authentication_or_ipauth() -> None:
    """With auth on, a trusted source calling as a local user is challenged
    without ipauth and goes to the gateway with it."""
    features = {"pstn": True, "auth": True}
    core = FakeCore(config(features=features, pstn=PSTN_ON["pstn"]))
    core.modules.provide(AUTH, SimpleNamespace(check=_challenge))  # type: ignore[arg-type]
    core.trusted_hosts.add("192.0.2.5")
    route(core, invite("sip:+4930123456@sipsuite.test"))
    assert core.relays == [] and core.challenged == 1  # type: ignore[attr-defined]
    core.config = config(features={**features, "ipauth": True}, pstn=PSTN_ON["pstn"])
    route(core, invite("sip:+4930123456@sipsuite.test"))
    assert core.relays == [["sip:+4930123456@192.0.2.99:5080"]]


async def _challenge(ctx: RequestContext, user: str, proxy: bool) -> bool:
    ctx.core.challenged = getattr(ctx.core, "challenged", 0) + 1  # type: ignore[attr-defined]
    return False


def test_pstn_off_or_no_gateway_looks_up_the_user() -> None:
    for sections in ({"pstn": PSTN_ON["pstn"]}, {"features": {"pstn": True}}):
        core = FakeCore(config(**sections))
        route(core, invite("sip:+4930123456@sipsuite.test"))
        assert core.replies == [(404, "Not Found")] and core.relays == []


# --- voicemail and the failure route ------------------------------------------------


VM_ON = {"features": {"voicemail": True}, "voicemail": {"srv_ip": "192.0.2.77"}}


def test_voicemail_for_user_without_bindings() -> None:
    core = FakeCore(config(**VM_ON))
    route(core, invite("sip:carol@sipsuite.test"))
    assert core.relays == [["sip:carol@192.0.2.77:5060"]]


def _failure(core: FakeCore, ctx: RequestContext, status: int) -> None:
    resp = make_response(ctx.request, status, "X", to_tag="t")
    result = DefaultRouting(core).failure_route(ctx, resp)  # type: ignore[arg-type]
    assert result is None


@pytest.mark.parametrize(("status", "to_voicemail"), [(486, True), (408, True), (480, False),
                                                      (603, False)])
def test_voicemail_on_busy_or_no_answer(status: int, to_voicemail: bool) -> None:
    dave = Binding(contact="sip:dave@192.0.2.8", expires=1e12, q=1.0, call_id="c", cseq=1,
                   updated=0.0)
    core = FakeCore(config(**VM_ON), {"dave": [dave]})
    ctx = route(core, invite("sip:dave@sipsuite.test"))
    assert core.relays == [["sip:dave@192.0.2.8"]]
    _failure(core, ctx, status)
    assert (core.relays[1:] == [["sip:dave@192.0.2.77:5060"]]) is to_voicemail
    if to_voicemail:
        # Once on voicemail, a busy voicemail is the caller's answer.
        _failure(core, ctx, 486)
        assert len(core.relays) == 2


@pytest.mark.parametrize(("switch", "status"), [("block3xx", 302), ("block3xx", 301),
                                                ("block401407", 401), ("block401407", 407)])
def test_blocks(switch: str, status: int) -> None:
    core = FakeCore(config(features={switch: True}))
    ctx = route(core, invite("sip:1234@other.example"), source_host="192.0.2.5")
    _failure(core, ctx, status)
    assert core.replies[-1] == (404, "Not Found")
    core.config = config()
    core.replies.clear()
    _failure(core, ctx, status)
    assert core.replies == []


# --- debug ---------------------------------------------------------------------------


def test_debug_switch_is_read_per_request(logged: list[dict[str, Any]]) -> None:
    """Off: no step is logged; after the config is swapped (cfg set) the next
    request logs each step at info level, named by method, URI and Call-ID."""
    core = FakeCore(config())
    route(core, invite("sip:carol@sipsuite.test"))
    assert route_lines(logged) == []
    core.config = config(features={"debug": True})
    route(core, invite("sip:carol@sipsuite.test"))
    steps = route_lines(logged)
    assert steps == ["auth: off", "location: 'carol': no bindings", "location: 'carol': not found -> 404"]
    event = next(e for e in logged if step_of(e) == "auth: off")
    assert event["log_level"].name == "info"
    assert (event["method"], str(event["uri"]), event["cid"]) == ("INVITE", "sip:carol@sipsuite.test",
                                                                  "feat-1")


def test_trace_alias_logs_the_same_line_only_with_debug(logged: list[dict[str, Any]]) -> None:
    """FeatureRoutes.trace(ctx, step), deprecated, is ctx.trace: silent while
    debug is off, the same "route ..." line when it is on."""
    core = FakeCore(config())
    ctx = RequestContext(core, invite("sip:carol@sipsuite.test"), None, False)  # type: ignore[arg-type]
    routing = DefaultRouting(core)  # type: ignore[arg-type]
    routing.trace(ctx, "custom {step} with braces")
    assert route_lines(logged) == []
    ctx.debug = True
    routing.trace(ctx, "custom {step} with braces")
    assert route_lines(logged) == ["custom {step} with braces"]


# --- RouteState: what the script keeps of a request --------------------------------


def _binding(user: str, q: float) -> Binding:
    return Binding(contact=f"sip:{user}@192.0.2.{int(q * 10)}", expires=1e12, q=q, call_id="c",
                   cseq=1, updated=0.0)


def test_route_state_carries_serial_forking_to_the_failure_route(
        logged: list[dict[str, Any]]) -> None:
    """location() keeps the dialled user, that it relayed and the groups of
    lower q in ctx.call's RouteState; the failure route takes the next group
    from there, and ctx.vars is left to the user (but for the deprecated
    mirrors of one release)."""
    bindings = [_binding("eve", 0.9), _binding("eve2", 0.9), _binding("eve", 0.5)]
    core = FakeCore(config(registrar={"serial_forking": True}, features={"debug": True}),
                    {"eve": bindings})
    ctx = route(core, invite("sip:eve@sipsuite.test"))
    state = ctx.call.get(RouteState)
    assert (state.dialled, state.located, state.authenticated, state.to_voicemail) == (
        "eve", True, False, False)
    assert [[b.contact for b, _ in group] for group in state.serial] == [["sip:eve@192.0.2.5"]]
    assert core.relays == [["sip:eve@192.0.2.9", "sip:eve2@192.0.2.9"]]
    assert ctx.vars == {"oexten": "eve", "location": True}
    _failure(core, ctx, 480)
    assert core.relays[1:] == [["sip:eve@192.0.2.5"]] and state.serial == []
    assert route_lines(logged)[-2:] == [
        "location: 'eve': 2 binding(s) -> relay to sip:eve@192.0.2.9, sip:eve2@192.0.2.9",
        "failure route: 480 -> next serial group: sip:eve@192.0.2.5"]


def test_route_state_marks_the_authenticated_caller() -> None:
    core = FakeCore(config(features={"auth": True}))
    core.modules.provide(AUTH, SimpleNamespace(  # type: ignore[arg-type]
        check=_accept, consume=lambda ctx, proxy: None))
    ctx = route(core, invite("sip:1234@other.example"))
    assert ctx.call.get(RouteState).authenticated and not ctx.call.get(RouteState).ipauth
    assert ctx.vars["authenticated"] is True  # the deprecated mirror
    assert core.relays == [["sip:1234@other.example"]]


async def _accept(ctx: RequestContext, user: str, proxy: bool) -> bool:
    return True


def test_route_state_is_not_made_by_requests_that_do_not_need_it() -> None:
    """A foreign caller to a foreign domain is refused before anything is kept."""
    core = FakeCore(config())
    ctx = route(core, invite("sip:1234@other.example", from_host="other.example"))
    assert core.replies == [(403, "Not relaying")]
    assert ctx.call.peek(RouteState) is None and ctx.vars == {}


def test_no_location_service_is_no_binding() -> None:
    """Without the location module (usrloc not loaded) a call to one of our
    users goes to voicemail, or gets 404, as a user with no binding does."""
    core = FakeCore(config(**VM_ON))
    core.modules = ModuleRegistry(core, HookPoints())  # type: ignore[arg-type]  # nothing set up
    ctx = route(core, invite("sip:carol@sipsuite.test"))
    assert core.relays == [["sip:carol@192.0.2.77:5060"]]
    assert ctx.call.get(RouteState).to_voicemail
    core.config = config()
    route(core, invite("sip:carol@sipsuite.test"))
    assert core.replies == [(404, "Not Found")]
