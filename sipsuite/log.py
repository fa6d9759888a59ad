"""Logging for sipsuite: twisted.logger with one level shared by every logger.

    from sipsuite.log import get_logger
    log = get_logger(__name__)
    log.info("forwarding {method} to {target}", method=..., target=...)

``set_level("debug")`` changes the level of every sipsuite logger at run time
(start-up sets it from ``[log] level``).  Events below the level are dropped
in :meth:`Logger.emit` before an event dict is built, so a filtered-out
``log.debug(...)`` costs one dict lookup; on a hot path guard expensive
arguments with :func:`enabled`.  The events that pass go to
``globalLogPublisher`` through a FilteringLogObserver with the shared
:data:`PREDICATE`, and twistd prints them wherever its log goes.
Twisted's own loggers are not filtered by this level.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

__all__ = ["LEVELS", "PREDICATE", "enabled", "get_logger", "get_level", "relay_worker_line", "set_level"]

#: The names [log] level accepts, lowest first, and their twisted levels.
LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

_PRIORITY: dict[LogLevel, int] = {level: i for i, level in enumerate(LogLevel.iterconstants())}

#: The one predicate every sipsuite logger's events pass through.
PREDICATE = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_OBSERVER = FilteringLogObserver(globalLogPublisher, [PREDICATE])
_threshold = _PRIORITY[LogLevel.info]


class SipsuiteLogger(Logger):
    """A Logger that drops events below the shared level before building them."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _PRIORITY.get(level, _threshold) < _threshold:
            return
        super().emit(level, format, **kwargs)


def get_logger(namespace: str) -> Logger:
    """A logger for *namespace* (use ``__name__``) honouring the shared level."""
    return SipsuiteLogger(namespace=namespace, observer=_OBSERVER)


def set_level(name: str) -> None:
    """Set the level of every sipsuite logger: 'debug', 'info', 'warn' or 'error'."""
    global _threshold
    try:
        level = LEVELS[name]
    except KeyError:
        raise ValueError(
            f"unknown log level {name!r}; expected one of {', '.join(LEVELS)}"
        ) from None
    PREDICATE.defaultLogLevel = level
    PREDICATE.setLogLevelForNamespace("", level)  # the level every namespace falls back to
    _threshold = _PRIORITY[level]


def get_level() -> str:
    """The current level's name."""
    return PREDICATE.logLevelForNamespace("").name


def enabled(level: LogLevel) -> bool:
    """Whether an event at *level* would be logged (guard costly log arguments)."""
    return _PRIORITY[level] >= _threshold


def relay_worker_line(line: bytes, worker: int) -> None:
    """Log one event a worker process wrote as JSON (sipsuite.proxy.worker)
    in this, the supervisor's, log, its text prefixed ``worker N: ``.

    The worker filtered it by its own level already (``debug`` may raise
    one worker's), so it goes to the global publisher unfiltered; its own
    time, namespace and level are kept."""
    from twisted.logger import eventFromJSON

    text = line.strip(b"\x1e\r\n \t").decode("utf-8", "replace")
    if not text:
        return
    try:
        event = eventFromJSON(text)
    except ValueError:
        event = None
    if not isinstance(event, dict):  # not a log event: a line some library printed
        event = {"log_format": "{line}", "line": text, "log_level": LogLevel.info,
                 "log_namespace": "sipsuite.worker"}
    fmt = event.get("log_format")
    event["log_worker"] = worker
    # Literal text before the format needs no field: flattened events
    # (JSON keeps only those) still format.
    event["log_format"] = f"worker {worker}: " + (fmt if fmt is not None else "")
    if "log_time" not in event:
        import time

        event["log_time"] = time.time()
    globalLogPublisher(event)
