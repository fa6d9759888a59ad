"""Interop: Kamailio (Debian's package) drives sipsuite's relay through its
rtpproxy module, unchanged, as it would drive RTPProxy.

sipp call_uac_rtp.xml -> Kamailio (rtpproxy_manage) -> sipp uas_answer.xml
-rtp_echo, with ``twistd -n rtp-relay`` as Kamailio's rtpproxy_sock: the SDP
each side receives points at the relay, the caller's audio and the callee's
echo cross it (its statistics count both directions), and the BYE's D ends
the session.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import procs
import pytest
from kamailioproc import KamailioProcess, start_kamailio
from procs import LOCALHOST, SippProcess, parse_sipp_messages, run_ctl, sipp_dir

PORTS = (41000, 41999)


@dataclass
class Relay:
    proc: subprocess.Popen[bytes]
    control: int
    mgmt: int
    log: Path

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_ctl("--url", f"http://{LOCALHOST}:{self.mgmt}", *args)


def start_relay(workdir: Path, *, control_transport: str = "udp",
                tables: dict[str, dict[str, Any]] | None = None, workers: int = 1) -> Relay:
    """A real `twistd -n rtp-relay` with its control socket on a free port
    (``udp`` or ``tls``, whose [tls] keys come in ``tables``), ready once its
    management interface answers and the control port is bound; ``workers``:
    its ``--workers`` (a supervisor answers commands once all are up)."""
    workdir.mkdir(parents=True, exist_ok=True)
    kind: Literal["udp", "tcp"] = "udp" if control_transport == "udp" else "tcp"
    control, mgmt = procs.free_port(kind), procs.free_port("tcp")
    conf = workdir / "relay.toml"
    conf.write_text(procs.toml_dumps({
        "management": {"relay_listen": f"tcp:{LOCALHOST}:{mgmt}"}, **(tables or {})}))
    log = workdir / "relay.log"
    cmd = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", f"--logfile={log}", "rtp-relay", "--config", str(conf),
        "--control", f"{control_transport}:{LOCALHOST}:{control}", "--media-address", LOCALHOST,
        "--ports", f"{PORTS[0]}-{PORTS[1]}", "--workers", str(workers),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    relay = Relay(proc, control, mgmt, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"rtp-relay exited rc={proc.returncode}\n{log.read_text(errors='replace')}")
        if relay.ctl("relay", "stats").returncode == 0 and procs.port_bound(control, kind):
            return relay
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"rtp-relay did not come up\n{log.read_text(errors='replace')}")


@dataclass
class Setup:
    relay: Relay
    kamailio: KamailioProcess
    uas_port: int


@pytest.fixture(params=[1, 2], ids=["relay", "relay-2-workers"])
def setup(sipp_bin: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    # 2: the same call through `rtp-relay --workers 2`, one control address.
    relay = start_relay(tmp_path / "relay", workers=request.param)
    uas_port = procs.free_port()
    kam = None
    try:
        kam = start_kamailio(tmp_path / "kamailio", "rtpproxy.cfg", procs.free_port("udp"), {
            "UAS_URI": f'"sip:{LOCALHOST}:{uas_port}"',
            "RTPP_SOCK": f'"udp:{LOCALHOST}:{relay.control}"',
        })
        yield Setup(relay, kam, uas_port)
    finally:
        if kam is not None:
            kam.stop()
        relay.proc.terminate()
        try:
            relay.proc.wait(15)
        except subprocess.TimeoutExpired:
            relay.proc.kill()


def sdp_media(msg: procs.SipMessage) -> tuple[str, int]:
    body = msg.body.decode(errors="replace")
    c = re.search(r"^c=IN IP4 (\S+)", body, re.M)
    m = re.search(r"^m=audio (\d+)", body, re.M)
    assert c and m, f"no c=/m= in {body!r}"
    return c.group(1), int(m.group(1))


def test_kamailio_relays_media_through_our_relay(setup: Setup, tmp_path: Path) -> None:
    work = tmp_path / "sipp"
    work.mkdir()
    # call_uac_rtp.xml streams this file by its bare name, from sipp's working folder.
    shutil.copy(sipp_dir() / "tone_440hz_1s.alaw", work / "tone_440hz_1s.alaw")
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=work,
                      local_port=setup.uas_port, calls=1, timeout_s=30, service="bob",
                      trace_msg=True, extra=["-rtp_echo"])
    uas.wait_bound()
    caller = SippProcess(sipp_dir() / "call_uac_rtp.xml", name="uac", workdir=work,
                         remote=setup.kamailio.address, local_port=procs.free_port(), calls=1,
                         timeout_s=30, service="bob", duration_ms=3000, trace_msg=True)
    # Mid-call, the session's per-party counters: the caller's audio and the
    # callee's echo both crossed the relay.
    during: list[dict] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and caller.proc.poll() is None:
        shown = setup.relay.ctl("--json", "relay", "sessions")
        sessions = json.loads(shown.stdout) if shown.returncode == 0 else []
        if sessions and all(sessions[0][leg]["packets"] >= 25 for leg in ("caller", "callee")):
            during = sessions
            break
        time.sleep(0.3)
    uac = caller.wait()
    res = uas.wait()
    diag = (f"\n{uac.summary()}\n{res.summary()}\n{setup.kamailio.diagnostics()}"
            f"\n--- relay log:\n{setup.relay.log.read_text(errors='replace')[-4000:]}")
    assert (uac.rc, uac.successful, res.successful) == (0, 1, 1), "call failed" + diag

    invite = next(t.msg for t in parse_sipp_messages(res.messages_path)
                  if t.direction == "received" and not t.msg.is_response and t.msg.method == "INVITE")
    answer = next(t.msg for t in parse_sipp_messages(uac.messages_path)
                  if t.direction == "received" and t.msg.is_response and t.msg.status == 200
                  and t.msg.body)
    for what, msg in (("INVITE at the callee", invite), ("200 at the caller", answer)):
        addr, port = sdp_media(msg)
        assert addr == LOCALHOST and PORTS[0] <= port <= PORTS[1], (
            f"{what}: SDP points at {addr}:{port}, not the relay" + diag)

    assert during, "no session with audio both ways seen during the call" + diag
    stats = setup.relay.ctl("--json", "relay", "stats")
    assert stats.returncode == 0, stats.stderr
    figures = json.loads(stats.stdout)
    text = json.dumps(figures)
    # 3 s of 50 packets/s each way: well over 50 relayed in each direction.
    relayed = figures.get("relayed", figures.get("packets_relayed"))
    assert relayed is not None and relayed >= 100, f"relay stats {text}" + diag
    # The BYE's D ended the session.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sessions = json.loads(setup.relay.ctl("--json", "relay", "sessions").stdout)
        if not sessions:
            break
        time.sleep(0.2)
    assert not sessions, f"session left after BYE: {sessions}" + diag
