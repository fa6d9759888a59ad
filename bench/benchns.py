"""Network namespaces for the relay benchmark (bench/relay_pps.py --netns).

The bench variant of tests/netnskit.py: a relay host between two phone hosts,
joined by veth links, so that relayed packets take the path real traffic
takes (in through a NIC, out through another) and the kernel data plane
(forwarding after prerouting) applies; on loopback every packet is local.
Names are unique to the run; ``close()`` deletes every namespace made, and a
namespace's deletion takes its veth ends and nftables tables with it.
Root only.  Addresses: 198.18.0.0/15 (RFC 2544, benchmarking), inside the
namespaces only.

    phone A 198.18.1.2 --- 198.18.1.1 relay 198.18.2.1 --- 198.18.2.2 phone B
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
CLONE_NEWNET = 0x40000000
RELAY_IP, CALLER_IP, CALLEE_IP = "198.18.1.1", "198.18.1.2", "198.18.2.2"
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in namespace ``ns`` for the block (sockets made there stay there)."""
    if not ns:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        try:
            yield
        finally:
            _libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)


class Hosts:
    """The three hosts; ``relay``, ``caller``, ``callee`` are namespace names."""

    def __init__(self) -> None:
        prefix = "bn" + secrets.token_hex(3)
        self.made: list[str] = []
        self.relay, self.caller, self.callee = f"{prefix}r", f"{prefix}a", f"{prefix}b"
        try:
            for ns in (self.relay, self.caller, self.callee):
                _run(IP, "netns", "add", ns)
                self.made.append(ns)
                _run(IP, "-n", ns, "link", "set", "lo", "up")
            for i, (ns, mine, theirs) in enumerate(((self.caller, CALLER_IP, RELAY_IP),
                                                    (self.callee, CALLEE_IP, "198.18.2.1"))):
                dev, peer = f"{prefix}{i}p", f"{prefix}{i}r"
                _run(IP, "link", "add", dev, "type", "veth", "peer", "name", peer)
                _run(IP, "link", "set", dev, "netns", ns)
                _run(IP, "link", "set", peer, "netns", self.relay)
                _run(IP, "-n", ns, "addr", "add", f"{mine}/24", "dev", dev)
                _run(IP, "-n", self.relay, "addr", "add", f"{theirs}/24", "dev", peer)
                _run(IP, "-n", ns, "link", "set", dev, "up")
                _run(IP, "-n", self.relay, "link", "set", peer, "up")
                _run(IP, "-n", ns, "route", "add", "default", "via", theirs)
            _run(IP, "netns", "exec", self.relay, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=20)
        self.made.clear()
