"""TCP hardening against a real ``twistd sipsuite``: slowloris, idle floods,
the per-source limit and descriptor headroom (issue 11, defects 3 and 4).

Each test starts its own proxy with small limits ([proxy]
tcp_message_timeout = 2, tcp_max_connections = 40, tcp_max_per_source = 10)
and checks that, while the attack runs, legitimate UDP, TCP and management
requests are still answered. Attackers connect from 127.0.0.2 and up,
legitimate clients from other loopback addresses. Every load is bounded:
at most a few hundred connections, for at most a few seconds each.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import procs
import pytest
from common import free_port_range
from endpoints import TcpEndpoint, options_ping
from procs import LOCALHOST, ProxyProcess, build_request, is_final

MESSAGE_TIMEOUT = 2.0
MAX_CONNECTIONS = 40
MAX_PER_SOURCE = 10
LIMITS = {"tcp_message_timeout": MESSAGE_TIMEOUT, "tcp_max_connections": MAX_CONNECTIONS,
          "tcp_max_per_source": MAX_PER_SOURCE}
#: Generous: the box is shared, and the proxy's timer is checked from outside.
SLACK = 2.5
HEADROOM = 128  # sipsuite.proxy.net.tcplimits.FD_HEADROOM, seen from outside


Starter = Callable[..., ProxyProcess]


@pytest.fixture
def start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starter]:
    """``start(name, nofile=None, plugin="sipsuite", **[proxy] keys)``: a proxy
    (twistd PLUGIN) with those settings,
    stopped at the end of the test."""
    started: list[ProxyProcess] = []
    base = procs.proxy_starter(tmp_path_factory, started)

    def go(name: str, nofile: tuple[int, int] | None = None, plugin: str = "sipsuite",
           **proxy: Any) -> ProxyProcess:
        return base(name, nofile=nofile, plugin=plugin, extra_proxy=proxy)

    yield go
    for p in started:
        p.stop()


# --------------------------------------------------------------------------- the legitimate clients


def udp_ok(proxy: ProxyProcess) -> bool:
    got = options_ping(proxy.host, proxy.port, timeout=3.0)
    return got is not None and got.status == 200


def tcp_ok(proxy: ProxyProcess, source: str, timeout: float = 3.0) -> bool:
    """An OPTIONS over a new TCP connection from ``source`` gets its 200."""
    try:
        with TcpEndpoint(proxy.address, timeout=timeout, source=source) as conn:
            return options_on(conn, proxy, timeout)
    except OSError:
        return False


def options_on(conn: TcpEndpoint, proxy: ProxyProcess, timeout: float = 3.0) -> bool:
    uri = f"sip:{proxy.hostport}"
    try:
        conn.send(build_request("OPTIONS", uri, sent_by=conn.sent_by, transport="TCP",
                                to_uri=uri))
    except OSError:
        return False
    got = conn.recv_until(is_final, timeout)
    return got is not None and got.msg.status == 200


def rpc(proxy: ProxyProcess, method: str, timeout: float = 5.0) -> Any:
    """A JSON-RPC call on the management interface; its result."""
    body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1}).encode()
    request = urllib.request.Request(proxy.management_url, data=body,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as resp:
        return json.loads(resp.read())["result"]


def drops(proxy: ProxyProcess) -> dict[str, int]:
    return rpc(proxy, "stats")["drops"]


def all_answered(proxy: ProxyProcess, tcp_from: str | None) -> dict[str, bool]:
    """UDP, management (uptime) and, from ``tcp_from``, TCP: each answered?"""
    out = {"udp": udp_ok(proxy)}
    try:
        out["management"] = rpc(proxy, "uptime")["uptime"] >= 0
    except OSError:
        out["management"] = False
    if tcp_from is not None:
        out["tcp"] = tcp_ok(proxy, tcp_from)
    return out


# --------------------------------------------------------------------------- raw attacker sockets


def connect_from(proxy: ProxyProcess, source: str) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=3.0, source_address=(source, 0))


def closed(sock: socket.socket) -> bool:
    """Whether the proxy closed it (EOF or reset); never blocks."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


def closed_within(socks: list[socket.socket], seconds: float) -> list[int]:
    """Indexes of those the proxy closes within ``seconds``."""
    gone: set[int] = set()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and len(gone) < len(socks):
        live = [s for i, s in enumerate(socks) if i not in gone]
        ready, _, _ = select.select(live, [], [], left)
        for s in ready:
            if closed(s):
                gone.add(socks.index(s))
    return sorted(gone)


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


# --------------------------------------------------------------------------- slowloris


def test_slowloris_is_closed_within_the_message_timeout(start: Starter) -> None:
    """Three connections send an OPTIONS one byte every 0.3 s (it would take
    over a minute), a fourth sends its first 10 bytes and stalls: each is
    closed MESSAGE_TIMEOUT after its first byte, though every byte resets
    the idle timer (600 s). Meanwhile a connection sending CRLF
    keep-alives, and one sending whole OPTIONS in halves 1 s apart, stay
    open and answered; UDP, new TCP and management requests are answered
    throughout."""
    proxy = start("slowloris", **LIMITS)
    uri = f"sip:{proxy.hostport}"
    slow = build_request("OPTIONS", uri, sent_by="127.0.0.2:5060", transport="TCP", to_uri=uri)
    with sockets() as held, TcpEndpoint(proxy.address, source="127.0.0.7") as pinger, \
            TcpEndpoint(proxy.address, source="127.0.0.8") as halves:
        attackers = [connect_from(proxy, "127.0.0.2") for _ in range(4)]
        stalled = 3
        held += attackers
        first_byte: dict[int, float] = {}
        closed_at: dict[int, float] = {}
        answers: list[dict[str, bool]] = []
        halves_ok: list[bool] = []
        sent = 0
        begun = time.monotonic()
        deadline = begun + MESSAGE_TIMEOUT + SLACK + 1.0
        while len(closed_at) < len(attackers) and time.monotonic() < deadline:
            for i, s in enumerate(attackers):
                if i in closed_at:
                    continue
                if closed(s):
                    closed_at[i] = time.monotonic()
                    continue
                if i == stalled and i in first_byte:
                    continue
                with contextlib.suppress(OSError):  # closed meanwhile: seen next round
                    s.sendall(slow[:10] if i == stalled else slow[sent:sent + 1])
                    first_byte.setdefault(i, time.monotonic())
            sent += 1
            pinger.send(b"\r\n\r\n")
            if sent % 4 == 0:
                answers.append(all_answered(proxy, tcp_from="127.0.0.3"))
            if sent % 7 == 0:
                # one whole OPTIONS in two halves, 1 s apart at most
                request = build_request("OPTIONS", uri, sent_by=halves.sent_by, transport="TCP",
                                        to_uri=uri)
                halves.send(request[:60])
                time.sleep(0.5)
                halves.send(request[60:])
                got = halves.recv_until(is_final, 3.0)
                halves_ok.append(got is not None and got.msg.status == 200)
            time.sleep(0.3)
        try:
            pongs = pinger.sock.recv(65536).count(b"\r\n")
        except BlockingIOError:
            pongs = 0
        pinger_open = not closed(pinger.sock)
        halves_open = options_on(halves, proxy)
    diag = "\n" + proxy.diagnostics()
    assert sorted(closed_at) == [0, 1, 2, 3], f"slowloris connections left open: {closed_at}" + diag
    for i, at in closed_at.items():
        held_for = at - first_byte[i]
        assert MESSAGE_TIMEOUT - 0.5 <= held_for <= MESSAGE_TIMEOUT + SLACK, (
            f"connection {i} closed {held_for:.2f} s after its first byte" + diag)
    assert sent < len(slow) // 4, "the slow message came too near its end for the test to mean much"
    assert answers and all(all(a.values()) for a in answers), f"unanswered: {answers}" + diag
    assert halves_ok and all(halves_ok) and halves_open, (
        f"the connection sending whole messages slowly was not served: {halves_ok}" + diag)
    assert pinger_open and pongs > 0, "the keep-alive connection was closed or got no pongs" + diag
    assert drops(proxy).get("transport.tcp_message_timeout") == 4, drops(proxy)
    assert proxy.log_text().count("no complete message within 2.0 s") == 4


# --------------------------------------------------------------------------- per source


def test_per_source_limit(start: Starter) -> None:
    """Ten connections from 127.0.0.2 are served; the eleventh (and twelfth)
    from it is closed at once, while 127.0.0.3 still connects and is
    answered. One warning for both refusals; both counted. After one of the
    ten closes, or after cfg set raises the limit, 127.0.0.2 connects again."""
    proxy = start("persource", **LIMITS)
    with sockets() as held:
        held += [connect_from(proxy, "127.0.0.2") for _ in range(MAX_PER_SOURCE)]
        over = [connect_from(proxy, "127.0.0.2") for _ in range(2)]
        held += over
        assert closed_within(over, 2.0) == [0, 1], "the connections over the limit stayed open"
        assert closed_within(held[:MAX_PER_SOURCE], 0.5) == [], "an admitted one was closed"
        answered = all_answered(proxy, tcp_from="127.0.0.3")
        assert all(answered.values()), answered
        # the ten still carry requests
        with TcpEndpoint(proxy.address, source="127.0.0.4") as other:
            assert options_on(other, proxy)
        assert drops(proxy).get("transport.tcp_max_per_source") == 2
        warned = re.findall(r"refusing TCP/TLS connections: .*", proxy.log_text())
        assert len(warned) == 1 and "tcp_max_per_source (10) reached for 127.0.0.2" in warned[0], (
            warned)

        held[0].close()
        assert wait_for(lambda: tcp_ok(proxy, "127.0.0.2"), 3.0), "a freed place was not reusable"

        res = proxy.ctl("cfg", "set", "proxy.tcp_max_per_source", str(MAX_PER_SOURCE + 2))
        assert res.returncode == 0, res.stderr
        more = [connect_from(proxy, "127.0.0.2") for _ in range(2)]
        held += more
        assert closed_within(more, 1.0) == [], "cfg set tcp_max_per_source did not take"


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


# --------------------------------------------------------------------------- idle flood


def test_idle_flood_up_to_the_global_limit(start: Starter) -> None:
    """Forty idle connections, ten from each of 127.0.0.2-5, fill
    tcp_max_connections: a new one from 127.0.0.6 is closed at once, while
    UDP and the management interface (sipsuite-ctl and JSON-RPC) answer
    from anywhere; when one of the forty goes, 127.0.0.6 gets its TCP
    answer."""
    proxy = start("idleflood", **LIMITS)
    with sockets() as held:
        for n in range(2, 6):
            held += [connect_from(proxy, f"127.0.0.{n}") for _ in range(MAX_PER_SOURCE)]
        assert closed_within(held, 0.5) == [], "the proxy closed part of the flood under its limit"
        late = [connect_from(proxy, "127.0.0.6")]
        held += late
        assert closed_within(late, 2.0) == [0], "connection over tcp_max_connections stayed open"
        answered = all_answered(proxy, tcp_from=None)
        assert all(answered.values()), answered
        assert not tcp_ok(proxy, "127.0.0.6", timeout=1.0), "TCP over the limit was served"
        res = proxy.ctl("--json", "stats")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["drops"].get("transport.tcp_max_connections") == 2
        held[0].close()
        assert wait_for(lambda: tcp_ok(proxy, "127.0.0.6"), 3.0), (
            "TCP not served once under the limit\n" + proxy.diagnostics())
    assert proxy.log_text().count("tcp_max_connections (40) reached") == 1


# --------------------------------------------------------------------------- descriptors


def test_descriptor_headroom_and_raised_soft_limit(start: Starter) -> None:
    """Started with a soft open-files limit of 256 and a hard one of 320, the
    proxy raises the soft one to 320. With limits too high to matter, a
    flood from 127.0.0.2-4 is refused once fewer than 128 descriptors would
    stay free: the flood gets under 320 - 128 connections, UDP, TCP (after
    one closes) and the management interface go on answering, and the
    refusals are counted as tcp_descriptors."""
    hard = 320
    proxy = start("descriptors", nofile=(256, hard), tcp_max_connections=100_000,
                  tcp_max_per_source=100_000)
    assert proxy.proc is not None
    assert soft_and_hard_nofile(proxy.proc.pid) == (hard, hard)
    with sockets() as held:
        admitted = refused = 0
        for n in range(hard // 20 + 1):  # batches of 20: the refusals come in the last
            batch = [connect_from(proxy, f"127.0.0.{2 + n % 3}") for _ in range(20)]
            held += batch
            gone = len(closed_within(batch, 0.5))
            admitted += len(batch) - gone
            refused += gone
            if refused:
                break
        assert refused, f"no refusal after {admitted} connections"
        assert 20 <= admitted <= hard - HEADROOM, admitted
        answered = all_answered(proxy, tcp_from=None)
        assert all(answered.values()), answered
        assert drops(proxy).get("transport.tcp_descriptors") == refused
        held[0].close()
        assert wait_for(lambda: tcp_ok(proxy, "127.0.0.5"), 3.0), proxy.diagnostics()
    assert "fewer than 128 file descriptors would stay free" in proxy.log_text()


def soft_and_hard_nofile(pid: int) -> tuple[int, int]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    row = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert row is not None, limits
    return int(row[1]), int(row[2])


@pytest.mark.parametrize("plugin", ["sipsuite", "sip-proxy"])
def test_started_service_soft_limit_is_its_hard_limit(start: Starter, plugin: str) -> None:
    """Whatever soft limit twistd inherits (1024 under systemd), the proxy runs
    with its soft RLIMIT_NOFILE at the hard one."""
    proxy = start("rlimit", nofile=(64, 4096), plugin=plugin)
    assert proxy.proc is not None
    assert soft_and_hard_nofile(proxy.proc.pid) == (4096, 4096)
    assert udp_ok(proxy) and tcp_ok(proxy, LOCALHOST)


def test_relay_soft_limit_is_its_hard_limit(tmp_path: Path) -> None:
    """`twistd rtp-relay` on its own raises its soft limit too (each call
    takes two or four media sockets)."""
    control = procs.free_port("udp")
    low, high = free_port_range(8)
    (tmp_path / "relay.toml").write_text(
        f'[management]\nlisten = ""\n[relay]\ncontrol = ["udp:{LOCALHOST}:{control}"]\n'
        f'media_addresses = ["{LOCALHOST}"]\nports = "{low}-{high}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon",
         "--pidfile=", f"--logfile={tmp_path / 'relay.log'}", "rtp-relay", "--config",
         str(tmp_path / "relay.toml")],
        cwd=procs.REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096)))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            answer = b""
            deadline = time.monotonic() + 20
            while answer.strip() != b"v1 20040107" and time.monotonic() < deadline and proc.poll() is None:
                s.sendto(b"v1 V", (LOCALHOST, control))
                with contextlib.suppress(TimeoutError):
                    answer = s.recv(100)
        assert answer.strip() == b"v1 20040107", (tmp_path / "relay.log").read_text(errors="replace")
        assert soft_and_hard_nofile(proc.pid) == (4096, 4096)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
