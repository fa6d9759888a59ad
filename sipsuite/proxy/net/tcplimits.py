"""Admission of TCP/TLS connections: a global limit, a per-source limit and
descriptor headroom (Kamailio's tcp_max_connections, tcp_accept_iplimit and
its reserve of descriptors).

Without them, a few thousand idle connections from one address use up the
process's descriptors: accept() then fails for every new TCP client and for
the management interface, and the RTP relay beside the proxy cannot open a
media port. With them, a connection over a limit is closed as soon as it is
accepted; UDP, the management interface and the relay go on working.

Connections we open count against the global limit and the descriptors,
never against a source's limit (a next hop is not a flood).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sipsuite.fdlimit import nofile_limit, open_descriptors
from sipsuite.log import get_logger

__all__ = ["FD_HEADROOM", "ConnectionLimits"]

log = get_logger("sipsuite.proxy.transport")

#: Descriptors a new TCP/TLS connection must leave free: the management
#: interface's listener and requests, the relay's media ports (two or four a
#: call, in `twistd sipsuite`), Redis, DNS queries, log files.
FD_HEADROOM = 128

#: At most one warning a limit per this many seconds; the next one says how
#: many connections were refused meanwhile.
WARN_INTERVAL = 60.0

#: How long the count of open descriptors (a /proc listing) is reused; in
#: between, connections opened and closed since the count are added to it.
RECOUNT_INTERVAL = 0.5

_REASONS = {
    "tcp_max_per_source": "[proxy] tcp_max_per_source ({limit}) reached for {host}",
    "tcp_max_connections": "[proxy] tcp_max_connections ({limit}) reached",
    "tcp_descriptors": "fewer than {limit} file descriptors would stay free",
}


class ConnectionLimits:
    """The count of open TCP/TLS connections, in total and by source address,
    and the decision whether one more may be opened."""

    def __init__(self, max_connections: int = 2048, max_per_source: int = 64,
                 headroom: int = FD_HEADROOM,
                 descriptors: Callable[[], int | None] = open_descriptors,
                 fd_limit: Callable[[], int] = nofile_limit,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.headroom = headroom
        self._descriptors = descriptors
        self._fd_limit = fd_limit
        self.total = 0
        self.by_source: dict[str, int] = {}
        # Descriptors open at the last count, the connection total then, when.
        self._fds: int | None = None
        self._fds_total = 0
        self._fds_at = float("-inf")
        self._soft = 0
        # cause -> (when last warned, refusals since)
        self._warned: dict[str, tuple[float, int]] = {}

    # -- the decision -----------------------------------------------------------
    def refusal(self, host: str | None) -> str | None:
        """Why one more connection (from ``host``; None: one we open) may not
        be opened, as a drop cause, or None if it may."""
        if host is not None and self.by_source.get(host, 0) >= self.max_per_source:
            return "tcp_max_per_source"
        if self.total >= self.max_connections:
            return "tcp_max_connections"
        if not self._descriptors_left():
            return "tcp_descriptors"
        return None

    def _descriptors_left(self) -> bool:
        now = self.now()
        if now - self._fds_at >= RECOUNT_INTERVAL:
            self._fds = self._descriptors()
            self._fds_total = self.total
            self._fds_at = now
            self._soft = self._fd_limit()
        if self._fds is None or self._soft <= 0:
            return True  # no way to count them here: the other limits hold alone
        # The accepted socket may or may not be in the count: one spare either way.
        estimate = self._fds + (self.total - self._fds_total) + 1
        return estimate + self.headroom <= self._soft

    # -- bookkeeping --------------------------------------------------------------
    def opened(self, host: str | None) -> None:
        self.total += 1
        if host is not None:
            self.by_source[host] = self.by_source.get(host, 0) + 1

    def closed(self, host: str | None) -> None:
        self.total -= 1
        if host is not None:
            left = self.by_source.get(host, 0) - 1
            if left > 0:
                self.by_source[host] = left
            else:
                self.by_source.pop(host, None)

    def refused(self, cause: str, host: str | None) -> None:
        """Log the first refusal for a cause, then at most one a WARN_INTERVAL
        with the number refused since: a flood must not flood the log too."""
        now = self.now()
        last, count = self._warned.get(cause, (float("-inf"), 0))
        count += 1
        if now - last < WARN_INTERVAL:
            self._warned[cause] = (last, count)
            return
        self._warned[cause] = (now, 0)
        limit = {"tcp_max_per_source": self.max_per_source,
                 "tcp_max_connections": self.max_connections}.get(cause, self.headroom)
        reason = _REASONS[cause].format(limit=limit, host=host)
        if host is None:
            reason += ", for a connection to a next hop"
        elif cause != "tcp_max_per_source":
            reason += f", latest from {host}"
        log.warn("refusing TCP/TLS connections: {r} ({n} refused since the last such warning,"
                 " {t} open)", r=reason, n=count, t=self.total)
