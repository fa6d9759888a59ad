"""The management interface's error codes, in one table: JSON-RPC 2.0's own and
sipsuite's (-32000 to -32099, the range JSON-RPC leaves to servers), and the
RpcError a method raises to answer with one.
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
