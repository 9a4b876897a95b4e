"""Credits, spends and refunds: the transfers a caller asks for by their own key.

A credit is one statement when it applies (``postings.move``). A spend is one statement
too where it commits alone on PostgreSQL and finds its tokens (``postings.spend_at_once``);
otherwise (SQLite, a caller's transaction, a replay, a refusal, tokens to expire or holds
to release first) ``spend`` takes the wallet's lock in a short transaction of its own
(``atomic``) and does each step in turn. A refund is always several statements, so it
always runs in ``atomic``.

``try_spend`` is the PostgreSQL spend for an asyncio connection: the same statement, for
the HTTP service's hot path. It handles the common case (the key is new, the tokens are
there) and leaves every other outcome to ``spend``.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.db import after_commit, atomic, commits_alone
from tokenbank.errors import (
    InsufficientTokens,
    InvalidArgument,
    NotRefundable,
    RefundExceedsSpend,
    UnknownTransfer,
)
from tokenbank.ledger import buckets
from tokenbank.ledger.accounts import available_tokens, wallet_id
from tokenbank.ledger.holds import release_expired
from tokenbank.ledger.idempotency import Request, replay
from tokenbank.ledger.inputs import (
    check_amount,
    check_description,
    check_expires_at,
    check_key,
    check_metadata,
)
from tokenbank.ledger.journal import Receipt, log_spent, record_transfer
from tokenbank.ledger.models import Source, SystemAccount, TransferKind, accounts, transfers
from tokenbank.ledger.postings import (
    CREDIT_SOURCES,
    DEFAULT_SOURCE,
    NOT_NULL_VIOLATION,
    POSTGRES_SPEND,
    explain_unapplied,
    move,
    spend_at_once,
    spend_serialised,
    spent,
    transfer_params,
)

log = structlog.get_logger("tokenbank.ledger")


def credit(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    kind: TransferKind,
    idempotency_key: str,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    event_at: datetime | None = None,
    now: datetime | None = None,
    source: Source | None = None,
    expires_at: datetime | None = None,
) -> Receipt:
    """Add tokens to a wallet: a purchase, the bonus that came with it, or a grant, in a
    bucket of their ``source`` (by default: a purchase's, or an admin's for a grant) that
    expires at ``expires_at`` (None: never)."""
    if kind not in CREDIT_SOURCES:
        raise InvalidArgument("kind", f"a credit is one of {', '.join(CREDIT_SOURCES)}")
    request = Request.checked(
        key=idempotency_key,
        kind=kind,
        user_id=user_id,
        amount=amount,
        description=description,
        metadata=metadata,
        event_at=event_at,
    )
    now = now or utcnow()
    system, total = CREDIT_SOURCES[kind]
    receipt = move(
        conn,
        request,
        amount=amount,
        system=system,
        total=total,
        source=Source(source) if source is not None else DEFAULT_SOURCE[kind],
        expires_at=check_expires_at(expires_at, now),
        now=now,
    )
    return receipt or explain_unapplied(conn, request)


async def try_spend(
    conn: psycopg.AsyncConnection[Any],
    *,
    user_id: str,
    amount: int,
    idempotency_key: str,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
    log_from: int = 0,
    feature: str | None = None,
    quantity: int | None = None,
) -> Receipt | None:
    """A spend in one round trip on an autocommit asyncio connection (PostgreSQL), or None
    when it was not applied: then call ``spend`` with the same arguments for the answer.
    A spend of at least ``log_from`` tokens (0: none) is logged (``tokens_spent``): the
    statement has committed by then, on its own."""
    request = Request.checked(
        key=idempotency_key,
        kind=TransferKind.SPEND,
        user_id=user_id,
        amount=amount,
        description=description,
        metadata=metadata,
        event_at=None,
        feature=feature,
        quantity=quantity,
    )
    params = transfer_params(
        "postgresql", request, amount=amount, system=SystemAccount.CONSUMPTION, now=now or utcnow()
    )
    try:
        rows = await POSTGRES_SPEND.rows_async(conn, params)
    except sa.exc.IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == NOT_NULL_VIOLATION:
            return None  # a racing copy of the key won; nothing of this one committed
        raise
    except psycopg.errors.DivisionByZero:
        return None  # the buckets it could see had too few tokens: ``spend`` looks again
    receipt = spent(request, amount, rows)
    if receipt is not None and 0 < log_from <= amount:
        log_spent(receipt)
    return receipt


def spend(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    idempotency_key: str,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    event_at: datetime | None = None,
    now: datetime | None = None,
    log_from: int = 0,
    feature: str | None = None,
    quantity: int | None = None,
) -> Receipt:
    """Take ``amount`` tokens from the wallet's available balance, in the order of use
    (``buckets``), or raise ``InsufficientTokens`` and change nothing. ``feature`` and
    ``quantity`` say what the tokens bought (priced by the caller, from the catalog). A
    spend of at least ``log_from`` tokens (0: none) is logged (``tokens_spent``) once the
    caller's unit of work commits it."""
    request = Request.checked(
        key=idempotency_key,
        kind=TransferKind.SPEND,
        user_id=user_id,
        amount=amount,
        description=description,
        metadata=metadata,
        event_at=event_at,
        feature=feature,
        quantity=quantity,
    )
    receipt = _spend(conn, request, amount=amount, now=now or utcnow())
    if not receipt.replayed and 0 < log_from <= amount:
        after_commit(conn, partial(log_spent, receipt))
    return receipt


def _spend(conn: Connection, request: Request, *, amount: int, now: datetime) -> Receipt:
    # The one-statement spend where it commits alone; SQLite's few compiled statements.
    first_try = (
        spend_at_once
        if commits_alone(conn)
        else spend_serialised
        if conn.dialect.name == "sqlite"
        else None
    )
    if first_try is not None and (receipt := first_try(conn, request, amount=amount, now=now)):
        return receipt
    with atomic(conn):
        account_id = wallet_id(conn, request.user_id, lock=True)
        if (receipt := replay(conn, request)) is not None:
            return receipt
        # Holds past their deadline and tokens past their expiry count for nothing.
        release_expired(conn, account_id=account_id, now=now)
        buckets.expire_due(conn, account_id=account_id, now=now)
        available = available_tokens(conn, account_id)
        if available >= amount:
            balance = conn.execute(
                sa.update(accounts)
                .where(accounts.c.id == account_id)
                .values(
                    balance=accounts.c.balance - amount,
                    total_spent=accounts.c.total_spent + amount,
                )
                .returning(accounts.c.balance)
            ).scalar_one()
            transfer_id = record_transfer(
                conn,
                key=request.key,
                kind=TransferKind.SPEND,
                debit_account_id=account_id,
                credit_account_id=SystemAccount.CONSUMPTION,
                amount=amount,
                wallet_id=account_id,
                wallet_balance=balance,
                description=request.description,
                metadata=request.metadata,
                event_at=request.event_at or now,
                now=now,
                feature=request.feature,
                quantity=request.quantity,
            )
            buckets.draw(
                conn, account_id=account_id, amount=amount, now=now, transfer_id=transfer_id
            )
            return Receipt(
                transfer_id=transfer_id,
                kind=TransferKind.SPEND,
                user_id=request.user_id,
                amount=amount,
                balance=balance,
                feature=request.feature,
                quantity=request.quantity,
            )
    raise InsufficientTokens(request.user_id, requested=amount, available=available)


def refund(
    conn: Connection,
    *,
    transfer_id: int,
    idempotency_key: str,
    amount: int | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Receipt:
    """Give back all or part of a spend (a failed generation, say), never more than it took.

    With no ``amount``, refunds whatever of the spend has not been refunded yet. Each refund
    is logged (``spend_refunded``) once the caller's unit of work commits it.
    """
    key = check_key(idempotency_key)
    if amount is not None:
        amount = check_amount(amount)
    description = check_description(description)
    metadata = check_metadata(metadata)
    now = now or utcnow()

    with atomic(conn):
        receipt = _refund(
            conn,
            transfer_id=transfer_id,
            key=key,
            amount=amount,
            description=description,
            metadata=metadata,
            now=now,
        )
    if not receipt.replayed:
        after_commit(
            conn,
            partial(
                log.info,
                "spend_refunded",
                user_id=receipt.user_id,
                tokens=receipt.amount,
                transfer_id=receipt.transfer_id,
                refund_of=transfer_id,
            ),
        )
    return receipt


def _refund(
    conn: Connection,
    *,
    transfer_id: int,
    key: str,
    amount: int | None,
    description: str | None,
    metadata: dict[str, Any] | None,
    now: datetime,
) -> Receipt:
    original = conn.execute(
        sa.select(transfers.c.kind, transfers.c.amount, transfers.c.debit_account_id).where(
            transfers.c.id == transfer_id
        )
    ).first()
    if original is None:
        raise UnknownTransfer(transfer_id)
    if original.kind != TransferKind.SPEND:
        raise NotRefundable(transfer_id, original.kind)
    account_id = original.debit_account_id
    # Lock the wallet first: every refund of this spend then sees the ones before it.
    user_id = conn.execute(
        sa.select(accounts.c.user_id).where(accounts.c.id == account_id).with_for_update()
    ).scalar_one()
    request = Request(
        key=key,
        kind=TransferKind.REFUND,
        user_id=user_id,
        amount=amount,
        description=description,
        metadata=metadata,
        event_at=None,
        refund_of_id=transfer_id,
    )
    if (receipt := replay(conn, request)) is not None:
        return receipt
    refunded = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(transfers.c.amount), 0)).where(
            transfers.c.refund_of_id == transfer_id
        )
    ).scalar_one()
    refundable = original.amount - int(refunded)
    give_back = refundable if amount is None else amount
    if give_back <= 0 or give_back > refundable:
        raise RefundExceedsSpend(transfer_id, requested=give_back, refundable=refundable)
    balance = conn.execute(
        sa.update(accounts)
        .where(accounts.c.id == account_id)
        .values(
            balance=accounts.c.balance + give_back,
            total_spent=accounts.c.total_spent - give_back,
        )
        .returning(accounts.c.balance)
    ).scalar_one()
    refund_id = record_transfer(
        conn,
        key=key,
        kind=TransferKind.REFUND,
        debit_account_id=SystemAccount.CONSUMPTION,
        credit_account_id=account_id,
        amount=give_back,
        wallet_id=account_id,
        wallet_balance=balance,
        description=description,
        metadata=metadata,
        event_at=now,
        now=now,
        refund_of_id=transfer_id,
    )
    buckets.give_back(
        conn,
        account_id=account_id,
        spend_id=transfer_id,
        refund_id=refund_id,
        amount=give_back,
        now=now,
    )
    # Tokens back in a bucket that has expired meanwhile expire at once, by a transfer of
    # their own: the receipt's balance is the refund's, the one a replay returns.
    buckets.expire_due(conn, account_id=account_id, now=now)
    return Receipt(
        transfer_id=refund_id,
        kind=TransferKind.REFUND,
        user_id=user_id,
        amount=give_back,
        balance=balance,
    )
