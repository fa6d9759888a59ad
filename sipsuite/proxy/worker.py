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
import json
import os
import signal
import sys

#: How often a worker checks that its supervisor is still there (s).
ORPHAN_CHECK = 1.0
#: The environment variable with the secret the workers share (flow tokens).
SECRET_VARIABLE = "SIPSUITE_WORKERS_SECRET"


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
        config = load_config(args.config or None, **json.loads(args.overrides))
        log.set_level(config.log.level)
        from sipsuite.fdlimit import raise_nofile_limit
        from sipsuite.proxy.service import WorkerSetup, make_proxy_service

        raise_nofile_limit()
        # The secret comes in the environment: the command line is world-readable.
        worker = (WorkerSetup(args.index, args.channel, os.environ.get(SECRET_VARIABLE, ""))
                  if args.channel else None)
        top = make_proxy_service(config, worker)
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
    reactor.callWhenRunning(checker.start, ORPHAN_CHECK, False)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
