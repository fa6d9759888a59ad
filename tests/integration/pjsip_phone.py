"""A PJSIP (pjsua2) phone over TCP with RFC 5626 outbound, run as its own
process by test_pjsip_outbound.py: pjsua2 has its own threads and timers,
which do not mix with the test's reactor.

    python pjsip_phone.py REGISTRAR_HOST REGISTRAR_PORT USER DOMAIN LOGFILE

It registers ``sip:USER@DOMAIN`` through REGISTRAR_HOST:REGISTRAR_PORT over
TCP, with outbound on (reg-id 1, an instance id) and no Contact or Via
rewriting (a phone that does not learn its NAT address), and answers every
incoming call 486. One JSON object a line on stdout for each event:
``{"event": "reg", "code": 200}``, ``{"event": "call", "src": "IP:PORT"}``.
Lines on stdin: ``register`` (refresh now), ``quit``. It exits by itself
after its time limit (SIGALRM), whatever happens.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys

import pjsua2 as pj

LIMIT_S = 60


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Phone(pj.Account):
    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802 - pjsua2's name
        emit(event="reg", code=prm.code, reason=prm.reason)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        call = pj.Call(self, prm.callId)
        emit(event="call", src=prm.rdata.srcAddress)
        op = pj.CallOpParam()
        op.statusCode = 486
        call.answer(op)
        calls.append(call)


class FileLog(pj.LogWriter):
    """pjsip's own log file is buffered; the test reads this one while we run."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115

    def write(self, entry: pj.LogEntry) -> None:
        self.file.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")
        self.file.flush()


calls: list[pj.Call] = []


def main() -> int:
    host, port, user, domain, logfile = sys.argv[1:6]
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(LIMIT_S)
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0  # events only in libHandleEvents below, in this thread
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 5
    cfg.logConfig.consoleLevel = 5  # what reaches the writer
    writer = FileLog(logfile)
    cfg.logConfig.writer = writer
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcfg)
    ep.libStart()

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{user}@{domain}"
    acfg.regConfig.registrarUri = f"sip:{host}:{port};transport=tcp"
    acfg.regConfig.timeoutSec = 300
    acfg.natConfig.sipOutboundUse = 1
    acfg.natConfig.sipOutboundRegId = "1"
    acfg.natConfig.sipOutboundInstanceId = "<urn:uuid:8f4bb0a6-6b0e-4a7e-9d55-0000000000c1>"
    acfg.natConfig.contactRewriteUse = 0
    acfg.natConfig.viaRewriteUse = 0
    acfg.natConfig.sdpNatRewriteUse = 0
    phone = Phone()
    phone.create(acfg)
    emit(event="started", transport="tcp")
    running = True
    while running:
        ep.libHandleEvents(20)
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if not ready:
            continue
        line = sys.stdin.readline().strip()
        if line == "register":
            phone.setRegistration(True)
        elif line in ("quit", ""):
            running = False
    del phone
    calls.clear()
    ep.libDestroy()
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main())
