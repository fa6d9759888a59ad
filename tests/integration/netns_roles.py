"""Run inside a private network namespace by test_roles_side_by_side.py:
``twistd -n sip-proxy`` and ``twistd -n rtp-relay`` on one host, each on its
own defaults (SIP 5060, management 7060 and 7061, relay control 7722, media
35000-65000), carry a relayed sipp call, and ``sipsuite-ctl`` without
``--url`` reaches both.  The namespace's loopback is this run's alone, so the
default ports are free whatever else runs on the machine.

Usage: python netns_roles.py WORKDIR (exit status 0 and "side by side: ok"
on success; an assertion with the processes' logs otherwise).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import procs
from procs import LOCALHOST, options_ping, run_ctl
from test_media_relay import run_rtp_call

# The relay's default [relay] ports.
DEFAULT_MEDIA_PORTS = (35000, 65000)


def twistd(tapname: str, workdir: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / f"{tapname}.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", f"--logfile={log}", tapname, *args],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return proc, log


def main(workdir: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    workdir.mkdir(parents=True, exist_ok=True)
    uas_port = procs.free_port()
    # Routing needs only what a call needs; no address, port or management key.
    (workdir / "proxy.toml").write_text(procs.toml_dumps({
        "features": {"nat": True},
        "media": {"relay": "always"},
        "location.static": {"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]},
    }))
    (workdir / "relay").mkdir()
    relay, relay_log = twistd("rtp-relay", workdir / "relay")
    proxy, proxy_log = twistd("sip-proxy", workdir, "-c", "proxy.toml",
                              "--relay", f"udp:{LOCALHOST}:7722")

    def diagnostics() -> str:
        return "".join(f"\n--- {log.name} (rc={p.poll()}):\n{log.read_text(errors='replace')[-4000:]}"
                       for p, log in ((proxy, proxy_log), (relay, relay_log)) if log.exists())

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proxy.poll() is None and relay.poll() is None, "a role exited" + diagnostics()
            if (options_ping(LOCALHOST, 5060, timeout=0.3) is not None
                    and run_ctl("relay", "stats").returncode == 0):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the roles did not come up within 30 s" + diagnostics())
        up = run_ctl("uptime")  # the proxy, on the default URL
        assert up.returncode == 0 and up.stdout.startswith("up "), up.stderr + diagnostics()
        run_rtp_call((LOCALHOST, 5060), uas_port, DEFAULT_MEDIA_PORTS, workdir / "sipp", run_ctl,
                     diagnostics)
        stats = json.loads(run_ctl("--json", "relay", "stats").stdout)
        assert stats["sessions_created"] == 1 and stats["packets_relayed"] > 50, stats
        procs.kill_leftover_sipps()
    finally:
        for p in (proxy, relay):
            p.terminate()
        for p in (proxy, relay):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    print("side by side: ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
