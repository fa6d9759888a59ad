"""Fixtures for the integration tests (real proxy process, sipp, raw UDP peers).

The helpers live in the modules beside this file (common, sipmsg, endpoints,
proxyproc, sipp), gathered in ``procs.py``; this folder is put on sys.path here
so ``import procs`` works under any pytest import mode.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402


@pytest.fixture(scope="session")
def sipp_bin() -> str:
    """sipp's path. A missing sipp FAILS the tests that need it (never a skip)."""
    try:
        return procs.sipp_binary()
    except RuntimeError as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(autouse=True)
def no_sipp_left_behind() -> Iterator[None]:
    """A test that fails while its sipp runs (an assertion between start and
    wait) must not leave it holding ports and sending for the next test."""
    yield
    procs.kill_leftover_sipps()


@pytest.fixture(scope="module")
def proxy_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.ProxyFactory]:
    """proxy_starter's ``start``, every proxy stopped (SIGTERM, then SIGKILL)
    at the end of the module."""
    started: list[procs.ProxyProcess] = []
    start = procs.proxy_starter(tmp_path_factory, started)
    yield start
    for proxy in started:
        proxy.stop()
