"""Worker processes ([proxy] workers, issue 15): the key, the refusal
without Redis, the supervisor's restarts, the sockets and the log prefix.
The processes themselves: tests/integration/test_workers.py (a different basename:
pytest imports test files by name)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.logger import LogLevel, eventAsJSON, formatEvent, globalLogPublisher

from sipsuite.config import ConfigError, load_config
from sipsuite.log import relay_worker_line
from sipsuite.proxy.net.addresses import record_route_value
from sipsuite.proxy.net.listener import Listener
from sipsuite.proxy.net.transport import TransportLayer
from sipsuite.proxy.workerops import add_up
from sipsuite.proxy.workers import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    StartupError,
    Supervisor,
    WorkerProcess,
    check_workers,
    refuse_suite,
)

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sipsuite.toml"
    path.write_text(text)
    return str(path)


def test_workers_defaults_to_one_process() -> None:
    assert load_config(None).proxy.workers == 1


def test_workers_key_and_option(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy]\nworkers = 4\n")
    assert load_config(path).proxy.workers == 4
    assert load_config(path, workers="2").proxy.workers == 2


@pytest.mark.parametrize("value", ["0", "65", "two", ""])
def test_bad_workers_option_is_one_line(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^--workers: expected a whole number from 1 to 64, got "):
        load_config(None, workers=value)


def test_more_than_one_worker_needs_redis() -> None:
    config = load_config(None, workers="2")
    with pytest.raises(StartupError) as err:
        check_workers(config)
    text = str(err.value)
    assert "proxy.workers = 2" in text and "redis.url" in text and "\n" not in text
    check_workers(load_config(None))  # one process: nothing needed
    check_workers(load_config(None, workers="2", redis="redis://127.0.0.1:6379"))


def test_suite_with_workers_is_refused_for_now() -> None:
    config = load_config(None, workers="2", redis="redis://127.0.0.1:6379")
    refuse_suite("sip-proxy", config)
    with pytest.raises(StartupError, match="twistd sipsuite"):
        refuse_suite("sipsuite", config)


def test_each_worker_gets_a_management_port_of_its_own() -> None:
    import json

    config = load_config(None, workers="2", redis="redis://127.0.0.1:6379")
    sup = Supervisor(config, {"workers": "2"}, task.Clock())
    ports = sup.management_ports
    assert sorted(ports) == [0, 1] and ports[0] != ports[1]
    for i in (0, 1):
        overrides = json.loads(sup.command(i)[-1])
        assert overrides == {"workers": "2", "management": f"tcp:127.0.0.1:{ports[i]}"}
    off = load_config(None, workers="2", redis="redis://127.0.0.1:6379", management="")
    assert Supervisor(off, {}, task.Clock()).management_ports == {}


def test_the_workers_channel_directory() -> None:
    """The supervisor makes a private directory for the workers' channel
    sockets (net/siblings.py), names it on their command line, and removes
    it at stop."""
    import stat

    from sipsuite.proxy.workers import _channel_dir

    config = load_config(None, workers="2", redis="redis://127.0.0.1:6379")
    sup = Supervisor(config, {}, task.Clock())
    sup.channel_dir = path = _channel_dir()
    try:
        mode = os.stat(sup.channel_dir).st_mode
        assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o700
        args = sup.command(1)
        assert args[args.index("--channel") + 1] == sup.channel_dir
    finally:
        sup._remove_channel()
    assert not sup.channel_dir and not os.path.exists(path)


def test_stats_add_up_the_counters_and_keep_shared_figures_once() -> None:
    w0 = {"requests": 3, "requests_by_method": {"INVITE": 2, "BYE": 1},
          "transactions": {"server": 1, "client": 0}, "drops": {}, "uptime": 5.0,
          "registrations": {"aors": 7, "bindings": 9}, "retransmissions": 0,
          "responses_received": 2, "replies_sent_by_class": {"2xx": 2}}
    w1 = {"requests": 4, "requests_by_method": {"INVITE": 4},
          "transactions": {"server": 2, "client": 3}, "drops": {"parse": 1}, "uptime": 6.0,
          "registrations": {"aors": 7, "bindings": 9}, "retransmissions": 1,
          "responses_received": 0, "replies_sent_by_class": {"2xx": 1, "4xx": 1}}
    total = add_up([w0, w1])
    assert total["requests"] == 7
    assert total["requests_by_method"] == {"BYE": 1, "INVITE": 6}
    assert total["transactions"] == {"client": 3, "server": 3}
    assert total["drops"] == {"parse": 1}
    assert total["replies_sent_by_class"] == {"2xx": 3, "4xx": 1}
    assert total["registrations"] == {"aors": 7, "bindings": 9}  # one Redis: not doubled
    assert total["uptime"] == 6.0


def test_twistd_sip_proxy_with_workers_without_redis_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
         "--nodaemon", "--pidfile=", "--logfile=-", "sip-proxy", "--workers", "2",
         "--listen", "udp:127.0.0.1:0", "--management", ""],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sip-proxy: proxy.workers = 2 needs redis.url")


def test_via_names_the_private_port_record_route_the_shared_one() -> None:
    listener = Listener("udp", "192.0.2.1", 5060, "192.0.2.1")
    listener.via_port = 40001
    assert listener.via("z9hG4bKx") == "SIP/2.0/UDP 192.0.2.1:40001;branch=z9hG4bKx"
    assert record_route_value(listener) == "<sip:192.0.2.1:5060;lr>"
    # A wildcard's child (the address a message reached) keeps the private port.
    wild = Listener("udp", "0.0.0.0", 5060, "192.0.2.1")
    wild.via_port = 40002
    assert wild.child("192.0.2.7").via("b").startswith("SIP/2.0/UDP 192.0.2.7:40002;")
    assert Listener("udp", "192.0.2.1", 5060, "192.0.2.1").via("b").startswith(
        "SIP/2.0/UDP 192.0.2.1:5060;")


class Sent:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, host: str, port: int, origin: str | None = None) -> bool:
        self.sent.append(data)
        return True


INVITE = (b"INVITE sip:a@192.0.2.9 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n")
PROBE = (b"OPTIONS sip:192.0.2.9 SIP/2.0\r\n"
         b"Via: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bKy;rport\r\n"
         b"Via: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKz;rport\r\nContent-Length: 0\r\n\r\n")


def test_requests_leave_from_the_shared_socket_rport_probes_from_the_private_one() -> None:
    """A phone behind a port-restricted NAT lets through only what comes
    from the port it registered to: a worker's requests leave from the
    shared socket (their Via names the private port, where the answer
    goes without rport); only a request asking for rport (a dispatcher
    probe) leaves from the private one, since it is answered to its source."""
    layer = TransportLayer(task.Clock(), lambda *_: None)
    listener = Listener("udp", "127.0.0.1", 5060, "127.0.0.1")
    shared, private = Sent(), Sent()
    layer.udp[listener] = shared  # type: ignore[assignment]
    layer.private[listener] = private  # type: ignore[assignment]
    layer.send(INVITE, "udp", "127.0.0.1", 5070, listener)
    layer.send(PROBE, "udp", "127.0.0.1", 5070, listener)
    layer.send(b"SIP/2.0 200 OK\r\nVia: x;rport\r\n\r\n", "udp", "127.0.0.1", 5070, listener)
    layer.send(b"\r\n\r\n", "udp", "127.0.0.1", 5070, listener)  # natping's CRLF keep-alive
    assert private.sent == [PROBE]
    assert shared.sent == [INVITE, b"SIP/2.0 200 OK\r\nVia: x;rport\r\n\r\n", b"\r\n\r\n"]


def test_a_forwarded_request_leaves_from_the_shared_port_naming_the_private_one(
        tmp_path: Path) -> None:
    """Through a core (ProxyKit, its transport's own send): the forwarded
    INVITE and natping's OPTIONS (core.uac without rport) leave from the
    shared socket with the private port in their Via; a dispatcher probe
    (rport=True) from the private socket."""
    from proxykit import ProxyKit, request

    kit = ProxyKit(tmp_path, static={"bob": "sip:bob@192.0.2.9:5080"})
    layer = kit.core.transport
    del layer.send  # ProxyKit's recorder: the real TransportLayer.send again
    kit.listener.via_port = 40001
    shared, private = Sent(), Sent()
    layer.udp[kit.listener] = shared  # type: ignore[assignment]
    layer.private[kit.listener] = private  # type: ignore[assignment]
    kit.feed(request("INVITE", "sip:bob@sipsuite.test"), "127.0.0.2")
    invites = [d for d in shared.sent if d.startswith(b"INVITE ")]
    assert len(invites) == 1 and private.sent == []
    via = next(line for line in invites[0].split(b"\r\n") if line.startswith(b"Via: "))
    assert via.startswith(b"Via: SIP/2.0/UDP 127.0.0.1:40001;branch=") and b"rport" not in via
    shared.sent.clear()
    kit.core.uac.request("OPTIONS", "sip:192.0.2.9:5080", _target(), rport=True)
    kit.core.uac.request("OPTIONS", "sip:192.0.2.9:5080", _target())  # natping's keep-alive
    assert len(private.sent) == 1 and len(shared.sent) == 1
    probe, ping = private.sent[0].decode(), shared.sent[0].decode()
    assert ":40001;branch=" in probe and probe.split("\r\n")[1].endswith(";rport")
    assert ":40001;branch=" in ping and ";rport" not in ping


def _target() -> Any:
    from sipsuite.proxy.net.resolver import Target

    return Target("udp", "192.0.2.9", 5080)


def test_a_response_for_another_worker_is_passed_to_its_private_port() -> None:
    """A next hop that answers to the source port (sipp does) sends the
    answer to the shared port, where the kernel may pick another worker: it
    passes the answer to the private port the Via names, with the source."""
    from twisted.internet import reactor

    got: list[tuple[Any, Any]] = []
    layers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        for _ in range(2):
            layer = TransportLayer(reactor, lambda m, s: got.append((m, s)))
            layer.workers = True
            layer.listen(Listener("udp", "127.0.0.1", port, "127.0.0.1"))
            layers.append(layer)
        a, b = (layer.listeners[0] for layer in layers)
        resp = (f"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:{b.via_port};branch=z9hG4bKq\r\n"
                "From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c@x\r\n"
                "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
        # Before the supervisor named the siblings' ports, nothing is steered.
        layers[0].udp[a].datagramReceived(resp, ("192.0.2.50", 5099))
        assert len(got) == 1
        got.clear()
        layers[0].sibling_ports = frozenset({b.via_port})
        # Worker a's shared socket got it: nothing reaches a's core...
        layers[0].udp[a].datagramReceived(resp, ("192.0.2.50", 5099))
        assert got == []
        # ...b's private socket gets it, with the source it came from.
        data = _drain(layers[1].private[b])
        assert data.startswith(b"\x7fsipsuite-relay 192.0.2.50 5099\n")
        layers[1].private[b].datagramReceived(data, ("127.0.0.1", port))
        assert len(got) == 1
        msg, source = got[0]
        assert msg.status == 180 and (source.host, source.port) == ("192.0.2.50", 5099)
        # From anyone but a shared socket of ours, a relay mark is dropped.
        layers[1].private[b].datagramReceived(data, ("127.0.0.1", port + 1))
        assert len(got) == 1 and layers[1].drops["relay"] == 1
        # An answer to our own private port or one for nobody of ours stays.
        own = resp.replace(str(b.via_port).encode(), str(a.via_port).encode())
        layers[0].udp[a].datagramReceived(own, ("192.0.2.50", 5099))
        assert len(got) == 2
        # A Via naming another port on our address that is no sibling's
        # private port (another service's, even in the ephemeral range) is
        # not steered there: the core gets it and drops it as not ours.
        for other in (22, b.via_port + 1 if b.via_port + 1 != a.via_port else b.via_port + 2):
            forged = resp.replace(str(b.via_port).encode(), str(other).encode())
            layers[0].udp[a].datagramReceived(forged, ("192.0.2.50", 5099))
        assert len(got) == 4
    finally:
        for layer in layers:
            layer.stop()


def _drain(proto: Any) -> bytes:
    """The datagram waiting on ``proto``'s socket (the reactor is not run)."""
    sock = proto.transport.socket
    sock.settimeout(2)
    try:
        return sock.recv(65535)
    finally:
        sock.setblocking(False)


def test_workers_bind_the_same_udp_and_tcp_port_and_a_private_one() -> None:
    from twisted.internet import reactor

    layers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        for _ in range(2):
            layer = TransportLayer(reactor, lambda *_: None)
            layer.workers = True
            layer.listen(Listener("udp", "127.0.0.1", port, "127.0.0.1"))
            layer.listen(Listener("tcp", "127.0.0.1", port, "127.0.0.1"))
            layers.append(layer)
        udp = [layer.listeners[0] for layer in layers]
        assert [li.port for li in udp] == [port, port]
        assert None not in {li.via_port for li in udp}
        assert len({li.via_port for li in udp}) == 2 and port not in {li.via_port for li in udp}
    finally:
        for layer in layers:
            layer.stop()


def test_worker_log_lines_carry_the_worker_number() -> None:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        event = {"log_format": "listening on {l}", "l": "udp:127.0.0.1:5060",
                 "log_level": LogLevel.info, "log_namespace": "sipsuite.proxy.core", "log_time": 1.0}
        relay_worker_line(b"\x1e" + eventAsJSON(event).encode() + b"\n", 3)
        relay_worker_line(b"not json\n", 1)
        relay_worker_line(b"42\n", 1)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert formatEvent(seen[0]) == "worker 3: listening on udp:127.0.0.1:5060"
    assert seen[0]["log_worker"] == 3 and seen[0]["log_namespace"] == "sipsuite.proxy.core"
    assert formatEvent(seen[1]) == "worker 1: not json"
    assert formatEvent(seen[2]) == "worker 1: 42"


class FakeTransport:
    pid = 4242

    def __init__(self) -> None:
        self.signals: list[Any] = []

    def signalProcess(self, sig: Any) -> None:
        self.signals.append(sig)


class FakeReactor(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProcess, list[str]]] = []

    def spawnProcess(self, proto: WorkerProcess, exe: str, args: list[str], **kw: Any) -> None:
        proto.transport = FakeTransport()  # type: ignore[assignment]
        self.spawned.append((proto, args))


def test_supervisor_restarts_a_dead_worker_with_backoff() -> None:
    clock = FakeReactor()
    config = load_config(None, workers="2", redis="redis://127.0.0.1:6379")
    sup = Supervisor(config, {"workers": "2", "redis": "redis://127.0.0.1:6379", "listen": None},
                     clock)
    sup.spawn(0)
    sup.spawn(1)
    args = clock.spawned[1][1]
    assert args[1:5] == ["-m", "sipsuite.proxy.worker", "--index", "1"]
    assert '"listen"' not in args[-1]  # unset options are not passed on
    first = sup.workers[1]
    sup.ended(first, None, 9)
    assert 1 not in sup.workers
    clock.advance(BACKOFF_FIRST)
    assert sup.workers[1] is not first and len(clock.spawned) == 3
    # Dying again at once: the wait doubles, up to BACKOFF_MAX.
    sup.ended(sup.workers[1], 1, None)
    clock.advance(BACKOFF_FIRST)
    assert 1 not in sup.workers
    clock.advance(BACKOFF_FIRST)
    assert 1 in sup.workers
    assert max(sup.backoff.values()) <= BACKOFF_MAX


def test_supervisor_stop_signals_the_workers_and_does_not_restart() -> None:
    import signal

    clock = FakeReactor()
    config = load_config(None, workers="2", redis="redis://127.0.0.1:6379")
    sup = Supervisor(config, {}, clock)
    sup.spawn(0)
    sup.spawn(1)
    procs = list(sup.workers.values())
    done = sup.stopService()
    for proc in procs:
        assert proc.transport.signals == [signal.SIGTERM]  # type: ignore[union-attr]
    fired: list[Any] = []
    done.addCallback(fired.append)
    for proc in procs:
        sup.ended(proc, 0, None)
        proc.ended.callback(None)
    assert fired and not sup.workers
    clock.advance(60)
    assert len(clock.spawned) == 2  # nothing restarted


def test_a_port_another_program_holds_is_one_line() -> None:
    from sipsuite.proxy.workers import check_ports_free

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: the workers could not share it
        port = held.getsockname()[1]
        config = load_config(None, workers="2", redis="redis://127.0.0.1:6379",
                             listen=[f"udp:127.0.0.1:{port}"])
        with pytest.raises(StartupError, match=rf"^cannot listen on udp 127\.0\.0\.1:{port}: "):
            check_ports_free(config)
    check_ports_free(config)  # released: fine
