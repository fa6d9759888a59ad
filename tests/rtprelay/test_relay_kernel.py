"""Kernel forwarding (nftables) in network namespaces: `twistd rtp-relay` on a
relay host between two phone hosts (and a sprayer's), packets forwarded by
the rules while the relay process reads none of them.

Hosts (netnskit, 198.18.0.0/15)::

    phone A 198.18.1.2 --- 198.18.1.1 relay 198.18.2.1 --- 198.18.2.2 phone B
                                       198.18.3.1 --- 198.18.3.2 sprayer

The relay's media address is 198.18.1.1 (phone B reaches it through its
default route), its control socket a unix socket (paths cross namespaces),
its management port 127.0.0.1 inside the relay host.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netnskit import Topology, inside, rpc, topology, wait_for

from sipsuite.ops.ctl.output import show_relay_sessions

__all__ = ["topology"]  # the fixture, used by name

REPO = Path(__file__).resolve().parents[2]
RELAY_IP, A_IP, B_IP, S_IP = "198.18.1.1", "198.18.1.2", "198.18.2.2", "198.18.3.2"
MGMT = 7061
SSRC_A, SSRC_B = 0xA1A1A1A1, 0xB2B2B2B2


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + b"\xd5" * 160


def rtcp(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


class Hosts:
    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.tmp = tmp
        self.r = topo.ns("r")
        self.a = topo.ns("a")
        self.b = topo.ns("b")
        self.s = topo.ns("s")
        for i, (ns, mine, theirs) in enumerate(((self.a, A_IP, RELAY_IP),
                                                (self.b, B_IP, "198.18.2.1"),
                                                (self.s, S_IP, "198.18.3.1")), 1):
            dev, rdev = topo.link(ns, mine + "/24", self.r, theirs + "/24")
            topo.route(ns, theirs)
            # IPv6 on the same links (2001:db8::/32, documentation).
            topo.addr(ns, dev, f"2001:db8:{i}::2/64")
            topo.addr(self.r, rdev, f"2001:db8:{i}::1/64")
            topo.route(ns, f"2001:db8:{i}::1")
        topo.sysctl(self.r, "net.ipv4.ip_forward", "1")
        topo.sysctl(self.r, "net.ipv6.conf.all.forwarding", "1")
        self.control = str(tmp / "relay.sock")
        self.proc: subprocess.Popen[Any] | None = None
        self.log = tmp / "relay.log"

    def start_relay(self, kernel: str = "on", learn_window: float = 3.0,
                    media_timeout: float = 60.0, media: str = RELAY_IP) -> None:
        (self.tmp / "relay.toml").write_text(
            f'[management]\nrelay_listen = "tcp:127.0.0.1:{MGMT}"\n'
            f'[relay]\nkernel = "{kernel}"\nlearn_window = {learn_window}\n'
            f"media_timeout = {media_timeout}\ndrain_time = 0.0\n")
        out = open(self.log, "ab")
        self.proc = self.topo.popen(self.r, [
            sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
            "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml",
            "--control", f"unix:{self.control}", "--ports", "30000-30099",
            "--media-address", media,
        ], cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        out.close()

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return self.command("V").strip() == "20040107"
            except OSError:
                return False

        wait_for(ready, 30, "the relay to answer V")

    def command(self, text: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.control)
            s.sendall(text.encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.decode()

    def stats(self) -> dict[str, Any]:
        result = rpc(self.r, MGMT, "relay.stats")
        assert isinstance(result, dict)
        return result

    def sessions(self) -> list[dict[str, Any]]:
        result = rpc(self.r, MGMT, "relay.sessions")
        assert isinstance(result, list)
        return result

    def sock(self, ns: str, host: str, port: int) -> socket.socket:
        with inside(ns):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                              socket.SOCK_DGRAM)
        # Bursts of hundreds of datagrams: room for all of them (FORCE: root
        # may pass rmem_max).
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
        s.bind((host, port))
        s.settimeout(0.5)
        return s

    def table(self) -> str:
        (name,) = [t for t in self.topo.tables(self.r) if t.startswith("sipsuite_relay_")]
        return name

    def flows(self) -> dict[int, int]:
        """Relay port -> packets, from the table's flow set (`nft -j list table`);
        each of the maps holds exactly one element per flow too."""
        items = self.topo.nft_json(self.r, "table", "inet", self.table())
        out = {}
        for item in items:
            if "set" in item and item["set"]["name"] == "flows4":
                for e in item["set"].get("elem", []):
                    out[e["elem"]["val"]["concat"][3]] = e["elem"]["counter"]["packets"]
        maps = [item["map"] for item in items if "map" in item]
        assert len(maps) == 4 and all(len(m.get("elem", [])) == len(out) for m in maps), maps
        return out


def recv_all(s: socket.socket, timeout: float = 0.5) -> list[tuple[bytes, tuple[str, int]]]:
    got = []
    s.settimeout(timeout)
    while True:
        try:
            data, src = s.recvfrom(4096)
        except (TimeoutError, BlockingIOError):
            return got
        got.append((data, src))
        s.settimeout(0.2)


class Call:
    """A call set up like Kamailio does (U, then L) over the unix socket."""

    def __init__(self, hosts: Hosts, call_id: str = "kc1") -> None:
        self.h = hosts
        self.call_id = call_id
        self.a = hosts.sock(hosts.a, A_IP, 4000)
        self.a_rtcp = hosts.sock(hosts.a, A_IP, 4001)
        self.b = hosts.sock(hosts.b, B_IP, 5000)
        self.b_rtcp = hosts.sock(hosts.b, B_IP, 5001)
        offer = hosts.command(f"U {call_id} {A_IP} 4000 ft;1").split()
        self.to_b = int(offer[0])  # the relay port in the offer B gets: B sends there
        answer = hosts.command(f"L {call_id} {B_IP} 5000 ft;1 tt;1").split()
        self.to_a = int(answer[0])  # A sends there
        assert offer[1] == answer[1] == RELAY_IP
        self.seq_a = self.seq_b = 0

    def send_a(self, n: int, s: socket.socket | None = None) -> None:
        for i in range(n):
            self.seq_a += 1
            (s or self.a).sendto(rtp(self.seq_a, SSRC_A), (RELAY_IP, self.to_a))
            if i % 50 == 49:
                time.sleep(0.002)

    def send_b(self, n: int) -> None:
        for i in range(n):
            self.seq_b += 1
            self.b.sendto(rtp(self.seq_b, SSRC_B), (RELAY_IP, self.to_b))
            if i % 50 == 49:
                time.sleep(0.002)

    def latch(self) -> None:
        """Both parties send until the kernel has all four flows."""
        self.send_a(2)
        self.send_b(2)
        self.a_rtcp.sendto(rtcp(SSRC_A), (RELAY_IP, self.to_a + 1))
        self.b_rtcp.sendto(rtcp(SSRC_B), (RELAY_IP, self.to_b + 1))
        wait_for(lambda: self.h.stats()["kernel_flows"] == 4, 10, "four kernel flows")
        for s in (self.a, self.b, self.a_rtcp, self.b_rtcp):
            recv_all(s, 0.2)

    def close(self) -> None:
        for s in (self.a, self.a_rtcp, self.b, self.b_rtcp):
            s.close()


def test_kernel_forwards_latched_media_without_the_relay_process(
        topology: Topology, tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    hosts.start_relay()
    stats = hosts.stats()
    assert stats["forwarding"] == "kernel", stats["forwarding_reason"]
    assert "rtp relay forwarding: kernel (nftables, table inet sipsuite_relay_" in \
        hosts.log.read_text()
    call = Call(hosts)
    try:
        call.latch()
        before = hosts.stats()
        call.send_a(300)
        call.send_b(300)
        call.a_rtcp.sendto(rtcp(SSRC_A), (RELAY_IP, call.to_a + 1))
        got_b = recv_all(call.b)
        got_a = recv_all(call.a)
        # Every packet arrives, from the relay port the party sends to
        # (symmetric RTP), unchanged.
        assert [d for d, _ in got_b] == [rtp(s, SSRC_A) for s in range(3, 303)]
        assert {src for _, src in got_b} == {(RELAY_IP, call.to_b)}
        assert [d for d, _ in got_a] == [rtp(s, SSRC_B) for s in range(3, 303)]
        assert {src for _, src in got_a} == {(RELAY_IP, call.to_a)}
        data, src = call.b_rtcp.recvfrom(100)
        assert data == rtcp(SSRC_A) and src == (RELAY_IP, call.to_b + 1)

        after = hosts.stats()
        # The relay process read none of them; the rules' counters did.
        assert after["packets_userspace"] - before["packets_userspace"] == 0
        assert after["packets_kernel"] - before["packets_kernel"] == 601
        assert after["packets_relayed"] - before["packets_relayed"] == 601
        (session,) = hosts.sessions()
        assert session["caller"]["kernel"] and session["callee"]["kernel_rtcp"]
        # What sipsuite-ctl relay sessions prints.
        shown = show_relay_sessions([session], argparse.Namespace())
        assert f"{call.to_a} <- {A_IP}:4000 (kernel)" in shown
        assert session["caller"]["packets"] == 302 and session["callee"]["packets"] == 302
        assert session["caller"]["bytes"] == 302 * 172
        counters = hosts.flows()
        assert set(counters) == {call.to_a, call.to_a + 1, call.to_b, call.to_b + 1}
        assert counters[call.to_a] == 300 and counters[call.to_b] == 300
        assert counters[call.to_a + 1] == 1

        # D: the session's rules go; media stops.
        assert hosts.command(f"D {call.call_id} ft;1 tt;1").strip() == "0"
        assert hosts.flows() == {}
        assert hosts.stats()["kernel_flows"] == 0
        call.send_a(5)
        assert recv_all(call.b, 0.3) == []
        # The totals keep what the kernel forwarded.
        assert hosts.stats()["packets_relayed"] >= 601
    finally:
        call.close()


def test_sigkill_leaves_a_table_the_next_start_removes(topology: Topology,
                                                      tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    hosts.start_relay()
    call = Call(hosts)
    try:
        call.latch()
        table = hosts.table()
        assert hosts.proc is not None
        hosts.proc.send_signal(signal.SIGKILL)
        hosts.proc.wait(10)
        # The rules outlive the process: media still flows, with nobody to
        # end it.
        assert table in topology.tables(hosts.r)
        call.send_a(3)
        assert len(recv_all(call.b)) == 3

        hosts.start_relay()
        assert table not in topology.tables(hosts.r)
        assert "a stale one left by an earlier run removed" in hosts.log.read_text()
        call.send_a(3)
        assert recv_all(call.b, 0.3) == []
    finally:
        call.close()


def test_rtp_bleed_spray_at_the_kernel_path(topology: Topology, tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    hosts.start_relay(learn_window=0.3)
    call = Call(hosts)
    sprayer = hosts.sock(hosts.s, S_IP, 6000)
    ports = [call.to_a, call.to_a + 1, call.to_b, call.to_b + 1]

    def spray() -> None:
        for seq in range(1, 21):
            for port in ports:
                sprayer.sendto(rtp(seq, 0x5BAD), (RELAY_IP, port))

    try:
        time.sleep(0.5)  # the learning window closed before anyone sent
        spray()
        assert recv_all(sprayer, 0.3) == []
        assert recv_all(call.a, 0.1) == [] and recv_all(call.b, 0.1) == []
        # The signalled addresses latch all the same, and the kernel takes over.
        call.latch()
        spray()
        call.send_a(10)
        call.send_b(10)
        assert recv_all(sprayer, 0.3) == []
        assert [d for d, _ in recv_all(call.b)] == [rtp(s, SSRC_A) for s in range(3, 13)]
        assert [d for d, _ in recv_all(call.a)] == [rtp(s, SSRC_B) for s in range(3, 13)]
        stats = hosts.stats()
        assert stats["packets_dropped"] == 2 * 20 * 4
        # The spray reached userspace (and was dropped there): the kernel
        # forwarded only the phones' packets.
        assert stats["packets_kernel"] == 20
        (session,) = hosts.sessions()
        assert session["caller"]["latched"] == f"{A_IP}:4000"
        assert session["callee"]["latched"] == f"{B_IP}:5000"
    finally:
        sprayer.close()
        call.close()


def test_moved_source_relatched_only_when_it_continues_the_stream(
        topology: Topology, tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    hosts.start_relay(learn_window=0.3)
    call = Call(hosts)
    moved = hosts.sock(hosts.a, A_IP, 4010)
    other = hosts.sock(hosts.a, A_IP, 4020)
    try:
        call.latch()
        time.sleep(0.4)  # learning closed: only continuity may move the latch
        call.send_a(250)  # through the kernel: userspace never saw these
        assert len(recv_all(call.b)) == 250
        # Another port: a foreign SSRC, then the right SSRC far ahead.
        other.sendto(rtp(call.seq_a + 1, 0x5BAD), (RELAY_IP, call.to_a))
        other.sendto(rtp(call.seq_a + 1000, SSRC_A), (RELAY_IP, call.to_a))
        assert recv_all(call.b, 0.3) == []
        (session,) = hosts.sessions()
        assert session["caller"]["latched"] == f"{A_IP}:4000"
        # The NAT rebinds: the same stream, next sequence numbers, new port.
        call.send_a(1, moved)
        wait_for(lambda: hosts.sessions()[0]["caller"]["latched"] == f"{A_IP}:4010",
                 5, "the re-latch")
        wait_for(lambda: hosts.sessions()[0]["caller"]["kernel"], 5, "the rule to follow")
        before = hosts.stats()["packets_userspace"]
        call.send_a(50, moved)
        got = recv_all(call.b)
        assert [d for d, _ in got] == [rtp(s, SSRC_A) for s in range(call.seq_a - 50, call.seq_a + 1)]
        assert {src for _, src in got} == {(RELAY_IP, call.to_b)}
        assert hosts.stats()["packets_userspace"] == before  # the kernel follows the move
        # The old port is now just another source (unless it continues the
        # stream, as a NAT moving back would).
        call.a.sendto(rtp(call.seq_a + 1, 0x5BAD), (RELAY_IP, call.to_a))
        assert recv_all(call.b, 0.3) == []
        # B's media goes to the new port.
        call.send_b(2)
        assert len(recv_all(moved)) == 2
    finally:
        for s in (moved, other):
            s.close()
        call.close()


def test_kernel_on_without_what_it_needs_is_a_startup_error(topology: Topology,
                                                            tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    topology.sysctl(hosts.r, "net.ipv4.ip_forward", "0")
    (tmp_path / "relay.toml").write_text('[relay]\nkernel = "on"\n')
    done = subprocess.run(
        ["ip", "netns", "exec", hosts.r, sys.executable, "-c",
         "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
         "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml", "--control",
         f"unix:{hosts.control}", "--media-address", RELAY_IP],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode != 0
    assert '[relay] kernel = "on": net.ipv4.ip_forward is 0' in done.stdout + done.stderr
    # "auto" starts, in userspace, and says why, once.
    hosts.start_relay(kernel="auto")
    stats = hosts.stats()
    assert stats["forwarding"] == "userspace"
    assert "net.ipv4.ip_forward is 0" in stats["forwarding_reason"]
    assert hosts.log.read_text().count("rtp relay forwarding: userspace (kernel forwarding"
                                       " unavailable: net.ipv4.ip_forward is 0") == 1
    assert hosts.proc is not None
    hosts.proc.kill()
    hosts.proc.wait(10)
    # Without CAP_NET_ADMIN (root, with it dropped from the bounding set).
    topology.sysctl(hosts.r, "net.ipv4.ip_forward", "1")
    (tmp_path / "relay.toml").write_text('[relay]\nkernel = "on"\n')
    done = subprocess.run(
        ["ip", "netns", "exec", hosts.r, "setpriv", "--bounding-set=-net_admin",
         "--inh-caps=-net_admin", sys.executable, "-c",
         "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
         "-n", "--pidfile=", "rtp-relay", "--config", "relay.toml", "--control",
         f"unix:{hosts.control}", "--media-address", RELAY_IP],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode != 0
    assert '[relay] kernel = "on": needs root or CAP_NET_ADMIN' in done.stdout + done.stderr


def test_counters_keep_a_kernel_session_alive_then_timeout_and_stop_remove_rules(
        topology: Topology, tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    hosts.start_relay(media_timeout=2.0)
    call = Call(hosts)
    try:
        call.latch()
        userspace = hosts.stats()["packets_userspace"]
        # 4 s of media, twice the timeout, none of it seen by the relay.
        for _ in range(40):
            call.send_a(1)
            call.send_b(1)
            time.sleep(0.1)
        stats = hosts.stats()
        assert stats["sessions_active"] == 1 and stats["sessions_expired"] == 0
        assert stats["packets_userspace"] == userspace
        (session,) = hosts.sessions()
        assert session["idle"] < 1.5
        # Silence: the session times out and its rules go with it.
        wait_for(lambda: hosts.stats()["sessions_expired"] == 1, 6, "the media timeout")
        assert hosts.flows() == {}
        # A second call, then stop (SIGTERM, drain_time 0): the table goes.
        call.close()
        call = Call(hosts, "kc2")
        call.latch()
        table = hosts.table()
        assert hosts.proc is not None
        hosts.proc.send_signal(signal.SIGTERM)
        hosts.proc.wait(20)
        assert table not in topology.tables(hosts.r)
    finally:
        call.close()


def test_kernel_forwards_ipv6(topology: Topology, tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    relay, a_ip, b_ip = "2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::2"
    hosts.start_relay(media=relay)
    a, b = hosts.sock(hosts.a, a_ip, 4000), hosts.sock(hosts.b, b_ip, 5000)
    try:
        offer = hosts.command(f"U6 k6 {a_ip} 4000 ft;1").split()
        answer = hosts.command(f"L6 k6 {b_ip} 5000 ft;1 tt;1").split()
        to_b, to_a = int(offer[0]), int(answer[0])
        assert offer[1] == answer[1] == relay
        a.sendto(rtp(1, SSRC_A), (relay, to_a))
        b.sendto(rtp(1, SSRC_B), (relay, to_b))
        wait_for(lambda: hosts.stats()["kernel_flows"] == 2, 10, "two kernel flows")
        recv_all(a, 0.2)
        recv_all(b, 0.2)
        before = hosts.stats()
        for seq in range(2, 102):
            a.sendto(rtp(seq, SSRC_A), (relay, to_a))
            b.sendto(rtp(seq, SSRC_B), (relay, to_b))
        got_b, got_a = recv_all(b), recv_all(a)
        assert [d for d, _ in got_b] == [rtp(s, SSRC_A) for s in range(2, 102)]
        assert {src[:2] for _, src in got_b} == {(relay, to_b)}
        assert [d for d, _ in got_a] == [rtp(s, SSRC_B) for s in range(2, 102)]
        assert {src[:2] for _, src in got_a} == {(relay, to_a)}
        after = hosts.stats()
        assert after["packets_userspace"] == before["packets_userspace"]
        assert after["packets_kernel"] - before["packets_kernel"] == 200
        (session,) = hosts.sessions()
        assert session["caller"]["bytes"] == 101 * 172  # IPv6 + UDP headers not counted
    finally:
        a.close()
        b.close()


def test_a_flushed_ruleset_falls_back_to_userspace_then_reinstalls(
        topology: Topology, tmp_path: Path) -> None:
    hosts = Hosts(topology, tmp_path)
    hosts.start_relay()
    call = Call(hosts)
    try:
        call.latch()
        # A firewall reload on the relay host: every table goes, ours too.
        subprocess.run(["ip", "netns", "exec", hosts.r, "nft", "flush", "ruleset"], check=True,
                       timeout=20)
        # The media does not stop: the relay's sockets get it and relay it,
        # and the flows come back in a new table.
        call.send_a(5)
        call.send_b(5)
        assert len(recv_all(call.b)) == 5 and len(recv_all(call.a)) == 5
        wait_for(lambda: hosts.stats()["kernel_tables_lost"] == 1, 5, "the lost table noticed")
        # RTCP's flows come back with its next packets.
        call.a_rtcp.sendto(rtcp(SSRC_A), (RELAY_IP, call.to_a + 1))
        call.b_rtcp.sendto(rtcp(SSRC_B), (RELAY_IP, call.to_b + 1))
        wait_for(lambda: hosts.stats()["kernel_flows"] == 4, 5, "the flows reinstalled")
        before = hosts.stats()["packets_userspace"]
        call.send_a(20)
        assert len(recv_all(call.b)) == 20
        assert hosts.stats()["packets_userspace"] == before
        assert set(hosts.flows()) == {call.to_a, call.to_a + 1, call.to_b, call.to_b + 1}
    finally:
        call.close()
