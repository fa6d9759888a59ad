"""The JSON-RPC management interface, over real HTTP on a loopback port.

Each test runs a ManagementService on port 0 in the test reactor with memory
stores and talks to it with twisted.web.client.Agent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from sipsuite.ops.errors import RpcError
from sipsuite.ops.http import too_deep
from sipsuite.ops.server import (
    MAX_BATCH,
    MAX_BODY,
    MAX_DEPTH,
    ManagementService,
    RpcRegistry,
    parse_management_listen,
)
from sipsuite.ops.users import register_store_methods
from sipsuite.proxy.registrar.location import (
    Binding,
    MemoryLocationStore,
    MemorySubscriberStore,
    StoreUnavailable,
)
from sipsuite.startup import StartupError

REALM = "example.com"


class Clock:
    """A settable time source shared by the store and the methods."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class _Body(protocol.Protocol):
    # twisted.web.client.readBody warns (DeprecationWarning) about Agent's own
    # transports lacking abortConnection; collecting the body by hand does not.
    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


async def read_body(response: IResponse) -> bytes:
    done: defer.Deferred[bytes] = defer.Deferred()
    response.deliverBody(_Body(done))
    return await done


@dataclass
class Server:
    reactor: Any
    service: ManagementService
    registry: RpcRegistry
    location: MemoryLocationStore
    subscribers: MemorySubscriberStore
    clock: Clock

    @property
    def url(self) -> bytes:
        return f"http://127.0.0.1:{self.service.port}/".encode()

    async def http(self, method: bytes, body: bytes | None = None,
                   path: bytes = b"/") -> tuple[int, bytes, Any]:
        agent = Agent(self.reactor)
        url = f"http://127.0.0.1:{self.service.port}".encode() + path
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        response = await agent.request(
            method, url, Headers({b"content-type": [b"application/json"]}), producer)
        data = await read_body(response)
        return response.code, data, response.headers

    async def post(self, payload: Any, path: bytes = b"/") -> Any:
        """POST a JSON payload; the decoded reply (None for an empty one)."""
        code, data, _ = await self.http(b"POST", json.dumps(payload).encode(), path)
        if not data:
            assert code == 204
            return None
        assert code == 200, data
        return json.loads(data)

    async def call(self, method: str, params: Any = None) -> Any:
        """Call a method; its result, or the error object as an RpcError."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 7}
        if params is not None:
            request["params"] = params
        reply = await self.post(request)
        assert reply["id"] == 7 and reply["jsonrpc"] == "2.0"
        if "error" in reply:
            err = reply["error"]
            raise RpcError(err["code"], err["message"], err.get("data"))
        return reply["result"]

    async def error(self, method: str, params: Any = None) -> RpcError:
        with pytest.raises(RpcError) as info:
            await self.call(method, params)
        return info.value


async def _sync_twice(x: int) -> int:
    return 2 * x


def _add_test_methods(registry: RpcRegistry) -> None:
    registry.register("test.add", lambda a, b=0: a + b, "test.add(a, b=0)")
    registry.register("test.twice", _sync_twice)

    async def deferred_echo(value: Any) -> Any:
        from twisted.internet import reactor

        d: defer.Deferred[Any] = defer.Deferred()
        reactor.callLater(0, d.callback, value)
        return await d

    registry.register("test.later", deferred_echo)
    registry.register("test.deferred", lambda: defer.succeed("from a Deferred"))

    def boom() -> None:
        raise ValueError("boom\nsecond line")

    registry.register("test.boom", boom)

    def app_error() -> None:
        raise RpcError(-32050, "not now", {"retry": 5})

    registry.register("test.app_error", app_error)
    registry.register("test.unserialisable", lambda: object())


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[Server]:
    clock = Clock()
    location = MemoryLocationStore(clock)
    subscribers = MemorySubscriberStore()
    registry = RpcRegistry()
    register_store_methods(registry, location, subscribers, REALM, clock=clock)
    _add_test_methods(registry)
    service = ManagementService("tcp:127.0.0.1:0", registry, reactor)
    service.startService()
    yield Server(reactor, service, registry, location, subscribers, clock)
    await service.stopService()


# --------------------------------------------------------------------------- listen address


@pytest.mark.parametrize(("text", "expected"), [
    ("tcp:127.0.0.1:7060", ("127.0.0.1", 7060)),
    ("tcp:0.0.0.0:0", ("0.0.0.0", 0)),
    ("tcp:[::1]:7060", ("::1", 7060)),
    ("tcp:[::]:65535", ("::", 65535)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_management_listen(text) == expected


@pytest.mark.parametrize("text", [
    "", "tcp:127.0.0.1", "udp:127.0.0.1:7060", "tcp:localhost:7060", "tcp:::1:7060",
    "tcp:[127.0.0.1]:7060", "tcp:127.0.0.1:65536", "tcp:127.0.0.1:x", "tcp:[::1:7060",
    "tcp:999.1.1.1:7060", "127.0.0.1:7060",
])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="management listen address.*tcp:HOST:PORT"):
        parse_management_listen(text)


def test_bad_listen_fails_when_built() -> None:
    with pytest.raises(ValueError):
        ManagementService("tcp:nowhere:1", RpcRegistry())


def test_port_taken_is_a_startup_error_naming_it(reactor: Any) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        service = ManagementService(f"tcp:127.0.0.1:{port}", RpcRegistry(), reactor)
        with pytest.raises(StartupError) as info:
            service.startService()
        assert not service.running
    finally:
        taken.close()
    assert str(info.value) == (f"cannot listen on management tcp 127.0.0.1:{port}:"
                               " Address already in use")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
@pytest_twisted.ensureDeferred
async def test_ipv6_listen(reactor: Any) -> None:
    registry = RpcRegistry()
    service = ManagementService("tcp:[::1]:0", registry, reactor)
    service.startService()
    try:
        response = await Agent(reactor).request(
            b"POST", f"http://[::1]:{service.port}/".encode(), None,
            FileBodyProducer(BytesIO(b'{"jsonrpc":"2.0","method":"system.listMethods","id":1}')))
        reply = json.loads(await read_body(response))
        assert "system.listMethods" in reply["result"]
    finally:
        await service.stopService()


# --------------------------------------------------------------------------- HTTP and protocol


@pytest_twisted.ensureDeferred
async def test_port_is_exposed(server: Server) -> None:
    assert isinstance(server.service.port, int) and server.service.port > 0
    assert server.service.running


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_port(reactor: Any) -> None:
    service = ManagementService("tcp:127.0.0.1:0", RpcRegistry(), reactor)
    service.startService()
    port = service.port
    await service.stopService()
    assert not service.running
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


@pytest_twisted.ensureDeferred
async def test_get_is_405(server: Server) -> None:
    code, body, headers = await server.http(b"GET", path=b"/RPC")
    assert code == 405
    assert b"POST" in body and len(body) < 100
    assert headers.getRawHeaders(b"allow") == [b"POST"]


@pytest_twisted.ensureDeferred
async def test_any_path(server: Server) -> None:
    for path in (b"/", b"/RPC", b"/some/where"):
        reply = await server.post({"jsonrpc": "2.0", "method": "test.add", "params": [1, 2],
                                   "id": "x"}, path)
        assert reply == {"jsonrpc": "2.0", "result": 3, "id": "x"}


@pytest_twisted.ensureDeferred
async def test_parse_error(server: Server) -> None:
    code, body, headers = await server.http(b"POST", b'{"jsonrpc": "2.0", "method"')
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    reply = json.loads(body)
    assert reply["error"]["code"] == -32700 and reply["id"] is None
    code, body, _ = await server.http(b"POST", b"\xff\xfe")
    assert json.loads(body)["error"]["code"] == -32700


@pytest.mark.parametrize(("request_obj", "reply_id"), [
    ({"method": "test.add", "params": [1], "id": 1}, 1),  # no "jsonrpc"
    ({"jsonrpc": "1.0", "method": "test.add", "params": [1], "id": 2}, 2),
    ({"jsonrpc": "2.0", "method": 5, "id": 3}, 3),
    ({"jsonrpc": "2.0", "params": [1], "id": 4}, 4),  # no method
    ({"jsonrpc": "2.0", "method": "test.add", "params": "1", "id": 5}, 5),
    ({"jsonrpc": "2.0", "method": "test.add", "params": [1], "id": True}, None),
    ({"jsonrpc": "2.0", "method": "test.add", "params": [1], "id": [1]}, None),
    ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None),  # even without an id
    (1, None),
    ("text", None),
    ([], None),  # an empty batch
])
@pytest_twisted.ensureDeferred
async def test_invalid_request(server: Server, request_obj: Any, reply_id: Any) -> None:
    reply = await server.post(request_obj)
    assert reply["error"]["code"] == -32600
    assert reply["id"] == reply_id
    assert "\n" not in reply["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_method_not_found(server: Server) -> None:
    err = await server.error("no.such")
    assert err.code == -32601 and "no.such" in err.message


@pytest.mark.parametrize(("method", "params"), [
    ("test.add", {}),                      # missing
    ("test.add", {"a": 1, "c": 2}),        # unknown name
    ("test.add", [1, 2, 3]),               # too many
    ("test.add", []),                      # too few
    ("user.list", {"x": 1}),
    ("system.methodHelp", {}),
])
@pytest_twisted.ensureDeferred
async def test_invalid_params(server: Server, method: str, params: Any) -> None:
    err = await server.error(method, params)
    assert err.code == -32602


@pytest_twisted.ensureDeferred
async def test_named_and_positional_params(server: Server) -> None:
    assert await server.call("test.add", {"a": 2, "b": 5}) == 7
    assert await server.call("test.add", {"a": 2}) == 2
    assert await server.call("test.add", [2, 5]) == 7
    assert await server.call("test.add", [2]) == 2


@pytest_twisted.ensureDeferred
async def test_sync_async_and_deferred_methods(server: Server) -> None:
    assert await server.call("test.twice", [21]) == 42
    assert await server.call("test.later", {"value": {"a": [1]}}) == {"a": [1]}
    assert await server.call("test.deferred") == "from a Deferred"


@pytest_twisted.ensureDeferred
async def test_internal_error_is_one_line(server: Server) -> None:
    err = await server.error("test.boom")
    assert err.code == -32603
    assert "boom" in err.message and "second line" not in err.message and "\n" not in err.message
    err = await server.error("test.unserialisable")
    assert err.code == -32603
    # The server goes on serving after a method crashed.
    assert await server.call("test.add", [1, 1]) == 2


@pytest_twisted.ensureDeferred
async def test_application_error(server: Server) -> None:
    reply = await server.post({"jsonrpc": "2.0", "method": "test.app_error", "id": None})
    assert reply == {"jsonrpc": "2.0", "id": None,
                     "error": {"code": -32050, "message": "not now", "data": {"retry": 5}}}


@pytest_twisted.ensureDeferred
async def test_notifications_get_no_reply(server: Server) -> None:
    assert await server.post({"jsonrpc": "2.0", "method": "user.add",
                              "params": ["note", "pw"]}) is None
    # ... but they did run.
    assert [s.user for s in await server.subscribers.list()] == ["note"]
    assert await server.post({"jsonrpc": "2.0", "method": "no.such"}) is None
    assert await server.post({"jsonrpc": "2.0", "method": "test.boom"}) is None
    assert await server.post([{"jsonrpc": "2.0", "method": "test.add", "params": [1]},
                              {"jsonrpc": "2.0", "method": "test.add", "params": [2]}]) is None


@pytest_twisted.ensureDeferred
async def test_batch(server: Server) -> None:
    reply = await server.post([
        {"jsonrpc": "2.0", "method": "test.add", "params": [1, 2], "id": "1"},
        {"jsonrpc": "2.0", "method": "test.later", "params": ["slow"], "id": 2},
        {"jsonrpc": "2.0", "method": "test.add", "params": [7]},  # notification
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "no.such", "id": "5"},
        {"jsonrpc": "2.0", "method": "test.add", "params": [4, 5], "id": 9},
        3,
    ])
    assert reply == [
        {"jsonrpc": "2.0", "result": 3, "id": "1"},
        {"jsonrpc": "2.0", "result": "slow", "id": 2},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": reply[2]["error"]["message"]},
         "id": None},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": reply[3]["error"]["message"]},
         "id": "5"},
        {"jsonrpc": "2.0", "result": 9, "id": 9},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": reply[5]["error"]["message"]},
         "id": None},
    ]


@pytest_twisted.ensureDeferred
async def test_body_over_limit(server: Server) -> None:
    code, body, _ = await server.http(b"POST", b" " * (MAX_BODY + 1))
    assert code == 413
    assert json.loads(body)["error"]["code"] == -32600
    # Exactly at the limit is still read (and here is a valid request).
    payload = json.dumps({"jsonrpc": "2.0", "method": "test.add", "params": [1], "id": 1})
    code, body, _ = await server.http(b"POST", payload.ljust(MAX_BODY).encode())
    assert code == 200 and json.loads(body)["result"] == 1


def _depth(value: Any) -> int:
    """The nesting depth json.loads builds: the reference too_deep must agree with."""
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


def _nest(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k[{": leaf}
    return leaf


@pytest.mark.parametrize("doc", [
    _nest(3, 1),
    _nest(MAX_DEPTH, "x"),
    _nest(MAX_DEPTH + 1, "x"),
    # brackets and escapes inside strings are not nesting
    ["[" * 200, "{" * 200],
    _nest(MAX_DEPTH, "[[[[\\\"[[[{{{\\"),
    _nest(MAX_DEPTH + 1, '\\"[{'),
    {"a": "\\", "b": _nest(MAX_DEPTH - 1, "]]]]"), "c": ['"', "[" * 100]},
    {"a": '\\"', "b": _nest(MAX_DEPTH, ["\\"])},
    [_nest(10, 0)] * 50,  # many brackets, none deep
])
@pytest.mark.parametrize("compact", [True, False])
def test_too_deep_counts_as_json_does(doc: Any, compact: bool) -> None:
    text = json.dumps(doc, separators=(",", ":") if compact else None).encode()
    assert too_deep(text) == (_depth(doc) > MAX_DEPTH)


@pytest_twisted.ensureDeferred
async def test_deep_nesting_is_a_parse_error(server: Server) -> None:
    for body in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000,
                 b'{"jsonrpc":"2.0","method":"test.later","params":' + b"[" * 1000 + b"]" * 1000
                 + b',"id":1}'):
        code, data, _ = await server.http(b"POST", body)
        assert code == 200
        reply = json.loads(data)
        assert reply["error"]["code"] == -32700 and reply["id"] is None
        assert f"nested over {MAX_DEPTH} deep" in reply["error"]["message"]
    # Nesting within the limit is served.
    deep = _nest(MAX_DEPTH - 3, "end")
    assert await server.call("test.later", [deep]) == deep


@pytest_twisted.ensureDeferred
async def test_only_utf8_bodies(server: Server) -> None:
    request = '{"jsonrpc": "2.0", "method": "test.later", "params": ["caf\xe9"], "id": 1}'
    for wrong in ("utf-16", "latin-1"):  # JSON between systems is UTF-8 (RFC 8259 8.1)
        code, data, _ = await server.http(b"POST", request.encode(wrong))
        assert code == 200 and json.loads(data)["error"]["code"] == -32700, wrong
    code, data, _ = await server.http(b"POST", request.encode())
    assert code == 200 and json.loads(data)["result"] == "caf\xe9"


@pytest_twisted.ensureDeferred
async def test_batch_over_limit(server: Server) -> None:
    call = {"jsonrpc": "2.0", "method": "test.add", "params": [1, 1], "id": 1}
    reply = await server.post([call] * (MAX_BATCH + 1))
    assert reply["error"]["code"] == -32600 and reply["id"] is None
    assert f"over the limit of {MAX_BATCH}" in reply["error"]["message"]
    reply = await server.post([call] * MAX_BATCH)
    assert len(reply) == MAX_BATCH and all(r["result"] == 2 for r in reply)


@pytest_twisted.ensureDeferred
async def test_list_methods_and_help(server: Server) -> None:
    names = await server.call("system.listMethods")
    assert names == sorted(names)
    for name in ("system.listMethods", "system.methodHelp", "user.add", "user.passwd",
                 "user.rm", "user.list", "ul.show", "ul.add", "ul.rm"):
        assert name in names
    assert "expires" in await server.call("system.methodHelp", ["ul.add"])
    assert await server.call("system.methodHelp", {"name": "test.add"}) == "test.add(a, b=0)"
    assert (await server.error("system.methodHelp", ["no.such"])).code == -32602


def test_register_rejects_duplicates_and_reserved_names() -> None:
    registry = RpcRegistry()
    with pytest.raises(ValueError):
        registry.register("system.listMethods", lambda: None)
    with pytest.raises(ValueError):
        registry.register("rpc.anything", lambda: None)


# --------------------------------------------------------------------------- user.*


@pytest_twisted.ensureDeferred
async def test_user_methods(server: Server) -> None:
    added = await server.call("user.add", {"user": "alice", "password": "secret"})
    assert added == {"user": "alice", "realm": REALM, "algorithms": ["MD5", "SHA-256"]}
    sub = await server.subscribers.get("alice")
    assert sub is not None and sub.realm == REALM
    old_ha1 = dict(sub.ha1)

    err = await server.error("user.add", ["alice", "other"])
    assert (err.code, err.message) == (-32001, "user exists")

    await server.call("user.add", ["bob", "pw"])
    listed = await server.call("user.list")
    assert listed == [
        {"user": "alice", "realm": REALM, "algorithms": ["MD5", "SHA-256"]},
        {"user": "bob", "realm": REALM, "algorithms": ["MD5", "SHA-256"]},
    ]
    assert "secret" not in json.dumps(listed) and old_ha1["MD5"] not in json.dumps(listed)

    await server.call("user.passwd", ["alice", "new"])
    sub = await server.subscribers.get("alice")
    assert sub is not None and sub.ha1 != old_ha1
    err = await server.error("user.passwd", ["carol", "x"])
    assert (err.code, err.message) == (-32002, "no such user")

    assert await server.call("user.rm", ["bob"]) == {"user": "bob"}
    assert (await server.error("user.rm", ["bob"])).code == -32002
    assert [u["user"] for u in await server.call("user.list")] == ["alice"]


@pytest.mark.parametrize(("method", "params"), [
    ("user.add", ["", "pw"]),
    ("user.add", ["al ice", "pw"]),
    ("user.add", ["al@ice", "pw"]),
    ("user.add", ["al%zzice", "pw"]),
    ("user.add", [5, "pw"]),
    ("user.add", ["alice", 5]),
    ("user.add", ["alice", None]),
    ("user.passwd", ["a:b", "pw"]),
    ("user.rm", [["alice"]]),
])
@pytest_twisted.ensureDeferred
async def test_user_params_checked(server: Server, method: str, params: Any) -> None:
    assert (await server.error(method, params)).code == -32602


@pytest_twisted.ensureDeferred
async def test_user_names_with_sip_user_characters(server: Server) -> None:
    name = "a-_.!~*'()&=+$,;?/%41"
    await server.call("user.add", [name, "pw"])
    assert [u["user"] for u in await server.call("user.list")] == [name]


# --------------------------------------------------------------------------- ul.*


@pytest_twisted.ensureDeferred
async def test_ul_add_show_rm(server: Server) -> None:
    assert await server.call("ul.show") == []
    assert await server.call("ul.show", ["alice"]) == []

    added = await server.call("ul.add", ["sip:alice@example.com", "sip:alice@192.0.2.1:5060",
                                         3600])
    assert added == {"aor": "alice", "contact": "sip:alice@192.0.2.1:5060", "expires": 3600,
                     "replaced": False}
    await server.call("ul.add", {"aor": "alice@other.example", "contact": "sips:alice@phone"})
    await server.call("ul.add", {"aor": "bob", "contact": "sip:bob@192.0.2.2;transport=tcp",
                                 "expires": None})

    server.clock.now += 100
    shown = await server.call("ul.show", {"aor": "alice"})
    assert len(shown) == 1 and shown[0]["aor"] == "alice"
    first, second = shown[0]["bindings"]
    assert first == {
        "contact": "sip:alice@192.0.2.1:5060", "expires": 3500, "q": 1.0, "received": None,
        "path": [], "user_agent": "", "instance": None, "reg_id": None, "nat": False,
        "call_id": "", "cseq": 0, "socket": None, "flow": None, "outbound": False,
    }
    assert second["contact"] == "sips:alice@phone" and second["expires"] is None

    everything = await server.call("ul.show")
    assert [e["aor"] for e in everything] == ["alice", "bob"]
    assert everything[1]["bindings"][0]["contact"] == "sip:bob@192.0.2.2;transport=tcp"

    # An equivalent contact (host case, escapes) replaces the binding in place.
    replaced = await server.call("ul.add", ["alice", "sip:%61lice@192.0.2.1:5060", 60])
    assert replaced["replaced"] is True
    bindings = (await server.call("ul.show", ["alice"]))[0]["bindings"]
    assert [(b["contact"], b["expires"]) for b in bindings] == [
        ("sip:%61lice@192.0.2.1:5060", 60), ("sips:alice@phone", None)]

    # A different transport is a different contact.
    assert (await server.call("ul.add", ["bob", "sip:bob@192.0.2.2"]))["replaced"] is False

    assert await server.call("ul.rm", ["sip:alice@x", "sips:ALICE@PHONE"]) == {"removed": 0}
    assert await server.call("ul.rm", ["sip:alice@x", "sips:alice@PHONE"]) == {"removed": 1}
    assert await server.call("ul.rm", {"aor": "bob"}) == {"removed": 2}
    assert await server.call("ul.rm", {"aor": "bob"}) == {"removed": 0}
    assert [e["aor"] for e in await server.call("ul.show")] == ["alice"]

    # Expired bindings are not shown.
    server.clock.now += 61
    assert await server.call("ul.show") == []


@pytest_twisted.ensureDeferred
async def test_ul_shows_registrar_fields(server: Server) -> None:
    now = server.clock.now

    def register(bindings: list[Binding], _now: float) -> None:
        bindings.append(Binding(
            "sip:carol@10.0.0.5:5062;ob", expires=now + 30, q=0.5, call_id="c1", cseq=3,
            path=["<sip:edge.example;lr>"], received="udp:198.51.100.7:40000",
            socket="udp:192.0.2.10:5060", instance="<urn:uuid:1>", reg_id=1,
            user_agent="Phone/1.0", nat=True, updated=now))

    await server.location.update("carol", register)
    shown = await server.call("ul.show", ["carol"])
    assert shown == [{"aor": "carol", "bindings": [{
        "contact": "sip:carol@10.0.0.5:5062;ob", "expires": 30, "q": 0.5,
        "received": "udp:198.51.100.7:40000", "path": ["<sip:edge.example;lr>"],
        "user_agent": "Phone/1.0", "instance": "<urn:uuid:1>", "reg_id": 1, "nat": True,
        "call_id": "c1", "cseq": 3, "socket": "udp:192.0.2.10:5060",
        "flow": None, "outbound": False}]}]


@pytest_twisted.ensureDeferred
async def test_aor_key_is_unescaped_user_part(server: Server) -> None:
    await server.call("ul.add", ["sip:%62ob@example.com", "sip:bob@192.0.2.9"])
    for form in ("bob", "%62ob", "bob@example.org", "sip:bob@example.com", "SIP:bob@h",
                 "sips:b%6Fb@x"):
        shown = await server.call("ul.show", [form])
        assert [e["aor"] for e in shown] == ["bob"], form


@pytest.mark.parametrize(("method", "params"), [
    ("ul.add", ["alice", "not a uri"]),
    ("ul.add", ["alice", "tel:+15551234"]),
    ("ul.add", ["alice", "sip:alice@h", 0]),
    ("ul.add", ["alice", "sip:alice@h", -5]),
    ("ul.add", ["alice", "sip:alice@h", "60"]),
    ("ul.add", ["alice", "sip:alice@h", 1.5]),
    ("ul.add", ["alice", "sip:alice@h", True]),
    ("ul.add", ["alice", 5]),
    ("ul.add", ["", "sip:alice@h"]),
    ("ul.add", ["sip:example.com", "sip:alice@h"]),  # no user part
    ("ul.add", ["a b", "sip:alice@h"]),
    ("ul.add", [None, "sip:alice@h"]),
    ("ul.show", [5]),
    ("ul.rm", ["alice", "garbage uri"]),
    ("ul.rm", ["alice", 5]),
])
@pytest_twisted.ensureDeferred
async def test_ul_params_checked(server: Server, method: str, params: Any) -> None:
    assert (await server.error(method, params)).code == -32602


# --------------------------------------------------------------------------- store down


class DownStore:
    """Both store interfaces, every call failing as a store whose backend is down."""

    async def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("redis timed out")

    lookup = update = remove = aors = _down
    get = add = replace = list = _down


@pytest.mark.parametrize(("method", "params"), [
    ("user.add", ["alice", "pw"]),
    ("user.passwd", ["alice", "pw"]),
    ("user.rm", ["alice"]),
    ("user.list", []),
    ("ul.show", []),
    ("ul.show", ["alice"]),
    ("ul.add", ["alice", "sip:alice@h", 60]),
    ("ul.rm", ["alice"]),
    ("ul.rm", ["alice", "sip:alice@h"]),
])
@pytest_twisted.ensureDeferred
async def test_store_unavailable(reactor: Any, method: str, params: Any) -> None:
    registry = RpcRegistry()
    down = DownStore()
    register_store_methods(registry, down, down, REALM)  # type: ignore[arg-type]
    service = ManagementService("tcp:127.0.0.1:0", registry, reactor)
    service.startService()
    try:
        server = Server(reactor, service, registry, None, None, Clock())  # type: ignore[arg-type]
        err = await server.error(method, params)
        assert err.code == -32003
        assert err.message == "store unavailable: redis timed out"
    finally:
        await service.stopService()
