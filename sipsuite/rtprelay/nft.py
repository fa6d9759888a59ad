"""A small ctypes binding of libnftables (libnftables.so.1), JSON in and out.

Only what the relay's kernel data plane needs: run a JSON batch (atomic:
every command of one call commits together or none does) and get the JSON
answer back.  Debian's python3-nftables wraps the same four calls, but lives
in the system's dist-packages, outside the project's virtualenv.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from typing import Any

__all__ = ["Nft", "NftError", "NftUnavailable"]

# enum nft_output_flags (nftables/libnftables.h)
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4


class NftUnavailable(Exception):
    """libnftables cannot be loaded: the nftables library is not installed."""


class NftError(Exception):
    """libnftables refused a command; the message is its error text."""


def _load() -> ctypes.CDLL:
    names = ["libnftables.so.1"]
    found = ctypes.util.find_library("nftables")
    if found and found not in names:
        names.append(found)
    last: OSError | None = None
    for name in names:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            last = exc
            continue
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        return lib
    raise NftUnavailable(f"libnftables.so.1 not found ({last})")


class Nft:
    """One libnftables context (netlink socket) of this process."""

    def __init__(self) -> None:
        self._lib = _load()
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise NftUnavailable("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON | _OUTPUT_HANDLE)
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a batch of JSON commands; the objects of the answer (a list
        command's), [] for a batch that only changes things.  NftError when
        the kernel or the parser refuses it: then nothing of it was applied."""
        if self._ctx is None:
            raise NftError("nftables context closed")
        if not commands:
            return []
        text = json.dumps({"nftables": commands}, separators=(",", ":"))
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
        if rc != 0:
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
            raise NftError(_first_error(err.decode(errors="replace")))
        if not out.strip():
            return []
        parsed = json.loads(out)
        items = parsed.get("nftables", []) if isinstance(parsed, dict) else []
        return [item for item in items if isinstance(item, dict)]

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "nftables refused the command"
