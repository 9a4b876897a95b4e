"""Moving tokens between a wallet and a system account in one statement, if it applies.

On PostgreSQL a credit or a spend is one statement: the conditional wallet update, the
transfer, both entries, and the bucket a credit fills or the buckets a spend draws on
(``buckets``). In a one-operation unit (``Database.autocommit()``) it is its own
transaction, so the wallet row is locked only while the server runs and flushes it, and it
cannot be half applied. The key check inside it covers every replay that arrives after the
first one committed; two copies racing each other meet at the transfer's unique key, where
the loser applies nothing (on its own it fails whole; inside a transaction it gives its
credit back) and returns the winner's result.

A spend's statement takes its tokens from the buckets it can see. It can miss a bucket
filled by a credit that committed while the statement waited for the wallet's lock, and
it does not use tokens past their expiry that no sweep has moved out yet; then it finds
fewer tokens than the wallet's balance promised and fails whole on purpose (a division by
zero), and the caller spends in the long way instead: a transaction that
locks the wallet first, expires what is due, and draws on every bucket it then sees
(``transfers.spend``). That is also the way inside a caller's transaction on PostgreSQL,
where a failed statement would end the caller's work.

On SQLite writers are already serialised and every unit is a transaction: a credit is the
same steps as three plain statements and ``buckets.fill``; a spend reads the wallet's live
buckets first and writes only when they suffice and none is past its expiry
(``spend_serialised``), else it too goes the long way.

``move`` answers only "applied" or "not applied"; the callers decide what "not applied"
means, with ``explain_unapplied`` when it can only be a replay or an unknown wallet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.db import Statement, commits_alone, driver_datetime, json_dumps
from tokenbank.errors import IdempotencyConflict
from tokenbank.ledger import buckets
from tokenbank.ledger.accounts import wallet_id
from tokenbank.ledger.idempotency import Request, replay
from tokenbank.ledger.journal import Receipt
from tokenbank.ledger.models import PAID_SOURCES, Source, SystemAccount, TransferKind, accounts

#: Where each kind of credit comes from, and which wallet total it counts towards.
CREDIT_SOURCES: dict[TransferKind, tuple[SystemAccount, str]] = {
    TransferKind.PURCHASE: (SystemAccount.PURCHASES, "total_purchased"),
    TransferKind.BONUS: (SystemAccount.BONUSES, "total_purchased"),
    TransferKind.GRANT: (SystemAccount.GRANTS, "total_granted"),
}
#: The source of a credit's bucket when the caller names none.
DEFAULT_SOURCE = {
    TransferKind.PURCHASE: Source.PURCHASE,
    TransferKind.BONUS: Source.PURCHASE,
    TransferKind.GRANT: Source.ADMIN,
}

NOT_NULL_VIOLATION = "23502"

_TRANSFER_COLUMNS = """idempotency_key, kind, {wallet_side}_account_id, {system_side}_account_id,
                       amount, description, metadata, feature, quantity, event_at, created_at"""


def _postgres_credit(*, total: str, alone: bool) -> Statement:
    """A credit, its transfer, entries and bucket as one PostgreSQL statement.

    ``alone``: the statement is its own transaction. A racing copy of the key then fails the
    whole statement (its entries get no transfer id: NOT NULL), so nothing of it commits;
    inside a transaction it inserts no entries, and the caller gives the credit back.
    """
    pairs = "w LEFT JOIN t ON true" if alone else "t, w"
    columns = _TRANSFER_COLUMNS.format(wallet_side="credit", system_side="debit")
    # Only the fixed fragments above are formatted in; every value is a bound parameter.
    return Statement(
        sa.text(f"""
WITH w AS (
    UPDATE accounts
       SET balance = balance + CAST(:amount AS BIGINT),
           {total} = {total} + CAST(:amount AS BIGINT)
     WHERE user_id = :user_id
       AND NOT EXISTS (SELECT 1 FROM transfers WHERE idempotency_key = :key)
 RETURNING id, balance
), t AS (
    INSERT INTO transfers ({columns})
    SELECT :key, :kind, w.id, CAST(:system_id AS BIGINT), CAST(:amount AS BIGINT),
           :description, CAST(:metadata AS JSONB), NULL, NULL, :event_at, :now
      FROM w
        ON CONFLICT (idempotency_key) DO NOTHING
 RETURNING id
), e AS (
    INSERT INTO entries (transfer_id, account_id, kind, amount, balance_after, created_at)
    SELECT t.id, w.id, :kind, CAST(:amount AS BIGINT), w.balance, :now FROM {pairs}
     UNION ALL
    SELECT t.id, CAST(:system_id AS BIGINT), :kind, -CAST(:amount AS BIGINT), NULL, :now
      FROM {pairs}
), b AS (
    INSERT INTO buckets (account_id, transfer_id, source, paid, amount, remaining, held,
                         expires_at, created_at)
    SELECT w.id, t.id, :source, :paid, CAST(:amount AS BIGINT), CAST(:amount AS BIGINT), 0,
           :expires_at, :now
      FROM t, w
)
SELECT w.id, w.balance, t.id FROM w LEFT JOIN t ON true
""")  # noqa: S608
    )


def _postgres_spend() -> Statement:
    """A spend as one PostgreSQL statement that commits alone (see the module docstring).

    ``b`` locks the wallet's live buckets after ``w`` has locked the wallet; ``o`` orders
    them (``buckets.ORDER``) with what comes before each; ``u`` takes what the spend needs
    from the first ones. Every part of the statement reads the snapshot it started with,
    which a writer that held the wallet's lock meanwhile (a refund, a credit, a hold) has
    made stale; the locked rows are then re-read as the writer left them, but a bucket the
    snapshot saw empty is not looked at again. So the last line checks that what ``b`` saw
    free is exactly what the wallet row, re-read under its lock, says is available, and that
    ``u`` took the whole amount; ``u`` takes from a bucket only where its snapshot row holds
    the tokens too (otherwise the database would check the new row, computed from the
    stale one, against ``ck_buckets_within`` first, and refuse it). When either check fails
    the statement divides by zero: nothing of it commits, and the caller spends the long
    way, where the order of use and the sums hold by construction. A racing copy of the key
    fails the statement at the entries' NOT NULL transfer id.
    """
    columns = _TRANSFER_COLUMNS.format(wallet_side="debit", system_side="credit")
    return Statement(
        sa.text(f"""
WITH w AS (
    UPDATE accounts
       SET balance = balance - CAST(:amount AS BIGINT),
           total_spent = total_spent + CAST(:amount AS BIGINT)
     WHERE user_id = :user_id AND balance - held >= CAST(:amount AS BIGINT)
       AND NOT EXISTS (SELECT 1 FROM transfers WHERE idempotency_key = :key)
 RETURNING id, balance, held
), b AS (
    SELECT k.id, k.remaining - k.held AS free, k.expires_at, k.paid
      FROM buckets k JOIN w ON k.account_id = w.id
     WHERE k.remaining > 0 AND k.remaining > k.held
       AND (k.expires_at IS NULL OR k.expires_at > :now)
       FOR UPDATE OF k
), o AS (
    SELECT id, free,
           SUM(free) OVER (ORDER BY expires_at IS NULL, expires_at, paid, id
                           ROWS UNBOUNDED PRECEDING) - free AS before
      FROM b
), u AS (
    UPDATE buckets k
       SET remaining = k.remaining - LEAST(o.free, CAST(:amount AS BIGINT) - o.before)
      FROM o
     WHERE k.id = o.id AND o.before < CAST(:amount AS BIGINT)
       AND k.remaining - k.held >= LEAST(o.free, CAST(:amount AS BIGINT) - o.before)
 RETURNING k.id, LEAST(o.free, CAST(:amount AS BIGINT) - o.before) AS taken
), t AS (
    INSERT INTO transfers ({columns})
    SELECT :key, 'spend', w.id, CAST(:system_id AS BIGINT), CAST(:amount AS BIGINT),
           :description, CAST(:metadata AS JSONB), :feature, CAST(:quantity AS BIGINT),
           :event_at, :now
      FROM w
        ON CONFLICT (idempotency_key) DO NOTHING
 RETURNING id
), e AS (
    INSERT INTO entries (transfer_id, account_id, kind, amount, balance_after, created_at)
    SELECT t.id, w.id, 'spend', -CAST(:amount AS BIGINT), w.balance, :now
      FROM w LEFT JOIN t ON true
     UNION ALL
    SELECT t.id, CAST(:system_id AS BIGINT), 'spend', CAST(:amount AS BIGINT), NULL, :now
      FROM w LEFT JOIN t ON true
), d AS (
    INSERT INTO draws (bucket_id, transfer_id, amount) SELECT u.id, t.id, u.taken FROM u, t
)
SELECT w.id, w.balance, t.id,
       1 / CASE WHEN (SELECT COALESCE(SUM(taken), 0) FROM u) = CAST(:amount AS BIGINT)
                 AND (SELECT COALESCE(SUM(free), 0) FROM b)
                     = w.balance + CAST(:amount AS BIGINT) - w.held
                THEN 1 ELSE 0 END
  FROM w LEFT JOIN t ON true
""")  # noqa: S608
    )


def _sqlite_credit(total: str) -> tuple[Statement, Statement, Statement]:
    """The same credit as three statements (and ``buckets.fill``); SQLite has already
    serialised the writers."""
    columns = _TRANSFER_COLUMNS.format(wallet_side="credit", system_side="debit")
    return (
        Statement(
            sa.text(f"""
UPDATE accounts
   SET balance = balance + :amount, {total} = {total} + :amount
 WHERE user_id = :user_id
   AND NOT EXISTS (SELECT 1 FROM transfers WHERE idempotency_key = :key)
RETURNING id, balance""")  # noqa: S608
        ),
        Statement(
            sa.text(f"""
INSERT INTO transfers ({columns})
VALUES (:key, :kind, :wallet_id, :system_id, :amount, :description, :metadata, NULL, NULL,
        :event_at, :now)
RETURNING id""")  # noqa: S608
        ),
        Statement(
            sa.text("""
INSERT INTO entries (transfer_id, account_id, kind, amount, balance_after, created_at)
VALUES (:transfer_id, :wallet_id, :kind, :amount, :balance, :now),
       (:transfer_id, :system_id, :kind, -:amount, NULL, :now)""")
        ),
    )


_SQLITE_SPEND = (
    # The wallet's buckets with free tokens, in the order of use, and whether each is due.
    Statement(
        sa.text("""
SELECT k.id, k.remaining - k.held, k.expires_at IS NOT NULL AND k.expires_at <= :now
  FROM buckets k
 WHERE k.account_id = (SELECT id FROM accounts WHERE user_id = :user_id)
   AND k.remaining > 0 AND k.remaining > k.held
 ORDER BY k.expires_at IS NULL, k.expires_at, k.paid, k.id""")
    ),
    Statement(
        sa.text("""
UPDATE accounts
   SET balance = balance - :amount, total_spent = total_spent + :amount
 WHERE user_id = :user_id AND balance - held >= :amount
   AND NOT EXISTS (SELECT 1 FROM transfers WHERE idempotency_key = :key)
RETURNING id, balance""")
    ),
    Statement(
        sa.text(f"""
INSERT INTO transfers ({_TRANSFER_COLUMNS.format(wallet_side="debit", system_side="credit")})
VALUES (:key, 'spend', :wallet_id, :system_id, :amount, :description, :metadata, :feature,
        :quantity, :event_at, :now)
RETURNING id""")  # noqa: S608
    ),
    Statement(
        sa.text("""
INSERT INTO entries (transfer_id, account_id, kind, amount, balance_after, created_at)
VALUES (:transfer_id, :wallet_id, 'spend', -:amount, :balance, :now),
       (:transfer_id, :system_id, 'spend', :amount, NULL, :now)""")
    ),
    Statement(sa.text("UPDATE buckets SET remaining = remaining - :take WHERE id = :bucket_id")),
    Statement(
        sa.text(
            "INSERT INTO draws (bucket_id, transfer_id, amount)"
            " VALUES (:bucket_id, :transfer_id, :take)"
        )
    ),
)

_TOTALS = {total for _, total in CREDIT_SOURCES.values()}
POSTGRES_SPEND = _postgres_spend()
_POSTGRES_CREDIT = {
    (total, alone): _postgres_credit(total=total, alone=alone)
    for total in _TOTALS
    for alone in (False, True)
}
_SQLITE_CREDIT = {total: _sqlite_credit(total) for total in _TOTALS}


def transfer_params(
    dialect: str,
    request: Request,
    *,
    amount: int,
    system: SystemAccount,
    now: datetime,
    source: Source | None = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """Bound values for the spend and credit statements."""
    return {
        "amount": amount,
        "user_id": request.user_id,
        "key": request.key,
        "kind": request.kind.value,
        "system_id": int(system),
        "description": request.description,
        "metadata": None if request.metadata is None else json_dumps(request.metadata),
        "feature": request.feature,
        "quantity": request.quantity,
        "event_at": driver_datetime(dialect, request.event_at or now),
        "now": driver_datetime(dialect, now),
        "source": None if source is None else source.value,
        "paid": source in PAID_SOURCES,
        "expires_at": None if expires_at is None else driver_datetime(dialect, expires_at),
    }


def move(
    conn: Connection,
    request: Request,
    *,
    amount: int,
    system: SystemAccount,
    total: str,
    source: Source,
    expires_at: datetime | None,
    now: datetime,
) -> Receipt | None:
    """Credit ``request`` if its key is new, filling a bucket of ``source`` that expires at
    ``expires_at`` (never: None). Returns None when nothing was applied, leaving the reason
    to the caller."""
    params = transfer_params(
        conn.dialect.name,
        request,
        amount=amount,
        system=system,
        now=now,
        source=source,
        expires_at=expires_at,
    )
    if conn.dialect.name == "postgresql":
        alone = commits_alone(conn)
        try:
            rows = _POSTGRES_CREDIT[total, alone].rows(conn, params)
        except sa.exc.IntegrityError as exc:
            if alone and getattr(exc.orig, "sqlstate", None) == NOT_NULL_VIOLATION:
                return None  # a racing copy of the key won; nothing of this one committed
            raise
        if not rows:
            return None
        account_id, balance, transfer_id = rows[0]
        if transfer_id is None:
            # A racing copy with the same key committed first: give the credit back.
            conn.execute(
                sa.update(accounts)
                .where(accounts.c.id == account_id)
                .values({"balance": accounts.c.balance - amount, total: accounts.c[total] - amount})
            )
            return None
    else:
        update, insert_transfer, insert_entries = _SQLITE_CREDIT[total]
        rows = update.rows(conn, params)
        if not rows:
            return None
        account_id, balance = rows[0]
        params["wallet_id"], params["balance"] = account_id, balance
        ((params["transfer_id"],),) = insert_transfer.rows(conn, params)
        insert_entries.rows(conn, params)
        transfer_id = params["transfer_id"]
        buckets.fill(
            conn,
            account_id=account_id,
            transfer_id=transfer_id,
            source=source,
            amount=amount,
            expires_at=expires_at,
            now=now,
        )
    return Receipt(
        transfer_id=transfer_id,
        kind=request.kind,
        user_id=request.user_id,
        amount=amount,
        balance=balance,
        feature=request.feature,
        quantity=request.quantity,
    )


def spend_at_once(
    conn: Connection, request: Request, *, amount: int, now: datetime
) -> Receipt | None:
    """The spend statement on a connection where it commits alone (PostgreSQL), or None when
    it was not applied (a replay, too few tokens, a bucket it could not see): the caller
    then spends the long way, which explains or applies it."""
    params = transfer_params(
        "postgresql", request, amount=amount, system=SystemAccount.CONSUMPTION, now=now
    )
    try:
        rows = POSTGRES_SPEND.rows(conn, params)
    except sa.exc.IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == NOT_NULL_VIOLATION:
            return None  # a racing copy of the key won; nothing of this one committed
        raise
    except psycopg.errors.DivisionByZero:
        return None  # the buckets it could see had too few tokens
    return spent(request, amount, rows)


def spend_serialised(
    conn: Connection, request: Request, *, amount: int, now: datetime
) -> Receipt | None:
    """The spend on SQLite, whose writers are serialised: the wallet's live buckets are read,
    then the wallet, the transfer, its entries and the draws written, each statement
    compiled once. None when it was not applied (too few live tokens, tokens or holds past
    their time to clear first, a replay): the caller then spends the long way, in the same
    transaction, which explains or applies it."""
    free, update, insert_transfer, insert_entries, take_from, draw_on = _SQLITE_SPEND
    params = transfer_params(
        "sqlite", request, amount=amount, system=SystemAccount.CONSUMPTION, now=now
    )
    rows = free.rows(conn, params)
    if any(due for _, _, due in rows) or sum(n for _, n, _ in rows) < amount:
        return None
    applied = update.rows(conn, params)
    if not applied:
        return None
    params["wallet_id"], params["balance"] = applied[0]
    ((params["transfer_id"],),) = insert_transfer.rows(conn, params)
    insert_entries.rows(conn, params)
    left = amount
    for bucket_id, n, _ in rows:
        take = min(n, left)
        left -= take
        step = {"bucket_id": bucket_id, "take": take, "transfer_id": params["transfer_id"]}
        take_from.rows(conn, step)
        draw_on.rows(conn, step)
        if left == 0:
            break
    return spent(request, amount, [(*applied[0], params["transfer_id"], None)])


def spent(request: Request, amount: int, rows: list[tuple[Any, ...]]) -> Receipt | None:
    """The receipt the spend statement's rows give, if it applied."""
    if not rows or rows[0][2] is None:
        return None
    _, balance, transfer_id, _ = rows[0]
    return Receipt(
        transfer_id=transfer_id,
        kind=TransferKind.SPEND,
        user_id=request.user_id,
        amount=amount,
        balance=balance,
        feature=request.feature,
        quantity=request.quantity,
    )


def explain_unapplied(conn: Connection, request: Request) -> Receipt:
    """Explain why nothing was applied: a replay, or else an unknown wallet."""
    if (receipt := replay(conn, request)) is not None:
        return receipt
    wallet_id(conn, request.user_id)  # raises UnknownUser
    # The key was taken and released by a transaction that rolled back: nothing to replay.
    raise IdempotencyConflict(request.key, "another operation with this key is in progress")
