"""How names become Redis keys and values: the key prefix, and str <-> bytes that
keeps any AOR or user (even one with lone surrogates) round-trip safe.
"""

from __future__ import annotations

DEFAULT_PREFIX = "sipsuite:"


def to_bytes(text: str) -> bytes:
    # surrogateescape: an AOR unescaped from "%FF" holds a lone surrogate, which
    # goes to Redis as the original byte (and comes back as the same str).
    return text.encode("utf-8", "surrogateescape")


def to_str(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")


def key_name(name: str) -> bytes:
    """The key suffix of an AOR or user: itself, but a ':' before "index" and
    before a name starting with ':', so that no name is the index's key and
    still no two names share a key."""
    return b":" + to_bytes(name) if name == "index" or name.startswith(":") else to_bytes(name)


def name_of_key(suffix: bytes) -> str:
    """The AOR or user whose key suffix ``suffix`` is (``key_name`` undone)."""
    name = to_str(suffix)
    return name[1:] if name.startswith(":") else name
