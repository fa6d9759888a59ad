"""A real PJSIP phone (pjsua2) registering over TCP with RFC 5626 outbound.

The phone runs in its own process (pjsip_phone.py, a hard time limit, its
process group killed at the end). Between it and the proxy sits a NAT shim:
a TCP forwarder, so the proxy sees the phone's connection come from another
port than its Via and Contact name, and which can "rebind" (drop the
upstream connection and go on over a new one from a new port, as a NAT
that lost its mapping). The phone must see ``Require: outbound`` in its 200
and report outbound active, and after the rebind and a re-REGISTER a call
from sipp through the proxy must reach it over the new flow.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import procs
import pytest
from procs import LOCALHOST, ProxyFactory, ProxyProcess, run_sipp

DOMAIN = "sipsuite.test"
HERE = Path(__file__).resolve().parent


class NatShim:
    """Forwards one accepted TCP connection to ``upstream``; ``rebind()``
    swaps the upstream connection for a new one (a new source port)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_addr = upstream
        self.listener = socket.create_server((LOCALHOST, 0))
        self.port = self.listener.getsockname()[1]
        self.down: socket.socket | None = None
        self.up: socket.socket | None = None
        self.ups: list[int] = []  # the source port of each upstream connection, in order
        self.from_proxy: list[bytes] = [b""]  # bytes the proxy sent on each upstream
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connect(self) -> None:
        up = socket.create_connection(self.upstream_addr, timeout=3.0)
        self.ups.append(up.getsockname()[1])
        if len(self.ups) > 1:
            self.from_proxy.append(b"")
        self.up = up

    def rebind(self) -> None:
        with self.lock:
            if self.up is not None:
                self.up.close()
            self._connect()

    def _run(self) -> None:
        while not self.stopping:
            with self.lock:
                socks = [s for s in (self.listener, self.down, self.up) if s is not None]
            try:
                ready, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):
                continue  # a socket closed by rebind() meanwhile
            with self.lock:
                for s in ready:
                    if s is self.listener:
                        self.down, _ = self.listener.accept()
                        self._connect()
                        continue
                    try:
                        data = s.recv(65535)
                    except OSError:
                        data = b""
                    if s is self.down and self.up is not None and data:
                        self.up.sendall(data)
                    elif s is self.up and self.down is not None and data:
                        self.from_proxy[-1] += data
                        self.down.sendall(data)
                    elif s is self.up:
                        self.up = None  # the proxy closed it; the phone is not told

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2.0)
        for s in (self.listener, self.down, self.up):
            if s is not None:
                s.close()


class PhoneProcess:
    def __init__(self, shim: NatShim, user: str, logfile: Path) -> None:
        self.logfile = logfile
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "pjsip_phone.py"), LOCALHOST, str(shim.port), user, DOMAIN,
             str(logfile)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, text=True)
        self.events: queue.Queue[dict] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def wait_event(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event.get("event") == kind:
                return event
        raise AssertionError(f"pjsua2 phone: no {kind!r} event in {timeout} s\n"
                             + "".join(self.output[-40:]) + self.log_tail())

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def log_tail(self) -> str:
        return "\n--- pjsip log tail ---\n" + "\n".join(self.log().splitlines()[-60:])

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.command("quit")
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5.0)


@pytest.fixture
def proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    return proxy_factory("pjsip", tables={"registrar": {"min_expires": 0}})


@pytest.fixture
def shim(proxy: ProxyProcess) -> Iterator[NatShim]:
    s = NatShim(proxy.address)
    yield s
    s.close()


def test_pjsua2_is_installed() -> None:
    """The phone below needs it; without it that test fails, never skips."""
    import pjsua2

    assert pjsua2.Endpoint is not None


def test_pjsip_outbound_over_tcp_reached_over_its_flow_after_a_rebind(
        proxy: ProxyProcess, shim: NatShim, tmp_path: Path) -> None:
    phone = PhoneProcess(shim, "pjphone", tmp_path / "pjsip.log")
    try:
        assert phone.wait_event("reg", 15.0)["code"] == 200
        log = phone.log()
        # The 200 it received carried Require: outbound, and it says so.
        oks = [m for m in re.split(r"RX \d+ bytes Response msg 200/REGISTER", log)[1:]]
        assert oks and re.search(r"(?im)^Require:\s*outbound\s*$", oks[0].split("--end msg--")[0]), \
            phone.log_tail()
        assert re.search(r"SIP outbound status for acc \d+ is active", log), phone.log_tail()
        assert shim.ups[0] != shim.port  # the proxy saw another port than the phone's

        # The NAT rebinds: the old connection goes, the phone's refresh comes
        # over a new one from another source port.
        shim.rebind()
        phone.command("register")
        assert phone.wait_event("reg", 15.0)["code"] == 200
        assert len(shim.ups) == 2 and shim.ups[1] != shim.ups[0]

        scenario = tmp_path / "uac486.xml"
        template = (procs.SCENARIOS / "uac_expect_final.xml").read_text()
        scenario.write_text(template.replace("EXPECTED_STATUS", "486"))
        result = run_sipp(scenario, name="caller", workdir=tmp_path, remote=proxy.address,
                          local_port=procs.free_port(), calls=1, timeout_s=15, service="pjphone",
                          extra=["-key", "from_host", DOMAIN])
        call = phone.wait_event("call", 5.0)
        assert result.rc == 0, f"{result.summary()}\n{proxy.diagnostics()}"
        # It came through the shim (the phone's peer is the shim), over the
        # new upstream connection, not a new connection to the Contact.
        assert call["src"].endswith(f":{shim.port}")
        assert b"INVITE sip:pjphone@" in shim.from_proxy[1]
        assert b"INVITE " not in shim.from_proxy[0]
    finally:
        phone.stop()
    assert phone.proc.returncode is not None
