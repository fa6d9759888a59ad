"""sipsuite inside your own Twisted application: ``twistd -ny examples/sipsuite.tac``.

The proxy, registrar and RTP relay (``twistd sipsuite``) built from Python,
no config file, with one service of our own beside them: a call log that
writes each call's start and end as a JSON line.  docs/embedding.md walks
through it.  The addresses come from the environment so that the tests
(and you) can move them; the defaults are those of conf/sipsuite.toml.
"""

import json
import os

from twisted.application import service

from sipsuite.api import Event, Handle, Subscription
from sipsuite.embed import config_from_dict, make_suite

HOST = os.environ.get("SIPSUITE_HOST", "127.0.0.1")
PORT = int(os.environ.get("SIPSUITE_PORT", "5060"))
MANAGEMENT = os.environ.get("SIPSUITE_MANAGEMENT", "tcp:127.0.0.1:7060")
RELAY_CONTROL = os.environ.get("SIPSUITE_RELAY_CONTROL", "udp:127.0.0.1:7722")
CALL_LOG = os.environ.get("SIPSUITE_CALL_LOG", "calls.jsonl")
# "bob=sip:bob@127.0.0.1:5090": a static binding, so a call works without a REGISTER.
STATIC = dict(item.split("=", 1) for item in os.environ.get("SIPSUITE_STATIC", "").split() if item)

config = config_from_dict({
    "proxy": {"listen": [f"udp:{HOST}:{PORT}", f"tcp:{HOST}:{PORT}"],
              "domains": ["sipsuite.test"]},
    "location": {"static": {user: [uri] for user, uri in STATIC.items()}},
    "management": {"listen": MANAGEMENT},
    "relay": {"control": [RELAY_CONTROL]},
})


class CallLog(service.Service):
    """Our own service: one JSON line per call.started / call.ended event."""

    def __init__(self, handle: Handle, path: str) -> None:
        self.handle = handle
        self.path = path
        self.subscription: Subscription | None = None

    def startService(self) -> None:
        super().startService()
        # Events arrive on the reactor, a turn after the SIP message that
        # caused them; a slow file only costs this subscriber its backlog.
        self.subscription = self.handle.events.subscribe(["call.started", "call.ended"],
                                                         self.write)

    def write(self, event: Event) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_dict()) + "\n")

    def stopService(self) -> None:
        if self.subscription is not None:
            self.subscription.cancel()
        return super().stopService()


application = service.Application("sipsuite-embedded")
suite = make_suite(config)
suite.setServiceParent(application)
# Parented after the suite: started after it, stopped before it.
CallLog(suite.handle, CALL_LOG).setServiceParent(application)
