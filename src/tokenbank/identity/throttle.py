"""Rate limits on sign-in and registration, with the ``limits`` library.

The counters live in the database by default (``DatabaseStorage``), so every process and
every host shares them with nothing else to run; any ``limits`` storage URI (Redis,
Memcached...) can be named instead. Fixed windows: an attacker gets a handful of guesses per
window, and an owner locked out by someone else's guessing waits at most one window.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from datetime import UTC, timedelta
from typing import Any

import sqlalchemy as sa
from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.dialects import postgresql, sqlite

from tokenbank.columns import utcnow
from tokenbank.db import Database, Statement, driver_datetime
from tokenbank.errors import ConfigurationError, RateLimited
from tokenbank.identity.models import rate_limits


class DatabaseStorage(Storage):
    """A ``limits`` storage on tokenbank's own database: one upsert per hit."""

    STORAGE_SCHEME = ["tokenbank+database"]  # noqa: RUF012 - the base class declares it

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db
        dialect = sqlite if db.dialect == "sqlite" else postgresql
        self._insert = dialect.insert(rate_limits)
        insert = self._insert.values(
            key=sa.bindparam("key"),
            hits=sa.bindparam("hits"),
            expires_at=sa.bindparam("expires_at"),
        )
        # The old window ended: start a new one.
        over = rate_limits.c.expires_at <= sa.bindparam("now")
        # Built and compiled once: a hit is on the path of every model call.
        self._upsert = Statement(
            insert.on_conflict_do_update(
                index_elements=["key"],
                set_={
                    "hits": sa.case(
                        (over, insert.excluded.hits),
                        else_=rate_limits.c.hits + insert.excluded.hits,
                    ),
                    "expires_at": sa.case(
                        (over, insert.excluded.expires_at), else_=rate_limits.c.expires_at
                    ),
                },
            ).returning(rate_limits.c.hits)
        )

    @property
    def base_exceptions(self) -> type[Exception]:
        return sa.exc.SQLAlchemyError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = utcnow()
        dialect = self._db.dialect
        with self._db.autocommit() as conn:
            rows = self._upsert.rows(
                conn,
                {
                    "key": key,
                    "hits": amount,
                    "expires_at": driver_datetime(dialect, now + timedelta(seconds=expiry)),
                    "now": driver_datetime(dialect, now),
                },
            )
        return int(rows[0][0])

    def _live(self, key: str) -> sa.Row[*tuple[Any, ...]] | None:
        with self._db.read() as conn:
            return conn.execute(
                sa.select(rate_limits.c.hits, rate_limits.c.expires_at).where(
                    rate_limits.c.key == key, rate_limits.c.expires_at > utcnow()
                )
            ).first()

    def get(self, key: str) -> int:
        row = self._live(key)
        return 0 if row is None else int(row.hits)

    def get_expiry(self, key: str) -> float:
        row = self._live(key)
        return time.time() if row is None else row.expires_at.astimezone(UTC).timestamp()

    def check(self) -> bool:
        try:
            with self._db.read() as conn:
                conn.execute(sa.select(1))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        with self._db.autocommit() as conn:
            return conn.execute(sa.delete(rate_limits)).rowcount

    def clear(self, key: str) -> None:
        with self._db.autocommit() as conn:
            conn.execute(sa.delete(rate_limits).where(rate_limits.c.key == key))


class Throttle:
    """Named limits (``{"login_ip": "30/10 minutes", ...}``) counted in ``storage``."""

    def __init__(self, storage: Storage, limits: Mapping[str, str]) -> None:
        self._limiter = FixedWindowRateLimiter(storage)
        try:
            self._limits: dict[str, RateLimitItem] = {
                name: parse(text) for name, text in limits.items()
            }
        except ValueError as exc:
            raise ConfigurationError(f"rate limit: {exc}") from None

    def hit(self, name: str, who: str) -> None:
        """Count one attempt by ``who`` (an IP, an email); ``RateLimited`` past the limit."""
        item, identity = self._limits[name], _identity(who)
        if not self._limiter.hit(item, name, identity):
            self._refuse(item, name, identity)

    def check(self, name: str, who: str) -> None:
        """``RateLimited`` if ``who`` is already past the limit; counts nothing."""
        item, identity = self._limits[name], _identity(who)
        if not self._limiter.test(item, name, identity):
            self._refuse(item, name, identity)

    def _refuse(self, item: RateLimitItem, name: str, identity: str) -> None:
        reset = self._limiter.get_window_stats(item, name, identity).reset_time
        raise RateLimited(max(1, int(reset - time.time()) + 1))


def _identity(who: str) -> str:
    # Hashed: keys stay short and no email is stored in the counters table.
    return hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def storage_for(uri: str, db: Database) -> Storage:
    """``database`` for tokenbank's own database, else any ``limits`` storage URI."""
    if uri == "database":
        return DatabaseStorage(db)
    try:
        storage = storage_from_string(uri)
    except Exception as exc:  # limits raises several kinds for a bad URI
        raise ConfigurationError(f"rate limit storage {uri!r}: {exc}") from None
    if not isinstance(storage, Storage):
        raise ConfigurationError(f"rate limit storage {uri!r}: use a synchronous storage")
    return storage
