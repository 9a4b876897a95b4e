"""Rate limits on sign-in and registration, with the ``limits`` library.

The counters live in the database by default (``DatabaseStorage``), so every process and
every host shares them with nothing else to run; any ``limits`` storage URI (Redis,
Memcached...) can be named instead. Fixed windows: an attacker gets a handful of guesses per
window, and an owner locked out by someone else's guessing waits at most one window.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.dialects import postgresql, sqlite

from tokenbank.columns import utcnow
from tokenbank.db import Batch, Database, Statement, driver_datetime
from tokenbank.errors import ConfigurationError, RateLimited
from tokenbank.identity.models import rate_limits


def _count(insert: postgresql.Insert | sqlite.Insert) -> Statement:
    """One hit counted: a new window, or one more hit in the current one."""
    values = insert.values(
        key=sa.bindparam("key"),
        hits=sa.bindparam("hits"),
        expires_at=sa.bindparam("expires_at"),
    )
    # The old window ended: start a new one.
    over = rate_limits.c.expires_at <= sa.bindparam("now")
    # Built and compiled once: a hit is on the path of every model call.
    return Statement(
        values.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "hits": sa.case(
                    (over, values.excluded.hits),
                    else_=rate_limits.c.hits + values.excluded.hits,
                ),
                "expires_at": sa.case(
                    (over, values.excluded.expires_at), else_=rate_limits.c.expires_at
                ),
            },
        ).returning(rate_limits.c.hits, rate_limits.c.expires_at)
    )


_COUNT = {
    "sqlite": _count(sqlite.insert(rate_limits)),
    "postgresql": _count(postgresql.insert(rate_limits)),
}


def _hit(dialect: str, key: str, hits: int, seconds: float, now: datetime) -> dict[str, Any]:
    """``_COUNT``'s values: ``hits`` more on ``key``, in a window of ``seconds`` from now
    if a new one starts."""
    return {
        "key": key,
        "hits": hits,
        "expires_at": driver_datetime(dialect, now + timedelta(seconds=seconds)),
        "now": driver_datetime(dialect, now),
    }


@dataclass(frozen=True, slots=True)
class Counter:
    """A hit that a caller counts in its own transaction, in a round trip it makes anyway
    (a model call's admission, sent as one ``Batch``), rather than in one of its own.
    ``key`` names the counter's row, ``most`` the hits a window allows, for the caller's
    statements that depend on it."""

    key: str
    seconds: int
    most: int

    def count_in(self, batch: Batch, now: datetime) -> Callable[[], None]:
        """Queue the hit in ``batch``; once it is sent, the function returned raises
        ``RateLimited`` if the hit went past the limit."""
        rows = batch.add(_COUNT["postgresql"], _hit("postgresql", self.key, 1, self.seconds, now))

        def check() -> None:
            ((hits, expires_at),) = rows()
            if hits > self.most:
                raise RateLimited(max(1, int((expires_at - now).total_seconds()) + 1))

        return check


class DatabaseStorage(Storage):
    """A ``limits`` storage on tokenbank's own database: one upsert per hit."""

    STORAGE_SCHEME = ["tokenbank+database"]  # noqa: RUF012 - the base class declares it

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db
        self._upsert = _COUNT[db.dialect]

    @property
    def dialect(self) -> str:
        return self._db.dialect

    @property
    def base_exceptions(self) -> type[Exception]:
        return sa.exc.SQLAlchemyError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        with self._db.autocommit() as conn:
            rows = self._upsert.rows(conn, _hit(self._db.dialect, key, amount, expiry, utcnow()))
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

    def counter(self, name: str, who: str) -> Counter | None:
        """The hit ``hit(name, who)`` would count, for a caller to count it in a statement
        of its own on PostgreSQL (see ``Counter``); None where the counters are elsewhere."""
        storage = self._limiter.storage
        if not isinstance(storage, DatabaseStorage) or storage.dialect != "postgresql":
            return None
        item = self._limits[name]
        return Counter(
            key=item.key_for(name, _identity(who)),
            seconds=item.get_expiry(),
            most=item.amount,
        )

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
