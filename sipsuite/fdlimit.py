"""File descriptors: the soft RLIMIT_NOFILE raised to the hard limit at start,
and a count of the descriptors open, for the TCP limits' headroom check.

systemd (and most shells) give a service a soft limit of 1024 and a far
higher hard one (524288): the soft one is there for programs that still use
select(), which Twisted's epoll reactor does not. Every TCP/TLS connection,
relay media port and management request takes a descriptor, so each service
raises its own soft limit to the hard one before it opens anything, as
Kamailio does with its open_files_limit.
"""

from __future__ import annotations

import os

from sipsuite.log import get_logger

__all__ = ["nofile_limit", "open_descriptors", "raise_nofile_limit"]

log = get_logger("sipsuite.fdlimit")

# Linux refuses an unlimited RLIMIT_NOFILE; fs.nr_open is the ceiling (this is its default).
_NR_OPEN = 1 << 20


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE: a descriptor numbered this or higher cannot be
    opened (0 where the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _NR_OPEN if soft == resource.RLIM_INFINITY else soft


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit afterwards."""
    try:
        import resource
    except ImportError:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = _NR_OPEN
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warn("could not raise the open-files limit from {s} to {t}: {e}",
                     s=soft, t=target, e=exc)
            return soft
        log.info("open-files limit raised from {s} to {t}", s=soft, t=target)
        return target
    return nofile_limit()


def open_descriptors() -> int | None:
    """How many descriptors this process has open (None where that cannot be
    read). Lists /proc/self/fd: about a millisecond for thousands, so callers
    cache it."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            # The listing's own directory descriptor is in it.
            return len(os.listdir(where)) - 1
        except OSError:
            continue
    return None
