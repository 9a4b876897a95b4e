"""API key authentication with scopes.

Verified keys are remembered for a few seconds, so the hot path does not pay a database
round trip per request; a key revoked through the CLI stops working within that time (in this
process at once, if revoked here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tokenbank.apikeys.service import ApiKey, Scope, authenticate
from tokenbank.db import Database
from tokenbank.errors import Forbidden, InvalidApiKey
from tokenbank.identity import SignedIn, Throttle
from tokenbank.web.runtime import runtime


class KeyCache:
    """Verified keys by the ``Authorization`` header that carried them.

    Wrong keys are counted per client address (``throttle``'s ``api_key_ip`` limit): past
    the limit, that address gets 429 without its key being looked at, so keys cannot be
    guessed at speed. A key verified recently is never refused this way.
    """

    def __init__(
        self, db: Database, *, ttl_seconds: float, throttle: Throttle | None = None
    ) -> None:
        self._db = db
        self._ttl = ttl_seconds
        self._throttle = throttle
        self._known: dict[bytes, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()

    def _lookup(self, header: bytes, client: str) -> ApiKey:
        if self._throttle is not None:
            self._throttle.check("api_key_ip", client)
        try:
            secret = bearer_secret(header)
            with self._db.read() as conn:
                return authenticate(conn, secret=secret)
        except InvalidApiKey:
            if self._throttle is not None:
                self._throttle.hit("api_key_ip", client)
            raise

    async def verify(self, header: bytes | None, client: tuple[str, int] | None = None) -> ApiKey:
        """The key in an ``Authorization: Bearer`` header, or ``InvalidApiKey`` (or
        ``RateLimited`` for the ``client`` address when it sent too many wrong keys)."""
        if header is None:
            raise InvalidApiKey("missing API key: " + BEARER_HINT)
        hit = self._known.get(header)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        address = client[0] if client else "unknown"
        key = await run_in_threadpool(self._lookup, header, address)
        with self._lock:
            if len(self._known) > 10_000:  # bounded: unknown secrets are never stored
                self._known.clear()
            self._known[header] = (key, time.monotonic() + self._ttl)
        return key

    def forget(self, key_id: int) -> None:
        with self._lock:
            for header, (key, _) in list(self._known.items()):
                if key.id == key_id:
                    del self._known[header]


#: What a 401 says to a caller who sent a key, but not as a bearer token.
BEARER_HINT = "send the API key as 'Authorization: Bearer <key>'"


def bearer_secret(header: bytes) -> str:
    scheme, _, secret = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise InvalidApiKey(BEARER_HINT if header.strip() else "missing API key")
    return secret.strip()


def _authorization(request: Request) -> bytes | None:
    # Straight from the raw headers: building Starlette's Headers costs more than the check.
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


async def authorize(
    request: Request, scope: Scope, *, signed_in_users: bool = False
) -> ApiKey | SignedIn:
    """The request's API key, which must allow ``scope``.

    With ``signed_in_users`` (read-only routes about one user) a browser session works too,
    but only for the user it belongs to, or for an admin user: no reading another user's
    data by changing the id in the URL.
    """
    header = _authorization(request)
    parts = runtime(request)
    if signed_in_users and header is None:
        user = await parts.browsers.signed_in(request)
        if user is not None:
            if not user.is_admin and request.path_params.get("user_id") != user.user_id:
                raise Forbidden("you can only see your own tokens")
            return user
    key = await parts.keys.verify(header, request.scope.get("client"))
    if not key.allows(scope):
        raise Forbidden(f"this API key lacks the {scope.value!r} scope")
    return key


def requires(
    scope: Scope, *, signed_in_users: bool = False
) -> Callable[[Request], Awaitable[ApiKey | SignedIn]]:
    """``authorize`` as a dependency. (The two busiest routes call ``authorize`` themselves:
    resolving a sub-dependency cost more per request than checking the key.)"""

    async def dependency(request: Request) -> ApiKey | SignedIn:
        return await authorize(request, scope, signed_in_users=signed_in_users)

    dependency.__name__ = f"requires_{scope.value}"
    return dependency
