"""The kernel data plane: latched streams forwarded by nftables rules.

Userspace (session.py) decides whom to trust; once both parties of a session
are latched, each direction of its RTP (and of its RTCP, once that latches
too) is a *flow* handed to the kernel: packets from exactly the latched
source address and port to the relay port are rewritten and forwarded
without waking the relay.  Anything else (another source, a first byte that
is not RTP/RTCP version 2: STUN, DTLS, ZRTP) still reaches the relay's socket,
where the RTP Bleed and re-latch rules apply as before; a re-latch updates
the flow.

The rules are stateless, in a table of the relay's own
(``inet sipsuite_relay_<id>``, the id a hash of the bound control addresses,
so the next start of the same relay finds and removes a table its crashed
predecessor left).  Two fixed rules; a flow is only elements of a set and
four maps, so that installing or removing one costs the same whatever the
number of flows (libnftables lists a table's chains and objects before each
batch: per-flow chains or named counters made that O(flows))::

    chain pre  (filter, prerouting, priority raw):
        udp, RTP/RTCP v2, ip saddr . udp sport . ip daddr . udp dport @flows4
        notrack  udp dport set (the four) map @dport4
                 ip daddr set (the four, new port) map @dst4
    chain post (filter, postrouting, priority srcnat):
        udp sport set (the four) map @sport4
        ip saddr set (the four, new port) map @src4

``flows4`` counts per element: those are the flows' counters.

The destination is rewritten before routing, the source after it: a packet
whose source is one of the host's own addresses would be dropped as martian
on input.  ``notrack``: no conntrack entry is made or consulted, so entries
left by the packets relayed in userspace before the latch never shadow the
rules (the trouble with conntrack dnat/snat), and the host's own NAT rules
do not touch the flow.  The host must forward IP (``net.ipv4.ip_forward``;
``net.ipv6.conf.all.forwarding``) and its forward filter, if any, must let
these untracked packets through.

Parties on the relay host itself (loopback tests) stay in userspace: a
rewritten packet to a local address would be delivered, not forwarded, and
keep the sender's address.

Counters: one named counter per flow, read once a tick (and before the
management views) into the leg's packet and byte counts, its last-packet
time and the session's activity, so a kernel-forwarded session is not timed
out while its counters rise.  The relay never sees those packets, so a
leg's last RTP sequence number is estimated from the counter (sequence at
the latch + packets since); a moved source carrying the same SSRC re-reads
the counter first, so the re-latch check (same SSRC, sequence 1..gap ahead)
works as in userspace.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from twisted.python.failure import Failure

from sipsuite.log import get_logger
from sipsuite.rtprelay.nft import Nft, NftError, NftUnavailable
from sipsuite.rtprelay.rtp import rtp_header
from sipsuite.rtprelay.session import Addr, Leg, Session

__all__ = [
    "Flow",
    "KernelPlane",
    "KernelUnavailable",
    "open_kernel_plane",
    "table_name",
]

log = get_logger("sipsuite.rtprelay.kernel")

FAMILY = "inet"
TABLE_PREFIX = "sipsuite_relay_"
#: Priority of the prerouting chain: raw (-300), before conntrack, so
#: ``notrack`` takes effect and conntrack never sees the flow.
PRE_PRIORITY = -300
#: Source rewrite after routing, where source NAT happens.
POST_PRIORITY = 100
#: IP + UDP header bytes that nftables counts and the relay's byte counts
#: (payloads, as recvfrom returns them) do not.
_HEADER = {4: 28, 6: 48}
#: A moved source with the leg's SSRC re-reads the counters (a dump of the
#: flows) at most this often: only an on-path party knows the SSRC, but it
#: must not be able to make the relay busy.
REFRESH_INTERVAL = 0.05
CAP_NET_ADMIN = 12
#: Counters the tick reads per second at most (see KernelPlane.poll_due).
FLOWS_PER_SECOND = 2000
_WARNINGS = 10


class KernelUnavailable(Exception):
    """The kernel data plane cannot be used; the message says why."""


def table_name(control_addresses: Iterable[str]) -> str:
    """The relay's table: the same for the same control addresses, so a
    restart finds what a killed relay left."""
    digest = hashlib.sha256("\n".join(sorted(control_addresses)).encode()).hexdigest()
    return TABLE_PREFIX + digest[:12]


def _family(host: str) -> int:
    return 6 if ":" in host else 4


def _proto(family: int) -> str:
    return "ip6" if family == 6 else "ip"


def _addr_type(family: int) -> str:
    return "ipv6_addr" if family == 6 else "ipv4_addr"


def has_net_admin() -> bool:
    """CAP_NET_ADMIN in the effective set (root has it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def forwarding(family: int) -> bool:
    path = ("/proc/sys/net/ipv6/conf/all/forwarding" if family == 6
            else "/proc/sys/net/ipv4/ip_forward")
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def is_local(host: str) -> bool:
    """Whether ``host`` is one of this host's addresses (or loopback)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # not an address: never a kernel flow
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        return True
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


@dataclass(frozen=True, slots=True)
class Flow:
    """One direction of one stream: what arrives on ``port`` from ``src``
    leaves from ``out`` to ``dst``."""

    port: int  # the relay port the sender sends to (RTP p, RTCP p + 1)
    rtcp: bool
    family: int
    relay: str  # the address that port is bound on
    src: Addr
    dst: Addr
    out: Addr  # (address, port) of the other leg: the new source


@dataclass(slots=True)
class _Installed:
    flow: Flow
    session: Session
    leg: Leg  # the sending party's leg: what the counter counts
    packets: int = 0  # its element's counter as last read
    bytes: int = 0
    # The leg's last RTP sequence number when the element was added (counter
    # 0): the estimate is seq_at + packets since.
    seq_at: int = 0


_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(method: _F) -> _F:
    """The packet path, the control commands and session removal call in
    here: a bug in the kernel plane is logged and counted, and costs at most
    the kernel path (packets keep reaching userspace), never the call."""

    @functools.wraps(method)
    def wrapper(self: KernelPlane, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            self.errors += 1
            if self.errors <= _WARNINGS:
                log.failure("relay kernel plane: {m} failed", Failure(), m=method.__name__)

    return cast(_F, wrapper)


def _signature(session: Session) -> tuple[Any, ...]:
    c, e = session.caller, session.callee
    return (c.port, c.latched, c.rtcp_latched, c.asymmetric,
            e.port, e.latched, e.rtcp_latched, e.asymmetric)


class KernelPlane:
    """Flows of latched sessions in an nftables table of the relay's own."""

    def __init__(self, nft: Nft, table: str, families: Sequence[int],
                 address_of: Callable[[Leg], str | None],
                 clock: Callable[[], float] = time.monotonic,
                 local: Callable[[str], bool] = is_local) -> None:
        self.nft = nft
        self.table = table
        self.families = frozenset(families)
        self.address_of = address_of
        self.clock = clock
        self.local = local
        self.flows: dict[int, _Installed] = {}
        self._by_session: dict[Session, set[int]] = {}
        self._sigs: dict[Session, tuple[Any, ...]] = {}
        self._created = False
        self.polled = float("-inf")
        # Totals for relay.stats.
        self.packets = 0  # forwarded by the kernel, all flows ever
        self.bytes = 0
        self.installs = 0  # nft batches that added or changed flows
        self.install_time = 0.0
        self.removals = 0
        self.removal_time = 0.0
        self.errors = 0
        self.tables_lost = 0

    # -- the table ------------------------------------------------------------

    def _t(self, **kw: Any) -> dict[str, Any]:
        return {"family": FAMILY, "table": self.table, **kw}

    def remove_table(self) -> bool:
        """Delete the table if it exists; whether it did."""
        listed = self.nft.run([{"list": {"tables": {"family": FAMILY}}}])
        names = {item["table"].get("name") for item in listed if "table" in item}
        if self.table not in names:
            return False
        self.nft.run([{"delete": {"table": {"family": FAMILY, "name": self.table}}}])
        self._created = False
        return True

    def _create(self) -> list[dict[str, Any]]:
        """Commands that make the table, its sets, maps and the two chains."""
        cmds: list[dict[str, Any]] = [
            {"add": {"table": {"family": FAMILY, "name": self.table}}}]
        for fam in sorted(self.families):
            key = [_addr_type(fam), "inet_service", _addr_type(fam), "inet_service"]
            cmds.append({"add": {"set": self._t(name=f"flows{fam}", type=key,
                                                stmt=[{"counter": None}])}})
            for name, data in (("dport", "inet_service"), ("dst", _addr_type(fam)),
                               ("sport", "inet_service"), ("src", _addr_type(fam))):
                cmds.append({"add": {"map": self._t(name=f"{name}{fam}", type=key, map=data)}})
        cmds += [
            {"add": {"chain": self._t(name="pre", type="filter", hook="prerouting",
                                      prio=PRE_PRIORITY, policy="accept")}},
            {"add": {"chain": self._t(name="post", type="filter", hook="postrouting",
                                      prio=POST_PRIORITY, policy="accept")}},
        ]
        udp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}
        # RTP and RTCP are version 2 (first two bits 10); STUN, DTLS, ZRTP on
        # the same ports are not, and go to the relay as before.
        v2 = {"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 64, "len": 2}},
                        "right": 2}}
        for fam in sorted(self.families):
            p = _proto(fam)
            four = {"concat": [_field(p, "saddr"), _field("udp", "sport"),
                               _field(p, "daddr"), _field("udp", "dport")]}

            def lookup(name: str, fam: int = fam, four: dict[str, Any] = four
                       ) -> dict[str, Any]:
                return {"map": {"key": four, "data": f"@{name}{fam}"}}

            # In: the latched source's packet to a relay port (a set lookup
            # that counts per element), its destination rewritten: the port
            # first, then the address looked up by the new port.
            cmds.append({"add": {"rule": self._t(chain="pre", expr=[
                udp, v2,
                {"match": {"op": "==", "left": four, "right": f"@flows{fam}"}},
                {"notrack": None},
                {"mangle": {"key": _field("udp", "dport"), "value": lookup("dport")}},
                {"mangle": {"key": _field(p, "daddr"), "value": lookup("dst")}},
                {"accept": None},
            ])}})
            # Out, after routing: the source becomes the other leg's relay
            # address and port.  A miss in the first map ends the rule.
            cmds.append({"add": {"rule": self._t(chain="post", expr=[
                udp,
                {"mangle": {"key": _field("udp", "sport"), "value": lookup("sport")}},
                {"mangle": {"key": _field(p, "saddr"), "value": lookup("src")}},
            ])}})
        return cmds

    # -- flows of a session -----------------------------------------------------

    def desired(self, session: Session) -> dict[int, Flow]:
        """The flows the session's latch state calls for, by relay port."""
        out: dict[int, Flow] = {}
        caller, callee = session.caller, session.callee
        if caller.latched is None or callee.latched is None:
            return out
        for x, y in ((caller, callee), (callee, caller)):
            if x.asymmetric or y.asymmetric or x.port is None or y.port is None:
                return {}
            rx, ry = self.address_of(x), self.address_of(y)
            if rx is None or ry is None:
                return {}
            fam = _family(rx)
            if fam not in self.families or _family(ry) != fam:
                return {}
            rtp = (x.latched, y.rtp_destination())
            rtcp = (x.rtcp_latched, y.rtcp_destination())
            for is_rtcp, (src, dst) in ((False, rtp), (True, rtcp)):
                if src is None or dst is None:
                    continue
                if _family(src[0]) != fam or _family(dst[0]) != fam:
                    continue
                if self.local(src[0]) or self.local(dst[0]):
                    continue
                port = x.port + is_rtcp
                out[port] = Flow(port, is_rtcp, fam, rx, src, dst, (ry, y.port + is_rtcp))
        return out

    @_guarded
    def packet_seen(self, session: Session) -> None:
        """After userspace admitted a packet: follow a latch that changed."""
        if _signature(session) != self._sigs.get(session):
            self.sync(session)

    @_guarded
    def sync(self, session: Session) -> None:
        """Make the kernel's flows of ``session`` what its latch state says."""
        self._sigs[session] = _signature(session)
        want = self.desired(session)
        have = self._by_session.get(session, set())
        gone = [p for p in have if p not in want]
        changed = [p for p, f in want.items() if p in have and self.flows[p].flow != f]
        new = [p for p in want if p not in have]
        if gone:
            self._remove_ports(gone)
        if not changed and not new:
            return
        started = time.perf_counter()
        cmds: list[dict[str, Any]] = []
        if not self._created:
            cmds += self._create()
        if changed:
            # The moved source's element is a new counter: the old one's
            # last counts first.
            self.poll()
            if not self._created:  # the poll found the table gone
                self.sync(session)
                return
        for port in changed:
            cmds += self._elements("delete", self.flows[port].flow)
        for port in [*changed, *new]:
            cmds += self._elements("add", want[port])
        try:
            self.nft.run(cmds)
        except NftError as exc:
            if self._table_lost():
                self.sync(session)  # into a new table
            else:
                self._failed(session, exc)
            return
        self._created = True
        ports = self._by_session.setdefault(session, set())
        for port in new:
            leg = session.caller if session.caller.port == port - (port & 1) else session.callee
            self.flows[port] = _Installed(want[port], session, leg)
            ports.add(port)
        for port in [*changed, *new]:
            inst = self.flows[port]
            inst.flow = want[port]
            inst.packets = inst.bytes = 0  # a new element counts from 0
            inst.seq_at = inst.leg.seq
        self.installs += 1
        self.install_time += time.perf_counter() - started

    def _elements(self, verb: str, flow: Flow) -> list[dict[str, Any]]:
        """The flow's set and map elements, to ``add`` or ``delete``."""
        fam = flow.family
        (a, ap), (b, bp), (r, rp), (o, op) = flow.src, flow.dst, (flow.relay, flow.port), flow.out
        entries: list[tuple[str, list[Any], Any]] = [
            ("flows", [a, ap, r, rp], None),
            ("dport", [a, ap, r, rp], bp),
            ("dst", [a, ap, r, bp], b),
            ("sport", [a, ap, b, bp], op),
            ("src", [a, op, b, bp], o),
        ]
        cmds = []
        for name, key, value in entries:
            elem: Any = {"concat": key}
            if value is not None and verb == "add":
                elem = [elem, value]
            cmds.append({verb: {"element": self._t(name=f"{name}{fam}", elem=[elem])}})
        return cmds

    def _table_lost(self) -> bool:
        """After a refused batch: if the table is gone (``nft flush ruleset``
        by a firewall reload deletes every table), forget every flow.  Their
        packets reach the relay's sockets again, where userspace relays them
        and each session's next packet installs its flows in a new table."""
        if not self._created:
            return False
        try:
            listed = self.nft.run([{"list": {"tables": {"family": FAMILY}}}])
        except NftError:
            return False
        if any(item.get("table", {}).get("name") == self.table for item in listed):
            return False
        log.warn("relay kernel table {t} was deleted by something else (nft flush ruleset?):"
                 " its {n} flow(s) are relayed in userspace until they are installed again",
                 t=self.table, n=len(self.flows))
        self.flows.clear()
        self._by_session.clear()
        self._sigs.clear()
        self._created = False
        self.tables_lost += 1
        return True

    def _failed(self, session: Session, exc: Exception) -> None:
        """A batch was refused (nothing of it applied): the session's packets
        stay in userspace until its latch state changes again."""
        self.errors += 1
        if self.errors <= _WARNINGS:
            log.warn("relay kernel forwarding of {c} failed, kept in userspace: {e}",
                     c=session.call_id, e=exc)
        ports = self._by_session.get(session)
        if ports:
            self._remove_ports(list(ports))

    def _remove_ports(self, ports: Iterable[int]) -> None:
        """Delete flows.  Their counts since the last poll (at most a tick's)
        are not read: reading one element costs a dump of the whole set."""
        started = time.perf_counter()
        doomed = [self.flows[p] for p in ports if p in self.flows]
        if not doomed:
            return
        cmds = [c for inst in doomed for c in self._elements("delete", inst.flow)]
        try:
            self.nft.run(cmds)
        except NftError as exc:
            # Each on its own: a flow already gone must not keep the others.
            self.errors += 1
            log.warn("relay kernel flows: removal failed ({e}); removing one by one", e=exc)
            for inst in doomed:
                try:
                    self.nft.run(self._elements("delete", inst.flow))
                except NftError:
                    pass
        for inst in doomed:
            del self.flows[inst.flow.port]
            ports_of = self._by_session.get(inst.session)
            if ports_of is not None:
                ports_of.discard(inst.flow.port)
                if not ports_of:
                    del self._by_session[inst.session]
        self.removals += 1
        self.removal_time += time.perf_counter() - started

    @_guarded
    def release(self, port: int, session: Session | None) -> None:
        """A leg's port pair is closing (D, timeout, X, new port): its flows go."""
        if self.flows:
            self._remove_ports([p for p in (port, port + 1) if p in self.flows])
        if session is not None:
            # Its next sync computes the flows afresh.
            self._sigs.pop(session, None)

    def kernel_ports(self, session: Session) -> set[int]:
        return set(self._by_session.get(session, ()))

    # -- counters -----------------------------------------------------------------

    def _account(self, inst: _Installed, packets: int, nbytes: int, now: float) -> None:
        dp = packets - inst.packets
        if dp <= 0:
            return
        db = nbytes - inst.bytes
        inst.packets, inst.bytes = packets, nbytes
        payload = max(0, db - dp * _HEADER[inst.flow.family])
        leg = inst.leg
        stats = leg.stats
        if inst.flow.rtcp:
            stats.rtcp_packets += dp
            stats.rtcp_bytes += payload
        else:
            stats.packets += dp
            stats.bytes += payload
            leg.seq = (inst.seq_at + packets) & 0xFFFF
        self.packets += dp
        self.bytes += payload
        leg.last_packet = now
        session = inst.session
        if now > session.last_activity:
            session.last_activity = now

    @_guarded
    def poll(self) -> None:
        """Every flow's counter into its leg's stats: one dump of each
        family's set (O(flows))."""
        if not self.flows:
            return
        now = self.clock()
        self.polled = now
        flows = self.flows
        for fam in sorted(self.families):
            try:
                items = self.nft.run([{"list": {"set": self._t(name=f"flows{fam}")}}])
            except NftError as exc:
                if not self._table_lost():
                    self.errors += 1
                    if self.errors <= _WARNINGS:
                        log.warn("relay kernel counters unreadable: {e}", e=exc)
                return
            for item in items:
                elems = item.get("set", {}).get("elem", ()) if isinstance(item, dict) else ()
                for entry in elems:
                    elem = entry.get("elem") if isinstance(entry, dict) else None
                    if not isinstance(elem, dict):
                        continue
                    key = elem.get("val", {}).get("concat")
                    counter = elem.get("counter")
                    if not isinstance(key, list) or len(key) != 4 or not isinstance(counter, dict):
                        continue
                    inst = flows.get(key[3]) if isinstance(key[3], int) else None
                    if inst is None or (key[0], key[1]) != inst.flow.src:
                        continue
                    self._account(inst, int(counter.get("packets", 0)),
                                  int(counter.get("bytes", 0)), now)

    def poll_due(self) -> bool:
        """Whether the tick should poll: once a second up to
        :data:`FLOWS_PER_SECOND` flows, less often beyond (reading costs ~30 us
        a flow; media timeouts are tens of seconds)."""
        interval = max(1.0, len(self.flows) / FLOWS_PER_SECOND)
        return self.clock() - self.polled >= interval - 0.05

    @_guarded
    def before_packet(self, leg: Leg, data: bytes, src: Addr) -> None:
        """An RTP packet reached userspace on a kernel-forwarded leg from
        another source: if it carries the leg's SSRC it may be the party
        moving, whose sequence number is checked against the leg's: bring
        that up to date from the counters first."""
        port = leg.port
        if port is None:
            return
        inst = self.flows.get(port)
        if inst is None or src == inst.flow.src:
            return
        header = rtp_header(data)
        if header is None or header[4] != leg.ssrc:
            return
        now = self.clock()
        if now - self.polled < REFRESH_INTERVAL:
            return
        self.poll()

    # -- end -------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the table (stop, drain over): the flows end with the relay."""
        self.flows.clear()
        self._by_session.clear()
        self._sigs.clear()
        try:
            self.remove_table()
        except NftError as exc:
            log.warn("relay kernel table {t} not removed: {e}", t=self.table, e=exc)
        self.nft.close()


def _field(protocol: str, name: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": name}}


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def open_kernel_plane(
    media_addresses: Sequence[str],
    control_addresses: Iterable[str],
    address_of: Callable[[Leg], str | None],
    clock: Callable[[], float] = time.monotonic,
) -> tuple[KernelPlane, str]:
    """The kernel plane for this relay, its stale table removed, and a note
    for the log; KernelUnavailable saying why it cannot be used."""
    for address in media_addresses:
        if ipaddress.ip_address(address).is_unspecified:
            raise KernelUnavailable(
                f"media address {address} is a wildcard (the kernel rules need the address)")
    families = sorted({_family(a) for a in media_addresses})
    if not has_net_admin():
        raise KernelUnavailable("needs root or CAP_NET_ADMIN")
    on = [f for f in families if forwarding(f)]
    off = [f for f in families if f not in on]
    if not on:
        knob = "net.ipv6.conf.all.forwarding" if families == [6] else "net.ipv4.ip_forward"
        raise KernelUnavailable(f"{knob} is 0 (the host does not forward IP)")
    try:
        nft = Nft()
    except NftUnavailable as exc:
        raise KernelUnavailable(f"{exc} (Debian: libnftables1)") from None
    table = table_name(control_addresses)
    plane = KernelPlane(nft, table, on, address_of, clock)
    try:
        stale = plane.remove_table()
    except NftError as exc:
        nft.close()
        raise KernelUnavailable(f"nftables refused: {exc}") from None
    note = f"table {FAMILY} {table}"
    if stale:
        note += ", a stale one left by an earlier run removed"
    if off:
        note += "; IPv6 streams stay in userspace (net.ipv6.conf.all.forwarding is 0)" \
            if 6 in off else "; IPv4 streams stay in userspace (net.ipv4.ip_forward is 0)"
    return plane, note
