"""Start-up failures: one line naming the problem, and exit status 2.

Every part of the wiring that can find the service unable to start (a
port taken, a TLS file missing, a routing class that does not load, a
dispatcher list with a bad line) raises :class:`StartupError`.  The twistd
plugin (twisted/plugins/sipsuite_plugins.py) builds the services and binds
their sockets in ``makeService``, before twistd forks into a daemon and
writes its pid file, and turns a StartupError into ``TAPNAME: reason`` on
stderr and exit status 2.  A SystemExit raised any later (in
``startService``) would kill a daemon without telling the launcher, which
then waits forever: so nothing below raises SystemExit.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["StartupError", "cannot_listen", "check_pidfile", "show_address"]


class StartupError(Exception):
    """The service cannot start; ``str()`` is one line for the operator."""


def show_address(transport: str, host: str, port: int) -> str:
    """``udp 0.0.0.0:5060``, ``tcp [::1]:7060``: a socket as the errors name it."""
    shown = f"[{host}]" if ":" in host else (host or "*")
    return f"{transport} {shown}:{port}"


def cannot_listen(what: str, exc: BaseException) -> StartupError:
    """The StartupError for a socket that could not be bound.  ``what``
    names it (``udp 0.0.0.0:5060``, ``relay control unix /run/r.sock``);
    ``exc`` is Twisted's CannotListenError or an OSError."""
    reason: Any = getattr(exc, "socketError", None) or exc
    text = getattr(reason, "strerror", None) or str(reason)
    return StartupError(f"cannot listen on {what}: {text}")


def check_pidfile(pidfile: str | None, rundir: str = ".") -> None:
    """Raise StartupError when twistd would fail to write ``pidfile``.

    twistd writes it after forking, in ``rundir``; a failure there is a
    traceback (and, daemonised, a launcher that never returns), so the
    plugin checks beforehand.  An empty name (``--pidfile=``) means none."""
    if not pidfile:
        return
    path = pidfile if os.path.isabs(pidfile) else os.path.join(rundir, pidfile)
    directory = os.path.dirname(path) or "."
    if os.path.exists(path):
        writable = os.access(path, os.W_OK)
    else:
        writable = os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)
    if not writable:
        reason = "no such directory" if not os.path.isdir(directory) else "permission denied"
        raise StartupError(
            f"cannot write pid file {os.path.abspath(path)}: {reason}"
            " (--pidfile=PATH for another, --pidfile= for none)")
