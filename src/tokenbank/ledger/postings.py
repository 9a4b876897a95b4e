"""Moving tokens between a wallet and a system account in one statement, if it applies.

On PostgreSQL a credit or a spend is one statement: the conditional wallet update, the
transfer and both entries. In a one-operation unit (``Database.autocommit()``) it is its own
transaction, so the wallet row is locked only while the server runs and flushes it, and it
cannot be half applied. The key check inside it covers every replay that arrives after the
first one committed; two copies racing each other meet at the transfer's unique key, where
the loser applies nothing (on its own it fails whole; inside a transaction it gives its
debit back) and returns the winner's result.

On SQLite writers are already serialised and every unit is a transaction, so the same steps
run as three plain statements.

``move`` answers only "applied" or "not applied"; the callers (``credit``, ``spend``,
``credit_purchase``) decide what "not applied" means, with ``explain_unapplied`` when it can
only be a replay or an unknown wallet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.db import Statement, commits_alone, driver_datetime, json_dumps
from tokenbank.errors import IdempotencyConflict
from tokenbank.ledger.accounts import wallet_id
from tokenbank.ledger.idempotency import Request, replay
from tokenbank.ledger.journal import Receipt
from tokenbank.ledger.models import SystemAccount, TransferKind, accounts

#: Where each kind of credit comes from, and which wallet total it counts towards.
CREDIT_SOURCES: dict[TransferKind, tuple[SystemAccount, str]] = {
    TransferKind.PURCHASE: (SystemAccount.PURCHASES, "total_purchased"),
    TransferKind.BONUS: (SystemAccount.BONUSES, "total_purchased"),
    TransferKind.GRANT: (SystemAccount.GRANTS, "total_granted"),
}


def _postgres_statement(*, spend: bool, total: str, alone: bool) -> Statement:
    """The whole transfer as one PostgreSQL statement (see the module docstring).

    ``alone``: the statement is its own transaction. A racing copy of the key then fails the
    whole statement (its entries get no transfer id: NOT NULL), so nothing of it commits;
    inside a transaction it inserts no entries, and the caller gives the debit back.
    """
    sign, guard = ("-", "AND balance - held >= CAST(:amount AS BIGINT)") if spend else ("+", "")
    pairs = "w LEFT JOIN t ON true" if alone else "t, w"
    wallet_side, system_side = ("debit", "credit") if spend else ("credit", "debit")
    # Only the fixed fragments above are formatted in; every value is a bound parameter.
    return Statement(
        sa.text(f"""
WITH w AS (
    UPDATE accounts
       SET balance = balance {sign} CAST(:amount AS BIGINT),
           {total} = {total} + CAST(:amount AS BIGINT)
     WHERE user_id = :user_id {guard}
       AND NOT EXISTS (SELECT 1 FROM transfers WHERE idempotency_key = :key)
 RETURNING id, balance
), t AS (
    INSERT INTO transfers (idempotency_key, kind, {wallet_side}_account_id,
                           {system_side}_account_id, amount, description, metadata,
                           event_at, created_at)
    SELECT :key, :kind, w.id, CAST(:system_id AS BIGINT), CAST(:amount AS BIGINT),
           :description, CAST(:metadata AS JSONB), :event_at, :now
      FROM w
        ON CONFLICT (idempotency_key) DO NOTHING
 RETURNING id
), e AS (
    INSERT INTO entries (transfer_id, account_id, kind, amount, balance_after, created_at)
    SELECT t.id, w.id, :kind, {sign}CAST(:amount AS BIGINT), w.balance, :now FROM {pairs}
     UNION ALL
    SELECT t.id, CAST(:system_id AS BIGINT), :kind, {"+" if spend else "-"}CAST(:amount AS BIGINT),
           NULL, :now FROM {pairs}
)
SELECT w.id, w.balance, t.id FROM w LEFT JOIN t ON true
""")  # noqa: S608
    )


def _sqlite_statements(*, spend: bool, total: str) -> tuple[Statement, Statement, Statement]:
    """The same transfer as three statements; SQLite has already serialised the writers."""
    sign, guard = ("-", "AND balance - held >= :amount") if spend else ("+", "")
    wallet_side, system_side = ("debit", "credit") if spend else ("credit", "debit")
    debit_wallet = "-" if spend else ""
    credit_wallet = "" if spend else "-"
    return (
        Statement(
            sa.text(f"""
UPDATE accounts
   SET balance = balance {sign} :amount, {total} = {total} + :amount
 WHERE user_id = :user_id {guard}
   AND NOT EXISTS (SELECT 1 FROM transfers WHERE idempotency_key = :key)
RETURNING id, balance""")  # noqa: S608
        ),
        Statement(
            sa.text(f"""
INSERT INTO transfers (idempotency_key, kind, {wallet_side}_account_id, {system_side}_account_id,
                       amount, description, metadata, event_at, created_at)
VALUES (:key, :kind, :wallet_id, :system_id, :amount, :description, :metadata, :event_at, :now)
RETURNING id""")  # noqa: S608
        ),
        Statement(
            sa.text(f"""
INSERT INTO entries (transfer_id, account_id, kind, amount, balance_after, created_at)
VALUES (:transfer_id, :wallet_id, :kind, {debit_wallet}:amount, :balance, :now),
       (:transfer_id, :system_id, :kind, {credit_wallet}:amount, NULL, :now)""")  # noqa: S608
        ),
    )


NOT_NULL_VIOLATION = "23502"
_TOTALS = {total for _, total in CREDIT_SOURCES.values()}
#: Indexed by ``alone`` (see ``_postgres_statement``).
POSTGRES_SPEND = {
    alone: _postgres_statement(spend=True, total="total_spent", alone=alone)
    for alone in (False, True)
}
_POSTGRES_CREDIT = {
    (total, alone): _postgres_statement(spend=False, total=total, alone=alone)
    for total in _TOTALS
    for alone in (False, True)
}
SQLITE_SPEND = _sqlite_statements(spend=True, total="total_spent")
_SQLITE_CREDIT = {total: _sqlite_statements(spend=False, total=total) for total in _TOTALS}


def transfer_params(
    dialect: str, request: Request, *, amount: int, system: SystemAccount, now: datetime
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
        "event_at": driver_datetime(dialect, request.event_at or now),
        "now": driver_datetime(dialect, now),
    }


def move(
    conn: Connection,
    request: Request,
    *,
    amount: int,
    system: SystemAccount,
    total: str,
    spend: bool,
    now: datetime,
) -> Receipt | None:
    """Apply ``request`` if its key is new (and, for a spend, the tokens are there).

    Returns None when nothing was applied, leaving the reason to the caller.
    """
    params = transfer_params(conn.dialect.name, request, amount=amount, system=system, now=now)
    if conn.dialect.name == "postgresql":
        alone = commits_alone(conn)
        statement = POSTGRES_SPEND[alone] if spend else _POSTGRES_CREDIT[total, alone]
        try:
            rows = statement.rows(conn, params)
        except sa.exc.IntegrityError as exc:
            if alone and getattr(exc.orig, "sqlstate", None) == NOT_NULL_VIOLATION:
                return None  # a racing copy of the key won; nothing of this one committed
            raise
        if not rows:
            return None
        account_id, balance, transfer_id = rows[0]
        if transfer_id is None:
            # A racing copy with the same key committed first: give the change back.
            conn.execute(
                sa.update(accounts)
                .where(accounts.c.id == account_id)
                .values(
                    {
                        "balance": accounts.c.balance + (amount if spend else -amount),
                        total: accounts.c[total] - amount,
                    }
                )
            )
            return None
    else:
        update, insert_transfer, insert_entries = SQLITE_SPEND if spend else _SQLITE_CREDIT[total]
        rows = update.rows(conn, params)
        if not rows:
            return None
        account_id, balance = rows[0]
        params["wallet_id"], params["balance"] = account_id, balance
        ((params["transfer_id"],),) = insert_transfer.rows(conn, params)
        insert_entries.rows(conn, params)
        transfer_id = params["transfer_id"]
    return Receipt(
        transfer_id=transfer_id,
        kind=request.kind,
        user_id=request.user_id,
        amount=amount,
        balance=balance,
    )


def explain_unapplied(conn: Connection, request: Request) -> Receipt:
    """Explain why nothing was applied: a replay, or else an unknown wallet."""
    if (receipt := replay(conn, request)) is not None:
        return receipt
    wallet_id(conn, request.user_id)  # raises UnknownUser
    # The key was taken and released by a transaction that rolled back: nothing to replay.
    raise IdempotencyConflict(request.key, "another operation with this key is in progress")
