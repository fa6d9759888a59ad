"""Shared fixtures.

pytest-twisted installs the reactor (``--reactor=default`` in setup.cfg) and runs
it in a greenlet; ``@pytest_twisted.inlineCallbacks`` / ``ensureDeferred`` tests
wait on it.  It has no fixture handing the reactor out, hence ``reactor`` here.
Unit tests of timers should use ``twisted.internet.task.Clock`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def reactor() -> Iterator[object]:
    """The running global reactor (installed by pytest-twisted)."""
    from twisted.internet import reactor as installed

    yield installed
