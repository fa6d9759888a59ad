"""OfflineProxy: a routing class in a real proxy core with no network.

The core is the one ``twistd sip-proxy`` runs (``build_core``: the same
modules, the same transaction layer and timers), on a ``task.Clock``, with
in-memory stores filled from the arguments, a network that captures what
would be sent (:class:`~sipsuite.testing.network.CaptureNet`) and a resolver
that answers from a table.  Nothing is bound, no DNS query is made, no
reactor runs: a message fed in is routed to the end before ``receive``
returns (unless the routing awaits something of its own), and the clock
moves only when the test says so.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from twisted.internet import task
from twisted.internet.defer import Deferred

from sipsuite.config import Config, load_config
from sipsuite.hosts import bracket, unbracket
from sipsuite.proxy.build import BUILTIN_MODULES, build_core
from sipsuite.proxy.core.proxy import ProxyCore
from sipsuite.proxy.modules import media
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.registrar.bindings import Binding
from sipsuite.proxy.registrar.location import Subscriber
from sipsuite.proxy.routing.base import Routing
from sipsuite.proxy.services import LOCATION, MEDIA, SHV, SUBSCRIBERS
from sipsuite.sip.message import Request, Response
from sipsuite.sip.parser import parse_datagram
from sipsuite.testing.media import OfflineMediaSpec, OfflineRelay
from sipsuite.testing.network import CaptureNet, Sent, StaticResolver, parse_target
from sipsuite.testing.outcome import Branch, Outcome
from sipsuite.testing.recorder import Recorder, RecordingContext, RecordingShv, note_routing

__all__ = ["START", "OfflineProxy", "build_request", "message_bytes", "via_source"]

#: Where the fake clock starts: a wall-clock-like epoch, so expiries and
#: nonce times look like real ones.
START = 1_800_000_000.0

#: The config the kit starts from; a test's own is merged over it.
DEFAULTS: dict[str, Any] = {
    "proxy": {"listen": ["udp:127.0.0.1:5060"]},
    "management": {"listen": ""},
}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    plain = [(k, v) for k, v in doc.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in doc.items() if isinstance(v, Mapping)]
    text = f"[{prefix}]\n" if prefix and (plain or not tables) else ""
    text += "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in plain)
    for key, value in tables:
        text += _toml(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))
    return text


def kit_config(config: Mapping[str, Any] | str | Config | None = None, **over: Any) -> Config:
    """A Config from the kit's defaults with ``config`` (a dict, or TOML
    text) and then ``over`` merged over them, validated as a config file is
    (a bad key is a ConfigError naming it).  Redis is left out: the kit's
    stores are in memory.  A Config (a file loaded) is taken as it is,
    but for Redis and the management listener."""
    if isinstance(config, Config):
        return offline(config)
    doc = _merge(DEFAULTS, tomllib.loads(config) if isinstance(config, str) else config or {})
    doc = _merge(doc, over)
    doc = _merge(doc, {"redis": {"url": ""}, "proxy": {"workers": 1}})
    with tempfile.TemporaryDirectory(prefix="sipsuite-kit-") as tmp:
        path = os.path.join(tmp, "kit.toml")
        with open(path, "w") as f:
            f.write(_toml(doc))
        loaded = load_config(path)
    # No file stays behind: the routing module is looked for in the working
    # directory and on sys.path, as for a config given no path.
    return dataclasses.replace(loaded, path=None)


def offline(config: Config) -> Config:
    """``config`` without what would reach the network at start: no Redis
    (the kit's stores are in memory), one process, no management listener."""
    return dataclasses.replace(
        config, redis=dataclasses.replace(config.redis, url=""),
        proxy=dataclasses.replace(config.proxy, workers=1),
        management=dataclasses.replace(config.management, listen=""))


def message_bytes(msg: str | bytes) -> bytes:
    """SIP text as it goes on the wire: bare newlines become CRLF, and the
    Content-Length is set to the body's length (so a test may write the
    message as a triple-quoted string and not count)."""
    data = msg.encode("utf-8") if isinstance(msg, str) else msg
    if b"\r\n" not in data:
        data = data.replace(b"\n", b"\r\n")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, body = head.rstrip(b"\r\n"), b""
    lines = [ln for ln in head.split(b"\r\n") if not re.match(rb"(?i)(content-length|l)\s*:", ln)]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def via_source(message: str | bytes) -> str:
    """``transport:host:port`` of the message's top Via (where it says it
    comes from); ParseError or ValueError when it has none."""
    via = parse_datagram(message_bytes(message)).top_via
    host = via.received or unbracket(via.host)
    transport = via.transport.lower()
    return f"{transport}:{bracket(host)}:{via.port or (5061 if transport == 'tls' else 5060)}"


def build_request(method: str, uri: str, *, from_: str = "sip:alice@127.0.0.1", to: str | None = None,
                  call_id: str = "kit-call-1", cseq: int = 1, from_tag: str = "kitfrom",
                  to_tag: str | None = None, via: str = "udp:127.0.0.2:5070",
                  branch: str | None = None, contact: str | None = None,
                  headers: Sequence[tuple[str, str]] = (), body: str = "") -> str:
    """A request as a UA would send it, as text: ``build_request("INVITE",
    "sip:bob@127.0.0.1", from_="sip:alice@127.0.0.1")``.  ``via`` is where
    it comes from (the same ``udp:HOST:PORT`` as ``receive``'s source)."""
    at = parse_target(via)
    sent_by = f"[{at.host}]:{at.port}" if ":" in at.host else f"{at.host}:{at.port}"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{at.transport.upper()} {sent_by};branch=z9hG4bK{branch or f'{call_id}.{cseq}.{method}'};rport",
        "Max-Forwards: 70",
        f"From: <{from_}>;tag={from_tag}",
        f"To: <{to or uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if contact is None and method in ("INVITE", "REGISTER", "SUBSCRIBE", "REFER"):
        user = from_.split(":", 1)[1].split("@")[0] if "@" in from_ else "kit"
        contact = f"<sip:{user}@{sent_by}>"
    if contact:
        lines.append(f"Contact: {contact}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body and not any(n.lower() == "content-type" for n, _ in headers):
        lines.append("Content-Type: application/sdp")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def offline_modules() -> list[Any]:
    """The built-in modules, the media relay replaced by one that asks no
    relay (sipsuite/testing/media.py)."""
    return [OfflineMediaSpec() if spec is media.SPEC else spec for spec in BUILTIN_MODULES]


class OfflineCore(ProxyCore):
    """The proxy core on the kit's fake clock for the wall time too, so
    binding expiries and nonce ages move with ``advance``."""

    def wall(self) -> float:
        return float(self.clock.seconds())


def _now(coro: Any) -> Any:
    """Run a store coroutine of the in-memory stores (which never wait)."""
    d = Deferred.fromCoroutine(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("an in-memory store call waited")
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class OfflineProxy:
    """A routing class run by a real proxy core, with no sockets and a fake
    clock (see the module's docstring)::

        proxy = OfflineProxy(MyRouting, config={"features": {"auth": True}},
                             users={"alice": "secret"},
                             bindings={"bob": ["sip:bob@192.0.2.20:5060"]})
        out = proxy.receive(build_request("INVITE", "sip:bob@127.0.0.1"))
        assert out.status == 407

    ``routing``: a Routing subclass, or ``"package.module:Class"``, or None
    for the one ``config`` names (DefaultRouting by default).  ``config``:
    a dict or TOML text merged over the kit's defaults (one UDP listener on
    127.0.0.1:5060, no management interface), or a loaded Config.  ``users``: subscriber ->
    password (or a :class:`Subscriber` with HA1s).  ``bindings``: AOR ->
    registered contacts (URIs, or :class:`Binding` objects).
    ``dispatcher``: set id -> destination URIs (``"sip:192.0.2.10:5060"``,
    with a Kamailio dispatcher list's flags and priority after it if
    wanted).  ``dns``: host name -> ``["udp:192.0.2.10:5060", ...]``; any
    other name does not resolve.
    """

    def __init__(self, routing: type[Routing] | str | None = None, *,
                 config: Mapping[str, Any] | str | Config | None = None,
                 users: Mapping[str, str | Subscriber] | None = None,
                 bindings: Mapping[str, Sequence[str | Binding]] | None = None,
                 dispatcher: Mapping[int | str, Sequence[str]] | None = None,
                 dns: Mapping[str, Sequence[str]] | None = None,
                 start: float = START) -> None:
        over: dict[str, Any] = {}
        if isinstance(routing, str):
            over["proxy"] = {"routing": routing}
        if dispatcher:
            over["dispatcher"] = {"sets": {str(k): list(v) for k, v in dispatcher.items()}}
        loaded = kit_config(config, **over)
        self.clock = task.Clock()
        self.clock.advance(start)
        self._dns = dns
        self.core = self._build(loaded)
        if isinstance(routing, type):
            self.core.set_routing(routing(self.core))
        self.setup(users, bindings)

    def _build(self, config: Config, resolver: Any = None, **options: Any) -> ProxyCore:
        core = build_core(config, self.clock, core_class=OfflineCore,
                          resolver=resolver or StaticResolver(self._dns),
                          transport_class=CaptureNet, modules=offline_modules(), **options)
        self._wire(core)
        return core

    _dns: Mapping[str, Sequence[str]] | None = None

    def _wire(self, core: ProxyCore) -> None:
        self.recorder = core.recorder = Recorder()  # type: ignore[attr-defined]
        core.context_class = RecordingContext
        self.sent: list[Sent] = []
        self._branches: dict[tuple[str, str], Branch] = {}
        self._new: list[Branch] = []
        self._stateless: list[Sent] = []
        # Each request received, as sent (bytes) and from where, by its context.
        self.received: dict[RecordingContext, tuple[bytes, str]] = {}
        shv = core.modules.get(SHV)
        if shv is not None and not isinstance(shv, RecordingShv):
            core.modules.provide(SHV, RecordingShv(shv, core))
        net = core.transport
        assert isinstance(net, CaptureNet)
        net.on_send = self._on_send
        core.listen()  # registers the listeners and our addresses; binds nothing

    def setup(self, users: Mapping[str, str | Subscriber] | None,
              bindings: Mapping[str, Sequence[str | Binding]] | None) -> None:
        note_routing(self.core.routing)
        subs = self.core.modules.get(SUBSCRIBERS)
        realm = self.config.auth.realm
        for user, secret in (users or {}).items():
            sub = secret if isinstance(secret, Subscriber) else Subscriber.from_password(
                user, realm, secret)
            if subs is not None:
                _now(subs.add(sub))
        for aor, contacts in (bindings or {}).items():
            self.register(aor, *contacts)

    # -- what the test presets and reads --------------------------------------------
    @property
    def routing(self) -> Routing:
        return self.core.routing

    @property
    def config(self) -> Config:
        """The config as it is now (``cfg_set`` replaces it)."""
        return self.core.config

    def cfg_set(self, name: str, value: Any) -> dict[str, Any]:
        """``sipsuite-ctl cfg set NAME VALUE``: one run-time setting changed,
        validated as the live one is (a str is the operator's TOML text,
        ``"5"`` is 5); returns the name, the old and the new value."""
        from sipsuite.ops.liveops import cfg_set

        return cfg_set(self.core, name, value)

    def register(self, aor: str, *contacts: str | Binding, expires: float | None = 3600) -> None:
        """Store bindings of ``aor`` as a REGISTER would (``ul add``)."""
        now = self.clock.seconds()
        new = [c if isinstance(c, Binding) else Binding(
            c, expires=None if expires is None else now + expires, updated=now) for c in contacts]

        def change(held: list[Binding], now: float) -> None:
            held.extend(new)

        _now(self.core.modules.require(LOCATION).store.update(aor, change))

    def bindings(self, aor: str) -> list[Binding]:
        """The registered bindings of ``aor`` now (what ``ul show`` shows)."""
        return list(_now(self.core.modules.require(LOCATION).store.lookup(aor)))

    @property
    def relay(self) -> OfflineRelay | None:
        """The media relay's stand-in ([features] nat): ``sessions``, ``commands``."""
        module = self.core.modules.get(MEDIA)
        client = getattr(module, "client", None)
        return client if isinstance(client, OfflineRelay) else None

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.core.stats)

    # -- feeding it ---------------------------------------------------------------------
    def listener(self, transport: str = "udp") -> Listener:
        found = next((li for li in self.core.transport.listeners if li.transport == transport),
                     None)
        if found is None:
            found = self.core.transport.listeners[0]
        return found

    def receive(self, msg: str | bytes | Request | Response,
                source: str = "udp:127.0.0.2:5070") -> Outcome:
        """Feed a message as if it came from ``source`` (``udp:HOST:PORT``;
        ``tcp:`` or ``tls:`` too) and route it; the Outcome is what the
        proxy did with it."""
        data = msg.to_bytes() if isinstance(msg, Request | Response) else message_bytes(msg)
        parsed = msg if isinstance(msg, Request | Response) else parse_datagram(data)
        at = parse_target(source)
        src = Source(at.transport, at.host, at.port, self.listener(at.transport))
        ctx_at = len(self.recorder.contexts)
        out = self.step(lambda: self.core.receive(parsed, src))
        for ctx in self.recorder.contexts[ctx_at:]:
            # As the UA sent it (routing edits the parsed one): for ack() and cancel().
            self.received[ctx] = (data, source)
        return out

    def _resend(self, ctx: RecordingContext | None, build: Callable[[Request], Request]) -> Outcome:
        """What the caller of ``ctx``'s request sends in the same transaction
        (its ACK or CANCEL), from where it sent the request."""
        found = self.received.get(ctx) if ctx is not None else None
        if found is None:
            raise ValueError("no request this proxy received belongs to that outcome")
        data, source = found
        original = parse_datagram(data)
        assert isinstance(original, Request)
        return self.receive(build(original), source)

    def answer(self, branch: Branch, status: int, reason: str | None = None, **kw: Any) -> Outcome:
        return branch.answer(status, reason, **kw)

    def advance(self, seconds: float) -> Outcome:
        """Move the fake clock on by ``seconds``, firing every timer due on
        the way at its own time (retransmissions, timer C, timeouts)."""
        end = self.clock.seconds() + seconds

        def run() -> None:
            while True:
                due = [c.getTime() for c in self.clock.getDelayedCalls()]
                nxt = min(due, default=None)
                if nxt is None or nxt > end:
                    break
                self.clock.advance(max(0.0, nxt - self.clock.seconds()))
            self.clock.advance(max(0.0, end - self.clock.seconds()))

        return self.step(run)

    def step(self, action: Callable[[], object], ctx: RecordingContext | None = None) -> Outcome:
        """Run ``action`` and return what the proxy did meanwhile; ``ctx``:
        the transaction it concerns, when no new request makes one."""
        marks = self.marks()
        action()
        return self.outcome(marks, ctx)

    def marks(self) -> tuple[int, int, int]:
        """Where the records stand now (for :meth:`outcome`)."""
        self._new, self._stateless = [], []
        return len(self.sent), len(self.recorder.steps), len(self.recorder.contexts)

    def outcome(self, marks: tuple[int, int, int], ctx: RecordingContext | None = None) -> Outcome:
        """What the proxy did since ``marks``."""
        sent_at, steps_at, ctx_at = marks
        contexts = self.recorder.contexts[ctx_at:]
        return Outcome(self.sent[sent_at:], self._new, self.recorder.steps[steps_at:],
                       contexts[0] if contexts else ctx, self._stateless, self)

    def awaiting(self) -> bool:
        """A routing hook is still running (awaiting something not answered yet)."""
        return any(not c.handled and c.request.method != "ACK" for c in self.recorder.contexts)

    def _on_send(self, sent: Sent) -> None:
        self.sent.append(sent)
        msg = sent.message
        if not isinstance(msg, Request):
            return
        key = (msg.top_via.branch or "", msg.method)
        branch = self._branches.get(key)
        if branch is not None:
            branch.retransmissions += 1
            return
        if msg.method == "ACK" and (key[0], "INVITE") not in self._branches:
            self._stateless.append(sent)  # the ACK of a 2xx, forwarded (RFC 3261 16.11)
        if msg.method in ("ACK", "CANCEL"):
            return
        holder = self.core.client_txs.get(key)
        ctx = None
        if holder is not None and holder.branch is not None:
            ctx = cast(RecordingContext, holder.branch.response_ctx.request_ctx)
        branch = self._branches[key] = Branch(self, sent, ctx)
        self._new.append(branch)
