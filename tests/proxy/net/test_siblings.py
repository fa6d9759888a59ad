"""The worker channel (sipsuite/proxy/net/siblings.py): its framing, what it
does with bad input (dropped and counted, never raised), and two workers'
ends talking over a real UNIX socket in a temporary directory."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.siblings import (
    MAX_FRAME,
    FrameError,
    FrameReader,
    Siblings,
    _Inbound,
    decode,
    encode,
    owner_of,
    parse_keys,
)
from sipsuite.sip.message import Response

RESPONSE = (b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKspsab.cd.w0\r\n"
            b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n")


# --------------------------------------------------------------------------- framing

def test_frames_round_trip_whatever_the_reads_cut() -> None:
    frames = [encode("HELLO", (1,)), encode("SEND", ("tcp", "127.0.0.1", 5070), b"INVITE x\r\n\r\n"),
              encode("GONE", ("tls", "::1", 5061))]
    stream = b"".join(frames)
    for size in (1, 3, 7, len(stream)):
        reader = FrameReader()
        got = [p for i in range(0, len(stream), size) for p in reader.feed(stream[i:i + size])]
        assert [decode(p) for p in got] == [
            ("HELLO", ["1"], b""), ("SEND", ["tcp", "127.0.0.1", "5070"], b"INVITE x\r\n\r\n"),
            ("GONE", ["tls", "::1", "5061"], b"")]
        assert not reader.buf


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 0, 0xFFFFFFFF])
def test_a_frame_length_out_of_bounds_is_a_framing_error(length: int) -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(struct.pack(">I", length) + b"x")


def test_a_message_too_big_for_a_frame_is_refused_at_encoding() -> None:
    with pytest.raises(FrameError):
        encode("SEND", ("tcp", "127.0.0.1", 1), b"x" * MAX_FRAME)


@pytest.mark.parametrize("payload", [b"no newline", b"BOGUS 1\n", b"\xff\xfe\n", b"\n", b"hello 1\n"])
def test_bad_payloads_do_not_decode(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode(payload)


@pytest.mark.parametrize("fields", [
    [], ["udp", "127.0.0.1", "5060"], ["tcp", "example.com", "5060"], ["tcp", "127.0.0.1", "0"],
    ["tcp", "127.0.0.1", "65536"], ["tcp", "127.0.0.1", "-1"], ["tcp", "127.0.0.1", "٣"],
    ["tcp", "127.0.0.1"], ["tcp", "127.0.0.1", "5060", "tcp"], ["tcp", "127.0.0.1", "99999999"],
])
def test_bad_connection_rows_are_refused(fields: list[str]) -> None:
    with pytest.raises(FrameError):
        parse_keys(fields, 3)


def test_rows_parse_with_their_extra_fields() -> None:
    rows = parse_keys(["tcp", "::1", "5060", "tcp:[::1]:5060", "tls", "10.0.0.1", "5061", "x"], 4)
    assert rows == [(("tcp", "::1", 5060), ["tcp:[::1]:5060"]), (("tls", "10.0.0.1", 5061), ["x"])]


@pytest.mark.parametrize(("branch", "owner"), [
    ("z9hG4bKspsab.cdef.w1", 1), ("z9hG4bKspsuabcd.w12", 12), ("z9hG4bKspsab.cdef", None),
    ("z9hG4bK.w", None), (".w1", None), ("z9hG4bK.wx1", None), ("z9hG4bK.w1234", None), (None, None),
])
def test_the_worker_mark_of_a_branch(branch: str | None, owner: int | None) -> None:
    assert owner_of(branch) == owner


# --------------------------------------------------------------------------- bad input


class FakeConn:
    def __init__(self, kind: str, peer: tuple[str, int], listener: Listener) -> None:
        self.kind = kind
        self.peer = peer
        self.listener = listener
        self.outbound = False
        self.closed = False
        self.aliases: set[tuple[str, int]] = set()
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


class FakeLayer:
    """What Siblings uses of the TransportLayer."""

    def __init__(self) -> None:
        self.listener = Listener("tcp", "127.0.0.1", 5060, "127.0.0.1")
        self.drops: dict[str, int] = {}
        self.conns: dict[tuple[str, int], FakeConn] = {}
        self.failed: list[tuple[str, int]] = []
        self.relayed: list[tuple[Response, str, str, int, Listener]] = []
        self.on_connection_failed = lambda h, p: self.failed.append((h, p))

    def stats_drop(self, cause: str) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + 1

    def listener_named(self, name: str) -> Listener | None:
        return self.listener if name == repr(self.listener) else None

    def connection_to(self, host: str, port: int) -> FakeConn | None:
        return self.conns.get((host, port))

    def accepted_connections(self) -> list[FakeConn]:
        return list(self.conns.values())

    def relayed_in(self, msg: Response, transport: str, host: str, port: int,
                   listener: Listener) -> None:
        self.relayed.append((msg, transport, host, port, listener))


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class Recorder(Siblings):
    """Siblings whose frames out are kept instead of sent."""

    def __init__(self, layer: Any, index: int = 0, count: int = 3) -> None:
        super().__init__(layer, index, count, "/nonexistent", reactor=None)
        self.out: list[tuple[int, bytes]] = []

    def _send(self, index: int, frame: bytes, key: Any = None, messages: bool = False) -> bool:
        self.out.append((index, frame))
        return True

    def link(self, index: int) -> Any:
        self.out.append((index, encode("HELLO", (self.index,))))  # what a new link starts with


def inbound(sib: Siblings) -> _Inbound:
    conn = _Inbound(sib)
    conn.transport = FakeTransport()
    conn.accepted = True  # as if SO_PEERCRED showed a sibling
    return conn


def feed(conn: _Inbound, *frames: bytes) -> None:
    conn.dataReceived(b"".join(frames))


def test_frames_before_hello_and_bad_hellos_are_dropped() -> None:
    layer = FakeLayer()
    sib = Recorder(layer)
    conn = inbound(sib)
    feed(conn, encode("HAVE", ("tcp", "127.0.0.1", 5070, "tcp:127.0.0.1:5060")))
    feed(conn, encode("HELLO", (0,)))        # our own index
    feed(conn, encode("HELLO", (3,)))        # no such worker
    feed(conn, encode("HELLO", ("x",)))
    assert conn.index is None and not sib.table
    assert layer.drops == {"channel_frame": 4}
    assert not conn.transport.aborted  # a bad frame is dropped, the stream stays


def test_garbage_after_hello_never_raises_and_is_counted() -> None:
    layer = FakeLayer()
    sib = Recorder(layer)
    conn = inbound(sib)
    feed(conn, encode("HELLO", (1,)))
    assert conn.index == 1
    sib.out.clear()
    bad = [
        struct.pack(">I", 6) + b"BOGUS\n",
        encode("HAVE", ("tcp", "127.0.0.1", 5070, "udp:nowhere:1")),   # unknown listener
        encode("HAVE", ("tcp", "127.0.0.1")),
        encode("GONE", ("tcp", "not-an-ip", 5070)),
        encode("SEND", ("udp", "127.0.0.1", 5070), b"x"),
        encode("RESP", ("tcp", "127.0.0.1", 5070, "tcp:127.0.0.1:5060"), b"garbage"),
        encode("RESP", ("tcp", "127.0.0.1", 5070, "tcp:127.0.0.1:5060"),
               b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"),
        encode("HELLO", (2,)),  # a second HELLO on one connection
    ]
    feed(conn, *bad)
    assert layer.drops == {"channel_frame": len(bad)}
    assert not sib.table and not layer.relayed and not sib.out
    feed(conn, struct.pack(">I", MAX_FRAME + 1))
    assert conn.transport.aborted and layer.drops["channel_framing"] == 1


def test_have_gone_send_fail_and_resp() -> None:
    layer = FakeLayer()
    sib = Recorder(layer)
    conn = inbound(sib)
    name = repr(layer.listener)
    feed(conn, encode("HELLO", (2,)))
    assert sib.out == [(2, encode("HELLO", (0,)))] and not layer.drops
    feed(conn, encode("HAVE", ("tcp", "127.0.0.1", 5070, name, "tls", "::1", 5071, name)))
    assert sib.holder("tcp", "127.0.0.1", 5070) == (2, name)
    assert sib.hand_over("tcp", "127.0.0.1", 5070, b"INVITE")
    assert decode(sib.out[-1][1][4:]) == ("SEND", ["tcp", "127.0.0.1", "5070"], b"INVITE")
    assert sib.out[-1][0] == 2
    assert not sib.hand_over("tcp", "127.0.0.1", 5999, b"INVITE")  # nobody holds it
    # The holder says it has no such connection any more: the branches on it fail.
    feed(conn, encode("FAIL", ("tcp", "127.0.0.1", 5070)))
    assert layer.failed == [("127.0.0.1", 5070)] and sib.holder("tcp", "127.0.0.1", 5070) is None
    # GONE only from the worker that announced it.
    other = inbound(sib)
    feed(other, encode("HELLO", (1,)), encode("GONE", ("tls", "::1", 5071)))
    assert sib.holder("tls", "::1", 5071) == (2, name)
    feed(conn, encode("GONE", ("tls", "::1", 5071)))
    assert sib.holder("tls", "::1", 5071) is None
    # A SEND for a connection we hold is written on it; for one we do not, FAIL goes back.
    mine = layer.conns[("127.0.0.1", 6000)] = FakeConn("tcp", ("127.0.0.1", 6000), layer.listener)
    feed(conn, encode("SEND", ("tcp", "127.0.0.1", 6000), b"BYE"),
         encode("SEND", ("tcp", "127.0.0.1", 6001), b"BYE"))
    assert mine.sent == [b"BYE"]
    assert decode(sib.out[-1][1][4:]) == ("FAIL", ["tcp", "127.0.0.1", "6001"], b"")
    # A response passed on arrives as it came, from the phone's address.
    feed(conn, encode("RESP", ("tcp", "127.0.0.1", 6000, name), RESPONSE))
    msg, transport, host, port, listener = layer.relayed[0]
    assert (msg.status, transport, host, port, listener) == (180, "tcp", "127.0.0.1", 6000,
                                                            layer.listener)
    assert not layer.drops


def test_a_hello_drops_what_the_siblings_earlier_life_announced_and_gets_ours() -> None:
    layer = FakeLayer()
    name = repr(layer.listener)
    layer.conns[("127.0.0.1", 6000)] = FakeConn("tcp", ("127.0.0.1", 6000), layer.listener)
    sib = Recorder(layer)
    old = inbound(sib)
    feed(old, encode("HELLO", (1,)), encode("HAVE", ("tcp", "127.0.0.1", 5070, name)))
    new = inbound(sib)
    feed(new, encode("HELLO", (1,)))
    assert sib.holder("tcp", "127.0.0.1", 5070) is None
    have = ("HAVE", ["tcp", "127.0.0.1", "6000", name], b"")
    assert [(i, decode(f[4:])) for i, f in sib.out] == [
        (1, ("HELLO", ["0"], b"")), (1, have), (1, ("HELLO", ["0"], b"")), (1, have)]
    feed(new, encode("HAVE", ("tcp", "127.0.0.1", 5080, name)))
    old.connectionLost()  # the old life's connection closes late: the new rows stay
    assert sib.holder("tcp", "127.0.0.1", 5080) == (1, name)
    new.connectionLost()
    assert not sib.table


def test_a_response_is_passed_only_to_another_worker_its_branch_names() -> None:
    from sipsuite.proxy.net.listener import Source
    from sipsuite.sip.parser import parse_datagram

    layer = FakeLayer()
    sib = Recorder(layer, index=1, count=2)
    source = Source("tcp", "127.0.0.1", 6000, layer.listener)
    resp = parse_datagram(RESPONSE)
    assert isinstance(resp, Response)
    assert sib.pass_response(resp, source)
    assert sib.out[0][0] == 0
    kind, fields, body = decode(sib.out[0][1][4:])
    assert (kind, fields) == ("RESP", ["tcp", "127.0.0.1", "6000", "tcp:127.0.0.1:5060"])
    assert parse_datagram(body).to_bytes() == resp.to_bytes()
    sib.out.clear()
    for branch in (b".w1", b".w2", b""):  # ours, no such worker, no mark
        other = parse_datagram(RESPONSE.replace(b".w0", branch))
        assert isinstance(other, Response)
        assert not sib.pass_response(other, source)
    assert not sib.out


# --------------------------------------------------------------------------- over a real socket


async def until(reactor: Any, cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_two_workers_over_a_unix_socket(reactor: Any, tmp_path: Path) -> None:
    """Worker 1 holds a phone's connection; worker 0 learns it, hands a
    request over, gets the response back; worker 1 going away (and coming
    back) empties and refills worker 0's table."""
    layers = [FakeLayer(), FakeLayer()]
    phone = layers[1].conns[("127.0.0.1", 6000)] = FakeConn("tcp", ("127.0.0.1", 6000),
                                                           layers[1].listener)
    w0 = Siblings(layers[0], 0, 2, str(tmp_path), reactor)
    w1 = Siblings(layers[1], 1, 2, str(tmp_path), reactor)
    try:
        w0.start()  # worker 1 is not up yet: its connect fails, quietly
        w1.start()  # says HELLO; worker 0 answers with its (empty) table
        await until(reactor, lambda: w0.holder("tcp", "127.0.0.1", 6000) is not None)
        assert (tmp_path / "w0.sock").stat().st_mode & 0o077 == 0
        assert w0.hand_over("tcp", "127.0.0.1", 6000, b"INVITE sip:dave@x SIP/2.0\r\n\r\n")
        await until(reactor, lambda: phone.sent)
        assert phone.sent == [b"INVITE sip:dave@x SIP/2.0\r\n\r\n"]
        # Its 180 comes back on worker 1's connection; the branch names worker 0.
        from sipsuite.proxy.net.listener import Source
        from sipsuite.sip.parser import parse_datagram

        resp = parse_datagram(RESPONSE)
        assert isinstance(resp, Response)
        assert w1.pass_response(resp, Source("tcp", "127.0.0.1", 6000, layers[1].listener))
        await until(reactor, lambda: layers[0].relayed)
        assert layers[0].relayed[0][1:4] == ("tcp", "127.0.0.1", 6000)
        # An alias of the connection is announced too; the end of it, GONE.
        phone.aliases.add(("127.0.0.1", 5070))
        w1.have(phone, "127.0.0.1", 5070)  # type: ignore[arg-type]
        await until(reactor, lambda: w0.holder("tcp", "127.0.0.1", 5070) is not None)
        w1.gone(phone)  # type: ignore[arg-type]
        await until(reactor, lambda: not w0.table)
        # Worker 1 stops (dies) and starts again: worker 0 learns its table anew.
        w1.stop()
        await deferLater(reactor, 0.05, lambda: None)
        w1 = Siblings(layers[1], 1, 2, str(tmp_path), reactor)
        w1.start()
        await until(reactor, lambda: w0.holder("tcp", "127.0.0.1", 6000) is not None)
        assert not any(layers[i].drops for i in (0, 1)), [layer.drops for layer in layers]
        # Once stopped, nothing opens a link again (its SIP connections closing say GONE).
        w0.stop()
        w0.gone(phone)  # type: ignore[arg-type]
        assert not w0.links and not w0.hand_over("tcp", "127.0.0.1", 6000, b"x")
    finally:
        w0.stop()
        w1.stop()
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_process_that_is_no_sibling_is_refused(reactor: Any, tmp_path: Path) -> None:
    """Our own process passes SO_PEERCRED's check (a worker is its own
    supervisor's child); a child process of ours is no sibling: refused,
    whatever it sends."""
    import os
    import sys

    from twisted.internet.utils import getProcessOutputAndValue

    layer = FakeLayer()
    w0 = Siblings(layer, 0, 2, str(tmp_path), reactor)
    w0.start()
    try:
        script = ("import socket,struct,sys\n"
                  "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                  "p=b'HELLO 1\\n'; s.sendall(struct.pack('>I',len(p))+p)\n"
                  "p=b'HAVE tcp 127.0.0.1 7000 tcp:127.0.0.1:5060\\n'; s.sendall(struct.pack('>I',len(p))+p)\n"
                  "s.recv(1)\n")
        # Spawned by the reactor, which reaps it (a Popen's wait races its SIGCHLD handling).
        done = getProcessOutputAndValue(sys.executable, ["-c", script, str(tmp_path / "w0.sock")],
                                        env=dict(os.environ), reactor=reactor)
        await until(reactor, lambda: layer.drops.get("channel_peer"))
        _, err, code = await done
        # Cut off, not answered (reset while it reads, or a broken pipe while it writes).
        assert code != 0 and (b"ConnectionResetError" in err or b"BrokenPipeError" in err), err
        assert not w0.table and not w0.inbound
    finally:
        w0.stop()
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_sibling_that_does_not_read_gets_no_more_messages(reactor: Any,
                                                                 tmp_path: Path) -> None:
    """Worker 1's socket accepts but never reads (a hung worker): once the
    kernel's buffers and LINK_BUFFER are full, hand_over says no (the branch
    fails over) instead of buffering without end."""
    import socket

    layer = FakeLayer()
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(tmp_path / "w1.sock"))
    hung.listen(4)
    w0 = Siblings(layer, 0, 2, str(tmp_path), reactor)
    w0.start()
    try:
        w0.table[("tcp", "127.0.0.1", 6000)] = (1, "tcp:127.0.0.1:5060", inbound(w0))
        body = b"x" * (200 * 1024)
        refused_after = None
        for n in range(200):
            if not w0.hand_over("tcp", "127.0.0.1", 6000, body):
                refused_after = n
                break
            await deferLater(reactor, 0.001, lambda: None)
        assert refused_after is not None, "a hung sibling took 40 MB"
        assert refused_after * len(body) < 32 * 1024 * 1024
        assert layer.drops == {"channel_busy": 1}
    finally:
        w0.stop()
        hung.close()
        await deferLater(reactor, 0.05, lambda: None)
