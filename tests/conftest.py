"""Shared fixtures.

pytest-twisted installs the reactor (``--reactor=default`` in setup.cfg) and runs
it in a greenlet; ``@pytest_twisted.inlineCallbacks`` / ``ensureDeferred`` tests
wait on it.  It has no fixture handing the reactor out, hence ``reactor`` here.
Unit tests of timers should use ``twisted.internet.task.Clock`` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/ on sys.path, so `import redisproc` works under any pytest import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redisproc  # noqa: E402


@pytest.fixture
def reactor() -> Iterator[object]:
    """The running global reactor (installed by pytest-twisted)."""
    from twisted.internet import reactor as installed

    yield installed


# ---------------------------------------------------------------------------
# Redis: a real redis-server on a loopback port chosen at run time (tests/redisproc.py).


def _redis_server(**kwargs: object) -> redisproc.RedisServer:
    """A started RedisServer; a missing redis-server FAILS the test (never a skip)."""
    try:
        server = redisproc.RedisServer(**kwargs)  # type: ignore[arg-type]
    except redisproc.RedisServerMissing as e:
        pytest.fail(str(e), pytrace=False)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[redisproc.RedisServer]:
    """One redis-server for the session. Tests must leave it running: they use
    their own DB numbers (or flush them), and stop only servers of their own."""
    server = _redis_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., redisproc.RedisServer]]:
    """Starts redis-servers a test may stop, kill, pause and restart
    (``make_redis_server(appendonly=True)``); all closed after the test."""
    servers: list[redisproc.RedisServer] = []

    def make(**kwargs: object) -> redisproc.RedisServer:
        server = _redis_server(**kwargs)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def events() -> Iterator[list[dict[str, object]]]:
    """Every twisted.logger event emitted while the test runs."""
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, object]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)
