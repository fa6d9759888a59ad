"""The management interface: JSON-RPC 2.0 over HTTP, what ``sipsuite-ctl`` talks to.

Kamailio's kamcmd/kamctl drive a running server through its RPC interface;
this is ours. :class:`RpcRegistry` holds the methods (plain or ``async``
functions taking named parameters), :class:`RpcResource` serves them to a
POST at any path, and :class:`ManagementService` listens for it on the
``[management] listen`` address. :func:`register_store_methods` adds the
kamctl-like ``user.*`` and ``ul.*`` methods over the location and subscriber
stores; later subsystems register their own methods on the same registry.

It listens on loopback by default. With ``[management] token`` set, every
request (JSON-RPC, /metrics, the /calls pages) must carry
``Authorization: Bearer TOKEN``, on any listener, loopback too (other users
of the host reach loopback as well); a listener on any other address is
refused at start without a token (:func:`check_exposure`).
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from sipsuite.log import get_logger
from sipsuite.ops.callpages import TOKEN_COOKIE, LoginPage
from sipsuite.ops.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RpcError,
)
from sipsuite.ops.http import MAX_BATCH, MAX_BODY, MAX_DEPTH, BoundedRequest, too_deep
from sipsuite.startup import BindsEarly, StartupError, cannot_listen, show_address

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PORT",
    "MAX_BATCH",
    "MAX_BODY",
    "MAX_DEPTH",
    "ManagementService",
    "RpcRegistry",
    "RpcResource",
    "authorized",
    "check_exposure",
    "make_site",
    "parse_management_listen",
]

log = get_logger("sipsuite.management")

DEFAULT_PORT = 7060
DEFAULT_LISTEN = f"tcp:127.0.0.1:{DEFAULT_PORT}"


@dataclass(slots=True)
class _Method:
    func: Callable[..., Any]
    help: str
    signature: inspect.Signature


# The key that marks a request as a call (not a notification) is "id"; the
# sentinel tells "no id member" from "id": null, which is a call.
_NO_ID = object()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class RpcRegistry:
    """The methods the management interface serves, by name.

    ``func`` may return a value, a Deferred or a coroutine (run with
    ``defer.ensureDeferred``, so it may await Deferreds). JSON-RPC named
    params become keyword arguments and a params array positional ones, both
    checked against the function's signature before the call, so a wrong
    name or count is -32602 and never a TypeError from inside the method.
    """

    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}
        self.register("system.listMethods", self._list_methods,
                      help="system.listMethods(): the names of every method, sorted")
        self.register("system.methodHelp", self._method_help,
                      help="system.methodHelp(name): the help text of method NAME")

    def register(self, name: str, func: Callable[..., Any], help: str = "") -> None:
        if not isinstance(name, str) or not name or name.startswith("rpc."):
            # "rpc." names are reserved by JSON-RPC 2.0 for the protocol itself.
            raise ValueError(f"bad RPC method name {name!r}")
        if name in self._methods:
            # Two subsystems claiming one name is a wiring bug; fail at start-up.
            raise ValueError(f"RPC method {name!r} registered twice")
        self._methods[name] = _Method(func, help or inspect.getdoc(func) or "",
                                      inspect.signature(func))

    def names(self) -> list[str]:
        return sorted(self._methods)

    def help(self, name: str) -> str:
        return self._methods[name].help

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def _list_methods(self) -> list[str]:
        return self.names()

    def _method_help(self, name: str) -> str:
        if not isinstance(name, str) or name not in self._methods:
            raise RpcError(INVALID_PARAMS, f"no such method: {name!r}")
        return self._methods[name].help

    async def call(self, name: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        """Run method ``name``; raises RpcError for the caller's mistakes and
        lets any other exception through (the dispatcher makes it -32603)."""
        method = self._methods.get(name)
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {name}")
        try:
            if isinstance(params, list):
                bound = method.signature.bind(*params)
            else:
                bound = method.signature.bind(**(params or {}))
        except TypeError as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params for {name}: {exc}") from None
        result = method.func(*bound.args, **bound.kwargs)
        if inspect.iscoroutine(result):
            result = await defer.ensureDeferred(result)
        elif isinstance(result, defer.Deferred) or inspect.isawaitable(result):
            result = await result
        return result

    async def _run_one(self, request: Any) -> dict[str, Any] | None:
        """One request object -> its response object, or None for a notification."""
        if not isinstance(request, dict):
            return _error_response(None, RpcError(INVALID_REQUEST, "invalid request: not an object"))
        req_id = request.get("id", _NO_ID)
        # An id of the wrong type cannot be echoed back: answer with null.
        valid_id = req_id is _NO_ID or req_id is None or (
            isinstance(req_id, str | int | float) and not isinstance(req_id, bool))
        reply_id = req_id if valid_id and req_id is not _NO_ID else None
        method = request.get("method")
        params = request.get("params")
        problem = None
        if request.get("jsonrpc") != "2.0":
            problem = 'invalid request: "jsonrpc" must be "2.0"'
        elif not isinstance(method, str):
            problem = 'invalid request: "method" must be a string'
        elif "params" in request and not isinstance(params, list | dict):
            problem = 'invalid request: "params" must be an array or an object'
        elif not valid_id:
            problem = 'invalid request: "id" must be a string, a number or null'
        if problem is not None:
            # Answered even without an id: the caller could not have meant a
            # malformed object as a notification (JSON-RPC 2.0, section 5).
            return _error_response(reply_id, RpcError(INVALID_REQUEST, problem))
        assert isinstance(method, str)
        notification = req_id is _NO_ID
        try:
            result = await self.call(method, params)
            # Serialise now, so a result JSON cannot carry is this call's
            # -32603 and not a failure of the whole reply.
            json.dumps(result)
        except RpcError as exc:
            return None if notification else _error_response(reply_id, exc)
        except Exception as exc:
            log.failure("management RPC {method} failed", Failure(), method=method)
            error = RpcError(INTERNAL_ERROR, f"internal error: {_one_line(exc)}")
            return None if notification else _error_response(reply_id, error)
        if notification:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": reply_id}

    async def dispatch(self, body: bytes) -> bytes | None:
        """A JSON-RPC 2.0 request or batch, as bytes, -> the reply body, or
        None when nothing is to be sent back (only notifications)."""
        if too_deep(body):
            return _encode(_error_response(None, RpcError(
                PARSE_ERROR, f"parse error: arrays and objects nested over {MAX_DEPTH} deep")))
        try:
            # JSON exchanged between systems is UTF-8 (RFC 8259 8.1): no
            # guessing UTF-16 or UTF-32 from the first bytes as json.loads would.
            payload = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            # RecursionError only if too_deep missed a case: still the caller's error.
            return _encode(_error_response(None, RpcError(
                PARSE_ERROR, f"parse error: {exc}")))
        if isinstance(payload, list):
            if not payload:
                return _encode(_error_response(None, RpcError(INVALID_REQUEST,
                                                             "invalid request: empty batch")))
            if len(payload) > MAX_BATCH:
                return _encode(_error_response(None, RpcError(
                    INVALID_REQUEST, f"invalid request: batch of {len(payload)} requests"
                                     f" is over the limit of {MAX_BATCH}")))
            # The calls of a batch may run concurrently (the spec allows any
            # order); the replies keep the requests' order all the same.
            results = await defer.gatherResults(
                [defer.ensureDeferred(self._run_one(r)) for r in payload], consumeErrors=True)
            replies = [r for r in results if r is not None]
            return _encode(replies) if replies else None
        reply = await self._run_one(payload)
        return None if reply is None else _encode(reply)


def _error_response(req_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error.to_dict(), "id": req_id}


def _encode(reply: Any) -> bytes:
    return json.dumps(reply).encode("utf-8")


class RpcResource(resource.Resource):
    """Serves a registry: POST a JSON-RPC 2.0 request or batch at any path."""

    isLeaf = True  # every path is this resource: "/" and "/RPC" alike

    def __init__(self, registry: RpcRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"sipsuite management interface: POST a JSON-RPC 2.0 request\n"

    def render_POST(self, request: server.Request) -> Any:
        # BoundedRequest has answered a body over MAX_BODY before it got here;
        # the read is bounded all the same for a request made some other way.
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            request.setResponseCode(413)
            request.setHeader(b"content-type", b"application/json")
            return _encode(_error_response(None, RpcError(
                INVALID_REQUEST, f"invalid request: body over {MAX_BODY} bytes")))

        finished = False

        def gone(_: Any) -> None:
            # The client went away: nothing may be written to the request any more.
            nonlocal finished
            finished = True

        request.notifyFinish().addErrback(gone)

        def reply(data: bytes | None) -> None:
            if finished:
                return
            if data is None:
                request.setResponseCode(204)  # only notifications: no body at all
            else:
                request.setHeader(b"content-type", b"application/json")
                request.write(data)
            request.finish()

        def crashed(failure: Failure) -> None:
            # dispatch() turns method errors into replies; reaching here is a bug in it.
            log.failure("management request failed", failure)
            if not finished:
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"application/json")
                request.write(_encode(_error_response(None, RpcError(
                    INTERNAL_ERROR, f"internal error: {_one_line(failure.value)}"))))
                request.finish()

        defer.ensureDeferred(self.registry.dispatch(body)).addCallbacks(reply, crashed)
        return server.NOT_DONE_YET


def authorized(request: server.Request, token: bytes) -> bool:
    """True when ``request`` carries ``Authorization: Bearer TOKEN`` (the
    scheme in any case), or the pages' cookie of that value."""
    given = b""
    header = request.getHeader(b"authorization") or b""
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() == b"bearer":
        given = value.strip()
    elif header == b"" and request.method in (b"GET", b"HEAD"):
        # The cookie opens the pages, never a JSON-RPC call (a POST): a
        # browser tricked into posting somewhere cannot change anything.
        given = request.getCookie(TOKEN_COOKIE) or b""
    # Compared in constant time: a byte-by-byte compare that stops at the
    # first difference tells a remote guesser how much of it was right.
    return hmac.compare_digest(given, token)


class _Unauthorized(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="sipsuite management"')
        request.setHeader(b"content-type", b"application/json")
        return _encode(_error_response(None, RpcError(
            INVALID_REQUEST, "unauthorized: send 'Authorization: Bearer TOKEN'"
                             " ([management] token)")))


class _Site(server.Site):
    token: bytes = b""

    def getResourceFor(self, request: server.Request) -> resource.IResource:
        if self.token and not authorized(request, self.token) and not _login_form(request):
            return _Unauthorized()
        return super().getResourceFor(request)

    def log(self, request: http.Request) -> None:
        # An access-log line per call, at info, would flood the proxy's log
        # during provisioning; the calls that change something log themselves.
        log.debug("management {m} {p} from {c}", m=request.method, p=request.uri,
                  c=request.getClientAddress())


class _Root(resource.Resource):
    """Named children (``/metrics``) at their path, JSON-RPC at every other."""

    def __init__(self, rpc: RpcResource, children: dict[bytes, resource.Resource]) -> None:
        super().__init__()
        self.rpc = rpc
        self.named = children

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        child = self.named.get(path)
        # A child with ``subpaths`` serves the paths under its own (/calls/ID).
        if child is not None and (not request.postpath or getattr(child, "subpaths", False)):
            return child
        return self.rpc


def _login_form(request: server.Request) -> bool:
    """GET or POST /login: the one page served without the token."""
    return request.path == b"/login" and request.method in (b"GET", b"POST")


def make_site(registry: RpcRegistry,
              children: dict[bytes, resource.Resource] | None = None,
              token: str = "") -> server.Site:
    """JSON-RPC at any path; ``children`` (b"metrics": ...) at their own;
    with ``token``, every request without it is answered 401."""
    rpc = RpcResource(registry)
    named = dict(children or {})
    if token:
        named[b"login"] = LoginPage(token)
    site = _Site(_Root(rpc, named) if named else rpc)
    site.token = token.encode("ascii")
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    return site


def check_exposure(host: str, token: str, key: str) -> None:
    """A listener beyond loopback without a token: a StartupError naming ``key``.
    The interface adds and removes users and registrations and reloads routing:
    on a reachable address without a token, anyone who can connect could."""
    if not token and not ipaddress.ip_address(host).is_loopback:
        raise StartupError(f"{key} = {host!r} is not a loopback address: set [management] token"
                           " (clients then send 'Authorization: Bearer TOKEN')")


_LISTEN_RE = re.compile(r"tcp:(?:\[(?P<ip6>[^\]]*)\]|(?P<ip4>[^:\[\]]*)):(?P<port>[0-9]{1,5})")


def parse_management_listen(text: str) -> tuple[str, int]:
    """``"tcp:HOST:PORT"`` -> (host, port); HOST an IP address, IPv6 in brackets."""
    expected = "expected 'tcp:HOST:PORT' with HOST an IP address (IPv6 in brackets) and PORT 0..65535"
    m = _LISTEN_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None or int(m.group("port")) > 65535:
        raise ValueError(f"bad management listen address {text!r}: {expected}")
    host = m.group("ip6") if m.group("ip6") is not None else m.group("ip4")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad management listen address {text!r}: {expected}") from None
    if (m.group("ip6") is not None) != (addr.version == 6):
        raise ValueError(f"bad management listen address {text!r}: {expected}")
    return str(addr), int(m.group("port"))


class ManagementService(BindsEarly):
    """Listens for the management interface while running; ``.port`` is the
    bound port once started (the OS's pick when the address says port 0)."""

    def __init__(self, listen: str, registry: RpcRegistry, reactor: Any | None = None,
                 children: dict[bytes, resource.Resource] | None = None, *,
                 token: str = "", key: str = "[management] listen") -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        # Parsed here, so a bad address fails when the service is built.
        self.host, self.wanted_port = parse_management_listen(listen)
        self.token = token
        self.key = key
        self.registry = registry
        self.http_children = children or {}
        self.reactor = reactor
        self.port: int | None = None
        self._listener: Any = None

    def _bind(self) -> None:
        """Bind the port once: before twistd daemonises (see sipsuite.startup),
        or at start; a port that is taken is a StartupError naming the address."""
        if self._listener is not None:
            return
        check_exposure(self.host, self.token, self.key)
        try:
            # (Twisted's Factory is invariant in its protocol type, so its own
            # Site is no plain ServerFactory to listenTCP's annotation.)
            self._listener = self.reactor.listenTCP(
                self.wanted_port,
                make_site(self.registry, self.http_children,  # type: ignore[arg-type]
                          self.token),
                interface=self.host)
        except CannotListenError as exc:
            raise cannot_listen("management " + show_address("tcp", self.host, self.wanted_port),
                                exc) from None
        self.port = self._listener.getHost().port

    def stopService(self) -> Any:
        super().stopService()
        listener, self._listener = self._listener, None
        if listener is not None:
            return listener.stopListening()
        return None

