"""A legitimate phone call through a proxy with ``[features] auth``: two sipp
phones on their own loopback address (127.0.0.2 by default, not the 127.0.0.1
scanners and fuzzers send from) register with digest, then one calls the
other (407 challenge, 200, ACK, BYE). The fuzz and scanner tests use it to
show the proxy still serves real phones during and after an attack.

The scenarios are this project's own (tests/integration/scenarios/phone_*.xml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import SCENARIOS, free_port
from proxyproc import ProxyProcess
from sipp import SippProcess, SippResult, run_sipp

PHONE_HOST = "127.0.0.2"


@dataclass(frozen=True)
class Phone:
    user: str
    password: str


def add_users(proxy: ProxyProcess, *phones: Phone) -> None:
    for phone in phones:
        res = proxy.ctl("user", "add", phone.user, phone.password)
        assert res.returncode == 0, f"sipsuite-ctl user add {phone.user}: {res.stderr}"


def _on(host: str) -> list[str]:
    # SippProcess binds 127.0.0.1; a later -i/-mi wins.
    return ["-i", host, "-mi", host]


def register(proxy: ProxyProcess, phone: Phone, port: int, workdir: Path,
             host: str = PHONE_HOST) -> SippResult:
    return run_sipp(SCENARIOS / "phone_register_auth.xml", name=f"reg-{phone.user}-{port}",
                    workdir=workdir, remote=proxy.address, local_port=port, calls=1,
                    timeout_s=10, service=phone.user,
                    extra=[*_on(host), "-au", phone.user, "-ap", phone.password])


class PhonePair:
    """Two phones on ``host``, each on its own port for the pair's life (as a
    real phone keeps its registration): ``register()`` once, then ``call()``
    as often as wanted, the callee's sipp answering on its registered port."""

    def __init__(self, proxy: ProxyProcess, caller: Phone, callee: Phone, workdir: Path,
                 host: str = PHONE_HOST) -> None:
        self.proxy, self.caller, self.callee = proxy, caller, callee
        self.workdir, self.host = workdir, host
        self.ports = {caller.user: free_port(host=host), callee.user: free_port(host=host)}
        self.calls = 0

    def register(self) -> str | None:
        """None when both registered, else what failed (sipp's and the proxy's logs)."""
        for phone in (self.callee, self.caller):
            reg = register(self.proxy, phone, self.ports[phone.user], self.workdir, self.host)
            if (reg.rc, reg.successful) != (0, 1):
                return f"{phone.user} did not register\n{reg.summary()}\n{self.proxy.diagnostics()}"
        return None

    def call(self) -> str | None:
        """Caller calls callee: None when the whole call worked, else what failed."""
        self.calls += 1
        caller_port, callee_port = self.ports[self.caller.user], self.ports[self.callee.user]
        uas = SippProcess(SCENARIOS / "phone_answer_uas.xml", name=f"uas-{self.calls}",
                          workdir=self.workdir, local_port=callee_port, calls=1, timeout_s=20,
                          service=self.callee.user, extra=_on(self.host))
        uac = run_sipp(SCENARIOS / "phone_call_auth_uac.xml", name=f"uac-{self.calls}",
                       workdir=self.workdir, remote=self.proxy.address, local_port=caller_port,
                       calls=1, timeout_s=15, service=self.callee.user,
                       extra=[*_on(self.host), "-au", self.caller.user, "-ap", self.caller.password,
                              "-key", "caller", self.caller.user])
        if (uac.rc, uac.successful) != (0, 1):
            uas.kill()
        answered = uas.wait()
        if (uac.rc, uac.successful, answered.rc, answered.successful) != (0, 1, 0, 1):
            return (f"the call {self.caller.user} -> {self.callee.user} failed\n{uac.summary()}\n"
                    f"{answered.summary()}\n{self.proxy.diagnostics()}")
        return None
