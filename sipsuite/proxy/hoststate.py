"""What a supervisor of proxy workers keeps for the whole host
(docs/architecture.md "Worker processes", "Host-wide state"): the
antiflood counts of every worker added up, the dispatcher states the
workers found or the operator set, the live operations to replay to a
worker started again, and what the workers had in progress.

Sans-IO: the supervisor (proxy/workers.py) feeds it the workers' link
messages (proxy/workerlink.py) and the management calls it passed on
(proxy/workerops.py), and sends what it answers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from sipsuite.log import get_logger
from sipsuite.proxy.modules.antiflood import FloodTable
from sipsuite.proxy.modules.dispatcher.lists import DsState

log = get_logger("sipsuite.proxy.workers")

#: kamcmd's letters for a state and its probing flag: what a worker's
#: ``dispatcher.set_state`` takes, so a remembered state is replayed with it.
_WORDS = {(DsState.ACTIVE, False): "a", (DsState.ACTIVE, True): "ap",
          (DsState.INACTIVE, False): "i", (DsState.INACTIVE, True): "ip",
          (DsState.DISABLED, False): "d", (DsState.DISABLED, True): "dp"}


def state_word(state: Any, probing: Any) -> str | None:
    try:
        return _WORDS[(DsState(state), bool(probing))]
    except ValueError:
        return None


def _number(value: Any, low: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        return None
    return float(value)


class HostState:
    def __init__(self) -> None:
        # Host-wide request counts per source: each worker's batch added
        # (the workers leave out the addresses they may never ban).
        self.flood = FloodTable()
        # (setid, uri) -> kamcmd word, the last state found or set.
        self.ds: dict[tuple[int, str], str] = {}
        # Setting name -> (sequence, method, params): the last live change
        # of each, in the order made, replayed to a worker started again.
        self.ops: OrderedDict[str, tuple[int, str, Any]] = OrderedDict()
        self.seq = 0
        # Worker -> server transactions in progress at its last heartbeat.
        self.load: dict[int, int] = {}
        self.lost_transactions = 0
        # Worker -> answered calls its accounting held at its last
        # heartbeat: their records die with it.
        self.held_calls: dict[int, int] = {}
        self.lost_call_records = 0
        self.deaths = 0

    # -- live operations ---------------------------------------------------------------
    def remember(self, name: str, params: Any, result: Any) -> None:
        """A fanned-out management call that every worker up accepted."""
        if name in ("debug", "cfg.set"):
            key = _setting(name, params)
            if key is None:
                return  # `debug` alone asks, changes nothing
            self.seq += 1
            self.ops[key] = (self.seq, name, params)
            self.ops.move_to_end(key)
        elif name == "dispatcher.set_state" and isinstance(result, dict):
            self.dispatcher_state(result.get("setid"), result.get("uri"),
                                  state_word(result.get("state"), result.get("probing")))
        elif name == "flood.unban" and isinstance(result, dict):
            address = result.get("address")
            if isinstance(address, str):
                self.flood.unban(address)

    def ops_after(self, seq: int) -> list[tuple[int, str, Any]]:
        return [op for op in self.ops.values() if op[0] > seq]

    # -- dispatcher ----------------------------------------------------------------------
    def dispatcher_state(self, setid: Any, uri: Any, word: Any) -> bool:
        if (isinstance(setid, bool) or not isinstance(setid, int) or not isinstance(uri, str)
                or word not in _WORDS.values()):
            return False
        self.ds[(setid, uri)] = word
        return True

    # -- antiflood -----------------------------------------------------------------------
    def flood_batch(self, msg: dict[str, Any], now: float) -> list[tuple[str, float]]:
        """One worker's batch: its counts added to the host's, its own bans
        taken; the bans every worker must now hold, (address, seconds)."""
        limit = _number(msg.get("limit"), 1)
        window = _number(msg.get("window"), 0.001)
        ban_time = _number(msg.get("ban_time"), 0.001)
        max_sources = _number(msg.get("max_sources"), 1)
        counts, bans = msg.get("counts"), msg.get("bans")
        if None in (limit, window, ban_time, max_sources) or not isinstance(counts, dict):
            return []
        assert limit is not None and window is not None and ban_time is not None
        assert max_sources is not None
        out: list[tuple[str, float]] = []
        if isinstance(bans, dict):
            for address, seconds in bans.items():
                left = _number(seconds, 0.001)
                if left is not None and self.flood.ban(address, now, left, int(max_sources)):
                    out.append((address, left))
        for address, n in counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                continue
            if self.flood.add(address, n, now, int(limit), window, ban_time, int(max_sources)):
                out.append((address, ban_time))
                log.warn("antiflood: banning {a} on every worker for {t:g} s (more than {n}"
                         " requests in {w:g} s to the host)", a=address, t=ban_time,
                         n=int(limit), w=window)
        return out

    # -- workers' deaths -----------------------------------------------------------------
    def heartbeat(self, index: int, msg: dict[str, Any]) -> None:
        """A worker's ``load``: what it would lose if it died now."""
        server, calls = msg.get("server"), msg.get("acc_calls")
        if isinstance(server, int) and not isinstance(server, bool) and server >= 0:
            self.load[index] = server
        if isinstance(calls, int) and not isinstance(calls, bool) and calls >= 0:
            self.held_calls[index] = calls

    def died(self, index: int) -> tuple[int, int]:
        """A worker died: the server transactions it had and the answered
        calls it held for accounting at its last heartbeat are counted
        lost; how many of each."""
        lost = self.load.pop(index, 0)
        calls = self.held_calls.pop(index, 0)
        self.deaths += 1
        self.lost_transactions += lost
        self.lost_call_records += calls
        return lost, calls


def _setting(name: str, params: Any) -> str | None:
    if name == "debug":
        level = params[0] if isinstance(params, list) and params else (
            params.get("level") if isinstance(params, dict) else None)
        return None if level is None else "log.level"
    key = params[0] if isinstance(params, list) and params else (
        params.get("name") if isinstance(params, dict) else None)
    return key if isinstance(key, str) else None
