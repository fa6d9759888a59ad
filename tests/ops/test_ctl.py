"""sipsuite-ctl, the real console script, against a real management server process.

The server is a child Python process (memory stores, port 0) that prints its
port; every test runs ``sipsuite-ctl`` as a subprocess against it and looks at
the exit status, stdout and stderr, as a user would.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from sipsuite.ops.ctl.cli import DEFAULT_URL, normalise_url, parse_rpc_params
from sipsuite.ops.ctl.output import table

SERVER = textwrap.dedent("""
    import sys
    from twisted.internet import reactor
    from sipsuite.ops.server import ManagementService, RpcRegistry
    from sipsuite.ops.users import register_store_methods
    from sipsuite.proxy.registrar.location import MemoryLocationStore, MemorySubscriberStore

    registry = RpcRegistry()
    register_store_methods(registry, MemoryLocationStore(), MemorySubscriberStore(), "example.com")
    registry.register("test.echo", lambda *args, **kwargs: {"args": list(args), "kwargs": kwargs})
    service = ManagementService("tcp:127.0.0.1:0", registry, reactor)
    service.startService()
    print(service.port, flush=True)
    # Stop when the test process closes our stdin (or dies): no orphan servers.
    reactor.callInThread(lambda: (sys.stdin.read(), reactor.callFromThread(reactor.stop)))
    reactor.run()
""")


def ctl_command() -> list[str]:
    """The installed console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("sipsuite-ctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sipsuite.ops.ctl.cli"]


class Result(NamedTuple):
    rc: int
    out: str
    err: str


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {proc.communicate()[1]}")
        yield f"http://127.0.0.1:{int(line)}/"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(*args: str, url: str | None = None, env: dict[str, str] | None = None) -> Result:
    command = ctl_command() + (["--url", url] if url else []) + list(args)
    environ = {k: v for k, v in os.environ.items() if k != "SIPSUITE_CTL_URL"}
    environ.update(env or {})
    done = subprocess.run(command, capture_output=True, text=True, timeout=20, env=environ)
    return Result(done.returncode, done.stdout, done.stderr)


def ok(*args: str, url: str) -> str:
    result = run(*args, url=url)
    assert (result.rc, result.err) == (0, ""), result
    return result.out


def fails(*args: str, url: str | None) -> str:
    """Runs a command that must fail with one line on stderr (exit 1); that line."""
    result = run(*args, url=url)
    assert result.rc == 1, result
    assert result.out == ""
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    return result.err.rstrip("\n")


# --------------------------------------------------------------------------- user


def test_user_commands(server_url: str) -> None:
    u = server_url
    assert ok("user", "add", "alice", "secret", url=u) == "added user alice\n"
    assert ok("user", "add", "bob", "pw", url=u) == "added user bob\n"
    assert fails("user", "add", "alice", "x", url=u) == "sipsuite-ctl: error -32001: user exists"
    assert ok("user", "list", url=u).splitlines() == [
        "USER   REALM        ALGORITHMS",
        "alice  example.com  MD5,SHA-256",
        "bob    example.com  MD5,SHA-256",
    ]
    listed = json.loads(ok("--json", "user", "list", url=u))
    assert {"user": "alice", "realm": "example.com", "algorithms": ["MD5", "SHA-256"]} in listed
    assert ok("user", "passwd", "alice", "new", url=u) == "changed password of user alice\n"
    assert fails("user", "passwd", "nobody", "x", url=u) == \
        "sipsuite-ctl: error -32002: no such user"
    assert ok("user", "rm", "bob", url=u) == "removed user bob\n"
    assert fails("user", "rm", "bob", url=u) == "sipsuite-ctl: error -32002: no such user"
    assert fails("user", "add", "bad name", "x", url=u).startswith("sipsuite-ctl: error -32602: ")
    ok("user", "rm", "alice", url=u)
    assert ok("user", "list", url=u) == "no users\n"


# --------------------------------------------------------------------------- ul


def test_ul_commands(server_url: str) -> None:
    u = server_url
    assert ok("ul", "show", "carol", url=u) == "no bindings\n"
    assert ok("ul", "add", "carol", "sip:carol@192.0.2.1:5060", url=u) == \
        "added binding sip:carol@192.0.2.1:5060 of carol (permanent)\n"
    assert ok("ul", "add", "sip:carol@example.com", "sip:carol@192.0.2.2", "3600", url=u) == \
        "added binding sip:carol@192.0.2.2 of carol (expires in 3600 s)\n"
    assert ok("ul", "add", "carol@x", "sip:carol@192.0.2.2", "60", url=u).startswith(
        "replaced binding")

    lines = ok("ul", "show", "carol", url=u).splitlines()
    assert lines[0].split() == ["AOR", "CONTACT", "EXPIRES", "Q", "RECEIVED", "USER-AGENT"]
    assert lines[1].split() == ["carol", "sip:carol@192.0.2.1:5060", "permanent", "1.0", "-", "-"]
    assert re.fullmatch(r"carol +sip:carol@192\.0\.2\.2 +(60|59) +1\.0 +- +-", lines[2])
    # Aligned: every column starts at the same offset on every line.
    assert len({line.index(" sip:") for line in lines[1:]}) == 1
    assert lines[0].index("CONTACT") == lines[1].index("sip:")

    shown = json.loads(ok("--json", "ul", "show", "carol", url=u))
    assert shown[0]["aor"] == "carol"
    assert [b["contact"] for b in shown[0]["bindings"]] == [
        "sip:carol@192.0.2.1:5060", "sip:carol@192.0.2.2"]
    assert shown[0]["bindings"][0]["expires"] is None

    assert "carol" in ok("ul", "show", url=u)
    assert ok("ul", "rm", "carol", "sip:carol@192.0.2.2", url=u) == "removed 1 binding of carol\n"
    ok("ul", "add", "carol", "sip:carol@192.0.2.3", url=u)
    assert ok("ul", "rm", "carol", url=u) == "removed 2 bindings of carol\n"
    assert ok("ul", "show", "carol", url=u) == "no bindings\n"
    assert json.loads(ok("--json", "ul", "show", "carol", url=u)) == []

    assert fails("ul", "add", "carol", "not-a-uri", url=u).startswith(
        "sipsuite-ctl: error -32602: bad contact")


# --------------------------------------------------------------------------- rpc


def test_rpc_params_forms(server_url: str) -> None:
    u = server_url

    def echo(*params: str) -> dict[str, object]:
        return json.loads(ok("rpc", "test.echo", *params, url=u))

    assert echo() == {"args": [], "kwargs": {}}
    assert echo('{"a": 1, "b": [2]}') == {"args": [], "kwargs": {"a": 1, "b": [2]}}
    assert echo('[1, "x", null]') == {"args": [1, "x", None], "kwargs": {}}
    assert echo("a=1", "b=sip:x@y;transport=tcp", 'c="1"', "d=") == {
        "args": [], "kwargs": {"a": 1, "b": "sip:x@y;transport=tcp", "c": "1", "d": ""}}
    assert echo("alice", "60", "true", "sip:a@b;lr") == {
        "args": ["alice", 60, True, "sip:a@b;lr"], "kwargs": {}}

    methods = json.loads(ok("rpc", "system.listMethods", url=u))
    assert "ul.show" in methods and "user.add" in methods
    assert "expires" in ok("rpc", "system.methodHelp", "ul.add", url=u)
    assert json.loads(ok("--json", "rpc", "test.echo", "[1]", url=u)) == {
        "args": [1], "kwargs": {}}

    ok("rpc", "ul.add", "aor=dave", "contact=sip:dave@h", "expires=30", url=u)
    assert json.loads(ok("rpc", "ul.rm", "dave", url=u)) == {"removed": 1}

    assert fails("rpc", "no.such", url=u).startswith("sipsuite-ctl: error -32601: ")
    assert fails("rpc", "ul.rm", '{"aor": "x", "z": 1}', url=u).startswith(
        "sipsuite-ctl: error -32602: ")


def test_rpc_params_parsing() -> None:
    assert parse_rpc_params([]) is None
    assert parse_rpc_params(['{"a": 1}']) == {"a": 1}
    assert parse_rpc_params([" [1]"]) == [1]
    assert parse_rpc_params(["k=v", "n=2", "j={\"x\":1}"]) == {"k": "v", "n": 2, "j": {"x": 1}}
    assert parse_rpc_params(["a", "2"]) == ["a", 2]
    for bad in (["{bad json"], ["a=1", "b"]):
        with pytest.raises(ValueError):
            parse_rpc_params(bad)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args", [
    (),
    ("nosuch",),
    ("user",),
    ("user", "add", "alice"),
    ("user", "rm"),
    ("user", "list", "extra"),
    ("ul", "add", "a", "sip:a@b", "soon"),
    ("ul", "add", "a", "sip:a@b", "0"),
    ("rpc",),
    ("rpc", "m", "a=1", "b"),
    ("rpc", "m", "{not json"),
    ("--timeout", "0", "user", "list"),
    ("--url", "ftp://h/", "user", "list"),
])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run(*args, url=None, env={"SIPSUITE_CTL_URL": f"http://127.0.0.1:{free_port()}/"})
    assert result.rc == 2, result
    assert result.out == ""
    assert "usage: sipsuite-ctl" in result.err and "Traceback" not in result.err


def test_unreachable_server_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    assert fails("user", "list", url=url) == f"sipsuite-ctl: cannot reach {url}: Connection refused"


def test_unknown_host_is_one_line() -> None:
    line = fails("ul", "show", url="http://no-such-host.invalid:7060/")
    assert line.startswith("sipsuite-ctl: cannot reach http://no-such-host.invalid:7060/: ")


def test_timeout_is_one_line() -> None:
    # Listens (the kernel completes the handshake) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        assert fails("--timeout", "0.3", "user", "list", url=url) == \
            f"sipsuite-ctl: cannot reach {url}: timed out"


class _NotRpc(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/html":
            self.send_response(200)
            body = b"<html>hello</html>\n"
        elif self.path == "/json-error":  # an HTTP error carrying a JSON-RPC error
            self.send_response(413)
            body = b'{"jsonrpc": "2.0", "error": {"code": -32600, "message": "too big"}, "id": null}'
        else:
            self.send_response(404)
            body = b"<html>not found</html>\n"
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_rpc_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotRpc)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_not_json_rpc_replies_are_one_line(not_rpc_url: str) -> None:
    line = fails("user", "list", url=not_rpc_url + "/html")
    assert line.startswith(f"sipsuite-ctl: {not_rpc_url}/html: not a JSON-RPC reply")
    line = fails("user", "list", url=not_rpc_url + "/missing")
    assert line == f"sipsuite-ctl: {not_rpc_url}/missing: HTTP 404 Not Found"
    line = fails("user", "list", url=not_rpc_url + "/json-error")
    assert line == "sipsuite-ctl: error -32600: too big"


# --------------------------------------------------------------------------- URL


def test_url_forms(server_url: str) -> None:
    without_path = server_url.rstrip("/")
    ok("user", "list", url=without_path)
    assert run("rpc", "system.listMethods", url=without_path.removeprefix("http://")).rc == 0
    assert run("rpc", "system.listMethods", url=server_url + "RPC").rc == 0
    from_env = run("rpc", "system.listMethods", env={"SIPSUITE_CTL_URL": without_path})
    assert from_env.rc == 0 and "ul.show" in from_env.out
    # --url wins over the environment.
    assert run("rpc", "system.listMethods", url=server_url,
               env={"SIPSUITE_CTL_URL": f"http://127.0.0.1:{free_port()}/"}).rc == 0


def test_global_options_after_the_command(server_url: str) -> None:
    """--json, --url and --timeout work after the command words as before them."""
    ok("user", "add", "dave", "pw", url=server_url)
    try:
        after = run("user", "list", "--json", "--url", server_url, "--timeout", "3")
        assert (after.rc, after.err) == (0, ""), after
        assert json.loads(after.out) == json.loads(ok("--json", "user", "list", url=server_url))
        ul = run("ul", "show", "dave", "--json", url=server_url)
        assert (ul.rc, json.loads(ul.out)) == (0, []), ul
        # Given before the command and not after it, the value before it stays.
        assert json.loads(ok("--json", "user", "list", url=server_url))[0]["user"] == "dave"
    finally:
        ok("user", "rm", "dave", url=server_url)


def test_relay_commands_with_a_chosen_url_stay_there(server_url: str) -> None:
    """Only without --url (or SIPSUITE_CTL_URL) does `relay ...` look further:
    a server chosen by hand that has no relay is the answer."""
    err = fails("relay", "stats", url=server_url)
    assert err.startswith("sipsuite-ctl: error -32601: ") and "7061" not in err


def test_normalise_url_and_default() -> None:
    assert DEFAULT_URL == "http://127.0.0.1:7060/"
    assert normalise_url("http://127.0.0.1:7060") == "http://127.0.0.1:7060/"
    assert normalise_url("http://[::1]:7060/RPC") == "http://[::1]:7060/RPC"
    assert normalise_url("127.0.0.1:7060") == "http://127.0.0.1:7060/"
    with pytest.raises(ValueError):
        normalise_url("ftp://host/")


def test_table_alignment() -> None:
    assert table(("A", "BB"), [("xxx", None), ("y", "z")]).splitlines() == [
        "A    BB", "xxx  -", "y    z"]
