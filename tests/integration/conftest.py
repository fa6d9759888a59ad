"""Fixtures for the integration tests (real proxy process, sipp, raw UDP peers).

The helpers live in the modules beside this file (common, sipmsg, endpoints,
proxyproc, sipp), gathered in ``procs.py``; this folder is put on sys.path here
so ``import procs`` works under any pytest import mode.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """``start(name, port=..., listen=[...], **write_config kwargs)`` -> a running ProxyProcess,
    stopped (SIGTERM, then SIGKILL) at the end of the module. A proxy that does
    not come up fails the test with its log."""
    started: list[procs.ProxyProcess] = []

    def start(
        name: str, *, port: int | None = None, listen: list[str] | None = None, **config: Any
    ) -> procs.ProxyProcess:
        workdir = tmp_path_factory.mktemp(name)
        port = port or procs.free_port()
        cfg = procs.write_config(workdir / "sipsuite.toml", port=port, listen=listen, **config)
        try:
            proxy = procs.start_proxy(workdir, cfg, port, listen=listen)
        except procs.ProxyStartError as e:
            problem = str(e)
        else:
            started.append(proxy)
            return proxy
        pytest.fail(problem, pytrace=False)

    yield start
    for proxy in started:
        proxy.stop()
