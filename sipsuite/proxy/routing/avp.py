"""``ctx.avp``: Kamailio's AVPs (``$avp(name)``), values that live with one
transaction.

One :class:`Avps` is kept in the transaction's :class:`~sipsuite.proxy.api.CallState`,
so ``request_route``, ``branch_route``, ``reply_route`` and ``failure_route``
of a transaction, and the hooks of the branches ``failure_route`` starts,
all see the same values; the next transaction starts empty.

A name holds a stack of values, newest on top, as in Kamailio:

=============================  ====================================================
Kamailio                       sipsuite
=============================  ====================================================
``$avp(x)``                    ``ctx.avp["x"]`` (KeyError when unset; or
                               ``ctx.avp.get("x")``, None when unset, like ``$null``)
``$avp(x) = v``                ``ctx.avp.add("x", v)``: pushes, the older values stay
(no one-step twin)             ``ctx.avp["x"] = v``: replaces the newest value only
``$(avp(x)[*])``               ``ctx.avp.all("x")``: every value, newest first
``$(avp(x)[*]) = v``           ``del ctx.avp["x"]; ctx.avp["x"] = v``
``$avp(x) = $null``            ``ctx.avp.pop("x")``: removes (and returns) the newest
``$(avp(x)[*]) = $null``       ``del ctx.avp["x"]``: removes them all
``is_avp_set("$avp(x)")``      ``"x" in ctx.avp``
=============================  ====================================================

Kamailio's ``$avp(x) = v`` never overwrites: it pushes, and a script that
assigns twice has two values (``$(avp(x)[1])`` is the first).  Here the
mapping assignment is the plain overwrite a Python reader expects, and a
push is said out loud with ``add``.  Values are any Python object, not only
the int or string an AVP may hold.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["Avps"]

_MISSING: Any = object()


class Avps(MutableMapping[str, Any]):
    """The AVPs of one transaction: a mapping of name -> newest value,
    with stacks of values behind it (``add``, ``all``, ``pop``)."""

    __slots__ = ("_stacks",)

    def __init__(self) -> None:
        # Oldest first, so a push is an append; never an empty list.
        self._stacks: dict[str, list[Any]] = {}

    def __getitem__(self, name: str) -> Any:
        stack = self._stacks.get(name)
        if not stack:
            raise KeyError(name)
        return stack[-1]

    def __setitem__(self, name: str, value: Any) -> None:
        stack = self._stacks.get(name)
        if stack:
            stack[-1] = value
        else:
            self._stacks[name] = [value]

    def __delitem__(self, name: str) -> None:
        del self._stacks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._stacks

    def __iter__(self) -> Iterator[str]:
        return iter(self._stacks)

    def __len__(self) -> int:
        return len(self._stacks)

    def add(self, name: str, value: Any) -> None:
        """Push ``value`` on top of ``name``'s values (Kamailio's ``$avp(x) = v``)."""
        self._stacks.setdefault(name, []).append(value)

    def all(self, name: str) -> list[Any]:
        """Every value of ``name``, newest first (``$(avp(x)[*])``); [] when unset."""
        stack = self._stacks.get(name)
        return stack[::-1] if stack else []

    def pop(self, name: str, default: Any = _MISSING) -> Any:
        """Remove and return the newest value of ``name`` (``$avp(x) = $null``);
        the one below it becomes the newest.  KeyError, or ``default``, when unset."""
        stack = self._stacks.get(name)
        if not stack:
            if default is _MISSING:
                raise KeyError(name)
            return default
        value = stack.pop()
        if not stack:
            del self._stacks[name]
        return value

    def as_dict(self) -> dict[str, list[Any]]:
        """name -> every value, newest first: a copy, for a report or a test."""
        return {name: stack[::-1] for name, stack in self._stacks.items()}

    def __repr__(self) -> str:
        return f"Avps({self.as_dict()!r})"
