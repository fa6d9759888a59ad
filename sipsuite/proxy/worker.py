"""One worker process of the proxy ([proxy] workers > 1): ``python -m
sipsuite.proxy.worker --index I --config PATH --overrides JSON``.

Started by the supervisor (sipsuite.proxy.workers), never by hand.  It loads
the same configuration with the same command-line overrides, runs the proxy
core with its listeners bound with SO_REUSEPORT (net/reuseport.py), and
writes its log as JSON lines to stdout, which the supervisor logs with the
worker's number.  Its management interface is on a loopback port the
supervisor chose (passed as the --management override), which serves
[management] listen for all (sipsuite.proxy.workerops).  ``--channel DIR``:
where the workers' channel sockets are (net/siblings.py: a request for a
phone whose TCP/TLS connection another worker holds goes over it).  A worker whose
supervisor has gone stops by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from typing import Any

#: The environment variable the supervisor hands the host's auth secret in.
SECRET_ENV = "SIPSUITE_WORKER_AUTH_SECRET"
#: How often a worker checks that its supervisor is still there (s).
ORPHAN_CHECK = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipsuite.proxy.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--config", default="")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--channel", default="")
    args = parser.parse_args(argv)

    from twisted.internet import reactor, task
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    from sipsuite import log
    from sipsuite.config import ConfigError, load_config
    from sipsuite.startup import StartupError

    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)], redirectStandardIO=False)
    logger = log.get_logger("sipsuite.proxy.worker")
    parent = os.getppid()
    try:
        config = host_secret(load_config(args.config or None, **json.loads(args.overrides)))
        log.set_level(config.log.level)
        from sipsuite.fdlimit import raise_nofile_limit
        from sipsuite.proxy import workerlink
        from sipsuite.proxy.service import ProxyService, make_proxy_service

        raise_nofile_limit()
        link = workerlink.WorkerLink(args.index)
        top = make_proxy_service(config, link, args.channel)
        top.privilegedStartService()
    except (ConfigError, StartupError) as e:
        sys.stderr.write(f"worker {args.index}: {e}\n")
        return 2

    def orphaned() -> None:
        if os.getppid() != parent:
            logger.warn("supervisor gone: stopping")
            reactor.stop()

    def stopping() -> None:
        # The supervisor's SIGTERM may follow the process group's: once
        # stopping, a second one must not cut the stop short (the reactor
        # puts the default handlers back before the process exits).  A hung
        # worker still gets the supervisor's SIGKILL.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    checker = task.LoopingCall(orphaned)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.callWhenRunning(top.startService)
    reactor.callWhenRunning(link.listen, reactor)
    proxy = next(s for s in top if isinstance(s, ProxyService))
    # After startService (called in order): listening, management included.
    reactor.callWhenRunning(workerlink.ready, proxy.core, link)
    reactor.callWhenRunning(checker.start, ORPHAN_CHECK, False)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


def host_secret(config: Any) -> Any:
    """An empty ``[auth] secret`` means one random secret per host: the
    supervisor's, given in :data:`SECRET_ENV` (readable by our user only,
    unlike the command line), so a nonce one worker issued is good at
    another."""
    secret = os.environ.pop(SECRET_ENV, "")
    if config.auth.secret or not secret:
        return config
    return dataclasses.replace(config, auth=dataclasses.replace(config.auth, secret=secret))


if __name__ == "__main__":
    sys.exit(main())
