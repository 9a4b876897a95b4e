"""Who is signed in to the pages: passwords, server-side sessions, one-time portal links and
the rate limits that slow password guessing. Calls ``users``; knows nothing of HTTP."""

from tokenbank.errors import InvalidCredentials, InvalidPortalLink, RateLimited
from tokenbank.identity.passwords import Passwords
from tokenbank.identity.service import (
    SignedIn,
    change_password,
    check_next_path,
    create_portal_link,
    open_session,
    redeem_portal_link,
    register,
    revoke_session,
    revoke_sessions,
    session_user,
    set_admin,
    set_language,
    set_password,
    sign_in,
    sweep,
)
from tokenbank.identity.throttle import DatabaseStorage, Throttle, storage_for

__all__ = [
    "DatabaseStorage",
    "InvalidCredentials",
    "InvalidPortalLink",
    "Passwords",
    "RateLimited",
    "SignedIn",
    "Throttle",
    "change_password",
    "check_next_path",
    "create_portal_link",
    "open_session",
    "redeem_portal_link",
    "register",
    "revoke_session",
    "revoke_sessions",
    "session_user",
    "set_admin",
    "set_language",
    "set_password",
    "sign_in",
    "storage_for",
    "sweep",
]
