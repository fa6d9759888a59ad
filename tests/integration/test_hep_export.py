"""HEP export seen from outside: a sipp call through a real ``twistd
sip-proxy`` with ``[trace] hep`` pointing at a UDP collector on loopback
(this test's socket).  Each SIP message in and out arrives as one HEP3
packet, in order, with its addresses; written into a pcap, tshark decodes
them as HEP3 carrying the same SIP messages (tests/integration/hep/hep3.lua:
Wireshark 4.0 has no HEP dissector of its own)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import procs
import pytest
from kamailioproc import CONFIGS, KamailioProcess, kamailio_binary
from procs import LOCALHOST
from test_flight_recorder import one_call

from sipsuite.trace.hep import decode, encode
from sipsuite.trace.pcap import write_pcap

LUA = Path(__file__).resolve().parent / "hep" / "hep3.lua"
U16, U32 = struct.Struct("!H"), struct.Struct("!I")


def label(sip: bytes) -> str:
    first = sip.split(b"\r\n", 1)[0].decode()
    return " ".join(first.split()[1:]) if first.startswith("SIP/2.0 ") else first.split()[0]


class Collector:
    """A UDP socket on loopback read by a thread from the start (a socket
    read only after the calls would drop what its buffer cannot hold):
    ``got`` is (time received, datagram, source port) of each."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.got: list[tuple[float, bytes, int]] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.got.append((time.time(), data, source[1]))

    def wait(self, want: int, within: float = 10.0) -> list[tuple[float, bytes, int]]:
        """What arrived once ``want`` did and no more for half a second (so an
        extra one is seen too), or after ``within``."""
        deadline = time.monotonic() + within
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if len(self.got) != seen:
                seen, quiet_since = len(self.got), time.monotonic()
            elif seen >= want and time.monotonic() - quiet_since >= 0.5:
                break
            time.sleep(0.05)
        return list(self.got)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("recorder", [True, False], ids=["recorder-on", "recorder-off"])
def test_sipp_call_through_the_proxy_arrives_as_hep3(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path, recorder: bool) -> None:
    collector = Collector()
    hep_port = collector.port
    uas_port = procs.free_port()
    proxy = proxy_factory(f"hep-{recorder}", plugin="sip-proxy",
                          static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                          tables={"trace": {"enabled": recorder, "hep": f"udp:{LOCALHOST}:{hep_port}",
                                            "hep_capture_id": 2001, "hep_password": "homer-pw"}})
    try:
        started = time.time()
        one_call(proxy, uas_port, tmp_path / "sipp")
        # 14: the ladder of test_flight_recorder (7 messages each side).
        got = collector.wait(16)
    finally:
        collector.close()
    every = [decode(data) for _t, data, _port in got]
    proxy_port = proxy.port
    # The harness's readiness pings came first: OPTIONS in, its answer out.
    first = next(i for i, p in enumerate(every) if p[0x0F].startswith(b"INVITE "))
    pings = [(label(p[0x0F]), U16.unpack(p[0x08])[0] == proxy_port) for p in every[:first]]
    assert first >= 2 and pings == [("OPTIONS", True), ("200 Keepalive", False)] * (first // 2), pings
    got, packets = got[first:], every[first:]
    msgs = [(label(p[0x0F]), U16.unpack(p[0x07])[0], U16.unpack(p[0x08])[0]) for p in packets]
    caller = next(src for name, src, dst in msgs if name == "INVITE" and dst == proxy_port)
    assert caller not in (proxy_port, uas_port)
    c, p, b = caller, proxy_port, uas_port
    assert msgs == [
        ("INVITE", c, p), ("100 Trying", p, c), ("INVITE", p, b), ("100 Trying", b, p),
        ("180 Ringing", b, p), ("180 Ringing", p, c), ("200 OK", b, p), ("200 OK", p, c),
        ("ACK", c, p), ("ACK", p, b), ("BYE", c, p), ("BYE", p, b), ("200 OK", b, p),
        ("200 OK", p, c)], msgs
    call_ids = {p[0x11] for p in packets}
    assert len(call_ids) == 1 and call_ids.pop() in packets[0][0x0F]
    now = time.time()
    for chunks in packets:
        assert chunks[0x01] == b"\x02" and chunks[0x02] == b"\x11"          # IPv4, UDP
        assert chunks[0x03] == chunks[0x04] == socket.inet_aton(LOCALHOST)
        assert chunks[0x0B] == b"\x01" and chunks[0x0C] == U32.pack(2001)
        assert chunks[0x0E] == b"homer-pw"
        t = U32.unpack(chunks[0x09])[0] + U32.unpack(chunks[0x0A])[0] / 1e6
        assert started - 1 <= t <= now
    times = [U32.unpack(c[0x09])[0] + U32.unpack(c[0x0A])[0] / 1e6 for c in packets]
    assert times == sorted(times)

    # The datagrams as a capture of loopback, read back by tshark.
    pcap = tmp_path / "hep.pcap"
    with pcap.open("wb") as stream:
        write_pcap(stream, [{"type": "sip", "data": data.decode("latin-1"), "t": t,
                             "local": [LOCALHOST, hep_port], "remote": [LOCALHOST, sport],
                             "dir": "in", "transport": "udp"} for t, data, sport in got])
    out = subprocess.run(["tshark", "-X", f"lua_script:{LUA}", "-r", str(pcap),
                          "-d", f"udp.port=={hep_port},hep3", "-Y", "sip", "-T", "fields",
                          "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "hep3.src_port",
                          "-e", "hep3.dst_port", "-e", "hep3.capture_id", "-e", "hep3.auth_key",
                          "-e", "sip.Call-ID", "-e", "hep3.correlation_id"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    decoded = [(method or f"{status}", int(sport), int(dport))
               for method, status, sport, dport, *_rest in rows]
    assert decoded == [(name if name[0].isalpha() else name.split()[0], s, d)
                       for name, s, d in msgs], out.stdout
    assert {tuple(r[4:6]) for r in rows} == {("2001", "homer-pw")}
    assert all(r[6] == r[7] != "" for r in rows), rows

    # Counted where operators look: sipsuite-ctl stats and /metrics.
    shown = proxy.ctl("--json", "stats")
    assert shown.returncode == 0, shown.stderr
    figures = json.loads(shown.stdout)["hep"]
    assert figures == {"target": f"{LOCALHOST}:{hep_port}", "sent": len(every), "errors": 0}
    with urllib.request.urlopen(proxy.management_url + "metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'sipsuite_hep_packets_total{{result="sent"}} {float(len(every))}' in metrics, metrics
    assert 'sipsuite_hep_packets_total{result="failed"} 0.0' in metrics, metrics


def hep_lines(kam: KamailioProcess) -> list[list[str]]:
    """The words after HEPMSG of each line logged: method or status,
    source IP, source port, Call-ID."""
    return [ln.split("HEPMSG ", 1)[1].split() for ln in
            kam.log.read_text(errors="replace").splitlines() if "HEPMSG " in ln]


def start_capture_node(workdir: Path, port: int) -> KamailioProcess:
    """Kamailio with hep_collector.cfg on udp ``port``: ready once a HEP3
    packet sent to it comes out as a HEPMSG line (with HEP capture on, the
    socket takes HEP only: start_kamailio's plain SIP ping cannot be used)."""
    (workdir / "db").mkdir(parents=True)
    (workdir / "run").mkdir()
    log = workdir / "kamailio.log"
    cmd = [kamailio_binary(), "-f", str(CONFIGS / "hep_collector.cfg"), "-DD", "-E", "-n", "1",
           "-m", "64", "-M", "8", "-Y", str(workdir / "run"),
           "-A", f"LISTEN=udp:{LOCALHOST}:{port}", "-A", f'DBDIR="text://{workdir / "db"}"']
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    kam = KamailioProcess(port, log, cmd, proc)
    ping = (b"OPTIONS sip:ready@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKr\r\n"
            b"From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:ready@127.0.0.1>\r\n"
            b"Call-ID: ready-ping\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            b"Content-Length: 0\r\n\r\n")
    packet = encode(ping, (LOCALHOST, 9), (LOCALHOST, port), "udp", time.time(), 1)
    deadline = time.monotonic() + 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while time.monotonic() < deadline:
            if not kam.alive():
                break
            if any(words[-1] == "ready-ping" for words in hep_lines(kam)):
                return kam
            sock.sendto(packet, (LOCALHOST, port))
            time.sleep(0.2)
    kam.stop()
    raise RuntimeError("kamailio never logged the HEP ping\n" + kam.diagnostics())


def test_kamailio_sipcapture_takes_the_hep_of_a_call(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    """Kamailio's sipcapture (a Homer capture node) as the server: it reads
    our HEP3 with its own decoder and sees each message of the call, from
    the source the packet names."""
    hep_port = procs.free_port()
    kam = start_capture_node(tmp_path / "kamailio", hep_port)
    try:
        uas_port = procs.free_port()
        proxy = proxy_factory("hep-kamailio", plugin="sip-proxy",
                              static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                              tables={"trace": {"hep": f"udp:{LOCALHOST}:{hep_port}",
                                                "hep_capture_id": 7}})
        one_call(proxy, uas_port, tmp_path / "sipp")
        deadline = time.monotonic() + 10
        while True:
            lines = hep_lines(kam)
            invite = next((ln[3] for ln in lines if ln[0] == "INVITE"), None)
            seen = [(ln[0], ln[1], int(ln[2])) for ln in lines if len(ln) > 3 and ln[3] == invite]
            if len(seen) >= 14 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        p = proxy.port
        c = next(sport for name, _ip, sport in seen if name == "INVITE")
        b = uas_port
        L = LOCALHOST
        assert seen == [
            ("INVITE", L, c), ("100", L, p), ("INVITE", L, p), ("100", L, b), ("180", L, b),
            ("180", L, p), ("200", L, b), ("200", L, p), ("ACK", L, c), ("ACK", L, p),
            ("BYE", L, c), ("BYE", L, p), ("200", L, b), ("200", L, p)], (
            f"{seen}\n{kam.diagnostics()}")
        assert kam.alive(), kam.diagnostics()
    finally:
        kam.stop()


def test_each_worker_process_sends_the_hep_of_its_messages(
        sipp_bin: str, proxy_factory: procs.ProxyFactory, tmp_path: Path) -> None:
    """``[proxy] workers = 2``: each worker sends what it handled, from its
    own socket; the calls' messages all arrive, the supervisor's ``stats``
    adds the two counts up."""
    import redisproc
    from test_workers import PER_CALL_SOCKETS, wait_log

    calls = 10
    redis = redisproc.RedisServer()
    redis.start()
    collector = Collector()
    hep_port = collector.port
    try:
        uas_port = procs.free_port()
        proxy = proxy_factory("hep-workers", plugin="sip-proxy",
                              static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
                              extra_proxy={"workers": 2},
                              tables={"redis": {"url": redis.url(5)},
                                      "trace": {"hep": f"udp:{LOCALHOST}:{hep_port}"}})
        assert wait_log(proxy, r"worker [01]: sip proxy ready", 2), proxy.diagnostics(120)
        work = tmp_path / "sipp"
        work.mkdir()
        uas = procs.SippProcess(procs.sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                                local_port=uas_port, calls=calls, timeout_s=30, service="bob")
        uas.wait_bound()
        uac = procs.run_sipp(procs.sipp_dir() / "call_uac.xml", name="uac", workdir=work,
                             remote=proxy.address, local_port=procs.free_port(), calls=calls,
                             rate=20, duration_ms=100, timeout_s=30, service="bob",
                             extra=PER_CALL_SOCKETS)
        res = uas.wait()
        assert (uac.rc, uac.successful, res.successful) == (0, calls, calls), (
            f"{uac.summary()}\n{res.summary()}\n{proxy.diagnostics(120)}")
        got = collector.wait(14 * calls)
        stats = json.loads(proxy.ctl("--json", "stats").stdout)
    finally:
        collector.close()
        redis.close()
    packets = [decode(data) for _t, data, _port in got]
    by_call: dict[bytes, list[str]] = {}
    for p in packets:
        by_call.setdefault(p[0x11], []).append(label(p[0x0F]))
    ladder = sorted(["INVITE", "100 Trying", "INVITE", "100 Trying", "180 Ringing", "180 Ringing",
                     "200 OK", "200 OK", "ACK", "ACK", "BYE", "BYE", "200 OK", "200 OK"])
    calls_seen = {cid: sorted(msgs) for cid, msgs in by_call.items() if "INVITE" in msgs}
    odd = {cid: (Counter(m) - Counter(ladder), Counter(ladder) - Counter(m))
           for cid, m in calls_seen.items() if m != ladder}
    assert len(calls_seen) == calls and not odd, odd
    senders = {sport for _t, _data, sport in got}
    assert len(senders) == 2, senders  # one socket per worker
    assert stats["hep"]["sent"] == len(got) and stats["hep"]["errors"] == 0, stats["hep"]
    assert sum(w["hep"]["sent"] for w in stats["workers"].values()) == len(got), stats["workers"]
