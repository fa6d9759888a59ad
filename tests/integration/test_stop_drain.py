"""Stopping ``twistd -n sipsuite`` during a relayed call (issue 12 item 6).

^C with a call up: the relay drains, and the proxy's SIP stays up meanwhile,
so the call's BYE still ends it (and its relay session); a new INVITE during
the drain gets 503 with Retry-After; the process exits right after the BYE,
far before [relay] drain_time (20 s here). With no call up, ^C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import procs
from common import free_port_range
from endpoints import UdpEndpoint
from procs import LOCALHOST, SippProcess, build_invite, sipp_dir

DRAIN = 20.0


def _suite(tmp_path: Path, callee_port: int) -> procs.ProxyProcess:
    ports = free_port_range(40)
    port = procs.free_port()
    tables: dict[str, dict[str, Any]] = {
        "features": {"nat": True},
        "media": {"relay": "always"},
        "relay": {"media_addresses": [LOCALHOST], "ports": f"{ports[0]}-{ports[1]}",
                  "drain_time": DRAIN},
    }
    work = tmp_path / "suite"
    work.mkdir()
    cfg = procs.write_config(work / "sipsuite.toml", port=port, tables=tables,
                             static={"bob": [f"sip:bob@{LOCALHOST}:{callee_port}"]})
    return procs.start_proxy(work, cfg, port)


def _sessions(proxy: procs.ProxyProcess) -> list[Any]:
    shown = proxy.ctl("--json", "relay", "sessions", timeout=5)
    return json.loads(shown.stdout) if shown.returncode == 0 else []


def _wait_exit(proxy: procs.ProxyProcess, limit: float) -> float | None:
    """When (time.monotonic()) the process exited, None if it runs past ``limit`` s."""
    assert proxy.proc is not None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            return time.monotonic()
        time.sleep(0.02)
    return None


@contextlib.contextmanager
def _relayed_call(tmp_path: Path, duration_ms: int) -> Iterator[
        tuple[procs.ProxyProcess, SippProcess, SippProcess]]:
    """The suite with a sipp call to bob through it, its relay session up:
    (proxy, uas, uac), all three ended on the way out. The caller hangs up
    ``duration_ms`` after its ACK."""
    callee_port = procs.free_port()
    work = tmp_path / "sipp"
    with contextlib.ExitStack() as stack:
        proxy = _suite(tmp_path, callee_port)
        stack.callback(proxy.stop)
        uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                          local_port=callee_port, calls=1, timeout_s=40, service="bob")
        stack.callback(uas.kill)
        assert procs.wait_bound(callee_port, "udp", 5.0)
        uac = SippProcess(sipp_dir() / "call_uac.xml", name="uac", workdir=work,
                          remote=proxy.address, local_port=procs.free_port(), calls=1,
                          timeout_s=40, service="bob", duration_ms=duration_ms)
        stack.callback(uac.kill)
        deadline = time.monotonic() + 10
        while not _sessions(proxy):
            assert time.monotonic() < deadline, "the call's relay session never appeared\n" + (
                proxy.diagnostics())
            time.sleep(0.2)
        yield proxy, uas, uac


def _signal_drain(proxy: procs.ProxyProcess) -> float:
    """SIGINT the suite and wait for its drain to begin; when it was sent."""
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGINT)
    signalled = time.monotonic()
    # The signal is handled on the reactor's next turn: wait for the drain.
    while "relay draining: 1 session(s)" not in proxy.log_text():
        assert time.monotonic() < signalled + 5, "no drain began\n" + proxy.diagnostics()
        time.sleep(0.05)
    return signalled


def test_ctrl_c_during_a_relayed_call_waits_for_its_bye(sipp_bin: str, tmp_path: Path) -> None:
    # The call lasts 4 s after its ACK: time for ^C and a new INVITE first.
    with _relayed_call(tmp_path, 4000) as (proxy, uas, uac):
        signalled = _signal_drain(proxy)

        with UdpEndpoint(LOCALHOST) as other:
            other.send(build_invite("sip:bob@sipsuite.test", sent_by=other.sent_by),
                       proxy.address)
            refused = other.recv_until(lambda m: m.is_response and m.status >= 200, 5.0)
        assert uac.proc.poll() is None, "the call ended before the new INVITE was answered"
        assert refused is not None, "no final answer to an INVITE during the drain\n" + (
            proxy.diagnostics())
        assert refused.msg.status == 503, refused.msg
        retry = refused.msg.header("retry-after") or ""
        assert re.fullmatch(r"\d+", retry) and 1 <= int(retry) <= DRAIN, retry

        caller = uac.wait()
        hung_up = time.monotonic()
        callee = uas.wait()
        assert (caller.rc, caller.successful, callee.successful) == (0, 1, 1), (
            "the call's BYE did not pass during the drain\n"
            f"{caller.summary()}\n{callee.summary()}\n{proxy.diagnostics()}")
        exited = _wait_exit(proxy, DRAIN + 5)
        assert exited is not None, "the suite did not exit\n" + proxy.diagnostics()
        # Right after the BYE (sipp exits once its 200 is in), long before drain_time.
        assert exited - hung_up < 3.0, (exited - hung_up, proxy.diagnostics())
        assert exited - signalled < DRAIN / 2, (exited - signalled, proxy.diagnostics())
        # twistd ends by the signal it stopped for, like any well-behaved process.
        assert proxy.proc is not None and proxy.proc.returncode in (0, -signal.SIGINT), (
            proxy.diagnostics())
        log = proxy.log_text()
        assert "relay drained: every session ended" in log, proxy.diagnostics()
        assert "Traceback" not in log and "#critical]" not in log, proxy.diagnostics()



def test_ctrl_c_without_calls_stops_at_once(tmp_path: Path) -> None:
    proxy = _suite(tmp_path, procs.free_port())
    try:
        assert proxy.proc is not None
        os.kill(proxy.proc.pid, signal.SIGINT)
        signalled = time.monotonic()
        exited = _wait_exit(proxy, DRAIN + 5)
        assert exited is not None, "the suite did not exit\n" + proxy.diagnostics()
        assert exited - signalled < 3.0, (exited - signalled, proxy.diagnostics())
        assert proxy.proc.returncode in (0, -signal.SIGINT), proxy.diagnostics()
        assert "relay draining" not in proxy.log_text(), proxy.diagnostics()
    finally:
        proxy.stop()


def test_second_ctrl_c_ends_the_drain_at_once(sipp_bin: str, tmp_path: Path) -> None:
    """The operator's "now": a second ^C during the drain stops the suite at
    once, the call cut, without a traceback (the reactor is already stopping)."""
    with _relayed_call(tmp_path, 30000) as (proxy, _uas, _uac):
        _signal_drain(proxy)
        assert proxy.proc is not None
        os.kill(proxy.proc.pid, signal.SIGINT)
        signalled = time.monotonic()
        exited = _wait_exit(proxy, DRAIN + 5)
        assert exited is not None, "the suite did not exit\n" + proxy.diagnostics()
        assert exited - signalled < 3.0, (exited - signalled, proxy.diagnostics())
        log = proxy.log_text()
        assert "relay drain ended by a second signal" in log, proxy.diagnostics()
        assert "Traceback" not in log and "#critical]" not in log, proxy.diagnostics()

