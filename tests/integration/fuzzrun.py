"""Throw mutated messages (fuzzcorpus.Mutator) at a running proxy and watch it.

The proxy runs as an operator runs it (``twistd -n sipsuite``) with
authentication, NAT handling, the in-process RTP relay (every call relayed),
antiflood and a static user whose contact is ``Sink``, a callee that answers
everything, so routed INVITEs reach the relay with an offer and an answer.

Case ``i`` goes out over one of four ways, after ``i % 4``: UDP from 127.0.0.1
(challenged by auth), UDP from 127.0.0.3 (in ``proxy.trusted`` with ipauth on:
routed, relayed), TCP from 127.0.0.1, TCP from 127.0.0.3; each TCP source
sends many cases per connection and opens a new one every ``CONN_CASES`` cases
or when the proxy closed it. All addresses are loopback; DNS goes to a dead
loopback port.

After each batch an OPTIONS from a clean socket must be answered (the proxy
read the batch and is not wedged) and the new part of its log is searched for
critical lines and tracebacks; a batch with one is replayed case by case at
the end to name the case that does it. The harness is deterministic: a case is
(seed, index), printed with its bytes on failure.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import LOCALHOST, free_port, free_port_range
from endpoints import options_ping
from fuzzcorpus import ID_MARK, PROXY_MARK, SENDER_MARK, Mutator, Target, seeds
from proxyproc import ProxyProcess, start_proxy, write_config
from sipmsg import SipMessage

TRUSTED_HOST = "127.0.0.3"
SINK_USER = Target.user
CONN_CASES = 50
RSS_BOUND_KB = 64 * 1024


# --------------------------------------------------------------------------- the proxy


class Sink:
    """The static user's phone: answers every request but ACK with 200 (an
    INVITE's with an SDP answer and a To-tag), from a thread, until closed."""

    ANSWER = (b"v=0\r\no=sink 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
              b"t=0 0\r\nm=audio 30000 RTP/AVP 0\r\n")

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            try:
                data, addr = self.sock.recvfrom(65535)
                answer = self.answer(SipMessage.parse(data))
            except (OSError, ValueError, IndexError):
                continue
            if answer:
                with contextlib.suppress(OSError):
                    self.sock.sendto(answer, addr)
                    self.answered += 1

    def answer(self, req: SipMessage) -> bytes | None:
        if req.is_response or req.method == "ACK":
            return None
        lines = ["SIP/2.0 200 OK", *(f"Via: {v}" for v in req.header_lines("via"))]
        lines += [f"Record-Route: {r}" for r in req.header_lines("record-route")]
        to = req.header("to") or ""
        lines += [f"From: {req.header('from') or ''}",
                  f"To: {to}" + ("" if ";tag=" in to else ";tag=sink"),
                  f"Call-ID: {req.header('call-id') or ''}", f"CSeq: {req.header('cseq') or ''}",
                  f"Contact: <sip:{SINK_USER}@{LOCALHOST}:{self.port}>"]
        body = self.ANSWER if req.method == "INVITE" else b""
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def start_fuzz_proxy(workdir: Path, sink: Sink, log_level: str = "info") -> ProxyProcess:
    """The proxy under attack: auth, nat, ipauth for TRUSTED_HOST, antiflood,
    every call relayed by the in-process relay."""
    port = free_port()
    relay_ports = free_port_range(200)
    dead_dns = free_port("udp")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = write_config(
        workdir / "sipsuite.toml", port=port, log_level=log_level,
        static={SINK_USER: [f"sip:{SINK_USER}@{LOCALHOST}:{sink.port}"]},
        trusted=[f"{TRUSTED_HOST}/32"],
        extra_proxy={"dns_servers": [f"{LOCALHOST}:{dead_dns}"]},
        tables={
            "features": {"auth": True, "nat": True, "ipauth": True, "antiflood": True},
            "media": {"relay": "always"},
            "relay": {"media_addresses": [LOCALHOST],
                      "ports": f"{relay_ports[0]}-{relay_ports[1]}"},
        })
    return start_proxy(workdir, cfg, port)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- watching


class LogWatch:
    """The part of the proxy's log written since the last look, across
    twistd's rotations (every 1 MB: proxy.log -> proxy.log.1 -> .2 ...)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            st = path.stat()
        except OSError:
            self.inode, self.offset = -1, 0
        else:
            self.inode, self.offset = st.st_ino, st.st_size

    def new_problems(self) -> list[str]:
        """Each critical event or traceback in the new text, with its lines."""
        return bad_events(self._unread().decode(errors="replace"))

    def _unread(self) -> bytes:
        files = [self.path]  # newest first
        while (older := self.path.with_name(f"{self.path.name}.{len(files)}")).exists():
            files.append(older)
        chunks: list[bytes] = []
        current = (self.inode, self.offset)
        for i, f in enumerate(files):
            try:
                with f.open("rb") as fh:
                    inode = os.fstat(fh.fileno()).st_ino
                    fh.seek(self.offset if inode == self.inode else 0)
                    data = fh.read()
            except OSError:
                continue
            if i == 0:
                # Only whole lines of the file being written: the rest next time.
                data = data[:data.rfind(b"\n") + 1]
                start = self.offset if inode == self.inode else 0
                current = (inode, start + len(data))
            chunks.append(data)
            if inode == self.inode:
                break
        self.inode, self.offset = current
        return b"".join(reversed(chunks))


def bad_events(text: str) -> list[str]:
    """Log events at level critical, and any with a traceback (an event's
    continuation lines carry no timestamp)."""
    events: list[list[str]] = []
    for line in text.splitlines():
        if line[:4].isdigit() and line[4:5] == "-" or not events:
            events.append([line])
        else:
            events[-1].append(line)
    return ["\n".join(e) for e in events
            if "#critical]" in e[0] or any("Traceback" in ln for ln in e)]


# --------------------------------------------------------------------------- sending


class TcpSender:
    """Cases over TCP from one source: many per connection, a new connection
    every CONN_CASES cases or when the proxy closed the last one."""

    def __init__(self, dest: tuple[str, int], source: str) -> None:
        self.dest = dest
        self.source = source
        self.sock: socket.socket | None = None
        self.sent_on_conn = 0
        self.connections = 0

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.source, 0))
        sock.settimeout(2.0)
        sock.connect(self.dest)
        sock.setblocking(False)
        self.connections += 1
        self.sent_on_conn = 0
        return sock

    def send(self, data: bytes) -> None:
        if self.sock is not None and self.sent_on_conn >= CONN_CASES:
            self.close()
        if self.sock is None:
            self.sock = self._open()
        self.drain()
        if self.sock is None:
            self.sock = self._open()
        try:
            view = memoryview(data)
            deadline = time.monotonic() + 2.0
            while view and time.monotonic() < deadline:
                _, writable, _ = select.select([], [self.sock], [], 0.2)
                if writable:
                    view = view[self.sock.send(view):]
        except OSError:
            self.close()  # reset by the proxy: the next case opens another
        self.sent_on_conn += 1

    def drain(self) -> None:
        """Read what the proxy sent; close when it closed."""
        while self.sock is not None:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


class Senders:
    """The four ways a case goes out (see the module doc)."""

    def __init__(self, dest: tuple[str, int], run: str = "r") -> None:
        self.dest = dest
        self.run = run  # in every case's ids: a replay is not a retransmission
        self.udp = []
        for host in (LOCALHOST, TRUSTED_HOST):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((host, 0))
            s.setblocking(False)
            self.udp.append(s)
        self.tcp = [TcpSender(dest, LOCALHOST), TcpSender(dest, TRUSTED_HOST)]

    @staticmethod
    def way(i: int) -> str:
        return ("udp from 127.0.0.1", f"udp from {TRUSTED_HOST}", "tcp from 127.0.0.1",
                f"tcp from {TRUSTED_HOST}")[i % 4]

    def send(self, i: int, data: bytes) -> None:
        k = i % 4
        sender = self.udp[k % 2].getsockname()
        data = (data.replace(PROXY_MARK, f"{self.dest[0]}:{self.dest[1]}".encode())
                .replace(SENDER_MARK, f"{sender[0]}:{sender[1]}".encode())
                .replace(ID_MARK, f"{self.run}{i}".encode()))
        if k < 2:
            with contextlib.suppress(OSError):
                self.udp[k].sendto(data, self.dest)
        else:
            self.tcp[k - 2].send(data)

    def drain(self) -> None:
        for s in self.udp:
            with contextlib.suppress(OSError):
                while True:
                    s.recv(65535)
        for t in self.tcp:
            t.drain()

    @property
    def connections(self) -> int:
        return sum(t.connections for t in self.tcp)

    def close(self) -> None:
        for s in self.udp:
            s.close()
        for t in self.tcp:
            t.close()


# --------------------------------------------------------------------------- the run


@dataclass
class Finding:
    """Something went wrong in the batch of cases [first, last]."""

    first: int
    last: int
    what: str
    culprits: list[int] = field(default_factory=list)


@dataclass
class FuzzReport:
    seed: int
    cases: int = 0
    seconds: float = 0.0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    tcp_connections: int = 0
    findings: list[Finding] = field(default_factory=list)
    alive: bool = True

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    @property
    def criticals(self) -> int:
        return sum(f.what.count("#critical]") for f in self.findings)

    @property
    def tracebacks(self) -> int:
        return sum(f.what.count("Traceback") for f in self.findings)

    def describe(self, mutator: Mutator, limit: int = 8) -> str:
        out = [f"seed {self.seed}: {self.cases} cases in {self.seconds:.1f} s, proxy "
               f"{'alive' if self.alive else 'DEAD'}, RSS {self.rss_before_kb} -> "
               f"{self.rss_after_kb} kB, {len(self.findings)} finding(s); cases are shown"
               f" as mutated: {PROXY_MARK!r}, {SENDER_MARK!r} and {ID_MARK!r} become the"
               " proxy, the sender and a per-case id when sent"]
        for f in self.findings[:limit]:
            out.append(f"--- cases {f.first}..{f.last}: {f.what[:3000]}")
            for i in f.culprits or range(f.first, min(f.last + 1, f.first + 3)):
                tag = "culprit" if f.culprits else "in the batch"
                out.append(f"    {tag} case {i} ({Senders.way(i)}): "
                           f"{mutator.case(i)[:1500]!r}")
        return "\n".join(out)


def run_fuzz(proxy: ProxyProcess, mutator: Mutator, count: int, *, batch: int = 100,
             time_limit: float = 600.0, progress: Any = None, replay: int = 3) -> FuzzReport:
    """Send cases 0..count-1 to ``proxy``; see the module doc."""
    assert proxy.proc is not None
    pid = proxy.proc.pid
    report = FuzzReport(mutator.seed, rss_before_kb=rss_kb(pid))
    watch = LogWatch(proxy.log_path)
    senders = Senders(proxy.address)
    started = time.monotonic()
    try:
        for first in range(0, count, batch):
            last = min(count, first + batch) - 1
            for i in range(first, last + 1):
                senders.send(i, mutator.case(i))
                if i % 16 == 15:
                    senders.drain()
            report.cases = last + 1
            if not _checkpoint(proxy, watch, report, first, last, senders):
                break
            if progress is not None:
                progress(report, time.monotonic() - started)
            if time.monotonic() - started > time_limit:
                break
    finally:
        report.seconds = time.monotonic() - started
        report.tcp_connections = senders.connections
        senders.close()
    report.alive = proxy.alive()
    if report.alive:
        report.rss_after_kb = rss_kb(pid)
        for finding in report.findings[:replay]:
            finding.culprits = _replay(proxy, mutator, finding)
    return report


def _checkpoint(proxy: ProxyProcess, watch: LogWatch, report: FuzzReport, first: int, last: int,
                senders: Senders) -> bool:
    """After a batch: the proxy answers a clean OPTIONS, its log is clean.
    False when it is gone (stop the run)."""
    answer = None
    for _ in range(3):
        senders.drain()
        answer = options_ping(proxy.host, proxy.port, timeout=2.0)
        if answer is not None or not proxy.alive():
            break
    problems = watch.new_problems()
    if problems:
        report.findings.append(Finding(first, last, "\n".join(problems)))
    if not proxy.alive():
        report.findings.append(Finding(first, last, f"proxy exited rc={proxy.proc.returncode}"))
        return False
    if answer is None:
        report.findings.append(Finding(first, last, "no answer to OPTIONS after this batch"))
    return True


def _replay(proxy: ProxyProcess, mutator: Mutator, finding: Finding) -> list[int]:
    """The cases of a finding's batch that, sent alone, make the log complain."""
    if "#critical]" not in finding.what and "Traceback" not in finding.what:
        return []
    watch = LogWatch(proxy.log_path)
    senders = Senders(proxy.address, run="p")
    culprits = []
    try:
        for i in range(finding.first, finding.last + 1):
            senders.send(i, mutator.case(i))
            time.sleep(0.02)
            options_ping(proxy.host, proxy.port, timeout=1.0)
            time.sleep(0.05)
            if watch.new_problems():
                culprits.append(i)
    finally:
        senders.close()
    return culprits


def new_mutator(seed: int, radamsa_share: float = 0.3) -> Mutator:
    return Mutator(seed, seeds(), radamsa_share)
