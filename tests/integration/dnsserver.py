"""A small authoritative DNS server on loopback, in a thread, for the proxy
under test to resolve SRV/A/AAAA names from ([proxy] dns_servers).

Uses twisted.names only to encode and decode messages: the tests' own
blocking sockets would stall a server running on the test reactor.
"""

from __future__ import annotations

import socket
import threading

from twisted.names import dns


class DnsServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.records: dict[tuple[str, int], list[dns.RRHeader]] = {}
        self.queries: list[tuple[str, int]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add_srv(self, name: str, priority: int, weight: int, port: int, target: str) -> None:
        self._add(name, dns.SRV, dns.Record_SRV(priority, weight, port, target, ttl=60))

    def add_a(self, name: str, address: str) -> None:
        self._add(name, dns.A, dns.Record_A(address, ttl=60))

    def _add(self, name: str, rtype: int, payload: object) -> None:
        rr = dns.RRHeader(name=name, type=rtype, ttl=60, payload=payload, auth=True)
        self.records.setdefault((name.lower(), rtype), []).append(rr)

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.Message()
            try:
                query.fromStr(data)
            except Exception:  # noqa: BLE001 - a test server ignores junk
                continue
            answer = dns.Message(id=query.id, answer=1, auth=1, opCode=query.opCode)
            answer.queries = query.queries
            for q in query.queries:
                key = (q.name.name.decode().lower(), q.type)
                self.queries.append(key)
                answer.answers.extend(self.records.get(key, []))
            if not answer.answers and not any(k[0] == key[0] for k in self.records):
                answer.rCode = dns.ENAME
            self.sock.sendto(answer.toStr(), addr)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
