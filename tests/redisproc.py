"""A real ``redis-server`` for tests, on a loopback port chosen at run time.

Never the system Redis on 6379: each :class:`RedisServer` runs its own
process, bound to 127.0.0.1, with RDB snapshots off (``--save ''``) and,
when asked, an append-only file in its own directory so that a restart on
the same port and directory finds the data again.

A missing binary raises :class:`RedisServerMissing`; the fixtures turn it
into a test failure, never a skip, so a CI box without Redis cannot pass the
Redis store tests by not running them.

:meth:`RedisServer.call` is a tiny blocking RESP client for looking at what
the code under test wrote, independent of txredisapi.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"


class RedisServerMissing(RuntimeError):
    """No redis-server binary to run."""


class RedisServerError(RuntimeError):
    """redis-server did not start (or not in time)."""


def redis_server_binary() -> str:
    """$REDIS_SERVER, else redis-server on $PATH."""
    path = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not path or not os.access(path, os.X_OK):
        raise RedisServerMissing(
            "redis-server not found (set $REDIS_SERVER or put it on $PATH, e.g. "
            "`apt-get install redis-server`): the Redis store tests need a real server"
        )
    return path


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def _encode(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8", "surrogateescape")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def reply(self) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis-server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected RESP line {line!r}")


class RedisServer:
    """One redis-server process; ``start()`` it, ``stop()``/``kill()`` it,
    ``start()`` it again on the same port and directory."""

    def __init__(
        self, *, appendonly: bool = False, directory: Path | None = None, port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = redis_server_binary()
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="sipsuite-redis-")) if directory is None else directory
        self.port = port  # None: chosen at the first start; kept for restarts
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    def _command(self, port: int) -> list[str]:
        cmd = [
            self.binary,
            "--bind", LOCALHOST,
            "--port", str(port),
            "--save", "",
            "--dir", str(self.dir),
            "--logfile", str(self.log_file),
            "--daemonize", "no",
            "--databases", "16",
            "--appendonly", "yes" if self.appendonly else "no",
        ]
        if self.appendonly:
            # Every write on disk before its reply: a kill -9 loses nothing either.
            cmd += ["--appendfsync", "always"]
        return cmd + self.extra_args

    def start(self, timeout: float = 10.0) -> None:
        """Start on the port of the previous start, or a free one at the first."""
        if self.proc is not None:
            raise RedisServerError("redis-server already running")
        # A free port may be taken between choosing and binding it: try a few.
        for _ in range(1 if self.port is not None else 5):
            port = self.port if self.port is not None else free_port()
            self.proc = subprocess.Popen(
                self._command(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready(port, timeout):
                self.port = port
                return
            self._reap()
        raise RedisServerError(f"redis-server did not start; see {self.log_file}:\n{self._log_tail()}")

    def _wait_ready(self, port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if self._call(port, 0, "PING") == "PONG":
                    return True
            except (OSError, RuntimeError):
                pass  # not listening yet, or still loading its append-only file
            time.sleep(0.01)
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM: Redis flushes its append-only file)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, like a crashed host: clients see their connection reset."""
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the directory (if this object made it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a stopped process does not act on SIGTERM
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def call(self, *args: Any, db: int = 0) -> Any:
        """Run one command in ``db`` and return its reply (bulk strings as bytes)."""
        if self.port is None or self.proc is None:
            raise RedisServerError("redis-server not running")
        return self._call(self.port, db, *args)

    @staticmethod
    def _call(port: int, db: int, *args: Any) -> Any:
        with socket.create_connection((LOCALHOST, port), timeout=5) as sock:
            reader = _Reader(sock)
            try:
                if db:
                    sock.sendall(_encode("SELECT", db))
                    reader.reply()
                sock.sendall(_encode(*args))
                return reader.reply()
            finally:
                reader.file.close()
