"""How a SIP Call-ID or tag travels as one RTPProxy protocol token.

RTPProxy's control protocol splits a command on spaces, tabs, CR and LF,
reads ``&&`` as a sub-command and ``tag;N`` as a tag with a media number.
Kamailio's rtpproxy module copies the Call-ID and tags into the command
as they are, so an RFC 3261 Call-ID (``word ["@" word]``) or tag
(``token``) arrives intact, and anything else (a space, a tab, ``;``,
non-ASCII text, a raw 0xFF byte) breaks the command apart or names the
wrong session.  Our parser accepts such values (RFC 3261 section 25 is
stricter than what phones send), so the proxy encodes them instead of
refusing them or failing the call:

* **Raw** -- a value of 1..:data:`MAX_TOKEN` characters, every one an RFC
  3261 ``word`` character or ``@``, goes as it is: byte for byte what
  Kamailio sends, so both proxies name a session alike and an operator
  sees the real Call-ID.
* **Escaped** -- any other value goes as ``#`` followed by its bytes
  (UTF-8, with the parser's undecodable bytes restored as they arrived)
  %-escaped: every byte outside the ``word`` set, and ``%`` itself, as
  ``%XX``.  ``a b@h`` becomes ``#a%20b@h``.  ``#`` is not a ``word``
  character, so an escaped value never equals a raw one.
* **Digest** -- when the escaped form would be longer than
  :data:`MAX_TOKEN` (and for a raw-safe value over it), ``##`` and the
  first 32 hex digits of the value's SHA-256; an escaped value cannot
  start with ``##`` (``#`` is always escaped there).

A Call-ID handed to the relay client may carry Kamailio's ``;BRANCH``
suffix (``CALLID;BRANCH``, one session per branch): :func:`encode_call_id`
encodes the two parts each and keeps the ``;``.  So a SIP Call-ID that
itself holds a ``;`` (RFC 3261 allows none) reads as call and branch:
still one deterministic token, the same for every command of the call.

Every form is printable ASCII without ``;``, ``&`` or whitespace, so it is
one token for our relay and for Sippy rtpproxy alike, and ``;N`` after a
tag stays the media number.  The encoding is a pure function of the value:
a retransmitted INVITE, a re-INVITE and the BYE's delete all name the same
session, on any proxy node.  :func:`decode_id` undoes the first two forms
(``sipsuite-ctl relay sessions CALL-ID`` looks a call up by either its SIP
Call-ID or the token).
"""

from __future__ import annotations

import hashlib
import re
import string

__all__ = ["MAX_TOKEN", "decode_call_id", "decode_id", "encode_call_id", "encode_id", "is_raw"]

#: Longest token sent for one identifier; longer ones go as a digest.  Real
#: Call-IDs are well under 100 characters; 256 keeps a U command with a
#: Call-ID and two tags a few hundred bytes, far under any relay's limit.
MAX_TOKEN = 256

# RFC 3261 section 25.1 "word" characters, plus the "@" of a Call-ID.
_WORD_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~()<>:\\\"/[]?{}@"
_WORD = frozenset(_WORD_CHARS)
_WORD_BYTES = frozenset(_WORD_CHARS.encode("ascii"))
_ESCAPED = "#"
_DIGEST = "##"
_DIGEST_HEX = 32


def is_raw(value: str) -> bool:
    """Whether ``value`` goes as it is (see the module's rules)."""
    return 0 < len(value) <= MAX_TOKEN and all(c in _WORD for c in value)


def _bytes(value: str) -> bytes:
    try:
        # The parser decodes header text as UTF-8 with surrogateescape: this
        # gives back the bytes that arrived, a raw 0xFF included.
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A lone surrogate no parser produces (a routing script's own string).
        return value.encode("utf-8", "surrogatepass")


def encode_id(value: str) -> str:
    """The protocol token for a Call-ID or tag; deterministic, never raises."""
    if is_raw(value):
        return value
    data = _bytes(value)
    if 1 + len(data) <= MAX_TOKEN:  # cheap bound before building the escape
        escaped = _ESCAPED + "".join(
            chr(b) if b in _WORD_BYTES and b != 0x25 else f"%{b:02X}" for b in data)
        if len(escaped) <= MAX_TOKEN:
            return escaped
    return _DIGEST + hashlib.sha256(data).hexdigest()[:_DIGEST_HEX]


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def decode_id(token: str) -> str:
    """The value an escaped token stands for; a raw token, a digest and
    anything that is not our escape come back unchanged."""
    if not token.startswith(_ESCAPED) or token.startswith(_DIGEST):
        return token
    body = token[len(_ESCAPED):]
    rest = _ESCAPE.sub("", body)
    if "%" in rest or not all(c in _WORD for c in rest):
        return token  # not our escape: a raw value from some other controller
    data = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), body).encode("latin-1")
    return data.decode("utf-8", "surrogateescape")


def encode_call_id(call_id: str) -> str:
    """``CALLID[;BRANCH]`` as a token: each part encoded, the ``;`` kept."""
    head, sep, branch = call_id.partition(";")
    return encode_id(head) + (sep + encode_id(branch) if sep else "")


def decode_call_id(token: str) -> str:
    """What :func:`encode_call_id` was given, for escaped (and raw) parts."""
    head, sep, branch = token.partition(";")
    return decode_id(head) + (sep + decode_id(branch) if sep else "")
