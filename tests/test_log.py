"""sipsuite.log: one shared level, changeable at run time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from sipsuite import log


@pytest.fixture
def events() -> Iterator[list[dict]]:
    seen: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace", "").startswith("test."):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    before = log.get_level()
    yield seen
    globalLogPublisher.removeObserver(observer)
    log.set_level(before)


def test_level_filters_every_logger(events: list[dict]) -> None:
    a, b = log.get_logger("test.a"), log.get_logger("test.b")
    log.set_level("info")
    a.debug("hidden")
    a.info("shown {n}", n=1)
    b.warn("shown too")
    assert [e["log_format"] for e in events] == ["shown {n}", "shown too"]
    assert events[0]["log_namespace"] == "test.a" and events[0]["n"] == 1

    events.clear()
    log.set_level("debug")  # at run time, for loggers made before
    a.debug("now shown")
    assert [e["log_format"] for e in events] == ["now shown"]

    events.clear()
    log.set_level("error")
    b.warn("hidden")
    b.error("shown")
    b.critical("shown")
    assert [e["log_level"] for e in events] == [LogLevel.error, LogLevel.critical]


def test_shared_predicate_and_enabled() -> None:
    log.set_level("warn")
    try:
        assert log.PREDICATE.logLevelForNamespace("sipsuite.proxy.core") is LogLevel.warn
        assert log.get_level() == "warn"
        assert not log.enabled(LogLevel.info)
        assert log.enabled(LogLevel.warn) and log.enabled(LogLevel.error)
    finally:
        log.set_level("info")


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level 'trace'"):
        log.set_level("trace")
    assert log.get_level() == "info"


def test_config_levels_are_log_levels() -> None:
    from sipsuite.config import LogConfig

    choices = LogConfig.__dataclass_fields__["level"].metadata["validator"]
    for name in log.LEVELS:
        assert choices(name) == name
