"""Engines for SQLite and PostgreSQL, the units of work, and what a database failure means.

There is no single commit point; there are five units of work, because one would either
cost the hot path its round trips or leave rare multi-statement steps half applied:

- ``Database.transaction()``: several operations that stand or fall together. Commits when
  the block ends, rolls back if it raises.
- ``Database.autocommit()``: one operation, as the API runs per request. On PostgreSQL each
  statement commits alone, so a spend or a credit is one round trip and its wallet row is
  locked only while the server runs it; on SQLite it is ``transaction()``.
- ``atomic(conn)``: a step of several statements inside either of them. It opens a
  transaction of its own, and commits it, only where each statement would otherwise commit
  alone (``autocommit()`` on PostgreSQL); inside a transaction it adds nothing. This is
  why service functions are handed a connection and still may commit: a ledger function
  that writes more than one statement does so in ``atomic``, whoever opened the unit.
- ``Database.async_autocommit()``: ``autocommit()`` on an asyncio connection, for the HTTP
  service's hottest routes (PostgreSQL only). A ``Batch`` sent on it may hold a whole
  transaction, ``BEGIN`` to ``COMMIT``, in one round trip (a model call's admission).
- ``Database.read()``: reads that never wait behind writers; nothing written there is
  meant to last (on SQLite the block's transaction is rolled back).

Services that must commit between steps (a payment provider's call between two writes, an
inbox worker taking one event at a time) take the ``Database`` and open their own units.

Work to do only once a change is durable (a log line about it) is registered with
``after_commit``, which every unit here honours.

A database that is down, restarting, full, read-only or locked past its timeout is not a
bug in the request: ``unavailable()`` names those failures, so every entry point can answer
"try again shortly" (HTTP 503 with ``Retry-After``) instead of crashing. Nothing is half
written either way: each unit of work, and each ``atomic`` step, commits whole or not at all.

PostgreSQL runs at READ COMMITTED: conditional updates (``... WHERE balance >= n``) and
constraints carry the invariants, and a hot wallet does not pay SERIALIZABLE's retries.

SQLite allows one writer at a time. Every write transaction starts with ``BEGIN IMMEDIATE``
(a deferred transaction that reads and then writes can fail with SQLITE_BUSY whatever the
busy timeout) and, inside one process, writers queue on a lock instead of in SQLite's busy
handler, whose sleep back-off put p99 latency at 0.4 to 0.9 s when measured on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    contextmanager,
    nullcontext,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import psycopg
import psycopg_pool
import sqlalchemy as sa
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.compiler import SQLCompiler

from tokenbank.errors import ConfigurationError, DatabaseUnavailable, SchemaOutOfDate, Unavailable

if TYPE_CHECKING:
    from tokenbank.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

Dialect = Literal["sqlite", "postgresql"]

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: A database that does not answer is "unavailable" (503) after this long, not after the
#: operating system's TCP timeout: connecting, and waiting for a free pooled connection.
CONNECT_TIMEOUT_SECONDS = 5
POOL_TIMEOUT_SECONDS = 10


def json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class Statement:
    """A fixed statement compiled once per dialect and run straight on the driver's cursor.

    For the few statements on the spend path only: SQLAlchemy's per-execution work (cache
    lookup, execution context, result wrapping) cost more than the statement itself there.
    Values go in as the driver takes them (see ``driver_datetime``); rows come back as tuples.
    """

    __slots__ = ("_clause", "_compiled", "_literals")

    def __init__(self, clause: sa.ClauseElement) -> None:
        self._clause = clause
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}
        # Values a Core expression binds itself (the 0 in coalesce(x, 0)...).
        self._literals = {k: v for k, v in clause.compile().params.items() if v is not None}

    def compile(self, dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None]:
        """The SQL text for ``dialect`` and, for a positional driver, the order of its values.

        Public so that the benchmarks send the very text the service sends.
        """
        compiled = cast(SQLCompiler, self._clause.compile(dialect=dialect))
        names = tuple(compiled.positiontup or ()) if compiled.positional else None
        self._compiled[dialect.name] = (compiled.string, names)
        return self._compiled[dialect.name]

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        sql, names = self._compiled.get(conn.dialect.name) or self.compile(conn.dialect)
        if self._literals:
            params = {**self._literals, **params}
        args = params if names is None else tuple(params[name] for name in names)
        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            rows: list[tuple[Any, ...]] = driver.execute(sql, args).fetchall()
        except conn.dialect.loaded_dbapi.IntegrityError as exc:
            raise sa.exc.IntegrityError(sql, args, exc) from exc
        except conn.dialect.loaded_dbapi.Error as exc:
            # Straight on the driver, SQLAlchemy never saw the error: tell it when the
            # connection is dead, so the pool does not hand it out again.
            if conn.dialect.is_disconnect(exc, driver, None):
                conn.invalidate(exc)
            raise
        return rows

    async def rows_async(
        self, conn: psycopg.AsyncConnection[Any], params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The same on an asyncio PostgreSQL connection (``Database.async_autocommit()``)."""
        sql, _ = self._compiled.get("postgresql") or self.compile(_POSTGRES)
        if self._literals:
            params = {**self._literals, **params}
        try:
            cursor = await conn.execute(sql, params)
        except psycopg.IntegrityError as exc:
            raise sa.exc.IntegrityError(sql, params, exc) from exc
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows

    async def send_async(
        self, conn: psycopg.AsyncConnection[Any], params: Mapping[str, Any]
    ) -> psycopg.AsyncCursor[Any]:
        """Queue the statement in ``conn``'s pipeline (``Batch``): its rows are read from the
        cursor once the pipeline has been answered."""
        sql, _ = self._compiled.get("postgresql") or self.compile(_POSTGRES)
        if self._literals:
            params = {**self._literals, **params}
        return await conn.cursor().execute(sql, params or None)


_POSTGRES = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]

BEGIN = Statement(sa.text("BEGIN"))
COMMIT = Statement(sa.text("COMMIT"))


class Batch:
    """Statements sent to PostgreSQL together and answered together: one round trip for
    all of them, on an asyncio connection (``Database.async_autocommit()``).

    For units of work of a few statements on the HTTP service's hot path (a model call's
    admission and settlement), where each round trip is a wait in an event loop busy with
    other requests. ``BEGIN`` ... ``COMMIT`` inside one batch is a transaction that costs
    one round trip. A statement that fails aborts the rest of its batch, its transaction
    included, and the error is raised from ``send()``; the transaction left open is rolled
    back when the connection goes back to the pool.

    ``add()`` returns a function that reads the statement's rows once ``send()`` is done.
    (psycopg's own ``transaction()`` in pipeline mode waits for the BEGIN and the COMMIT
    each: four round trips where this takes one, measured.)
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._queued: list[tuple[Statement, Mapping[str, Any], list[list[tuple[Any, ...]]]]] = []

    def add(
        self, statement: Statement, params: Mapping[str, Any] | None = None
    ) -> Callable[[], list[tuple[Any, ...]]]:
        answer: list[list[tuple[Any, ...]]] = []
        self._queued.append((statement, params or {}, answer))

        def rows() -> list[tuple[Any, ...]]:
            if not answer:
                raise RuntimeError("the batch has not been sent")
            return answer[0]

        return rows

    async def send(self) -> None:
        queued, self._queued = self._queued, []
        cursors = []
        async with self._conn.pipeline():
            for statement, params, _ in queued:
                cursors.append(await statement.send_async(self._conn, params))
        for (_, _, answer), cursor in zip(queued, cursors, strict=True):
            answer.append(await cursor.fetchall() if cursor.description else [])


def commits_alone(conn: Connection) -> bool:
    """True when a statement executed now on ``conn`` is its own transaction: an autocommit
    connection (``Database.autocommit()``) with no transaction open (see ``atomic()``)."""
    if conn.dialect.name != "postgresql":
        return False  # SQLite units are always BEGIN IMMEDIATE transactions
    driver: Any = conn.connection.driver_connection
    return bool(driver.autocommit) and driver.pgconn.transaction_status == 0


@contextmanager
def atomic(conn: Connection) -> Iterator[None]:
    """Make a multi-statement step atomic, whatever kind of unit ``conn`` belongs to.

    A caller in ``autocommit()`` chose to commit each statement alone; a step of several
    statements must still not be half applied if the process dies between them. Inside a
    transaction the step is already part of the caller's and this adds nothing (the
    caller's commit, or rollback, decides). Where each statement would commit alone, the
    step gets a transaction of its own, which commits when it ends (running what was
    registered with ``after_commit`` inside it) and rolls back if it raises.
    """
    if not commits_alone(conn):
        yield
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    pending = _start_unit(conn)
    with driver.transaction():
        yield
    _run(pending)


_AFTER_COMMIT = "tokenbank.after_commit"


def after_commit(conn: Connection, work: Callable[[], object]) -> None:
    """Run ``work`` once what ``conn`` has written so far is committed; never if it is
    rolled back.

    For what must not claim a change that did not last, such as a log line about it. A
    service function does not know whether its caller's unit commits after it, or rolls it
    back: the units of work (and ``atomic``) know, and run ``work`` after their commit. A
    statement that committed alone (``autocommit()`` outside ``atomic``) is durable
    already, so ``work`` runs at once.
    """
    if commits_alone(conn):
        work()
        return
    conn.info.setdefault(_AFTER_COMMIT, []).append(work)


def _start_unit(conn: Connection) -> list[Callable[[], object]]:
    """A fresh list for ``after_commit`` on ``conn``: what an earlier unit on the same
    pooled connection left there was rolled back with it."""
    pending: list[Callable[[], object]] = []
    conn.info[_AFTER_COMMIT] = pending
    return pending


def _run(pending: list[Callable[[], object]]) -> None:
    work = list(pending)
    pending.clear()
    for item in work:
        item()


def driver_datetime(dialect: str, value: datetime) -> Any:
    """A datetime as the driver should receive it for a ``UtcDateTime`` column."""
    if dialect == "sqlite":
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def normalize_url(url: str) -> sa.URL:
    """Accept the usual spellings and pin the PostgreSQL driver to psycopg 3."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite")
    raise ConfigurationError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


#: SQLite's primary result codes that mean "not now" rather than "wrong request": busy or
#: locked past the timeout, out of memory, read-only, I/O error, full, cannot open.
_SQLITE_UNAVAILABLE = {
    5: "locked",
    6: "locked",
    7: "out of memory",
    8: "read-only",
    10: "I/O error",
    13: "full",
    14: "cannot be opened",
    15: "locked",
}
#: PostgreSQL SQLSTATEs of a missing table or column: a schema older than the code.
_UNDEFINED = {"42P01", "42703"}
_SQLITE_UNDEFINED = ("no such table", "no such column", "has no column named")
#: Opening for reading falls back to read-only on these: read-only, I/O error, cannot open.
_SQLITE_CANT_WRITE = {8, 10, 14}


def unavailable(exc: BaseException) -> Unavailable | None:
    """What ``exc`` means if it is the database failing rather than the request: a
    ``DatabaseUnavailable`` (down, restarting, connection lost, pool exhausted, disk full,
    read-only, locked past its timeout) or a ``SchemaOutOfDate`` (a table or column this
    version needs is missing: the caller confirms with the migrations). None otherwise.
    """
    pool_busy = sa.exc.TimeoutError | psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests
    if isinstance(exc, pool_busy):
        return DatabaseUnavailable("every database connection is busy", retry_after=1)
    lost = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if isinstance(orig, psycopg.Error):
        return _postgres_failure(orig, lost=lost)
    if isinstance(orig, sqlite3.Error):
        return _sqlite_failure(orig)
    return DatabaseUnavailable("the database connection was lost") if lost else None


#: SQLSTATEs of a connection the server ended: class 08 (connection exception) and
#: admin_shutdown, crash_shutdown, cannot_connect_now.
_ENDED = ("08", "57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says a PostgreSQL connection is gone (a restart, a failover, a killed
    backend), so that its idle siblings are likely gone too; ``Database.recover()`` then
    drops them. A busy pool, a timeout or a read-only server is not a lost connection."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if isinstance(orig, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
        return False  # the pool's own refusals (subclasses of OperationalError)
    if not isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    # Client-side failures carry no SQLSTATE: closed, unreadable, or left mid-command.
    return orig.sqlstate is None or orig.sqlstate.startswith(_ENDED)


def _postgres_failure(exc: psycopg.Error, *, lost: bool) -> Unavailable | None:
    if exc.sqlstate in _UNDEFINED:
        return SchemaOutOfDate("the database is behind this version's migrations")
    if lost or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__})")
    if exc.sqlstate == "25006":  # read_only_sql_transaction: a standby, or read-only
        return DatabaseUnavailable("the database is read-only")
    return None


def _sqlite_failure(exc: sqlite3.Error) -> Unavailable | None:
    if any(marker in str(exc) for marker in _SQLITE_UNDEFINED):
        return SchemaOutOfDate("the database is behind this version's migrations")
    what = _SQLITE_UNAVAILABLE.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
    if what is None:
        return None
    return DatabaseUnavailable(f"the database is {what}", retry_after=1 if what == "locked" else 30)


class WalletGate:
    """Lets one unit of work per wallet at a time go to the database from this process.

    PostgreSQL keeps a row locked until its commit is flushed, and writers queued on one row
    cost more than they add: measured here, a hot wallet lost a third of its throughput from
    4 to 16 concurrent writers. Units of work on the same wallet wait here instead, without
    holding a connection, while other wallets go on in parallel. It orders requests within a
    process only; correctness never depends on it (the row lock and the constraints decide).
    Wallets share one of ``stripes`` locks by hash, so two busy wallets rarely wait on each
    other.
    """

    def __init__(self, stripes: int = 1024) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, wallet: str) -> threading.Lock:
        return self._locks[hash(wallet) % len(self._locks)]


@dataclass(eq=False)
class Database:
    """Two engines over one database: ``engine`` for transactions; ``read_engine`` for reads
    and, on PostgreSQL, for autocommit units (``autocommit()``). Each has its own pool."""

    url: sa.URL
    engine: Engine
    read_engine: Engine
    pool_size: int = 16
    #: What every PostgreSQL connection is opened with, the asyncio pool's included.
    connect_args: Mapping[str, Any] = field(default_factory=dict)
    _write_lock: threading.Lock | None = field(default=None, repr=False)
    _gate: WalletGate = field(default_factory=WalletGate, repr=False)
    # PostgreSQL: asyncio pools for the request hot path, one per event loop that opened one.
    _async_pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] = field(
        default_factory=dict, repr=False
    )

    @property
    def dialect(self) -> Dialect:
        return "postgresql" if self.engine.dialect.name == "postgresql" else "sqlite"

    @contextmanager
    def transaction(self, *, wallet: str | None = None) -> Iterator[Connection]:
        """A unit of work whose operations stand or fall together: it commits when the
        block ends and rolls back if it raises, so a caller can combine ledger calls (open
        a wallet and credit it) without any of them committing alone.

        ``wallet``: the user whose wallet the work changes, if one; see ``WalletGate``.
        """
        # SQLite: every writer already waits on the write lock.
        writers = self._write_lock if self._write_lock is not None else self._gated(wallet)
        with writers, self.engine.begin() as conn:
            pending = _start_unit(conn)
            yield conn
        _run(pending)  # committed: after_commit's work, outside the lock

    def _gated(self, wallet: str | None) -> AbstractContextManager[object]:
        return nullcontext() if wallet is None else self._gate(wallet)

    @contextmanager
    def autocommit(self, *, wallet: str | None = None) -> Iterator[Connection]:
        """A unit of work that is one ledger operation, such as a single spend.

        On PostgreSQL every statement then commits alone: a credit or a spend is one round
        trip, and the wallet row is locked only while the server executes and flushes it,
        not for a further round trip until a COMMIT. The price is that nothing here joins
        two statements: the ledger's multi-statement operations open their own short
        transaction (``atomic()``), and a caller that needs two operations to stand or
        fall together uses ``transaction()``. On SQLite this is ``transaction()``: writers
        are serialised either way, and SQLite has no cheaper one-statement commit.
        """
        if self._write_lock is not None:
            with self.transaction() as conn:
                yield conn
            return
        with self._gated(wallet), self.read_engine.connect() as conn:
            _start_unit(conn)
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading, that never waits behind writers.

        On PostgreSQL each statement is its own snapshot (autocommit: no BEGIN/COMMIT round
        trips); on SQLite a deferred transaction gives one snapshot for the whole block, and
        is rolled back at its end. Writing here is a mistake: on SQLite it would not last.
        """
        with self.read_engine.connect() as conn:
            _start_unit(conn)
            yield conn

    async def open_async(self) -> None:
        """Open an asyncio pool for this event loop (PostgreSQL; SQLite has none).

        The HTTP service's hottest routes (a spend, a balance) run on it without leaving the
        event loop: handing each request to a worker thread and back cost more than the
        statement did (docs/benchmarks.md).
        """
        if self.dialect != "postgresql":
            return
        loop = asyncio.get_running_loop()
        if loop in self._async_pools:
            return
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url.set(drivername="postgresql").render_as_string(hide_password=False),
            min_size=min(4, self.pool_size),  # grows to pool_size under load
            max_size=self.pool_size,
            open=False,
            kwargs={"autocommit": True, **self.connect_args},
            timeout=POOL_TIMEOUT_SECONDS,
        )
        await pool.open()
        self._async_pools[loop] = pool

    async def close_async(self) -> None:
        pool = self._async_pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()

    @property
    def has_async(self) -> bool:
        """Whether ``async_autocommit()`` works in the running event loop."""
        try:
            return asyncio.get_running_loop() in self._async_pools
        except RuntimeError:
            return False

    def async_autocommit(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """``autocommit()`` for asyncio: each statement commits alone (PostgreSQL only).

        For one-statement operations (``ledger.try_spend``, ``ledger.balance_async``), and
        for a ``Batch`` that wraps its statements in ``BEGIN`` and ``COMMIT``: there is no
        ``atomic()`` here, and anything else falls back to ``autocommit()``.
        """
        return self._async_pools[asyncio.get_running_loop()].connection()

    async def recover(self) -> None:
        """After a connection was found lost (``connection_lost``): a server restart killed
        its idle siblings too, so drop every pooled connection now rather than let each
        fail one request of its own. Connections in use finish or fail on their own and
        are not pooled again. It runs on every loss, with no throttle: an outage with empty
        pools costs nothing, a second failover soon after the first is recovered from like
        the first, and the price (the asyncio pool reconnecting its minimum in the
        background, a request in flight on a dead connection dropping the fresh ones once
        more) is paid only when connections were lost. A busy pool, a slow statement or a
        read-only server never gets here (``connection_lost``)."""
        if self.dialect != "postgresql":
            return
        self.engine.dispose()
        self.read_engine.dispose()
        pool = self._async_pools.get(asyncio.get_running_loop())
        if pool is not None:
            await pool.drain()

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


def connect(
    url: str,
    *,
    pool_size: int = 16,
    prepared_statements: bool = True,
    sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
) -> Database:
    """Open the database named by ``url`` (``sqlite:///path`` or ``postgresql://...``).

    ``prepared_statements``: whether psycopg may prepare a statement it sends often
    (PostgreSQL). A pooler in transaction mode that does not track them (PgBouncer before
    1.21) hands the next transaction another server connection, where the statement's name
    is unknown or already taken; with this off every statement is sent unnamed
    (docs/scaling.md).
    ``sqlite_busy_timeout_ms``: how long a SQLite writer waits for another process's lock
    before the request is answered "unavailable" (503)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _connect_postgresql(
            parsed, pool_size=pool_size, prepared_statements=prepared_statements
        )
    return _connect_sqlite(parsed, pool_size=pool_size, busy_timeout_ms=sqlite_busy_timeout_ms)


def database_from_settings(settings: Settings, *, pool_size: int | None = None) -> Database:
    """``connect()`` as the settings say; ``pool_size`` for a process that needs fewer
    connections than the service (a CLI command)."""
    return connect(
        settings.database_url,
        pool_size=settings.database_pool_size if pool_size is None else pool_size,
        prepared_statements=settings.database_prepared_statements,
    )


def _connect_postgresql(url: sa.URL, *, pool_size: int, prepared_statements: bool) -> Database:
    # psycopg's default: a statement is prepared on its sixth use by a connection.
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "prepare_threshold": 5 if prepared_statements else None,
    }
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args=connect_args,
        isolation_level="READ COMMITTED",
        json_serializer=json_dumps,
    )
    # A pool of its own: switching a pooled connection in and out of autocommit costs two
    # driver calls per checkout, a fifth of a spend's CPU when profiled.
    autocommit_engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args=connect_args,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,  # nothing to roll back: atomic() always ends its transaction
        json_serializer=json_dumps,
    )
    for each in (engine, autocommit_engine):
        event.listen(each, "checkout", _refuse_unready)
    return Database(
        url=url,
        engine=engine,
        read_engine=autocommit_engine,
        pool_size=pool_size,
        connect_args=connect_args,
    )


def _refuse_unready(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Hand out a pooled connection only if it is ready for a statement; the pool replaces
    it otherwise. One the server ended, or one an interrupted statement left mid-command
    (psycopg then refuses every statement with "another command is already in progress",
    which SQLAlchemy does not take for a lost connection), would fail every request it
    served. This reads the driver's own state: no round trip."""
    pgconn = dbapi_conn.pgconn
    if pgconn.status != psycopg.pq.ConnStatus.OK or (
        pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE
    ):
        raise sa.exc.DisconnectionError("the pooled connection is not ready")


class ReadOnlySqlite(sqlite3.Connection):
    """A reading connection opened when the database file cannot be written (a read-only
    file system or file, or a disk so full that SQLite cannot size its shared-memory
    index). Reads go on; writes fail as ``unavailable``. Used for one unit of work only:
    without the shared index it may not see later commits, and the file may be writable
    again by the next request."""

    used: bool = False


def _sqlite_reader(path: str) -> Callable[[], sqlite3.Connection]:
    """Open for reading: normally, else read-only, else (a read-only file system where
    SQLite cannot create its shared-memory file, and no write-ahead log to miss) as an
    immutable file."""

    def connect() -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            return conn
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _SQLITE_CANT_WRITE:
                raise
        wal = Path(f"{path}-wal")
        modes = ["mode=ro"]
        if not wal.exists() or wal.stat().st_size == 0:
            modes.append("immutable=1")
        for mode in modes:
            uri = f"{Path(path).resolve().as_uri()}?{mode}"
            reader = sqlite3.connect(
                uri,
                uri=True,
                check_same_thread=False,
                isolation_level=None,
                factory=ReadOnlySqlite,
            )
            try:
                reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except sqlite3.OperationalError:
                reader.close()
                continue
            return reader
        raise sqlite3.OperationalError(f"unable to open database file {path}, even to read")

    return connect


def _connect_sqlite(url: sa.URL, *, pool_size: int, busy_timeout_ms: int) -> Database:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        raise ConfigurationError("SQLite needs a file: an in-memory database is not shared")
    path = url.database

    def make(begin: str, *, reader: bool) -> Engine:
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            json_serializer=json_dumps,
            **({"creator": _sqlite_reader(path)} if reader else {}),
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_conn.cursor()
            if not isinstance(dbapi_conn, ReadOnlySqlite):
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "checkout")
        def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            if isinstance(dbapi_conn, ReadOnlySqlite):
                if dbapi_conn.used:  # one unit of work each (see ReadOnlySqlite)
                    raise sa.exc.DisconnectionError("open the file afresh")
                dbapi_conn.used = True

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute(begin)

        return engine

    return Database(
        url=url,
        engine=make("BEGIN IMMEDIATE", reader=False),
        read_engine=make("BEGIN", reader=True),
        pool_size=pool_size,
        _write_lock=threading.Lock(),
    )
