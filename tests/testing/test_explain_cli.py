"""python -m sipsuite.testing.explain: one message routed offline, each
decision printed with its hook and the line of routing code that made it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

ROUTING = '''
from sipsuite.proxy import DefaultRouting


class Explained(DefaultRouting):
    async def request_route(self, ctx):
        if ctx.request.uri.user == "closed":
            ctx.trace("closed line")
            ctx.reply(403, "Closed")
            return
        await super().request_route(ctx)
'''

INVITE = """INVITE sip:{user}@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKe1
From: <sip:carol@example.org>;tag=1
To: <sip:{user}@example.com>
Call-ID: e1
CSeq: 1 INVITE
Contact: <sip:carol@192.0.2.7:5070>

"""


def explain(tmp_path: Path, user: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "explained.py").write_text(ROUTING)
    (tmp_path / "p.toml").write_text('[proxy]\nlisten = ["udp:127.0.0.1:5060"]\n'
                                      'domains = ["example.com"]\nrouting = "explained:Explained"\n'
                                      '[management]\nlisten = ""\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sipsuite.testing.explain", "--config",
                           str(tmp_path / "p.toml"), "-", *extra], input=INVITE.format(user=user),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)


def test_a_reply_of_ones_own_routing_names_its_line(tmp_path: Path) -> None:
    run = explain(tmp_path, "closed")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "request_route: trace closed line  [explained.py:8]" in lines
    assert "request_route: reply 403 Closed  [explained.py:9]" in lines
    assert "sent: 403 Closed -> udp:192.0.2.7:5070" in lines  # from its Via (no --source)
    assert lines[-1] == "decision: replied"


def test_a_relay_to_a_given_binding_and_the_bytes_with_wire(tmp_path: Path) -> None:
    run = explain(tmp_path, "bob", "--binding", "bob=sip:bob@192.0.2.20:5062", "--wire")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "request_route: lookup 'bob': 1 binding(s): sip:bob@192.0.2.20:5062  [" in out
    assert "sent: INVITE sip:bob@192.0.2.20:5062 -> udp:192.0.2.20:5062" in out
    assert "    Record-Route: <sip:127.0.0.1:5060;lr>" in out
    assert out.rstrip().endswith("decision: relayed")


def test_a_message_that_does_not_parse_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('[management]\nlisten = ""\n')
    run = subprocess.run([sys.executable, "-m", "sipsuite.testing.explain", "--config",
                          str(tmp_path / "p.toml"), "-"], input="HELLO\n\n", capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2 and run.stderr.startswith("explain: ") and run.stdout == ""
