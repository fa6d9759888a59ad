"""The subscriber and location methods of the management interface (``user.*``,
``ul.*``): kamcmd's ``ul.*`` and kamctl's ``add``/``rm``/``passwd``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from sipsuite.ops.errors import (
    INVALID_PARAMS,
    NO_SUCH_USER,
    STORE_UNAVAILABLE,
    USER_EXISTS,
    RpcError,
)
from sipsuite.ops.server import RpcRegistry
from sipsuite.proxy.registrar.location import (
    Binding,
    LocationStore,
    StoreUnavailable,
    Subscriber,
    SubscriberStore,
)
from sipsuite.sip.uri import URI

# RFC 3261 25.1 user = 1*( unreserved / escaped / user-unreserved )
_USER_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/%")
_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _check_user(value: Any, what: str = "user") -> str:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{what} must be a string")
    if not value or not _USER_CHARS.issuperset(value) or _ESCAPE_RE.search(value):
        raise RpcError(INVALID_PARAMS, f"{what} {value!r} is not a SIP user part"
                       " (letters, digits and -_.!~*'()&=+$,;?/%XX)")
    return value


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{what} must be a string")
    return value


def aor_key(aor: Any) -> str:
    """The location key of an AOR given as "alice", "alice@example.com" or a
    SIP URI: the unescaped user part (one namespace for every domain)."""
    if not isinstance(aor, str):
        raise RpcError(INVALID_PARAMS, "aor must be a string")
    text = aor
    if ":" in text.partition("@")[0] or "@" in text:
        if not re.match(r"sips?:", text, re.IGNORECASE):
            text = "sip:" + text
        try:
            uri = URI.parse(text)
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, f"bad aor {aor!r}: {exc}") from None
        if uri.scheme not in ("sip", "sips") or not uri.user:
            raise RpcError(INVALID_PARAMS, f"bad aor {aor!r}: no user part")
        return uri.user_unescaped
    return unquote(_check_user(aor, "aor"), errors="surrogateescape")


def _contact_uri(contact: Any) -> URI:
    _check_str(contact, "contact")
    try:
        uri = URI.parse(contact)
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, f"bad contact {contact!r}: {exc}") from None
    if uri.scheme not in ("sip", "sips"):
        raise RpcError(INVALID_PARAMS, f"bad contact {contact!r}: not a sip or sips URI")
    return uri


def _same_contact(binding: Binding, target: URI) -> bool:
    try:
        return binding.uri.equivalent(target)
    except ValueError:  # a stored contact that no longer parses matches nothing
        return False


def _store_errors(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Report a store whose backend is down as -32003 instead of an internal error:
    it is the operator's to fix (start Redis), not a bug."""

    @functools.wraps(func)  # keeps the signature the registry binds params against
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except StoreUnavailable as exc:
            raise RpcError(STORE_UNAVAILABLE, f"store unavailable: {exc}") from None

    return wrapper


def _subscriber_info(sub: Subscriber) -> dict[str, Any]:
    # Never the HA1 values: they are password equivalents for their realm.
    return {"user": sub.user, "realm": sub.realm, "algorithms": list(sub.ha1)}


def _binding_info(b: Binding, now: float) -> dict[str, Any]:
    return {
        "contact": b.contact,
        "expires": b.remaining(now),
        "q": b.q,
        "received": b.received,
        "path": list(b.path),
        "user_agent": b.user_agent,
        "instance": b.instance,
        "reg_id": b.reg_id,
        "nat": b.nat,
        "call_id": b.call_id,
        "cseq": b.cseq,
        "socket": b.socket,
        "flow": b.flow,
        "outbound": b.outbound,
    }


def register_store_methods(
    registry: RpcRegistry,
    location: LocationStore,
    subscribers: SubscriberStore,
    realm: str,
    clock: Callable[[], float] = time.time,
) -> None:
    """Add ``user.*`` (kamctl add/passwd/rm) and ``ul.*`` (kamctl ul) methods."""

    @_store_errors
    async def user_add(user: str, password: str) -> dict[str, Any]:
        _check_user(user)
        _check_str(password, "password")
        sub = Subscriber.from_password(user, realm, password)
        if not await subscribers.add(sub):
            raise RpcError(USER_EXISTS, "user exists", {"user": user})
        return _subscriber_info(sub)

    @_store_errors
    async def user_passwd(user: str, password: str) -> dict[str, Any]:
        _check_user(user)
        _check_str(password, "password")
        sub = Subscriber.from_password(user, realm, password)
        if not await subscribers.replace(sub):
            raise RpcError(NO_SUCH_USER, "no such user", {"user": user})
        return _subscriber_info(sub)

    @_store_errors
    async def user_rm(user: str) -> dict[str, Any]:
        _check_user(user)
        if not await subscribers.remove(user):
            raise RpcError(NO_SUCH_USER, "no such user", {"user": user})
        return {"user": user}

    @_store_errors
    async def user_list() -> list[dict[str, Any]]:
        return [_subscriber_info(s) for s in await subscribers.list()]

    @_store_errors
    async def ul_show(aor: str | None = None) -> list[dict[str, Any]]:
        keys = await location.aors() if aor is None else [aor_key(aor)]
        shown = []
        for key in keys:
            bindings = await location.lookup(key)
            if bindings:
                now = clock()
                shown.append({"aor": key, "bindings": [_binding_info(b, now) for b in bindings]})
        return shown

    @_store_errors
    async def ul_add(aor: str, contact: str, expires: int | None = None) -> dict[str, Any]:
        key = aor_key(aor)
        target = _contact_uri(contact)
        if expires is not None and (
                not isinstance(expires, int) or isinstance(expires, bool) or expires <= 0):
            raise RpcError(INVALID_PARAMS, "expires must be a positive integer (seconds) or null")

        def change(bindings: list[Binding], now: float) -> bool:
            # Pure (the store may retry it): builds the new binding from its arguments alone.
            new = Binding(contact, expires=None if expires is None else now + expires, updated=now)
            for i, b in enumerate(bindings):
                if _same_contact(b, target):
                    bindings[i] = new
                    return True
            bindings.append(new)
            return False

        replaced = await location.update(key, change)
        return {"aor": key, "contact": contact, "expires": expires, "replaced": replaced}

    @_store_errors
    async def ul_rm(aor: str, contact: str | None = None) -> dict[str, Any]:
        key = aor_key(aor)
        if contact is not None:
            _contact_uri(contact)  # the store would raise ValueError: -32602, not -32603
        return {"removed": await location.remove(key, contact)}

    registry.register("user.add", user_add,
                      "user.add(user, password): add a subscriber (error -32001 if it exists)")
    registry.register("user.passwd", user_passwd,
                      "user.passwd(user, password): change a subscriber's password")
    registry.register("user.rm", user_rm, "user.rm(user): remove a subscriber")
    registry.register("user.list", user_list,
                      "user.list(): every subscriber with its realm and digest algorithms")
    registry.register("ul.show", ul_show,
                      "ul.show(aor=null): the current bindings of AOR, or of every AOR")
    registry.register("ul.add", ul_add,
                      "ul.add(aor, contact, expires=null): add or replace a binding;"
                      " expires in seconds, null = permanent")
    registry.register("ul.rm", ul_rm,
                      "ul.rm(aor, contact=null): remove one contact, or every binding of AOR")
