"""A SIP client's side of digest authentication, computed with hashlib,
independently of sipsuite's own digest module."""

from __future__ import annotations

import hashlib
import re
import secrets

import procs


def _h(alg: str, text: str) -> str:
    return (hashlib.sha256 if alg == "SHA-256" else hashlib.md5)(text.encode()).hexdigest()


def challenges(resp: procs.SipMessage, header: str) -> list[dict[str, str]]:
    """The Digest challenges of ``header``, each as {param: value}."""
    pattern = re.compile(r'([\w-]+)=(?:"([^"]*)"|([^\s,]+))')
    # Whole header lines: a challenge's own commas must not split it.
    return [{k.lower(): a or b for k, a, b in pattern.findall(value)}
            for name, value in resp.headers if name == header]


def credentials(ch: dict[str, str], user: str, password: str, method: str, uri: str,
                nc: int = 1, alg: str | None = None) -> str:
    alg = alg or ch.get("algorithm", "MD5")
    cnonce = secrets.token_hex(8)
    ha1 = _h(alg, f"{user}:{ch['realm']}:{password}")
    ha2 = _h(alg, f"{method}:{uri}")
    ncs = f"{nc:08x}"
    response = _h(alg, f"{ha1}:{ch['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{user}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm={alg}, qop=auth, nc={ncs}, '
            f'cnonce="{cnonce}"')
