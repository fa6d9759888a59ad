"""An in-process ProxyCore on a task.Clock for unit tests of request hooks:
no sockets; what the core sends is recorded, messages are fed in by hand.

    kit = ProxyKit(tmp_path, features={"antiflood": True}, static={"bob": "sip:bob@127.0.0.9:5099"})
    kit.feed(request("INVITE", "sip:bob@sipsuite.test", ...), "127.0.0.2")
    kit.sent  # [(message, host, port), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import task

from sipsuite.config import load_config
from sipsuite.proxy.core.proxy import ProxyCore
from sipsuite.proxy.net.listener import Listener, Source
from sipsuite.proxy.service import BUILTIN_MODULES
from sipsuite.sip.message import Request, Response, make_response
from sipsuite.sip.parser import parse_datagram

START = 1_800_000_000.0  # a wall-clock-like epoch for the task.Clock


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


class ProxyKit:
    def __init__(self, tmp_path: Path, static: dict[str, str] | None = None,
                 modules: Sequence[Any] | None = None, **tables: dict[str, Any]) -> None:
        """``modules``: the module SPECs to set up (default: the built-in ones,
        as proxy/service.py; ``()`` for a core with none)."""
        doc = {
            "proxy": {"listen": ["udp:127.0.0.1:5060"], "domains": ["sipsuite.test"]},
            "management": {"listen": ""},
        }
        for name, items in tables.items():
            doc.setdefault(name, {}).update(items)
        text = ""
        for name, items in doc.items():
            text += f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in items.items())
        if static:
            text += "[location.static]\n" + "".join(
                f'{user} = ["{uri}"]\n' for user, uri in static.items())
        path = tmp_path / "kit.toml"
        path.write_text(text)
        self.clock = task.Clock()
        self.clock.advance(START)
        self.core = core = ProxyCore(load_config(str(path)), self.clock)
        core.modules.setup_all(BUILTIN_MODULES if modules is None else modules, core.config)
        self.listener = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
        core.addresses.add("127.0.0.1")
        core.ports.add(5060)
        self.sent: list[tuple[Any, str, int]] = []
        core.transport.send = self._send  # type: ignore[method-assign]
        core.transport.pick_listener = lambda *a, **k: self.listener  # type: ignore[method-assign]

    def _send(self, data: bytes, transport: str, host: str, port: int, listener: Any,
              name: str = "", connect: bool = True) -> bool:
        self.sent.append((parse_datagram(data), host, port))
        return True

    def feed(self, data: bytes | Request | Response, host: str, port: int = 5070) -> None:
        msg = parse_datagram(data) if isinstance(data, bytes) else data
        self.core.receive(msg, Source("udp", host, port, self.listener))

    def take(self) -> list[tuple[Any, str, int]]:
        out, self.sent = self.sent, []
        return out

    def sent_to(self, host: str) -> list[Any]:
        return [m for m, h, _ in self.sent if h == host]


def request(method: str, ruri: str, *, host: str = "127.0.0.2", port: int = 5070,
            call_id: str = "call-1", branch: str = "b1", cseq: int = 1, from_tag: str = "caller",
            to_tag: str = "", route: str = "", user_agent: str = "") -> bytes:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:alice@sipsuite.test>;tag={from_tag}",
        f"To: <sip:bob@sipsuite.test>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:alice@{host}:{port}>",
    ]
    if route:
        lines.append(f"Route: {route}")
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(req: Request, status: int, to_tag: str | None = None) -> Response:
    """The callee's answer to a request the proxy forwarded (all its Vias)."""
    resp = make_response(req, status, to_tag=to_tag)
    if status < 300 and req.method == "INVITE":
        resp.add_header("Contact", "<sip:bob@127.0.0.9:5099>")
    return resp
