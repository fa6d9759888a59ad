"""The deployment of docs/deployment.md on separate hosts: network namespaces
joined by veth links and bridges (tests/netnskit.py), with a home router
that masquerades between a private network and the public one.

Hosts::

      public 203.0.113.0/24 (bridge "pub")          service 10.0.0.0/24 (bridge "svc")
    .11 proxy  twistd sip-proxy  ------------------------- .11
    .5  relay  twistd rtp-relay (media 203.0.113.5) ----- .5  (control tls:10.0.0.5:7722)
    .100 bob   a phone on the public side                  .20 redis  redis-server :6379
    .50 nat    home router: masquerade fully-random, drops unsolicited inbound,
         |     UDP conntrack timeouts of a few seconds
         |  192.168.1.0/24
    .1 --+-- home: alice 192.168.1.10 (UDP), carol 192.168.1.11 (TCP)

With ``bridging=True`` the relay bridges its two networks (media addresses
10.0.0.5 internal, 203.0.113.5 external; the proxy's ``[media]
internal_networks = ["10.0.0.0/24"]``) and a phone dave sits on the service
network next to the proxy (10.0.0.30, reaching the proxy's public SIP
address through its service interface, and nothing public beyond it).

The phones are :class:`Phone` objects of the test process: their sockets are
made inside their host's namespace (netnskit.inside), a thread per phone
reads its SIP socket and answers the proxy's OPTIONS keep-alives, as a phone
does, while the test drives calls one message at a time.

Every process runs in its namespace through Topology.popen and dies with
Topology.close(), which deletes the namespaces (and with them every veth,
bridge and the router's nft table).
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tlscerts
from common import REPO
from netnskit import Topology, inside, rpc, wait_for
from proxyproc import toml_dumps
from sipmsg import SipMessage, build_ack_for_2xx, build_request, build_response, new_tag
from tlsendpoints import client_context

PROXY_PUB, PROXY_SVC = "203.0.113.11", "10.0.0.11"
RELAY_PUB, RELAY_SVC = "203.0.113.5", "10.0.0.5"
REDIS = "10.0.0.20"
BOB = "203.0.113.100"
NAT_WAN, NAT_LAN = "203.0.113.50", "192.168.1.1"
ALICE, CAROL = "192.168.1.10", "192.168.1.11"
DAVE = "10.0.0.30"  # bridging only: a phone on the service network
SERVICE_NET = "10.0.0.0/24"
SIP_PORT, RELAY_CONTROL, RELAY_MGMT, PROXY_MGMT = 5060, 7722, 7061, 7060
MEDIA_PORTS = (35000, 35999)
DOMAIN = "sipsuite.test"
# The home router forgets a UDP mapping this soon (seconds): unanswered
# flows, and flows that saw answers (the "stream" timeout).
UDP_TIMEOUT, UDP_STREAM_TIMEOUT = 2, 4
KEEPALIVE_INTERVAL = 1.0

ROUTER_RULES = """
table ip home_router {
  chain nat_out {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "WAN" masquerade fully-random
  }
  chain guard {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "LAN" accept
  }
}
"""


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + b"\xd5" * 160


def sdp_body(host: str, port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n").encode()


def sdp_target(msg: SipMessage) -> tuple[str, int]:
    body = msg.body.decode(errors="replace")
    c = re.search(r"^c=IN IP4 (\S+)", body, re.M)
    m = re.search(r"^m=audio (\d+)", body, re.M)
    assert c and m, f"no c=/m= in {body!r}"
    return c.group(1), int(m.group(1))


def with_body(message: bytes, body: bytes) -> bytes:
    """A built message (Content-Length: 0) with an SDP body."""
    head = message.removesuffix(b"Content-Length: 0\r\n\r\n")
    return head + b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@dataclass
class Dialog:
    """One call as its caller sees it once answered (or refused)."""

    invite: bytes
    final: SipMessage
    provisional: list[int] = field(default_factory=list)


class Phone:
    """A SIP phone on ``host`` in namespace ``ns``: UDP from port 5060, or a
    TCP connection to the proxy (its only socket: it is reached over it or
    not at all); an RTP socket on ``rtp_port``."""

    def __init__(self, ns: str, user: str, host: str, transport: str = "udp",
                 rtp_port: int = 4000) -> None:
        self.user, self.host, self.transport = user, host, transport
        self.proxy = (PROXY_PUB, SIP_PORT)
        with inside(ns):
            if transport == "tcp":
                self.sip = socket.create_connection(self.proxy, timeout=5,
                                                    source_address=(host, 0))
            else:
                self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.sip.bind((host, SIP_PORT))
            self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((host, rtp_port))
        self.rtp_port = rtp_port
        self.sip.settimeout(0.2)
        self.port = self.sip.getsockname()[1]
        self.options = 0  # keep-alive OPTIONS answered
        self.crlf = 0  # CRLF keep-alives seen
        self._inbox: list[SipMessage] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"phone-{user}", daemon=True)
        self._thread.start()

    @staticmethod
    def udp(host: str, port: int) -> socket.socket:
        """A bare UDP socket on ``host`` (make it inside the host's namespace)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, port))
        s.settimeout(2.0)
        return s

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def contact(self) -> str:
        # TCP: the phone listens nowhere; the address says so (a private one).
        tport = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{self.user}@{self.host}:{self.port}{tport}"

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{DOMAIN}"

    def send(self, data: bytes) -> None:
        if self.transport == "tcp":
            self.sip.sendall(data)
        else:
            self.sip.sendto(data, self.proxy)

    def _read(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                data = self.sip.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.transport == "tcp":
                if not data:
                    return
                buf += data
                messages, buf = self._frame(buf)
            else:
                if not data.strip(b"\r\n"):
                    self.crlf += 1
                    continue
                messages = [SipMessage.parse(data)]
            for msg in messages:
                if not msg.is_response and msg.method == "OPTIONS":
                    self.options += 1
                    self.send(build_response(msg, 200, "OK", to_tag=new_tag()))
                    continue
                if not msg.is_response and msg.method == "BYE":
                    self.send(build_response(msg, 200, "OK"))
                with self._cond:
                    self._inbox.append(msg)
                    self._cond.notify_all()

    def _frame(self, buf: bytes) -> tuple[list[SipMessage], bytes]:
        out = []
        while True:
            stripped = buf.lstrip(b"\r\n")
            if len(stripped) != len(buf):
                self.crlf += 1
                buf = stripped
            head, found, rest = buf.partition(b"\r\n\r\n")
            if not found:
                return out, buf
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(rest) < length:
                return out, buf
            out.append(SipMessage.parse(head + b"\r\n\r\n" + rest[:length]))
            buf = rest[length:]

    def expect(self, what: str, timeout: float = 5.0) -> SipMessage:
        """The next request ``what`` ("INVITE") or response to it ("200 INVITE",
        "1xx INVITE" for any provisional above 100, "final INVITE")."""
        status, _, method = what.rpartition(" ")

        def fits(msg: SipMessage) -> bool:
            if not status:
                return not msg.is_response and msg.method == method
            if not msg.is_response or msg.cseq[1] != method:
                return False
            if status == "1xx":
                return 100 < msg.status < 200
            if status == "final":
                return msg.status >= 200
            return msg.status == int(status)

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self._inbox:
                    if fits(msg):
                        self._inbox.remove(msg)
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [str(m).splitlines()[0] for m in self._inbox]
                    raise AssertionError(f"{self.user}: no {what} within {timeout} s; got {seen}")
                self._cond.wait(left)

    def register(self, expires: int = 600) -> SipMessage:
        self.send(build_request(
            "REGISTER", f"sip:{DOMAIN}", sent_by=self.sent_by, transport=self.transport.upper(),
            from_uri=self.aor, to_uri=self.aor, contact=self.contact,
            extra=[("Expires", str(expires))]))
        return self.expect("final REGISTER")

    def call(self, user: str) -> bytes:
        """Send an INVITE to ``user`` with an offer for our RTP socket."""
        invite = build_request(
            "INVITE", f"sip:{user}@{DOMAIN}", sent_by=self.sent_by,
            transport=self.transport.upper(), from_uri=self.aor, contact=self.contact)
        self.send(with_body(invite, sdp_body(self.host, self.rtp_port)))
        return invite

    def outcome(self, invite: bytes, timeout: float = 5.0) -> Dialog:
        """Provisional responses then the final one; ACKs it (a 2xx end to end)."""
        provisional = []
        while True:
            msg = self.expect("final INVITE" if provisional else "1xx INVITE", timeout)
            if msg.status >= 200:
                break
            provisional.append(msg.status)
        if msg.status < 300:
            self.send(build_ack_for_2xx(invite, msg, sent_by=self.sent_by,
                                        transport=self.transport.upper()))
        # non-2xx: the proxy ACKs its own branch; our ACK is hop by hop to it.
        else:
            self.send(self._ack_for_failure(invite, msg))
        return Dialog(invite, msg, provisional)

    def _ack_for_failure(self, invite: bytes, final: SipMessage) -> bytes:
        inv = SipMessage.parse(invite)
        lines = [f"ACK {inv.request_uri} SIP/2.0", f"Via: {inv.vias[0]}", "Max-Forwards: 70",
                 f"From: {inv.header('from')}", f"To: {final.header('to')}",
                 f"Call-ID: {inv.call_id}", f"CSeq: {inv.cseq[0]} ACK", "Content-Length: 0"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def answer(self, invite: SipMessage, status: int = 200) -> None:
        """180 then ``status`` (200 with an offer for our RTP socket)."""
        tag = new_tag()
        dialog = [("Contact", f"<{self.contact}>")]
        dialog += [("Record-Route", v) for v in invite.header_lines("record-route")]
        self.send(build_response(invite, 180, "Ringing", to_tag=tag, extra=dialog))
        if status == 200:
            ok = build_response(invite, 200, "OK", to_tag=tag, extra=dialog)
            self.send(with_body(ok, sdp_body(self.host, self.rtp_port)))
        else:
            self.send(build_response(invite, status, "Busy Here", to_tag=tag))

    def hang_up(self, dialog: Dialog) -> SipMessage:
        """BYE along the dialog's route set; the answer to it."""
        ack = build_ack_for_2xx(dialog.invite, dialog.final, sent_by=self.sent_by,
                                transport=self.transport.upper())
        # Same request line, Route set, From/To and Call-ID as the ACK.
        bye = ack.replace(b"ACK ", b"BYE ", 1).replace(b" ACK\r\n", b" BYE\r\n")
        bye = re.sub(rb"CSeq: \d+ BYE", b"CSeq: 2 BYE", bye)
        self.send(bye)
        return self.expect("final BYE")

    def received_rtp(self, quiet: float = 0.5) -> list[tuple[bytes, tuple[str, int]]]:
        """Every datagram on the RTP socket until ``quiet`` s pass without one."""
        self.rtp.settimeout(quiet)
        out = []
        while True:
            try:
                out.append(self.rtp.recvfrom(2048))
            except TimeoutError:
                return out

    def close(self) -> None:
        self._stop.set()
        self.sip.close()
        self.rtp.close()
        self._thread.join(2)


class NatTopology:
    """The hosts of the module docstring, their servers started and ready."""

    def __init__(self, topo: Topology, tmp: Path, *, bridging: bool = False) -> None:
        self.topo, self.tmp, self.bridging = topo, tmp, bridging
        sw = topo.ns("sw")
        pub, svc = topo.switch(sw, "pub"), topo.switch(sw, "svc")
        self.proxy, self.relay, self.redis = topo.ns("proxy"), topo.ns("relay"), topo.ns("redis")
        self.bob_ns, self.nat, self.home = topo.ns("bob"), topo.ns("nat"), topo.ns("home")
        for ns, addr in ((self.proxy, PROXY_PUB), (self.relay, RELAY_PUB), (self.bob_ns, BOB)):
            topo.plug(ns, addr + "/24", sw, pub)
        for ns, addr in ((self.proxy, PROXY_SVC), (self.relay, RELAY_SVC), (self.redis, REDIS)):
            topo.plug(ns, addr + "/24", sw, svc)
        if bridging:
            self.dave_ns = topo.ns("dave")
            topo.plug(self.dave_ns, DAVE + "/24", sw, svc)
            # The proxy host takes packets for its public address on any
            # interface (Linux's weak host model); it forwards nothing, so
            # dave reaches no other public host.
            topo.route(self.dave_ns, PROXY_SVC)
        wan = topo.plug(self.nat, NAT_WAN + "/24", sw, pub)
        home_dev, lan = topo.link(self.home, ALICE + "/24", self.nat, NAT_LAN + "/24")
        topo.addr(self.home, home_dev, CAROL + "/24")
        topo.route(self.home, NAT_LAN)
        topo.sysctl(self.nat, "net.ipv4.ip_forward", "1")
        topo.nft(self.nat, ROUTER_RULES.replace('"WAN"', f'"{wan}"').replace('"LAN"', f'"{lan}"'))
        # The conntrack sysctls exist once the NAT rules loaded nf_conntrack;
        # they are the router namespace's own.
        topo.sysctl(self.nat, "net.netfilter.nf_conntrack_udp_timeout", str(UDP_TIMEOUT))
        topo.sysctl(self.nat, "net.netfilter.nf_conntrack_udp_timeout_stream",
                    str(UDP_STREAM_TIMEOUT))
        # The relay may forward latched media in the kernel ([relay] kernel = "auto").
        topo.sysctl(self.relay, "net.ipv4.ip_forward", "1")
        self.pki = tlscerts.TestPKI(tmp / "pki")
        self.logs: dict[str, Path] = {}

    # -- servers ---------------------------------------------------------------------

    def _popen(self, name: str, ns: str, args: list[str], cwd: Path) -> subprocess.Popen[Any]:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:
            return self.topo.popen(ns, args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT,
                                   env={"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                                        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})

    def _twistd(self, name: str, ns: str, *args: str) -> subprocess.Popen[Any]:
        work = self.tmp / name
        return self._popen(name, ns, [
            sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
            "-n", "--pidfile=", *args], work)

    def diagnostics(self) -> str:
        return "".join(f"\n--- {name}:\n{log.read_text(errors='replace')[-3000:]}"
                       for name, log in self.logs.items() if log.exists())

    def start(self) -> None:
        """Redis, then the relay, then the proxy; each ready before the next."""
        import shutil

        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        (self.tmp / "redis").mkdir()
        proc = self._popen("redis", self.redis, [
            redis, "--bind", REDIS, "--port", "6379", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--dir", str(self.tmp / "redis")], self.tmp / "redis")
        wait_for(lambda: self._redis_ping(proc), 15, "redis-server on its host")

        relay_cert = self.pki.issue("relay", ips=[RELAY_SVC])
        (self.tmp / "relay").mkdir()
        (self.tmp / "relay" / "relay.toml").write_text(toml_dumps({
            "relay": {"control": [f"tls:{RELAY_SVC}:{RELAY_CONTROL}"],
                      "media_addresses": [RELAY_SVC, RELAY_PUB] if self.bridging else [RELAY_PUB],
                      "ports": f"{MEDIA_PORTS[0]}-{MEDIA_PORTS[1]}", "drain_time": 0.0},
            "tls": {"certificate": str(relay_cert.cert), "private_key": str(relay_cert.key),
                    "ca_list": str(self.pki.ca_file)},
            "management": {"relay_listen": f"tcp:127.0.0.1:{RELAY_MGMT}"},
        }))
        proc = self._twistd("relay", self.relay, "rtp-relay", "--config", "relay.toml")
        proxy_cert = self.pki.issue("proxy", ips=[PROXY_SVC])
        self.control = client_context(self.pki.ca_file, proxy_cert.cert, proxy_cert.key)
        wait_for(lambda: self._relay_version(proc) == b"20040107\n", 30,
                 "the relay's mutual-TLS control to answer V from the proxy host")

        (self.tmp / "proxy").mkdir()
        (self.tmp / "proxy" / "proxy.toml").write_text(toml_dumps({
            "proxy": {"listen": [f"udp:{PROXY_PUB}:{SIP_PORT}", f"tcp:{PROXY_PUB}:{SIP_PORT}"],
                      "domains": [DOMAIN]},
            "features": {"nat": True, "natsipping": True},
            "nat": {"keepalive_interval": KEEPALIVE_INTERVAL},
            "media": {"relay": "nat", "relays": [f"tls:{RELAY_SVC}:{RELAY_CONTROL}"],
                      "internal_networks": [SERVICE_NET] if self.bridging else []},
            "redis": {"url": f"redis://{REDIS}:6379/0"},
            "tls": {"certificate": str(proxy_cert.cert), "private_key": str(proxy_cert.key),
                    "ca_list": str(self.pki.ca_file)},
            "management": {"listen": f"tcp:127.0.0.1:{PROXY_MGMT}"},
        }))
        proc = self._twistd("proxy", self.proxy, "sip-proxy", "--config", "proxy.toml")
        wait_for(lambda: self._proxy_answers(proc), 30, "the proxy to answer OPTIONS from bob's host")

    def _alive(self, proc: subprocess.Popen[Any]) -> None:
        assert proc.poll() is None, f"a server exited rc={proc.returncode}" + self.diagnostics()

    def _redis_ping(self, proc: subprocess.Popen[Any]) -> bool:
        self._alive(proc)
        try:
            with inside(self.proxy):
                s = socket.create_connection((REDIS, 6379), timeout=1)
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(64) == b"+PONG\r\n"
        except OSError:
            return False

    def _relay_version(self, proc: subprocess.Popen[Any]) -> bytes | None:
        self._alive(proc)
        try:
            with inside(self.proxy):
                raw = socket.create_connection((RELAY_SVC, RELAY_CONTROL), timeout=2)
            with raw, self.control.wrap_socket(raw, server_hostname=RELAY_SVC) as conn:
                conn.sendall(b"V\n")
                return conn.recv(64)
        except (OSError, ssl.SSLError):
            return None

    def _proxy_answers(self, proc: subprocess.Popen[Any]) -> bool:
        self._alive(proc)
        with inside(self.bob_ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            s.bind((BOB, 0))
            s.settimeout(0.3)
            s.sendto(build_request("OPTIONS", f"sip:{PROXY_PUB}", sent_by=f"{BOB}:{s.getsockname()[1]}"),
                     (PROXY_PUB, SIP_PORT))
            try:
                return SipMessage.parse(s.recv(65535)).is_response
            except (TimeoutError, ValueError):
                return False

    def relay_stats(self) -> dict[str, Any]:
        result = rpc(self.relay, RELAY_MGMT, "relay.stats")
        assert isinstance(result, dict)
        return result

    def relay_sessions(self) -> list[dict[str, Any]]:
        result = rpc(self.relay, RELAY_MGMT, "relay.sessions")
        assert isinstance(result, list)
        return result

    def redis_keys(self) -> list[str]:
        """Every key in the Redis host's database 0 (KEYS *, a handful here)."""
        with inside(self.proxy):
            s = socket.create_connection((REDIS, 6379), timeout=2)
        with s:
            s.sendall(b"KEYS *\r\n")
            data = b""
            s.settimeout(0.3)
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except TimeoutError:
                pass
        lines = data.split(b"\r\n")
        return [line.decode() for prev, line in zip(lines, lines[1:], strict=False)
                if prev.startswith(b"$")]


@contextmanager
def running(workdir: Path, *, bridging: bool = False) -> Iterator[NatTopology]:
    """The topology built and started under a fresh netnskit Topology, for a
    module fixture; everything it made is removed on the way out, even when
    the build fails half way, and that nothing is left is asserted."""
    import os

    if os.geteuid() != 0:
        pytest.fail("the namespace topology needs root (CI and the dev machines run as root)")
    topo = Topology()
    try:
        net = NatTopology(topo, workdir, bridging=bridging)
        net.start()
        yield net
    finally:
        topo.close()
        assert topo.leftovers() == [], "namespaces or links left behind"
