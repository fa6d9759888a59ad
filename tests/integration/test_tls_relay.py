"""The relay's control channel over mutual TLS, for a relay on another host:
``twistd -n rtp-relay --control tls:HOST:PORT`` driven by ``twistd -n
sip-proxy --relay tls:HOST:PORT``, both with certificates from a test CA.
A relayed call's offer/answer works across it; a client without a valid
certificate gets no answer from the relay.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
import pytest
import tlscerts
from procs import LOCALHOST
from test_media_relay import media_tables, run_rtp_call
from test_relay_kamailio import PORTS, Relay, start_relay
from tlsendpoints import client_context


@dataclass
class Setup:
    relay: Relay
    pki: tlscerts.TestPKI
    rogue: tlscerts.TestPKI
    tmp: Path


def _start_relay(workdir: Path, pki: tlscerts.TestPKI, workers: int) -> Relay:
    cert = pki.issue("relay", ips=[LOCALHOST])
    return start_relay(workdir, control_transport="tls", workers=workers, tables={
        "tls": {"certificate": str(cert.cert), "private_key": str(cert.key),
                "ca_list": str(pki.ca_file)}})


@pytest.fixture(params=[1, 2], ids=["relay", "relay-2-workers"])
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    # 2: `rtp-relay --workers 2`, whose supervisor holds the TLS socket.
    pki = tlscerts.TestPKI(tmp_path / "pki")
    rogue = tlscerts.TestPKI(tmp_path / "rogue", "rogue CA")
    relay = _start_relay(tmp_path / "relay", pki, request.param)
    try:
        yield Setup(relay, pki, rogue, tmp_path)
    finally:
        relay.proc.terminate()
        try:
            relay.proc.wait(15)
        except subprocess.TimeoutExpired:
            relay.proc.kill()
            relay.proc.wait(5)


def _command(port: int, ctx: ssl.SSLContext, command: bytes) -> bytes | None:
    """One command the way the proxy sends it (unix-stream style, no cookie):
    the reply, or None when the relay refuses the connection or says nothing."""
    try:
        with socket.create_connection((LOCALHOST, port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=LOCALHOST) as conn:
            conn.sendall(command)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply or None
    except (ssl.SSLError, OSError):
        return None


def test_relay_control_over_mutual_tls_serves_only_valid_clients(setup: Setup) -> None:
    port = setup.relay.control
    good = setup.pki.issue("proxy-client", ips=[LOCALHOST])
    rogue = setup.rogue.issue("rogue-client", ips=[LOCALHOST])
    ok = client_context(setup.pki.ca_file, good.cert, good.key)
    assert _command(port, ok, b"V\n") == b"20040107\n"
    # No certificate, or one from another CA: no service, not even V.
    assert _command(port, client_context(setup.pki.ca_file), b"V\n") is None
    assert _command(port, client_context(setup.pki.ca_file, rogue.cert, rogue.key),
                    b"V\n") is None
    # A session command from a refused client creates nothing.
    sneaky = client_context(setup.pki.ca_file)
    assert _command(port, sneaky, b"U sneaky-call 127.0.0.1 4000 from-tag\n") is None
    shown = setup.relay.ctl("--json", "relay", "sessions")
    assert shown.returncode == 0 and shown.stdout.strip() == "[]", shown.stdout
    # The relay's own management reloads its certificate too.
    reloaded = setup.relay.ctl("tls", "reload")
    assert reloaded.returncode == 0 and "CN=relay" in reloaded.stdout, reloaded.stderr
    assert _command(port, ok, b"V\n") == b"20040107\n"


def test_relayed_call_through_a_relay_over_mutual_tls(sipp_bin: str, setup: Setup) -> None:
    relay = setup.relay
    proxy_cert = setup.pki.issue("proxy", ips=[LOCALHOST])
    uas_port, port = procs.free_port(), procs.free_port()
    tables = media_tables(PORTS)
    del tables["relay"]
    tables["tls"] = {"certificate": str(proxy_cert.cert), "private_key": str(proxy_cert.key),
                     "ca_list": str(setup.pki.ca_file)}
    (setup.tmp / "proxy").mkdir()
    cfg = procs.write_config(setup.tmp / "proxy" / "sipsuite.toml", port=port,
                             static={"bob": [f"sip:bob@{LOCALHOST}:{uas_port}"]}, tables=tables)
    proxy = procs.start_proxy(setup.tmp / "proxy", cfg, port, plugin="sip-proxy",
                              extra=["--relay", f"tls:{LOCALHOST}:{relay.control}"])
    try:
        def diagnostics() -> str:
            return (proxy.diagnostics() + "\n--- relay log:\n"
                    + relay.log.read_text(errors="replace")[-4000:])

        run_rtp_call(proxy.address, uas_port, PORTS, setup.tmp / "sipp", relay.ctl, diagnostics)
    finally:
        proxy.stop()
