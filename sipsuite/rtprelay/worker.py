"""One relay worker process ([relay] workers > 1): ``python -m
sipsuite.rtprelay.worker --index I --config PATH --overrides JSON``.

Started by the relay supervisor (sipsuite.rtprelay.workers), never by hand.
It is today's relay (make_relay_service) with the supervisor's overrides:
its slice of the port range, one unix control socket in the supervisor's
private directory, the channel socket the supervisor sends it commands on
(``--channel PATH``, router.py) and a management port on loopback.  Like the proxy's
workers (sipsuite.proxy.worker) it writes its log as JSON lines to stdout,
which the supervisor logs with its number, tells the supervisor on the same
stream how many sessions it holds (so a crash's loss is counted), drains on
SIGTERM and stops by itself if the supervisor goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from twisted.internet import protocol
from twisted.protocols import basic

#: How often (s) a worker checks that its supervisor is still there, and
#: reports its session count when it changed.
TICK = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipsuite.rtprelay.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--config", default="")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--channel", required=True)
    parser.add_argument("--identity", default="[]")
    args = parser.parse_args(argv)

    from twisted.internet import reactor, task
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    from sipsuite import log
    from sipsuite.config import ConfigError, load_config
    from sipsuite.startup import StartupError

    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)], redirectStandardIO=False)
    logger = log.get_logger("sipsuite.rtprelay.worker")
    parent = os.getppid()
    try:
        config = load_config(args.config or None, **json.loads(args.overrides))
        log.set_level(config.log.level)
        from sipsuite.fdlimit import raise_nofile_limit
        from sipsuite.proxy.workerlink import WorkerLink
        from sipsuite.rtprelay.service import RelayService, make_relay_service

        raise_nofile_limit()
        top = make_relay_service(config)
        relay = next(s for s in top if isinstance(s, RelayService))
        # Its nftables table (kernel forwarding) is named after this, not
        # after its own control socket (see RelayService.kernel_identity).
        relay.kernel_identity = json.loads(args.identity) or None
        top.privilegedStartService()
        listen_channel(reactor, args.channel, relay)
    except (ConfigError, StartupError, OSError) as e:
        sys.stderr.write(f"relay worker {args.index}: {e}\n")
        return 2
    link = WorkerLink(args.index)
    reported = [-1]
    orphan = [False]

    def tick() -> None:
        if os.getppid() != parent:
            if not orphan[0]:
                orphan[0] = True
                logger.warn("supervisor gone: stopping")
                reactor.stop()
            return
        active = len(relay.table)
        if active != reported[0]:
            reported[0] = active
            link.send("sessions", active=active)

    def stopping() -> None:
        # The supervisor's SIGTERM may follow the process group's: once
        # draining, another must not cut the drain short (the supervisor
        # sends SIGKILL when its grace is over).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    checker = task.LoopingCall(tick)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.callWhenRunning(top.startService)
    # After startService: its control socket is bound and serving.
    reactor.callWhenRunning(link.send, "ready")
    reactor.callWhenRunning(checker.start, TICK, False)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    if orphan[0]:
        # No supervisor to remove its private directory: the last worker out
        # does (its own sockets first; rmdir fails while a sibling's remain).
        for remove, path in ((os.unlink, args.channel),
                             (os.rmdir, os.path.dirname(args.channel))):
            try:
                remove(path)
            except OSError:
                pass
    return 0


class ChannelProtocol(basic.Int32StringReceiver):
    """The worker's end of the supervisor's connection: each frame one
    command with the supervisor's cookie, answered by the relay's own
    command handler (the supervisor keeps the reply cache)."""

    MAX_LENGTH = 1 << 20

    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def stringReceived(self, data: bytes) -> None:
        self.sendString(self.relay.commands.handle(data, datagram=True))


class _ChannelFactory(protocol.Factory):
    noisy = False

    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> ChannelProtocol:
        return ChannelProtocol(self.relay)


def listen_channel(reactor: Any, path: str, relay: Any) -> Any:
    """Listen on the channel socket (a stale one from a killed worker
    removed); it stays open while the relay drains, until the process exits."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    factory = _ChannelFactory(relay)
    return reactor.listenUNIX(path, factory, mode=0o600)


if __name__ == "__main__":
    sys.exit(main())
