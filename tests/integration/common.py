"""Shared by the integration-test helpers: where things are, loopback addresses, ports.

- paths: ``REPO``, ``SCENARIOS`` (test-only sipp scenarios), ``sipp_dir`` (the
  sipp scenarios in examples/sipp/, which the README walks through);
- addresses: ``LOCALHOST`` / ``LOCALHOST6``, ``family``, ``bracket`` / ``hostport``
  (an IPv6 literal the way SIP writes it, [::1]:5060), ``Address``, ``Transport``;
- ports: ``free_port`` (free for UDP and TCP at once on 127.0.0.1 or ::1),
  ``port_bound`` / ``wait_bound``;
- ``tail`` (the end of a log file for assertion messages), ``unique``.

Nothing here imports sipsuite (see procs.py).
"""

from __future__ import annotations

import itertools
import random
import re
import socket
import threading
import time
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
LOCALHOST6 = "::1"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def sipp_dir() -> Path:
    """examples/sipp: caller, callee, CANCEL, REGISTER and OPTIONS scenarios and the
    RTP tone, the ones the README's walk-through uses."""
    return REPO / "examples" / "sipp"


# --------------------------------------------------------------------------- addresses


def family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal (bare or in brackets), else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bracket(host: str) -> str:
    """An IPv6 literal in brackets, as SIP URIs and Via sent-by write it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def hostport(host: str, port: int) -> str:
    """'127.0.0.1:5060' / '[::1]:5060'."""
    return f"{bracket(host)}:{port}"


Address = tuple[str, int]
Transport = Literal["udp", "tcp"]


# --------------------------------------------------------------------------- ports

_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port(kind: Literal["udp", "tcp", "both"] = "both", host: str = LOCALHOST) -> int:
    """A port the OS calls free on ``host`` (for UDP and TCP alike with "both");
    ``host`` may be an IPv6 address (``LOCALHOST6``) or a wildcard.

    Taken below the kernel's ephemeral range (32768+), where the client
    sockets of the run (redis, management, sipp's own) get their ports: one of
    those could otherwise take the number between this check and the bind of
    the process under test (a [::] listener conflicts with any address's).
    Ports are never handed out twice by one test process, so two fixtures
    asking in a row cannot get the same number before either has bound it.
    """
    kinds = [socket.SOCK_STREAM] if kind == "tcp" else (
        [socket.SOCK_DGRAM] if kind == "udp" else [socket.SOCK_DGRAM, socket.SOCK_STREAM])
    with _port_lock:
        for _ in range(500):
            port = random.randrange(*_REGION)
            if port in _handed_out:
                continue
            try:
                for sock_type in kinds:
                    with socket.socket(family(host), sock_type) as s:
                        s.bind((host, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free {kind} port found on {host}")


#: Where test ports are taken: below the ephemeral range (see free_port).
_REGION = (20000, 32000)


def free_port_range(count: int, region: tuple[int, int] = _REGION) -> tuple[int, int]:
    """``count`` consecutive free UDP ports starting at an even one, below the
    ephemeral range (32768+) where every client socket of the run lands."""
    for _ in range(200):
        low = random.randrange(*region) & ~1
        socks = []
        if any(p in _handed_out for p in range(low, low + count)):
            continue
        try:
            for port in range(low, low + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((LOCALHOST, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        with _port_lock:
            _handed_out.update(range(low, low + count))
        return low, low + count - 1
    raise RuntimeError("no free port range")


def port_bound(port: int, kind: Literal["udp", "tcp"]) -> bool:
    """Whether something on this host has bound UDP ``port`` / listens on TCP ``port``
    (read from /proc/net, so probing never steals the port)."""
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and (kind == "udp" or state == "0A"):
                return True
    return False


def wait_bound(port: int, kind: Literal["udp", "tcp"], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_bound(port, kind):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- files

# Twisted's own chatter (one DNS query = a UDP port opened and closed) buries the
# proxy's lines in a log tail; diagnostics leave it out.
_NOISE = re.compile(
    r"Starting protocol|Stopping protocol|DNSDatagramProtocol starting|\(UDP Port \d+ Closed\)"
)


def tail(path: Path, lines: int, drop_noise: bool = False) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    kept = [ln for ln in text.splitlines() if not (drop_noise and _NOISE.search(ln))]
    return "\n".join(kept[-lines:])


_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"
