"""Hosts for tests: Linux network namespaces joined by veth links (root only).

A :class:`Topology` makes namespaces and veth pairs under names unique to the
run (a random prefix, so parallel runs and other helpers never meet), and
``close()`` removes every namespace it made and kills every process it
started in them, whatever state the test left (use the ``topology`` fixture,
whose finalizer does it, or try/finally).  Deleting a namespace deletes its
veth ends and whatever nftables tables a process made inside it.

Addresses come from 198.18.0.0/15 (RFC 2544, for benchmarking
interconnect devices): they exist only inside these namespaces, which have no
route out of the machine.

The test process itself stays in its own namespace; ``inside(ns)`` switches
the calling thread into another for as long as it takes to create a socket,
which stays bound to that namespace afterwards: a test holds the phones'
sockets of several "hosts" at once without a process per host.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
NFT = "/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else "nft"


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``ns``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail back
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(target)
        os.close(home)


class Topology:
    """Namespaces and links of one test; ``close()`` undoes all of it."""

    def __init__(self) -> None:
        # 9 characters: with a role and a number a veth name stays within 15.
        self.prefix = "st" + secrets.token_hex(3) + "x"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._links = 0

    def ns(self, role: str) -> str:
        """A new namespace, its loopback up; returns its name."""
        name = f"{self.prefix}{role}"
        _run(IP, "netns", "add", name)
        self.namespaces.append(name)
        _run(IP, "-n", name, "link", "set", "lo", "up")
        return name

    def _veth(self, ns1: str, ns2: str) -> tuple[str, str]:
        """A veth pair under a unique name, one end moved into each namespace
        (the pair deleted again if a move fails); the two device names."""
        self._links += 1
        dev1, dev2 = f"{self.prefix}{self._links}a", f"{self.prefix}{self._links}b"
        _run(IP, "link", "add", dev1, "type", "veth", "peer", "name", dev2)
        try:
            _run(IP, "link", "set", dev1, "netns", ns1)
            _run(IP, "link", "set", dev2, "netns", ns2)
        except RuntimeError:
            subprocess.run([IP, "link", "del", dev1], capture_output=True)
            raise
        return dev1, dev2

    def link(self, ns1: str, addr1: str, ns2: str, addr2: str) -> tuple[str, str]:
        """A veth pair between two namespaces with "ADDR/LEN" on each end;
        returns the two device names."""
        dev1, dev2 = self._veth(ns1, ns2)
        for ns, dev, addr in ((ns1, dev1, addr1), (ns2, dev2, addr2)):
            _run(IP, "-n", ns, "addr", "add", addr, "dev", dev)
            _run(IP, "-n", ns, "link", "set", dev, "up")
        return dev1, dev2

    def switch(self, ns: str, name: str) -> str:
        """A Linux bridge ``name`` in ``ns``: a LAN segment several hosts
        join with :meth:`plug`."""
        _run(IP, "-n", ns, "link", "add", "name", name, "type", "bridge")
        _run(IP, "-n", ns, "link", "set", "dev", name, "up")
        return name

    def plug(self, ns: str, addr: str, switch_ns: str, bridge: str) -> str:
        """A veth from ``ns`` ("ADDR/LEN" on its end) to a port of ``bridge``
        in ``switch_ns``; returns the device name in ``ns``."""
        dev1, dev2 = self._veth(ns, switch_ns)
        _run(IP, "-n", switch_ns, "link", "set", "dev", dev2, "master", bridge)
        _run(IP, "-n", switch_ns, "link", "set", dev2, "up")
        _run(IP, "-n", ns, "addr", "add", addr, "dev", dev1)
        _run(IP, "-n", ns, "link", "set", dev1, "up")
        return dev1

    def nft(self, ns: str, ruleset: str) -> None:
        """Load nft ``ruleset`` text in ``ns`` (its tables go with the namespace)."""
        done = subprocess.run([IP, "netns", "exec", ns, NFT, "-f", "-"], input=ruleset,
                              capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"nft -f in {ns}: {done.stderr.strip()}")

    def leftovers(self) -> list[str]:
        """Namespaces and (root namespace) links of this run still present:
        empty after ``close()``."""
        names = _run(IP, "netns", "list").split() + _run(IP, "-o", "link").split()
        return sorted({n.split("@")[0].rstrip(":") for n in names if self.prefix in n})

    def addr(self, ns: str, dev: str, addr: str) -> None:
        """Another address on a device; IPv6 without duplicate address
        detection, so it is usable at once."""
        _run(IP, "-n", ns, "addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))

    def route(self, ns: str, via: str, dest: str = "default") -> None:
        _run(IP, "-n", ns, *(["-6"] if ":" in via else []), "route", "add", dest, "via", via)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        _run(IP, "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")

    def popen(self, ns: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A process in ``ns`` (``ip netns exec`` execs it: same pid),
        killed at close."""
        proc = subprocess.Popen([IP, "netns", "exec", ns, *args], **kwargs)
        self.procs.append(proc)
        return proc

    def nft_json(self, ns: str, *what: str) -> list[dict[str, Any]]:
        """``nft -j list WHAT`` in ``ns``: the objects of its answer."""
        out = _run(IP, "netns", "exec", ns, NFT, "-j", "list", *what)
        return [item for item in json.loads(out)["nftables"] if isinstance(item, dict)]

    def tables(self, ns: str) -> set[str]:
        return {item["table"]["name"] for item in self.nft_json(ns, "tables") if "table" in item}

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=20)
        self.namespaces.clear()


@pytest.fixture
def topology() -> Iterator[Topology]:
    if os.geteuid() != 0:
        # Not a skip: these tests are the kernel path's only proof.
        pytest.fail("network namespace tests need root (CI and the dev machines run as root)")
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()


def rpc(ns: str, port: int, method: str, params: Any = None) -> Any:
    """One JSON-RPC call to a management port on 127.0.0.1 inside ``ns``."""
    with inside(ns):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()
    try:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params is not None:
            body["params"] = params
        conn.request("POST", "/", json.dumps(body), {"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
