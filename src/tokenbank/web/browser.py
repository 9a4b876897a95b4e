"""Browsers signed in to the pages: the session cookie and CSRF tokens.

The session cookie holds a random token whose digest names a row in ``sessions``; it is
``HttpOnly``, ``SameSite=Lax`` and ``Secure`` outside a development server on localhost, and
in production its name carries the ``__Host-`` prefix (HTTPS only, this host only).
Every state-changing form carries a CSRF token: an HMAC, under the secret key, of the
session token (or, before sign-in, of a random ``tb_csrf`` cookie), so a page on another
site cannot forge it and it changes with every new session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import identity
from tokenbank.db import Database
from tokenbank.identity import SignedIn

SESSION_COOKIE = "tb_session"
CSRF_COOKIE = "tb_csrf"
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class Browsers:
    db: Database
    secret: bytes
    secure: bool
    session_ttl: timedelta
    #: ``__Host-`` in production (``Settings.cookie_prefix``).
    prefix: str = ""

    @property
    def session_cookie(self) -> str:
        return self.prefix + SESSION_COOKIE

    @property
    def csrf_cookie(self) -> str:
        return self.prefix + CSRF_COOKIE

    async def signed_in(self, request: Request) -> SignedIn | None:
        """The user behind the request's session cookie (looked up once per request)."""
        known = getattr(request.state, "signed_in", _UNKNOWN)
        if known is not _UNKNOWN:
            return cast(SignedIn | None, known)
        token = request.cookies.get(self.session_cookie)
        user = None if not token else await run_in_threadpool(self._lookup, token)
        request.state.signed_in = user
        return user

    def _lookup(self, token: str) -> SignedIn | None:
        with self.db.read() as conn:
            return identity.session_user(conn, token=token)

    def csrf_token(self, request: Request) -> tuple[str, str | None]:
        """The token for this page's forms, and a new pre-sign-in anchor to set as the
        ``tb_csrf`` cookie when the browser has neither cookie yet."""
        anchor = request.cookies.get(self.session_cookie) or request.cookies.get(self.csrf_cookie)
        if anchor:
            return self._sign(anchor), None
        fresh = secrets.token_urlsafe(24)
        return self._sign(fresh), fresh

    def keep_csrf_anchor(self, response: Response, anchor: str) -> None:
        response.set_cookie(
            self.csrf_cookie, anchor, httponly=True, secure=self.secure, samesite="lax"
        )

    def csrf_valid(self, request: Request, token: str | None) -> bool:
        anchor = request.cookies.get(self.session_cookie) or request.cookies.get(self.csrf_cookie)
        if not anchor or not token:
            return False
        # Bytes: compare_digest refuses non-ASCII str, and the token comes from the client.
        return hmac.compare_digest(self._sign(anchor).encode(), token.encode())

    def _sign(self, anchor: str) -> str:
        return hmac.new(self.secret, b"csrf:" + anchor.encode(), hashlib.sha256).hexdigest()

    def start_session(self, response: Response, token: str) -> None:
        response.set_cookie(
            self.session_cookie,
            token,
            max_age=int(self.session_ttl.total_seconds()),
            httponly=True,
            secure=self.secure,
            samesite="lax",
        )
        response.delete_cookie(self.csrf_cookie, secure=self.secure)

    def end_session(self, response: Response) -> None:
        response.delete_cookie(
            self.session_cookie, httponly=True, secure=self.secure, samesite="lax"
        )
