"""Buckets: what is left of each credit, and the order a wallet's tokens are used in.

Every credit fills a bucket that remembers its source (a purchase, a subscription, a trial,
a promotion, an admin's grant) and when it expires, if it does. A wallet's ``balance`` is
the sum of what is left in its buckets and its ``held`` the sum of what pending holds
reserve in them; every function here runs under the wallet's lock, in the caller's
``atomic`` step, next to the change of the wallet row it accounts for, and ``verify``
checks both sums.

Tokens are used in one fixed order (``ORDER``): the soonest-expiring first (tokens that
never expire last), then promotional before paid, then the oldest first. So what would
lapse is used before what would not, and a user who bought tokens keeps them longest.

Each use is written down as a draw: which bucket gave how much to which transfer (a spend,
a clawback, an expiry), or which bucket a hold reserves tokens in. A refund of a spend
gives its tokens back to the buckets the spend drew on (a negative draw); posting or
voiding a hold takes from, or frees, the buckets it reserved in. Tokens that come back to
a bucket that has meanwhile expired expire at once (``expire_due``).

Expiry moves what is left of an expired bucket out of the wallet with one ``expiry``
transfer, whose key names the bucket: it happens once, under the wallet's lock, whoever
runs it (a worker's sweep, or a spend that needs the wallet's live tokens). Tokens a
pending hold reserves in an expired bucket are not expired until the hold ends; what it
then frees is expired by a further transfer of that bucket (``bucket:{id}:{n}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.db import after_commit, atomic
from tokenbank.ledger.idempotency import KeyPurpose, reserved_key
from tokenbank.ledger.journal import record_transfer
from tokenbank.ledger.models import (
    PAID_SOURCES,
    Source,
    SystemAccount,
    TransferKind,
    accounts,
    buckets,
    draws,
    transfers,
)

log = structlog.get_logger("tokenbank.ledger")

#: The condition of ``ix_buckets_live``, spelled out so that a query on one wallet's buckets
#: uses that index: neither database infers it from ``remaining > held``.
LIVE = buckets.c.remaining > 0

#: The order of use: soonest-expiring first (never last), promotional before paid, oldest.
ORDER = (
    buckets.c.expires_at.is_(None),
    buckets.c.expires_at,
    buckets.c.paid,
    buckets.c.id,
)


@dataclass(frozen=True, slots=True)
class Expiring:
    """Tokens of one bucket that will expire at ``expires_at`` unless used first."""

    amount: int
    expires_at: datetime
    source: Source


def fill(
    conn: Connection,
    *,
    account_id: int,
    transfer_id: int | None,
    source: Source,
    amount: int,
    expires_at: datetime | None,
    now: datetime,
) -> None:
    """A new bucket for a credit of ``amount`` tokens the wallet just received."""
    conn.execute(
        sa.insert(buckets).values(
            account_id=account_id,
            transfer_id=transfer_id,
            source=source.value,
            paid=source in PAID_SOURCES,
            amount=amount,
            remaining=amount,
            held=0,
            expires_at=expires_at,
            created_at=now,
        )
    )


#: The order a freeze reserves in: paid tokens first (they are what a dispute is about, and
#: they do not lapse while frozen), then the order of use.
PAID_FIRST = (buckets.c.paid.desc(), *ORDER)


def _live(account_id: int, now: datetime, order: tuple[Any, ...] = ORDER) -> sa.Select[Any]:
    """The wallet's buckets with tokens free to use now, in ``order``, locked."""
    return (
        sa.select(buckets.c.id, buckets.c.remaining - buckets.c.held)
        .where(
            buckets.c.account_id == account_id,
            LIVE,
            buckets.c.remaining > buckets.c.held,
            sa.or_(buckets.c.expires_at.is_(None), buckets.c.expires_at > now),
        )
        .order_by(*order)
        .with_for_update()
    )


def draw(
    conn: Connection,
    *,
    account_id: int,
    amount: int,
    now: datetime,
    transfer_id: int | None = None,
    hold_id: int | None = None,
    paid_first: bool = False,
) -> int:
    """Take ``amount`` free tokens from the wallet's live buckets in the order of use (a
    freeze: ``paid_first``): for a transfer (they leave the buckets) or for a hold (they are
    reserved in them).

    The caller has checked that the wallet has them (its row says so); buckets that do not
    hold them would contradict it, and the caller's step is refused whole rather than
    written half-drawn.
    """
    left = amount
    order = PAID_FIRST if paid_first else ORDER
    for bucket_id, free in conn.execute(_live(account_id, now, order)).all():
        if left == 0:
            break
        take = min(free, left)
        left -= take
        if hold_id is None:
            change = {"remaining": buckets.c.remaining - take}
        else:
            change = {"held": buckets.c.held + take}
        conn.execute(sa.update(buckets).where(buckets.c.id == bucket_id).values(change))
        conn.execute(
            sa.insert(draws).values(
                bucket_id=bucket_id, transfer_id=transfer_id, hold_id=hold_id, amount=take
            )
        )
    if left:
        raise RuntimeError(f"account {account_id}: its buckets lack {left} of {amount} tokens")
    return amount


def settle_hold(
    conn: Connection, *, hold_id: int, spent: int, transfer_id: int | None, now: datetime
) -> None:
    """A hold ends: of what it reserved, ``spent`` tokens leave their buckets (in the order
    they were reserved) for ``transfer_id``, the rest is free again in the same buckets."""
    reserved = conn.execute(
        sa.select(draws.c.bucket_id, draws.c.amount)
        .where(draws.c.hold_id == hold_id)
        .order_by(draws.c.id)
    ).all()
    left = spent
    for bucket_id, amount in reserved:
        take = min(amount, left)
        left -= take
        conn.execute(
            sa.update(buckets)
            .where(buckets.c.id == bucket_id)
            .values(held=buckets.c.held - amount, remaining=buckets.c.remaining - take)
        )
        if take:
            conn.execute(
                sa.insert(draws).values(bucket_id=bucket_id, transfer_id=transfer_id, amount=take)
            )


def give_back(
    conn: Connection, *, account_id: int, spend_id: int, refund_id: int, amount: int, now: datetime
) -> None:
    """A refund of ``amount`` tokens of spend ``spend_id`` returns them to the buckets the
    spend took them from, the last one it drew on first (what is used last comes back first,
    so a partial refund favours the tokens that last longest). A spend from before buckets
    existed drew on none: its refund fills a bucket of its own that never expires."""
    refunds = sa.select(transfers.c.id).where(transfers.c.refund_of_id == spend_id)
    still_out = conn.execute(
        sa.select(draws.c.bucket_id, sa.func.sum(draws.c.amount).label("out"))
        .where(sa.or_(draws.c.transfer_id == spend_id, draws.c.transfer_id.in_(refunds)))
        .group_by(draws.c.bucket_id)
        .having(sa.func.sum(draws.c.amount) > 0)
        .order_by(sa.func.min(draws.c.id).desc())
    ).all()
    left = amount
    for bucket_id, out in still_out:
        if left == 0:
            break
        back = min(int(out), left)
        left -= back
        conn.execute(
            sa.update(buckets)
            .where(buckets.c.id == bucket_id)
            .values(remaining=buckets.c.remaining + back)
        )
        conn.execute(
            sa.insert(draws).values(bucket_id=bucket_id, transfer_id=refund_id, amount=-back)
        )
    if left:
        fill(
            conn,
            account_id=account_id,
            transfer_id=refund_id,
            source=Source.PURCHASE,
            amount=left,
            expires_at=None,
            now=now,
        )


def expire_due(conn: Connection, *, account_id: int, now: datetime) -> int:
    """Move out of the wallet what is free in its buckets past their expiry, one ``expiry``
    transfer per bucket; returns the tokens expired."""
    return sum(_expire(conn, account_id, now))


def _expire(conn: Connection, account_id: int, now: datetime) -> list[int]:
    """``expire_due``, returning what each bucket it expired lost. The caller holds the
    wallet's lock inside its ``atomic`` step, so a bucket is expired once, whoever gets here
    first."""
    due = conn.execute(
        sa.select(
            buckets.c.id,
            buckets.c.remaining - buckets.c.held,
            buckets.c.expired_at,
            buckets.c.source,
        )
        .where(
            buckets.c.account_id == account_id,
            LIVE,
            buckets.c.expires_at.is_not(None),
            buckets.c.expires_at <= now,
            buckets.c.remaining > buckets.c.held,
        )
        .order_by(buckets.c.id)
        .with_for_update()
    ).all()
    expired: list[int] = []
    for bucket_id, amount, expired_at, source in due:
        reference = f"bucket:{bucket_id}"
        if expired_at is not None:
            # Tokens came back after its first expiry (a hold ended, a spend was refunded).
            earlier = conn.execute(
                sa.select(sa.func.count())
                .select_from(draws.join(transfers, transfers.c.id == draws.c.transfer_id))
                .where(
                    draws.c.bucket_id == bucket_id,
                    transfers.c.kind == TransferKind.EXPIRY.value,
                )
            ).scalar_one()
            reference = f"bucket:{bucket_id}:{int(earlier) + 1}"
        balance = conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == account_id)
            .values(balance=accounts.c.balance - amount)
            .returning(accounts.c.balance)
        ).scalar_one()
        transfer_id = record_transfer(
            conn,
            key=reserved_key(KeyPurpose.EXPIRY, reference),
            kind=TransferKind.EXPIRY,
            debit_account_id=account_id,
            credit_account_id=SystemAccount.EXPIRY,
            amount=amount,
            wallet_id=account_id,
            wallet_balance=balance,
            description=None,
            metadata={"source": source},
            event_at=now,
            now=now,
        )
        conn.execute(
            sa.update(buckets)
            .where(buckets.c.id == bucket_id)
            .values(remaining=buckets.c.remaining - amount, expired_at=now)
        )
        conn.execute(
            sa.insert(draws).values(bucket_id=bucket_id, transfer_id=transfer_id, amount=amount)
        )
        after_commit(
            conn,
            partial(
                log.info,
                "tokens_expired",
                account_id=account_id,
                bucket_id=bucket_id,
                tokens=amount,
                source=source,
                transfer_id=transfer_id,
            ),
        )
        expired.append(amount)
    return expired


_due_wallets = (
    sa.select(buckets.c.account_id)
    .where(
        buckets.c.expires_at.is_not(None),
        buckets.c.expires_at <= sa.bindparam("now"),
        buckets.c.remaining > buckets.c.held,
    )
    .group_by(buckets.c.account_id)
    .order_by(buckets.c.account_id)
)


def expire_grants(conn: Connection, *, now: datetime | None = None, limit: int = 1000) -> int:
    """Expire what is left of the buckets past their expiry, in up to ``limit`` wallets;
    returns how many buckets were expired (0: nothing is due).

    Each wallet is a step of its own (``atomic``) under its lock, taken in ascending id
    order as everyone takes it: any number of sweeps, spends and holds may run at once, and
    each bucket is expired once (the sweep that comes second finds nothing left), its
    held tokens not at all.
    """
    now = now or utcnow()
    done = 0
    for (account_id,) in conn.execute(_due_wallets.limit(limit), {"now": now}).all():
        with atomic(conn):
            conn.execute(
                sa.select(accounts.c.id).where(accounts.c.id == account_id).with_for_update()
            )
            done += len(_expire(conn, account_id, now))
    return done
