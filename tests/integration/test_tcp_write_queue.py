"""[proxy] tcp_write_queue_max against a real ``twistd sipsuite``: a TCP client
that sends requests and never reads the answers is cut off once the answers
it has not taken pass the kernel's socket buffers and the cap, with a
warning naming it and a drop counted; the proxy goes on serving others.
Bounded: at most 2,000 requests of 8 kB, for at most 30 s."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import procs
import pytest
from endpoints import TcpEndpoint, options_ping
from procs import ProxyProcess, build_request, is_final

CAP = 65536
REQUESTS = 2000
# Copied into each answer (Call-ID), so each answer is as large: the
# kernel's buffers (about 2 MB on loopback with a 4 kB receive buffer) and
# the cap fill in a few hundred requests.
PADDING = "p" * 8000


@pytest.fixture
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    started: list[ProxyProcess] = []
    start = procs.proxy_starter(tmp_path_factory, started)
    yield start("writeq", extra_proxy={"tcp_write_queue_max": CAP})
    for p in started:
        p.stop()


def rpc_drops(proxy: ProxyProcess) -> dict[str, int]:
    body = json.dumps({"jsonrpc": "2.0", "method": "stats", "id": 1}).encode()
    request = urllib.request.Request(proxy.management_url, data=body,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5.0) as resp:
        result: Any = json.loads(resp.read())["result"]
    return dict(result["drops"])


def test_a_client_that_never_reads_is_cut_off(proxy: ProxyProcess) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5.0)
    sock.connect(proxy.address)
    local = sock.getsockname()
    uri = f"sip:{proxy.hostport}"
    sent = 0
    cut = False
    deadline = time.monotonic() + 30.0
    try:
        while sent < REQUESTS and time.monotonic() < deadline:
            sock.sendall(build_request(
                "OPTIONS", uri, sent_by=f"{local[0]}:{local[1]}", transport="TCP", to_uri=uri,
                call_id=f"{sent}-{PADDING}"))
            sent += 1
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        cut = True
    finally:
        sock.close()
    assert cut, f"{sent} requests of 8 kB sent, none read, and the connection still open"
    # The answers it never read: the kernel's buffers plus the cap, not all.
    assert sent < REQUESTS
    drops: dict[str, int] = {}
    while time.monotonic() < deadline + 5.0:
        drops = rpc_drops(proxy)
        if drops.get("transport.tcp_write_queue"):
            break
        time.sleep(0.1)
    assert drops.get("transport.tcp_write_queue") == 1, drops
    line = re.search(r"closing tcp connection with .*tcp_write_queue_max.*", proxy.log_text())
    assert line is not None and f"{local[0]}:{local[1]}" in line.group(0), proxy.log_text()[-2000:]
    # Everyone else is still served, over UDP and over a new TCP connection.
    got = options_ping(proxy.host, proxy.port, timeout=3.0)
    assert got is not None and got.status == 200
    with TcpEndpoint(proxy.address, timeout=3.0) as conn:
        conn.send(build_request("OPTIONS", uri, sent_by=conn.sent_by, transport="TCP",
                                to_uri=uri))
        answer = conn.recv_until(is_final, 3.0)
        assert answer is not None and answer.msg.status == 200
