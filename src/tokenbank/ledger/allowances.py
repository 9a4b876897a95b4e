"""A subscription's monthly allowance, and what becomes of the month before's.

A plan grants its allowance each month in a bucket of source ``subscription`` that expires
at the month's end (plus a grace the caller adds). Granting a month decides, in the same
step and under the wallet's lock, what is left of the earlier months' allowance:

- ``keep=0`` (a plan that resets): it expires now, one ``expiry`` transfer per bucket, as
  any bucket past its expiry does;
- ``keep=N`` (a plan that rolls over, up to a cap): up to N free tokens stay, their
  buckets now expiring with the new month's; what is over the cap expires now;
- ``keep=None``: everything left stays (a rollover with no cap).

Tokens a pending hold reserves are not counted and not moved: when the hold ends, what it
frees follows its bucket's expiry (for a reset, at once). The newest buckets are kept
first, so what is carried is what was granted last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.db import atomic
from tokenbank.errors import InvalidArgument
from tokenbank.ledger import buckets
from tokenbank.ledger.accounts import wallet_id
from tokenbank.ledger.holds import release_expired
from tokenbank.ledger.idempotency import KeyPurpose, Request, reserved_key
from tokenbank.ledger.inputs import check_amount, check_expires_at, check_metadata
from tokenbank.ledger.journal import Receipt, record_transfer
from tokenbank.ledger.models import (
    Source,
    SystemAccount,
    TransferKind,
    accounts,
    draws,
    transfers,
)
from tokenbank.ledger.models import buckets as bucket_table
from tokenbank.ledger.postings import CREDIT_SOURCES, explain_unapplied, move


@dataclass(frozen=True, slots=True)
class Allowance:
    """A month's allowance granted (``receipt``), with what of the earlier months' stayed
    (``carried``) and what expired here (``expired``)."""

    receipt: Receipt
    carried: int = 0
    expired: int = 0


def grant_allowance(
    conn: Connection,
    *,
    user_id: str,
    reference: str,
    amount: int,
    expires_at: datetime,
    earlier: Sequence[int] = (),
    keep: int | None = 0,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Allowance:
    """Credit a month's ``amount`` once per ``reference`` (the subscription and month),
    and settle what is left of the allowance credits ``earlier`` (their transfer ids) by
    ``keep`` (see the module docstring). A repeat is a replay that changes nothing."""
    now = now or utcnow()
    amount = check_amount(amount)
    expires_at_checked = check_expires_at(expires_at, now)
    if expires_at_checked is None:
        raise InvalidArgument("expires_at", "an allowance expires")
    if keep is not None and (isinstance(keep, bool) or keep < 0):
        raise InvalidArgument("keep", "must be a whole number of tokens >= 0, or None")
    request = Request(
        key=reserved_key(KeyPurpose.ALLOWANCE, reference),
        kind=TransferKind.PURCHASE,
        user_id=user_id,
        amount=amount,
        description=description,
        metadata=check_metadata(metadata),
        event_at=None,
    )
    with atomic(conn):
        account_id = wallet_id(conn, user_id, lock=True)
        release_expired(conn, account_id=account_id, now=now)
        buckets.expire_due(conn, account_id=account_id, now=now)
        done = conn.execute(
            sa.select(transfers.c.id).where(transfers.c.idempotency_key == request.key)
        ).first()
        carried = expired = 0
        if done is None:
            carried, expired = _settle_earlier(
                conn,
                account_id=account_id,
                earlier=earlier,
                keep=keep,
                expires_at=expires_at_checked,
                reference=reference,
                now=now,
            )
        system, total = CREDIT_SOURCES[TransferKind.PURCHASE]
        receipt = move(
            conn,
            request,
            amount=amount,
            system=system,
            total=total,
            source=Source.SUBSCRIPTION,
            expires_at=expires_at_checked,
            now=now,
        )
    if receipt is None:
        return Allowance(receipt=explain_unapplied(conn, request))
    return Allowance(receipt=receipt, carried=carried, expired=expired)


def _settle_earlier(
    conn: Connection,
    *,
    account_id: int,
    earlier: Sequence[int],
    keep: int | None,
    expires_at: datetime,
    reference: str,
    now: datetime,
) -> tuple[int, int]:
    """Carry or expire what is free in the buckets of the ``earlier`` credits; returns
    (carried, expired)."""
    if not earlier:
        return 0, 0
    rows = conn.execute(
        sa.select(bucket_table.c.id, bucket_table.c.remaining - bucket_table.c.held)
        .where(
            bucket_table.c.account_id == account_id,
            bucket_table.c.transfer_id.in_(list(earlier)),
            bucket_table.c.remaining > bucket_table.c.held,
            bucket_table.c.expires_at > now,
        )
        .order_by(bucket_table.c.id.desc())
        .with_for_update()
    ).all()
    budget = keep
    carried = expired = 0
    for bucket_id, free in rows:
        kept = free if budget is None else min(free, budget)
        if budget is not None:
            budget -= kept
        if kept == free:
            conn.execute(
                sa.update(bucket_table)
                .where(bucket_table.c.id == bucket_id)
                .values(expires_at=expires_at)
            )
        elif kept == 0:
            # Due now: ``expire_due`` moves it out as any lapsed bucket, once.
            conn.execute(
                sa.update(bucket_table).where(bucket_table.c.id == bucket_id).values(expires_at=now)
            )
            expired += buckets.expire_due(conn, account_id=account_id, now=now)
        else:
            expired += _trim(
                conn,
                account_id=account_id,
                bucket_id=bucket_id,
                amount=free - kept,
                reference=reference,
                now=now,
            )
            conn.execute(
                sa.update(bucket_table)
                .where(bucket_table.c.id == bucket_id)
                .values(expires_at=expires_at)
            )
        carried += kept
    return carried, expired


def _trim(
    conn: Connection, *, account_id: int, bucket_id: int, amount: int, reference: str, now: datetime
) -> int:
    """Expire ``amount`` of a bucket that otherwise stays: what a rollover's cap leaves."""
    balance = conn.execute(
        sa.update(accounts)
        .where(accounts.c.id == account_id)
        .values(balance=accounts.c.balance - amount)
        .returning(accounts.c.balance)
    ).scalar_one()
    transfer_id = record_transfer(
        conn,
        key=reserved_key(KeyPurpose.EXPIRY, f"{reference}:over-cap:{bucket_id}"),
        kind=TransferKind.EXPIRY,
        debit_account_id=account_id,
        credit_account_id=SystemAccount.EXPIRY,
        amount=amount,
        wallet_id=account_id,
        wallet_balance=balance,
        description=None,
        metadata={"source": Source.SUBSCRIPTION.value, "over_rollover_cap": True},
        event_at=now,
        now=now,
    )
    conn.execute(
        sa.update(bucket_table)
        .where(bucket_table.c.id == bucket_id)
        .values(remaining=bucket_table.c.remaining - amount)
    )
    conn.execute(
        sa.insert(draws).values(bucket_id=bucket_id, transfer_id=transfer_id, amount=amount)
    )
    return amount
