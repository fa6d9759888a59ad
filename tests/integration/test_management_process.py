"""Bad bodies against the management interface of a real ``twistd sipsuite``:
each gets its JSON-RPC error at once (a body that never arrives, within the
read timeout), nothing is logged as a crash, and the server still serves.

Raw sockets, so the tests control exactly what is sent and when; every
connection has a timeout, and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import procs
import pytest
from procs import ProxyFactory

from sipsuite.ops.http import MAX_BATCH, MAX_BODY, MAX_DEPTH, READ_TIMEOUT

# A wait long enough for any answer the server gives "at once" on a loaded
# box, and still well under READ_TIMEOUT, so an answer within it did not come
# from the timeout (nor, as before the fix, from twisted.web's 60 s one).
PROMPT = READ_TIMEOUT * 0.6


@pytest.fixture(scope="module")
def proxy(proxy_factory: ProxyFactory) -> Iterator[procs.ProxyProcess]:
    proxy = proxy_factory("management")
    yield proxy
    log = proxy.log_text()
    # Bad input is the caller's error, never a crash of the server.
    for sign in ("Traceback", "Unhandled", "RecursionError", "critical"):
        assert sign not in log, f"{sign!r} in the proxy log\n" + proxy.diagnostics()


def _address(proxy: procs.ProxyProcess) -> tuple[str, int]:
    parts = urlsplit(proxy.management_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def exchange(proxy: procs.ProxyProcess, request: bytes,
             wait: float = 30.0) -> tuple[int, dict[str, str], bytes, float]:
    """Send ``request`` as it is and read the answer to the server's close:
    (status, headers, body, seconds from sending to the end of the answer)."""
    with socket.create_connection(_address(proxy), timeout=wait) as sock:
        started = time.monotonic()
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        elapsed = time.monotonic() - started
    raw = b"".join(chunks)
    header_block, _, data = raw.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        data = _dechunk(data)
    return status, headers, data, elapsed


def _dechunk(data: bytes) -> bytes:
    body = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(body)
        body.append(data[:size])
        data = data[size + 2:]


def post(proxy: procs.ProxyProcess, body: bytes, *extra: bytes) -> tuple[int, Any, float]:
    """POST ``body`` with its Content-Length; (status, decoded reply, seconds)."""
    head = b"\r\n".join([b"POST / HTTP/1.1", b"Host: management", b"Connection: close",
                         b"Content-Type: application/json",
                         b"Content-Length: %d" % len(body), *extra])
    status, headers, data, elapsed = exchange(proxy, head + b"\r\n\r\n" + body)
    assert headers.get("content-type") == "application/json", (status, headers, data)
    return status, json.loads(data), elapsed


def call_works(proxy: procs.ProxyProcess) -> None:
    request = {"jsonrpc": "2.0", "method": "system.listMethods", "id": 42}
    status, reply, _ = post(proxy, json.dumps(request).encode())
    assert status == 200 and reply["id"] == 42 and "ul.show" in reply["result"], reply
    assert proxy.alive()


def test_deep_nesting_is_a_prompt_parse_error(proxy: procs.ProxyProcess) -> None:
    for body in (b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000):
        status, reply, elapsed = post(proxy, body)
        assert status == 200 and reply["error"]["code"] == -32700, reply
        assert f"nested over {MAX_DEPTH} deep" in reply["error"]["message"]
        assert elapsed < PROMPT, elapsed
    call_works(proxy)


def test_huge_content_length_is_refused_before_any_body(proxy: procs.ProxyProcess) -> None:
    head = (b"POST / HTTP/1.1\r\nHost: management\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000")
    status, headers, data, elapsed = exchange(proxy, head + b"\r\n\r\n")
    assert status == 413 and headers["connection"] == "close", (status, headers)
    reply = json.loads(data)
    assert reply["error"]["code"] == -32600 and reply["id"] is None
    assert f"limit of {MAX_BODY}" in reply["error"]["message"]
    assert elapsed < PROMPT, elapsed
    # Asked for "100 Continue": the final answer comes instead of it.
    status, _, data, elapsed = exchange(proxy, head + b"\r\nExpect: 100-continue\r\n\r\n")
    assert status == 413 and b"100 Continue" not in data and elapsed < PROMPT
    # A chunked body is refused as soon as it passes the limit: this one never
    # ends (no last chunk), so waiting for its end would be a 408 after READ_TIMEOUT.
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * (64 * 1024))
    head = (b"POST / HTTP/1.1\r\nHost: management\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked")
    body = chunk * (MAX_BODY // (64 * 1024) + 1)
    status, _, data, elapsed = exchange(proxy, head + b"\r\n\r\n" + body)
    assert status == 413 and json.loads(data)["error"]["code"] == -32600, data
    assert elapsed < PROMPT, elapsed
    call_works(proxy)


def test_a_body_that_never_arrives_times_out(proxy: procs.ProxyProcess) -> None:
    head = (b"POST / HTTP/1.1\r\nHost: management\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100")
    status, _, data, elapsed = exchange(proxy, head + b'\r\n\r\n{"jsonrpc": "2.0", ')
    assert status == 408, data
    reply = json.loads(data)
    assert reply["error"]["code"] == -32600 and "within" in reply["error"]["message"]
    # The read timeout, not the 60 s idle timeout of twisted.web.
    assert READ_TIMEOUT * 0.8 < elapsed < READ_TIMEOUT * 3, elapsed
    # Headers that never end time out the same way.
    status, _, data, elapsed = exchange(proxy, b"POST / HTTP/1.1\r\nHost: management\r\n")
    assert status == 408 and json.loads(data)["error"]["code"] == -32600
    assert elapsed < READ_TIMEOUT * 3, elapsed
    call_works(proxy)


@pytest.mark.parametrize(("body", "code"), [
    (b'{"jsonrpc": "2.0", "method": "system.listMethods", "id": "\xff\xfe"}', -32700),
    ('{"jsonrpc": "2.0", "method": "system.listMethods", "id": 1}'.encode("utf-16"), -32700),
    (b"", -32700),
    (b"\x00" * 1000, -32700),
    (b'{"jsonrpc": "2.0", "method": "system.listMethods", "id": 1', -32700),
    (b"1" * 10_000, -32700),  # past Python's int conversion limit: still a parse error
    (b"1", -32600),
    (b'"system.listMethods"', -32600),
    (b"null", -32600),
    (b"true", -32600),
    (b"[]", -32600),
    (b'{"jsonrpc": "2.0", "method": "system.listMethods", "id": {"a": 1}}', -32600),
    (json.dumps([{}] * (MAX_BATCH + 1)).encode(), -32600),
])
def test_bad_bodies_get_their_json_rpc_error(proxy: procs.ProxyProcess, body: bytes,
                                             code: int) -> None:
    status, reply, elapsed = post(proxy, body)
    assert status == 200 and reply["error"]["code"] == code and reply["id"] is None, reply
    assert elapsed < PROMPT, elapsed
    call_works(proxy)


def test_a_batch_of_garbage_gets_one_error_each(proxy: procs.ProxyProcess) -> None:
    garbage = [1, "x", None, [], {}, {"jsonrpc": "2.0"}, {"jsonrpc": "2.0", "method": 5, "id": 3},
               {"jsonrpc": "2.0", "method": "no.such", "id": 4}]
    status, reply, _ = post(proxy, json.dumps(garbage).encode())
    assert status == 200 and isinstance(reply, list), reply
    assert [(r["error"]["code"], r["id"]) for r in reply] == [
        (-32600, None)] * 6 + [(-32600, 3), (-32601, 4)]
    call_works(proxy)
