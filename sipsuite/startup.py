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

from twisted.application import service

from sipsuite.hosts import host_port

__all__ = ["BindsEarly", "StartupError", "cannot_listen", "check_twistd_files", "check_writable", "show_address"]


class StartupError(Exception):
    """The service cannot start; ``str()`` is one line for the operator."""


class BindsEarly(service.Service):
    """A service that binds its sockets in ``_bind`` (once: it must return at
    once when already bound), called from ``privilegedStartService``, which
    the plugin runs before twistd daemonises, and again from ``startService``
    for a service built and started without twistd."""

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        self._bind()
        super().startService()

    def _bind(self) -> None:
        raise NotImplementedError


def show_address(transport: str, host: str, port: int) -> str:
    """``udp 0.0.0.0:5060``, ``tcp [::1]:7060``: a socket as the errors name it."""
    return f"{transport} {host_port(host or '*', port)}"


def cannot_listen(what: str, exc: BaseException) -> StartupError:
    """The StartupError for a socket that could not be bound.  ``what``
    names it (``udp 0.0.0.0:5060``, ``relay control unix /run/r.sock``);
    ``exc`` is Twisted's CannotListenError or an OSError."""
    reason: Any = getattr(exc, "socketError", None) or exc
    text = getattr(reason, "strerror", None) or str(reason)
    return StartupError(f"cannot listen on {what}: {text}")


def check_twistd_files(twistd: Any) -> None:
    """Raise StartupError when twistd would fail to write its pid file or
    its log file (``twistd``: its parsed options).

    twistd opens the log after building the service and writes the pid
    file after forking; a failure there is a traceback and, daemonised, a
    launcher that never returns.  So the plugin tries both first."""
    if twistd.get("chroot"):
        return  # the paths are inside a root twistd has not entered yet
    check_writable("pid file", twistd.get("pidfile"), hint="--pidfile=PATH, or --pidfile= for none")
    logfile = twistd.get("logfile")
    if not logfile and not twistd.get("nodaemon") and not twistd.get("syslog"):
        logfile = "twistd.log"  # where a daemon logs unless told
    if logfile and logfile != "-":
        check_writable("log file", logfile, hint="--logfile=PATH")


def check_writable(what: str, path: str | None, hint: str) -> None:
    """Raise StartupError unless ``path`` can be written (tried, not
    guessed: os.access says yes to root where the filesystem says no)."""
    if not path:
        return
    path = os.path.abspath(path)
    try:
        if os.path.exists(path):
            with open(path, "ab"):
                pass
        else:
            with open(path, "xb"):
                pass
            os.unlink(path)
    except OSError as exc:
        raise StartupError(f"cannot write {what} {path}: {exc.strerror or exc} ({hint})") from None
