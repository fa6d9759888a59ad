"""The management interface's error codes, in one table: JSON-RPC 2.0's own and
sipsuite's (-32000 to -32099, the range JSON-RPC leaves to servers), and the
RpcError a method raises to answer with one.

Each code has one meaning whatever the method, so a client (sipsuite-ctl, a
script) can act on the code alone; methods and sipsuite-ctl import them from
here, never spell the number.
"""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application errors (the -32000..-32099 "server error" range).
USER_EXISTS = -32001
NO_SUCH_USER = -32002
STORE_UNAVAILABLE = -32003
#: The feature the method serves is not configured or not in use (no
#: dispatcher sets, no TLS socket): the method exists all the same.
NOT_IN_USE = -32010
#: A reload was refused and the old one stays in use (dispatcher list,
#: routing class, TLS certificate).
REFUSED = -32011
#: The entry named does not exist (a dispatcher destination).
NO_SUCH_ENTRY = -32012


class RpcError(Exception):
    """An error a method reports to the caller as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error
