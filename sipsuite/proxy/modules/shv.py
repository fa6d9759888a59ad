"""The ``shv`` module: Kamailio's ``$shv(name)``, variables shared by every
process of the proxy, as ``self.shv`` of a routing class.

    n = await self.shv.incr("calls")          # atomic; the new value
    await self.shv.set("mode", "night")
    mode = await self.shv.get("mode")         # None when never set

Without ``[redis] url`` the values are in this process's memory: a proxy
without Redis runs one process (``[proxy] workers = 1`` is then enforced).
With Redis they are fields of one hash, ``<[redis] prefix>shv``, so every
worker process and every proxy node on that Redis sees the same values,
and ``incr`` is atomic across all of them.

A value is an int or a str, as in Kamailio, and comes back as it went in:
an int is stored as its decimal text, a str with an "s" in front, so the
string "42" stays a string (the connection does not convert numbers).
``incr`` of a name holding a str raises TypeError.  When Redis does not
answer in time every call raises StoreUnavailable (``from sipsuite.proxy
import StoreUnavailable``), which a routing class may catch.

The operator's side: ``sipsuite-ctl shv get [NAME]`` / ``shv set NAME VALUE``
(kamcmd ``shv.get`` / ``shv.set``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.bindings import StoreUnavailable
from sipsuite.proxy.services import REDIS, SHV, SharedVars

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from sipsuite.config import Config
    from sipsuite.ops.server import RpcRegistry
    from sipsuite.proxy.api import CoreAPI, ServiceKey

__all__ = ["SPEC", "MemoryShv", "RedisShv", "ShvModule", "register_shv_methods"]

log = get_logger("sipsuite.proxy.shv")

Value = int | str

# HINCRBY, unless the field holds a string: then nil (TypeError in Python,
# where an error reply would read as Redis being unavailable).
_INCR = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, 1) == 's' then return false end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
"""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"shv name must be a non-empty string, not {name!r}")
    return name


def check_value(value: Any) -> Value:
    # bool is an int to Python, but True would come back as 1: refused, so
    # that what is read is what was written.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"a shv value is an int or a str, not {type(value).__name__}")
    return value


def encode(value: Value) -> bytes:
    return str(value).encode() if isinstance(value, int) else b"s" + value.encode("utf-8", "surrogateescape")


def decode(data: bytes | str) -> Value:
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")
    if raw[:1] == b"s":
        return raw[1:].decode("utf-8", "surrogateescape")
    return int(raw)


class MemoryShv:
    """The values in this process (no Redis: one process)."""

    def __init__(self) -> None:
        self.values: dict[str, Value] = {}

    async def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(check_name(name), default)

    async def set(self, name: str, value: Value) -> None:
        self.values[check_name(name)] = check_value(value)

    async def incr(self, name: str, by: int = 1) -> int:
        name = check_name(name)
        if isinstance(by, bool) or not isinstance(by, int):
            raise TypeError(f"incr by an int, not {by!r}")
        current = self.values.get(name, 0)
        if not isinstance(current, int):
            raise TypeError(f"shv {name!r} holds a string, not a number")
        self.values[name] = current + by
        return current + by

    async def delete(self, name: str) -> bool:
        return self.values.pop(check_name(name), None) is not None

    async def items(self) -> dict[str, Value]:
        return dict(self.values)


class RedisShv:
    """The values in one Redis hash, shared by every process and node on it."""

    def __init__(self, conn: Any, prefix: str) -> None:
        self.conn = conn
        self.key = prefix.encode("utf-8", "surrogateescape") + b"shv"

    @staticmethod
    def _field(name: str) -> bytes:
        return check_name(name).encode("utf-8", "surrogateescape")

    async def get(self, name: str, default: Any = None) -> Any:
        data = await self.conn.call("HGET", self.key, self._field(name))
        return default if data is None else decode(data)

    async def set(self, name: str, value: Value) -> None:
        await self.conn.call("HSET", self.key, self._field(name), encode(check_value(value)))

    async def incr(self, name: str, by: int = 1) -> int:
        field = self._field(name)
        if isinstance(by, bool) or not isinstance(by, int):
            raise TypeError(f"incr by an int, not {by!r}")
        result = await self.conn.bounded(self._eval(field, by))
        if result is None:
            raise TypeError(f"shv {name!r} holds a string, not a number")
        return int(result)

    async def _eval(self, field: bytes, by: int) -> Any:
        return await self.conn.eval(_INCR, [self.key], [field, str(by)])

    async def delete(self, name: str) -> bool:
        return bool(await self.conn.call("HDEL", self.key, self._field(name)))

    async def items(self) -> dict[str, Value]:
        flat = await self.conn.call("HGETALL", self.key)
        if isinstance(flat, dict):  # (txredisapi may hand a dict back)
            pairs = list(flat.items())
        else:
            pairs = list(zip(flat[::2], flat[1::2], strict=True))
        return {(k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else k): decode(v)
                for k, v in pairs}


class ShvModule:
    name: ClassVar[str] = "shv"

    def __init__(self, store: MemoryShv | RedisShv) -> None:
        self.store = store

    def start(self) -> None:
        pass

    def reconfigure(self, old: Config, new: Config) -> None:
        pass  # [redis] is start-up only

    def stats(self) -> Mapping[str, object]:
        return {}

    def stop(self) -> Deferred[None] | None:
        return None


class ShvSpec:
    """Always set up: Kamailio's pv module is always loaded."""

    name = "shv"
    requires: tuple[ServiceKey[Any], ...] = ()
    runtime_switch = False

    def enabled(self, config: Config) -> bool:
        return True

    def setup(self, core: CoreAPI, config: Config) -> ShvModule:
        conn = core.modules.get(REDIS)
        store: MemoryShv | RedisShv = MemoryShv() if conn is None else RedisShv(conn, config.redis.prefix)
        core.modules.provide(SHV, store)
        return ShvModule(store)


SPEC = ShvSpec()


def register_shv_methods(registry: RpcRegistry, core: CoreAPI) -> None:
    """``shv.get([name])`` and ``shv.set(name, value)``: kamcmd's twins.
    With worker processes they go to worker 0 (workerops): the values are
    in Redis, so any one process reads and writes them for all."""
    from sipsuite.ops.errors import (
        INTERNAL_ERROR,
        INVALID_PARAMS,
        NO_SUCH_ENTRY,
        STORE_UNAVAILABLE,
        RpcError,
    )

    def store() -> SharedVars:
        found = core.modules.get(SHV)
        if found is None:
            raise RpcError(INTERNAL_ERROR, "the shv module is not set up")
        return found

    async def get(name: str | None = None) -> dict[str, Any]:
        try:
            if name is None:
                return await store().items()
            value = await store().get(name)
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        except StoreUnavailable as exc:
            raise RpcError(STORE_UNAVAILABLE, f"shv: {exc}") from None
        if value is None:
            raise RpcError(NO_SUCH_ENTRY, f"no shv named {name!r}")
        return {name: value}

    async def set_(name: str, value: Any, type: str | None = None) -> dict[str, Any]:
        try:
            value = _typed(value, type)
            await store().set(name, value)
        except (TypeError, ValueError) as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        except StoreUnavailable as exc:
            raise RpcError(STORE_UNAVAILABLE, f"shv: {exc}") from None
        log.info("shv {n} set to {v!r} by the operator", n=name, v=value)
        return {name: value}

    registry.register("shv.get", get,
                      "shv.get([name]): a shared variable ($shv) and its value, or all of them")
    registry.register("shv.set", set_,
                      "shv.set(name, value[, type]): set a shared variable; type \"int\" or"
                      " \"str\" (kamcmd's shv.set name type value); without it an int stays"
                      " an int and a string a string")


def _typed(value: Any, kind: str | None) -> Value:
    if kind is None:
        return check_value(value)
    if kind in ("int", "i"):
        if isinstance(value, str):
            try:
                return int(value, 10)
            except ValueError:
                raise ValueError(f"not an int: {value!r}") from None
        return check_value(value)
    if kind in ("str", "s"):
        return value if isinstance(value, str) else str(check_value(value))
    raise ValueError(f"type must be \"int\" or \"str\", not {kind!r}")
