"""A finished call leaves no reference cycle behind in the proxy.

sipsuite.gcpolicy freezes surviving objects out of the garbage collector's
scans; that is only safe while the call path frees everything by reference
counting. This runs whole calls (INVITE/100/180/200/ACK/BYE/200, and a
CANCELed one) through an in-process ProxyCore on loopback and checks that
no sipsuite object ends up in cyclic garbage.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import protocol, task

from sipsuite.config import load_config
from sipsuite.proxy.core.proxy import ProxyCore
from sipsuite.proxy.service import BUILTIN_MODULES
from sipsuite.sip.message import make_response
from sipsuite.sip.parser import parse_datagram


class Callee(protocol.DatagramProtocol):
    """Answers INVITE with 100, 180, 200 (or 487 after a CANCEL) and BYE with 200."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        req = parse_datagram(data)
        if req.method == "INVITE":
            for status in (100, 180):
                self.transport.write(make_response(req, status).to_bytes(), addr)
            if "cancel-me" not in str(req.uri):
                ok = make_response(req, 200, to_tag="callee")
                ok.add_header("Contact", f"<sip:callee@127.0.0.1:{self.transport.getHost().port}>")
                self.transport.write(ok.to_bytes(), addr)
            else:
                self.pending = req
        elif req.method == "CANCEL":
            self.transport.write(make_response(req, 200).to_bytes(), addr)
            self.transport.write(make_response(self.pending, 487, to_tag="callee").to_bytes(), addr)
        elif req.method == "BYE":
            self.transport.write(make_response(req, 200).to_bytes(), addr)


class Caller(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[Any] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.got.append(parse_datagram(data))


def _request(method: str, ruri: str, port: int, call: str, cseq: int, branch: str,
             to_tag: str = "", route: str = "") -> bytes:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport",
        "Max-Forwards: 70",
        "From: <sip:alice@sipsuite.test>;tag=caller",
        f"To: <sip:bob@sipsuite.test>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {call}",
        f"CSeq: {cseq} {method}",
    ]
    if route:
        lines.append(f"Route: {route}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest_twisted.inlineCallbacks
def test_calls_leave_no_cyclic_garbage(reactor: Any, tmp_path: Path) -> Any:
    from twisted.internet import reactor as real

    callee = Callee()
    callee_port = real.listenUDP(0, callee, interface="127.0.0.1")
    cport = callee_port.getHost().port
    cfg = tmp_path / "gc.toml"
    cfg.write_text(
        '[proxy]\nlisten = ["udp:127.0.0.1:0"]\ndomains = ["sipsuite.test"]\n'
        "[timers]\nt1 = 0.01\nt4 = 0.05\n"
        f'[location.static]\nbob = ["sip:bob@127.0.0.1:{cport}"]\n'
        f'cancel-me = ["sip:cancel-me@127.0.0.1:{cport}"]\n'
    )
    core = ProxyCore(load_config(str(cfg)), real)
    core.modules.setup_all(BUILTIN_MODULES, core.config)  # as proxy/service.py does
    core.start()
    pport = core.transport.listeners[0].port
    caller = Caller()
    caller_port = real.listenUDP(0, caller, interface="127.0.0.1")
    me = caller_port.getHost().port
    proxy = ("127.0.0.1", pport)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for n in range(5):
            call = f"gc-call-{n}"
            caller.transport.write(_request("INVITE", "sip:bob@sipsuite.test", me, call, 1, f"i{n}"), proxy)
            yield task.deferLater(real, 0.1, lambda: None)
            ok = [m for m in caller.got if getattr(m, "status", 0) == 200 and m.call_id == call]
            assert ok, f"no 200 for {call}: {[getattr(m, 'status', m) for m in caller.got]}"
            target = f"sip:callee@127.0.0.1:{cport}"
            route = f"<sip:127.0.0.1:{pport};lr>"
            caller.transport.write(_request("ACK", target, me, call, 1, f"a{n}", "callee", route), proxy)
            caller.transport.write(_request("BYE", target, me, call, 2, f"b{n}", "callee", route), proxy)
            yield task.deferLater(real, 0.1, lambda: None)
        call = "gc-cancel"
        invite = _request("INVITE", "sip:cancel-me@sipsuite.test", me, call, 1, "ic")
        caller.transport.write(invite, proxy)
        yield task.deferLater(real, 0.1, lambda: None)
        caller.transport.write(_request("CANCEL", "sip:cancel-me@sipsuite.test", me, call, 1, "ic"), proxy)
        yield task.deferLater(real, 0.2, lambda: None)
        assert any(getattr(m, "status", 0) == 487 for m in caller.got if m.call_id == call)
        # Every transaction ends within 64*T1 (0.64 s) or T4, except the
        # CANCELed INVITE's client side, which waits out timer D: a fixed
        # 32 s on UDP (RFC 3261 17.1.1.2). Expire it now through the same path.
        yield task.deferLater(real, 1.0, lambda: None)
        waiting = list(core.client_txs.values())
        assert [h.tx.state for h in waiting] == ["completed"], waiting
        core._fire(waiting[0], "D")
        assert not core.server_txs and not core.client_txs, (core.server_txs, core.client_txs)
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith("sipsuite")]
        assert not ours, f"{len(ours)} sipsuite objects in reference cycles: {ours[:10]}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        core.stop()
        yield caller_port.stopListening()
        yield callee_port.stopListening()
