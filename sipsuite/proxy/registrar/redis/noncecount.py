"""The nonce-count replay check (RFC 7616 3.4) in Redis, for worker
processes (``[proxy] workers > 1``): each worker's in-process
``digest.NonceCounter`` sees only the requests the kernel gave it, so a
replay sent to another worker would pass. One key per nonce holds the
highest nc accepted, and expires when the nonce goes stale; one Lua script
compares and raises it atomically, so two workers cannot both accept the
same nc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipsuite.proxy.registrar.redis.keys import DEFAULT_PREFIX, to_bytes

if TYPE_CHECKING:
    from sipsuite.proxy.registrar.redis.client import RedisConnection

__all__ = ["RedisNonceCounter"]

_HEX = frozenset("0123456789abcdefABCDEF")

# KEYS[1]: the nonce's key; ARGV[1]: the nc (a decimal integer >= 1);
# ARGV[2]: the nonce's remaining lifetime in ms. 1 if accepted (stored as
# the highest), 0 if not above the highest accepted so far (a replay).
_ACCEPT = """
local seen = redis.call('GET', KEYS[1])
if seen and tonumber(seen) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisNonceCounter:
    """``accept`` as ``digest.NonceCounter.accept``, awaited: one round trip
    per authenticated request. Raises StoreUnavailable when Redis does not
    answer in time."""

    def __init__(self, conn: RedisConnection, prefix: str = DEFAULT_PREFIX) -> None:
        self.conn = conn
        self._prefix = to_bytes(prefix) + b"nc:"

    async def accept(self, nonce: str, nc: str, expires_at: float, now: float) -> bool:
        # RFC 7616: exactly 8 hex digits; checked here, Redis sees a number.
        if len(nc) != 8 or not _HEX.issuperset(nc):
            return False
        count = int(nc, 16)
        left = round((expires_at - now) * 1000)
        if count < 1 or left <= 0:
            return False
        # Bounded by [redis] timeout, as every store call (client.bounded).
        return await self.conn.bounded(self._eval(nonce, count, left))

    async def _eval(self, nonce: str, count: int, left: int) -> bool:
        reply = await self.conn.eval(_ACCEPT, [self._prefix + to_bytes(nonce)], [str(count), str(left)])
        return bool(reply)
