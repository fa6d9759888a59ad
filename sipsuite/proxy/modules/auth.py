"""Digest authentication of requests, like Kamailio's auth_db module:
``auth_check`` / ``auth_challenge`` / ``consume_credentials``.

Nonces are stateless (an HMAC over their issue time with ``[auth] secret``),
so any proxy node sharing the secret accepts a nonce another one issued. The
nonce-count check against replays is kept per node, as Kamailio keeps it per
instance: a replay sent to another node is caught there only by the nonce's
short lifetime.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from sipsuite.log import get_logger
from sipsuite.proxy.registrar.location import StoreUnavailable, SubscriberStore
from sipsuite.sip import digest

if TYPE_CHECKING:
    from sipsuite.config import AuthConfig
    from sipsuite.proxy.routing.base import RequestContext

log = get_logger("sipsuite.proxy.auth")


class Authenticator:
    def __init__(self, subscribers: SubscriberStore, cfg: AuthConfig, clock: Any = time.time,
                 retry_after: int = 5) -> None:
        self.subscribers = subscribers
        self.cfg = cfg
        self.retry_after = str(retry_after)
        self.realm = cfg.realm
        self.clock = clock
        secret = cfg.secret.encode() if cfg.secret else secrets.token_bytes(32)
        self.nonces = digest.NonceFactory(secret, cfg.nonce_expires)
        self.counter = digest.NonceCounter()

    def _credentials(self, ctx: RequestContext, header: str) -> digest.Credentials | None:
        """Our realm's credentials among the request's (a request that crossed
        several proxies may carry credentials for each of them)."""
        for value in ctx.request.header_all(header):
            creds = digest.parse_credentials(value)
            if creds is not None and creds.realm == self.realm:
                return creds
        return None

    def challenge(self, ctx: RequestContext, proxy: bool, stale: bool = False) -> None:
        now = self.clock()
        nonce = self.nonces.make(now, self.realm)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        headers = [
            (name, digest.challenge(self.realm, nonce, alg, stale=stale)) for alg in self.cfg.algorithms
        ]
        if proxy:
            ctx.reply(407, "Proxy Authentication Required", headers)
        else:
            ctx.reply(401, "Unauthorized", headers)

    async def check(self, ctx: RequestContext, user: str, *, proxy: bool) -> bool:
        """True when the request carries valid credentials of ``user``;
        otherwise it has been answered (401/407 challenge, 403, or 500 when
        the subscriber store is unavailable) and the caller stops."""
        header = "proxy-authorization" if proxy else "authorization"
        creds = self._credentials(ctx, header)
        if creds is None or creds.algorithm not in self.cfg.algorithms:
            self.challenge(ctx, proxy)
            return False
        now = self.clock()
        state = self.nonces.check(creds.nonce, now, self.realm)
        if state == "invalid":
            self.challenge(ctx, proxy)
            return False
        try:
            sub = await self.subscribers.get(creds.username)
        except StoreUnavailable as e:
            log.warn("auth of {u}: subscriber store unavailable: {e}", u=creds.username, e=e)
            ctx.reply(500, "Subscriber Store Unavailable", [("Retry-After", self.retry_after)])
            return False
        ha1 = sub.ha1.get(creds.algorithm) if sub is not None and sub.realm == self.realm else None
        if ha1 is None or not digest.verify(creds, ctx.request.method, ha1):
            log.info("{m} from {s}: wrong credentials for {u}", m=ctx.request.method, s=ctx.source,
                     u=creds.username)
            self.challenge(ctx, proxy)
            return False
        if state == "stale":
            # Right password, old nonce: the phone retries with a new one
            # without asking its user (RFC 2617 3.2.1 stale).
            self.challenge(ctx, proxy, stale=True)
            return False
        if creds.qop is not None and not self.counter.accept(
            creds.nonce, creds.nc or "", now + self.cfg.nonce_expires, now
        ):
            log.info("{m} from {s}: replayed nonce-count for {u}", m=ctx.request.method,
                     s=ctx.source, u=creds.username)
            self.challenge(ctx, proxy)
            return False
        if creds.username != user:
            ctx.reply(403, "Forbidden auth ID")
            return False
        return True

    def consume(self, ctx: RequestContext, *, proxy: bool) -> None:
        """Remove our credentials before forwarding (consume_credentials):
        the next hop has no use for them and should not see them."""
        header = "proxy-authorization" if proxy else "authorization"
        req = ctx.request
        values = req.header_all(header)
        if not values:
            return
        keep = []
        for value in values:
            creds = digest.parse_credentials(value)
            if creds is None or creds.realm != self.realm:
                keep.append(value)
        req.remove_header(header)
        name = "Proxy-Authorization" if proxy else "Authorization"
        for value in keep:
            req.add_header(name, value, top=False)
