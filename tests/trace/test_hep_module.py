"""The ``hep`` module (proxy/modules/hep.py) in-process: its tap sends each
message to a real UDP socket on loopback as HEP3, a failed send is counted
and logged once, the transport's taps fan out, ``[trace] hep`` is checked."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakecore import FakeCore
from twisted.logger import formatEvent

from sipsuite.config import ConfigError, load_config
from sipsuite.proxy.modules.hep import SPEC, HepExport
from sipsuite.proxy.net.transport import TransportLayer
from sipsuite.trace.hep import decode, encode

MSG = (b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bKx\r\n"
       b"Call-ID: abc@10.0.0.9\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


@dataclass
class Listener:
    host: str
    port: int


@pytest.fixture
def collector() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def config(tmp_path: Path, trace: str) -> Any:
    path = tmp_path / "x.toml"
    path.write_text(f"[trace]\n{trace}\n")
    return load_config(str(path))


def test_each_message_in_and_out_is_one_hep_packet(tmp_path: Path,
                                                  collector: socket.socket) -> None:
    port = collector.getsockname()[1]
    cfg = config(tmp_path, f'hep = "udp:127.0.0.1:{port}"\nhep_capture_id = 2001\n'
                           'hep_password = "pw"')
    core = FakeCore(cfg)
    module = SPEC.setup(core, cfg)
    assert core.net.tap == module.tap
    here = Listener("192.0.2.1", 5060)
    module.tap(True, MSG, "udp", here, "10.0.0.9", 5070)
    module.tap(False, MSG, "tcp", here, "10.0.0.7", 5080)
    got = [decode(collector.recv(65535)) for _ in range(2)]
    ip = socket.inet_aton
    h = struct.Struct("!H")
    # In: from the peer to the listener; out: from the listener to the peer.
    assert [(c[0x03], h.unpack(c[0x07])[0], c[0x04], h.unpack(c[0x08])[0], c[0x02]) for c in got] == [
        (ip("10.0.0.9"), 5070, ip("192.0.2.1"), 5060, b"\x11"),
        (ip("192.0.2.1"), 5060, ip("10.0.0.7"), 5080, b"\x06")]
    for chunks in got:
        assert chunks[0x0F] == MSG
        assert chunks[0x0C] == struct.pack("!I", 2001)
        assert chunks[0x0E] == b"pw"
        assert chunks[0x11] == b"abc@10.0.0.9"
        assert chunks[0x0B] == b"\x01"
    assert module.stats() == {"hep": {"target": f"127.0.0.1:{port}", "sent": 2, "errors": 0}}
    module.stop()
    assert core.net.tap is None


def test_a_failed_send_is_counted_logged_once_and_never_raised(
        tmp_path: Path, collector: socket.socket, events: list[dict[str, object]]) -> None:
    port = collector.getsockname()[1]
    cfg = config(tmp_path, f'hep = "udp:127.0.0.1:{port}"')
    module = HepExport(FakeCore(cfg), cfg)
    here = Listener("127.0.0.1", 5060)
    huge = MSG + b"x" * 70_000  # more than one HEP3 packet holds (16-bit length)
    # A HEP3 packet of 65,520 bytes: more than one UDP datagram holds (EMSGSIZE).
    size = len(encode(MSG, ("127.0.0.1", 5060), ("127.0.0.1", 5070), "tcp", 0.0, 0, b"",
                      b"abc@10.0.0.9"))
    too_big_for_udp = MSG + b"y" * (65_520 - size)
    for data in (huge, too_big_for_udp, huge):
        module.tap(False, data, "tcp", here, "127.0.0.1", 5070)
    module.tap(False, MSG, "udp", here, "127.0.0.1", 5070)
    assert decode(collector.recv(65535))[0x0F] == MSG
    assert (module.errors, module.sent) == (3, 1)
    lines = [formatEvent(e) for e in events if "HEP: cannot send" in formatEvent(e)]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0]
    module.wall = lambda: 1e12  # a minute and more later: one more line, counting all lost since
    module.tap(False, huge, "tcp", here, "127.0.0.1", 5070)
    lines = [formatEvent(e) for e in events if "HEP: cannot send" in formatEvent(e)]
    assert len(lines) == 2 and "3 packet(s) lost" in lines[1], lines
    module.stop()


def test_taps_fan_out_and_one_that_raises_costs_the_others_nothing(reactor: Any) -> None:
    layer = TransportLayer(reactor, None)
    seen: list[tuple[str, bool, bytes]] = []

    def broken(*args: Any) -> None:
        raise RuntimeError("broken tap")

    def first(incoming: bool, data: bytes, *rest: Any) -> None:
        seen.append(("first", incoming, data))

    def second(incoming: bool, data: bytes, *rest: Any) -> None:
        seen.append(("second", incoming, data))

    layer.add_tap(first)
    assert layer.tap is first  # one tap: called directly, nothing in between
    layer.add_tap(broken)
    layer.add_tap(second)
    assert layer.tap is not None
    layer.tap(True, b"m", "udp", Listener("127.0.0.1", 5060), "127.0.0.1", 5070)  # type: ignore[arg-type]
    assert seen == [("first", True, b"m"), ("second", True, b"m")]
    layer.remove_tap(broken)
    layer.remove_tap(first)
    assert layer.tap is second
    layer.remove_tap(second)
    assert layer.tap is None


def test_off_by_default_and_a_bad_value_is_one_line_naming_the_key(tmp_path: Path) -> None:
    assert not SPEC.enabled(config(tmp_path, ""))
    assert SPEC.enabled(config(tmp_path, 'hep = "udp:[::1]:9060"'))
    for bad in ('"10.0.0.1:9060"', '"udp:homer.example.com:9060"', '"udp:10.0.0.1:0"',
                '"udp:::1:9060"', '"tcp:10.0.0.1"', "9060"):
        with pytest.raises(ConfigError) as info:
            config(tmp_path, f"hep = {bad}")
        message = str(info.value)
        assert "\n" not in message and ": trace.hep: expected '' or 'udp:IP:PORT'" in message, message
    with pytest.raises(ConfigError, match="trace.hep_capture_id: expected a whole number"):
        config(tmp_path, "hep_capture_id = -1")


def test_an_ipv6_capture_server_and_ipv6_peers(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as collector:
        collector.bind(("::1", 0))
        collector.settimeout(5)
        port = collector.getsockname()[1]
        cfg = config(tmp_path, f'hep = "udp:[::1]:{port}"')
        module = SPEC.setup(FakeCore(cfg), cfg)
        module.tap(True, MSG, "udp", Listener("2001:db8::5", 5060), "2001:db8::9", 5070)
        chunks = decode(collector.recv(65535))
        module.stop()
    assert chunks[0x01] == b"\x0a"
    assert chunks[0x05] == socket.inet_pton(socket.AF_INET6, "2001:db8::9")
    assert chunks[0x06] == socket.inet_pton(socket.AF_INET6, "2001:db8::5")
    assert chunks[0x0F] == MSG
