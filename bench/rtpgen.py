#!/usr/bin/env python3
"""RTP load generator for bench/relay_pps.py: one process, run by it, never by hand.

    python bench/rtpgen.py SPEC_JSON

For each of its sessions it binds two "parties" (UDP sockets on 127.0.0.1), sets
the session up on the relay under test over its control protocol, then each party
sends 172-byte RTP v2 datagrams (12-byte header with its own SSRC, incrementing
sequence number and timestamp, 160 bytes of payload whose first 8 carry the send
time) every 20 ms to the relay port it was given, and counts what arrives from the
other party, and how long after its sending.

- sipsuite's relay (RTPProxy protocol over UDP): U with the caller's address (the
  reply is the port the callee sends to), then L with the callee's address (the
  port the caller sends to).
- rtpengine (NG protocol: bencode over UDP): offer with an SDP naming the caller,
  then answer with one naming the callee; the media port rtpengine allocated is
  read from the m= line of the SDP it returns.

Protocol with the parent, one line each on stdout/stdin:
    READY {json}      sessions set up (relay ports, party ports, set-up time)
    GO <t0>           (stdin) round 0 starts at time.monotonic() == t0
    RESULT {json}     after the last round and a short drain (see Result)
    ERROR <text>      set-up failed
Every party's sends are spread evenly over the 20 ms period (a phase per party), so
the relay sees a steady stream, not bursts.  Rounds [0, warmup) latch and warm up;
only packets of rounds [warmup, warmup + window) are counted, by their sequence
number, so the count does not depend on when the parent samples.  time.monotonic()
is CLOCK_MONOTONIC, one clock for every process on the host, so t0 and the send
times mean the same in the parent and in every generator.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchns import inside  # noqa: E402

from sipsuite.rtpproxy.controller import build_lookup, build_update, parse_reply  # noqa: E402

HOST = "127.0.0.1"
PTIME = 0.020  # seconds between two packets of one party
PAYLOAD = 160  # PCMU, 20 ms at 8 kHz
PACKET = 12 + PAYLOAD  # 172 bytes
# Lateness and delay histograms: 0.25 ms buckets up to 2 s (the last bucket: later).
HIST_RES = 4000.0
HIST_BUCKETS = 8000
# Header fields rewritten for every packet: seq, timestamp, SSRC, then the send time
# (time.monotonic(), the clock every process on the host shares) at the start of
# the payload, from which the receiving party computes the delay through the relay.
STAMP = struct.Struct("!HIId")
GO_TIMEOUT = 120.0  # seconds to wait for GO before giving up
MAX_SAMPLES = 5  # misrouted packets described in the result


# --------------------------------------------------------------------------- bencode


BValue = int | str | bytes | list[Any] | dict[str, Any]


def bencode(value: BValue) -> bytes:
    """Bencode (the NG protocol's encoding): ints, strings, lists, dicts (sorted keys)."""
    if isinstance(value, bool):
        raise TypeError("bencode: no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"bencode: cannot encode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """Decode one bencoded value; byte strings come back as str (UTF-8, lenient)."""
    value, end = _bdecode(data, 0)
    if end != len(data):
        raise ValueError(f"bdecode: {len(data) - end} bytes after the value")
    return value


def _bdecode(data: bytes, i: int) -> tuple[Any, int]:
    c = data[i : i + 1]
    if c == b"i":
        j = data.index(b"e", i)
        return int(data[i + 1 : j]), j + 1
    if c == b"l":
        out: list[Any] = []
        i += 1
        while data[i : i + 1] != b"e":
            v, i = _bdecode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        d: dict[str, Any] = {}
        i += 1
        while data[i : i + 1] != b"e":
            k, i = _bdecode(data, i)
            v, i = _bdecode(data, i)
            d[str(k)] = v
        return d, i + 1
    if c.isdigit():
        j = data.index(b":", i)
        n = int(data[i:j])
        if j + 1 + n > len(data):
            raise ValueError("bdecode: string runs past the end")
        return data[j + 1 : j + 1 + n].decode("utf-8", "replace"), j + 1 + n
    raise ValueError(f"bdecode: unexpected {c!r} at offset {i}")


# --------------------------------------------------------------------------- control


class ControlError(RuntimeError):
    pass


def transact(sock: socket.socket, addr: tuple[str, int], cookie: bytes, payload: bytes,
             timeout: float = 1.0, tries: int = 5) -> bytes:
    """Send COOKIE PAYLOAD, return the reply body for that cookie (retransmitting
    the same datagram, as Kamailio does, until `tries` run out)."""
    msg = cookie + b" " + payload
    for _ in range(tries):
        sock.sendto(msg, addr)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except TimeoutError:
                break
            got, _, body = data.partition(b" ")
            if got == cookie:
                return body
    raise ControlError(f"no reply from {addr[0]}:{addr[1]} to {payload[:60]!r}")


def sdp(port: int, session_id: int, host: str = HOST) -> str:
    return (
        "v=0\r\n"
        f"o=- {session_id} 1 IN IP4 {host}\r\n"
        "s=relay_pps\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def sdp_media_port(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise ControlError(f"no m=audio line in the SDP returned:\n{text}")


def ng(sock: socket.socket, addr: tuple[str, int], cookie: str, command: dict[str, Any]) -> dict[
        str, Any]:
    reply = bdecode(transact(sock, addr, cookie.encode(), bencode(command)))
    if not isinstance(reply, dict) or reply.get("result") not in ("ok", "pong"):
        raise ControlError(f"rtpengine {command.get('command')}: {reply!r}")
    return reply


def setup_rtpengine(sock: socket.socket, addr: tuple[str, int], call_id: str, caller: int,
                    callee: int, sid: int, hosts: tuple[str, str] = (HOST, HOST)
                    ) -> tuple[int, int]:
    """offer/answer; (port the caller sends to, port the callee sends to)."""
    offer = ng(sock, addr, f"{call_id}o", {
        "command": "offer", "call-id": call_id, "from-tag": "ft",
        "sdp": sdp(caller, sid, hosts[0]),
    })
    to_callee = sdp_media_port(str(offer.get("sdp", "")))
    answer = ng(sock, addr, f"{call_id}a", {
        "command": "answer", "call-id": call_id, "from-tag": "ft", "to-tag": "tt",
        "sdp": sdp(callee, sid, hosts[1]),
    })
    return sdp_media_port(str(answer.get("sdp", ""))), to_callee


def rtpproxy_port(sock: socket.socket, addr: tuple[str, int], data: bytes) -> int:
    cookie, _, payload = data.partition(b" ")
    reply = parse_reply(cookie + b" " + transact(sock, addr, cookie, payload))
    if reply.error is not None or not reply.port:
        raise ControlError(f"relay answered {reply.body!r} to {data!r}")
    return reply.port


def setup_sipsuite(sock: socket.socket, addr: tuple[str, int], call_id: str, caller: int,
                   callee: int, hosts: tuple[str, str] = (HOST, HOST)) -> tuple[int, int]:
    """U then L, as Kamailio's rtpproxy_offer/rtpproxy_answer send them."""
    to_callee = rtpproxy_port(sock, addr, build_update(f"{call_id}u", call_id, hosts[0], caller,
                                                       "ft;1", modifiers="S"))
    to_caller = rtpproxy_port(sock, addr, build_lookup(f"{call_id}l", call_id, hosts[1], callee,
                                                       "ft;1", "tt;1", modifiers="S"))
    return to_caller, to_callee


# --------------------------------------------------------------------------- load


@dataclass
class Spec:
    relay: str  # "sipsuite", "sipsuite-kernel", "rtpengine", "cfwd" or "direct" (no relay)
    control_port: int
    sessions: int
    first: int  # index of this generator's first session (call-ids, SSRCs)
    phase_offset: float  # fraction of PTIME added to every phase (generators interleave)
    warmup_rounds: int
    window_rounds: int
    drain_s: float
    max_delay: float  # seconds: a packet received later than this after sending is "delayed"
    tag: str  # makes call-ids unique per run
    # --netns (benchns.py): the caller's and callee's sockets in their hosts'
    # namespaces, the control socket in the relay's; "" = this namespace.
    caller_ns: str = ""
    callee_ns: str = ""
    relay_ns: str = ""
    caller_ip: str = HOST
    callee_ip: str = HOST
    relay_ip: str = HOST
    # cfwd (bench/cfwd.c, no control protocol): session i's relay ports are
    # port_base + 4i (facing the caller) and + 2 (facing the callee); the parent
    # hands them with the parties' ports to cfwd after READY.
    port_base: int = 0


@dataclass
class Result:
    sent: int = 0  # window packets handed to sendto without error
    send_errors: int = 0
    received: int = 0  # window packets received from the right peer
    received_outside: int = 0  # warm-up packets (or late ones from before the window)
    misrouted: int = 0  # a packet with another SSRC than the peer's
    misrouted_samples: list[str] = field(default_factory=list)  # the first few, described
    silent_parties: int = 0  # parties that received no window packet at all
    delayed: int = 0  # window packets received more than max_delay after they were sent
    # Histograms, {bucket: count} with HIST_RES buckets per second (the last: later):
    # sends' lateness against the schedule; packets' delay from sendto to recv.
    lateness: dict[str, int] = field(default_factory=dict)
    delay: dict[str, int] = field(default_factory=dict)
    late_max_ms: float = 0.0
    delay_max_ms: float = 0.0
    cpu_s: float = 0.0  # this process's CPU from round 0 to the end of sending
    load_s: float = 0.0  # wall time of the same span
    setup_s: float = 0.0


def sparse(hist: list[int]) -> dict[str, int]:
    return {str(i): n for i, n in enumerate(hist) if n}


def percentile_ms(hist: dict[str, int], q: float) -> float:
    """The q-quantile of a (merged) sparse histogram, in ms (upper bucket edge)."""
    total = sum(hist.values())
    if not total:
        return 0.0
    acc = 0
    for i in sorted(int(k) for k in hist):
        acc += hist[str(i)]
        if acc >= q * total:
            return (i + 1) / HIST_RES * 1000.0
    return HIST_BUCKETS / HIST_RES * 1000.0


def run(spec: Spec, emit: Callable[[str], None]) -> None:
    n_sess = spec.sessions
    socks: list[socket.socket] = []
    for i in range(2 * n_sess):
        with inside(spec.callee_ns if i & 1 else spec.caller_ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((spec.callee_ip if i & 1 else spec.caller_ip, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    with inside(spec.relay_ns):
        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind((HOST, 0))
    addr = (HOST, spec.control_port)
    hosts = (spec.caller_ip, spec.callee_ip)
    relay_ip = spec.relay_ip
    dests: list[tuple[str, int]] = [(relay_ip, 0)] * (2 * n_sess)
    t_setup = time.monotonic()
    try:
        for j in range(n_sess):
            sid = spec.first + j
            call_id = f"{spec.tag}-{sid}"
            caller, callee = ports[2 * j], ports[2 * j + 1]
            if spec.relay == "direct":
                # No relay: each party sends straight to the other (through
                # the relay host's plain IP routing with --netns), the
                # baseline of what the parties and the network cost.
                dests[2 * j] = (spec.callee_ip, callee)
                dests[2 * j + 1] = (spec.caller_ip, caller)
                continue
            if spec.relay == "cfwd":
                dests[2 * j] = (relay_ip, spec.port_base + 4 * sid)
                dests[2 * j + 1] = (relay_ip, spec.port_base + 4 * sid + 2)
                continue
            if spec.relay == "rtpengine":
                to_caller, to_callee = setup_rtpengine(ctl, addr, call_id, caller, callee, sid,
                                                       hosts)
            else:
                to_caller, to_callee = setup_sipsuite(ctl, addr, call_id, caller, callee, hosts)
            dests[2 * j] = (relay_ip, to_caller)
            dests[2 * j + 1] = (relay_ip, to_callee)
    except (ControlError, OSError, ValueError) as e:
        emit(f"ERROR session set-up: {e}")
        return
    finally:
        ctl.close()
    setup_s = time.monotonic() - t_setup

    # Party 2j is the caller of session j, 2j+1 its callee; each one's peer is the other.
    n = 2 * n_sess
    ssrcs = [0x5EED0000 + 2 * (spec.first + j // 2) + (j & 1) + 1 for j in range(n)]
    bufs: list[bytearray] = []
    for j in range(n):
        b = bytearray(PACKET)
        struct.pack_into("!BBHII", b, 0, 0x80, 0, 0, 0, ssrcs[j])
        b[12:] = b"\xff" * PAYLOAD
        bufs.append(b)
    peer_ssrc = [struct.pack("!I", ssrcs[j ^ 1]) for j in range(n)]
    sends = [s.sendto for s in socks]
    recvs = [s.recvfrom for s in socks]
    for s in socks:
        s.setblocking(False)
    ep = select.epoll()
    fd_party: dict[int, int] = {}
    for j, s in enumerate(socks):
        ep.register(s.fileno(), select.EPOLLIN)
        fd_party[s.fileno()] = j
    # Parties in sending order: phases spread evenly over PTIME.
    phases = [((j + spec.phase_offset) / n) * PTIME for j in range(n)]

    emit("READY " + json.dumps({
        "relay_ports": sorted({p for _, p in dests}),
        "party_ports": ports,
        "setup_s": setup_s,
    }))
    ready, _, _ = select.select([sys.stdin], [], [], GO_TIMEOUT)
    line = sys.stdin.readline() if ready else ""
    if not line.startswith("GO "):
        emit("ERROR no GO from the parent")
        return
    t0 = float(line.split()[1])

    warm = spec.warmup_rounds
    rounds = warm + spec.window_rounds
    lo, hi = warm + 1, warm + spec.window_rounds  # window sequence numbers (seq = round + 1)
    late_hist = [0] * (HIST_BUCKETS + 1)
    delay_hist = [0] * (HIST_BUCKETS + 1)
    late_max = delay_max = 0.0
    max_delay = spec.max_delay
    sent = send_errors = 0
    received = outside = misrouted = delayed = 0
    samples: list[str] = []
    per_party = [0] * n
    monotonic = time.monotonic
    stamp = STAMP.pack_into
    sent_at = struct.Struct("!d").unpack_from
    poll = ep.poll

    def receive(timeout: float) -> None:
        nonlocal received, outside, misrouted, delayed, delay_max
        for fd, _ev in poll(timeout):
            p = fd_party[fd]
            try:
                data, src = recvs[p](2048)
            except OSError:
                continue  # EAGAIN, or an ICMP port unreachable queued on the socket
            now = monotonic()
            if data[8:12] != peer_ssrc[p]:
                misrouted += 1
                if len(samples) < MAX_SAMPLES:
                    samples.append(
                        f"t0{now - t0:+.3f}s party 127.0.0.1:{ports[p]} (relay port"
                        f" {dests[p][1]}) got {len(data)} bytes from {src[0]}:{src[1]},"
                        f" header {data[:12].hex()}, expected SSRC {peer_ssrc[p].hex()}")
                continue
            seq = (data[2] << 8) | data[3]
            if lo <= seq <= hi:
                received += 1
                per_party[p] += 1
                d = now - sent_at(data, 12)[0]
                b = int(d * HIST_RES)
                delay_hist[b if b < HIST_BUCKETS else HIST_BUCKETS] += 1
                if d > delay_max:
                    delay_max = d
                if d > max_delay:
                    delayed += 1
            else:
                outside += 1

    while monotonic() < t0:
        receive(max(0.0, t0 - monotonic()))
    cpu0 = time.process_time()
    k = 0
    i = 0
    base = t0
    due = base + phases[0]
    in_window = k >= warm
    seq, ts = 1, 0
    while k < rounds:
        now = monotonic()
        while due <= now:
            buf = bufs[i]
            stamp(buf, 2, seq, ts, ssrcs[i], now)
            try:
                sends[i](buf, dests[i])
                ok = True
            except OSError:
                ok = False
            if in_window:
                if ok:
                    sent += 1
                else:
                    send_errors += 1
                late = now - due
                b = int(late * HIST_RES)
                late_hist[b if b < HIST_BUCKETS else HIST_BUCKETS] += 1
                if late > late_max:
                    late_max = late
            i += 1
            if i == n:
                i = 0
                k += 1
                if k == rounds:
                    break
                base = t0 + k * PTIME
                in_window = k >= warm
                seq, ts = (k + 1) & 0xFFFF, (k * PAYLOAD) & 0xFFFFFFFF
            due = base + phases[i]
            now = monotonic()
        if k == rounds:
            break
        receive(max(0.0, due - monotonic()))
    end = monotonic()
    cpu_s = time.process_time() - cpu0
    drain_end = end + spec.drain_s
    while (left := drain_end - monotonic()) > 0:
        receive(left)
    ep.close()
    for s in socks:
        s.close()
    r = Result(
        sent=sent, send_errors=send_errors, received=received, received_outside=outside,
        misrouted=misrouted, misrouted_samples=samples, silent_parties=sum(1 for c in per_party if c == 0),
        delayed=delayed, lateness=sparse(late_hist), delay=sparse(delay_hist),
        late_max_ms=late_max * 1000.0, delay_max_ms=delay_max * 1000.0,
        cpu_s=cpu_s, load_s=end - t0, setup_s=setup_s,
    )
    emit("RESULT " + json.dumps(asdict(r)))


def main() -> int:
    spec = Spec(**json.loads(sys.argv[1]))

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        run(spec, emit)
    except Exception as e:  # the parent shows it; a traceback would be lost in a pipe
        emit(f"ERROR {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
