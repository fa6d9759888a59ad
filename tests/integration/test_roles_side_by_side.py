"""sip-proxy and rtp-relay started on their defaults on one host both run
(they used to share management port 7060) and carry a relayed sipp call.

"On their defaults" means the real default ports, which other programs on
a shared machine may hold: so the two roles, sipp and sipsuite-ctl run in a
network namespace of their own (``unshare``, util-linux), driven by
netns_roles.py.  Its own pid namespace too, so that nothing it started can
outlive it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_proxy_and_relay_on_their_defaults_carry_a_relayed_call(sipp_bin: str,
                                                               tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed to run the roles on their defaults"
    result = subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount",
         "--mount-proc", sys.executable, str(HERE / "netns_roles.py"), str(tmp_path)],
        cwd=HERE, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("side by side: ok"), result.stdout
