"""Taking purchased tokens back (a refunded or disputed payment) and freezing them meanwhile.

A clawback never overdraws a wallet: it takes what the wallet can give (its balance less
what pending holds reserve) and records the rest as the wallet's ``debt``. What happens to
a debt is the caller's policy: ``settle_debt`` collects it from a later credit. When the
cause of a clawback goes away (a refund fails after it had succeeded), ``restore`` undoes
it: the tokens taken come back and the debt recorded is cancelled.

A freeze is a hold with no deadline: the tokens stay in the wallet but cannot be spent
until it is voided (the dispute was won) or voided and clawed back (it was lost).

These operations are rare, and each is several statements: each runs in ``atomic``, so in
an autocommit unit it commits whole on its own, and in a transaction it commits with the
caller's. Their keys are reserved ones (``idempotency.reserved_key``), so no API caller can
take them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.db import atomic
from tokenbank.errors import InvalidArgument, UnknownUser
from tokenbank.ledger import buckets
from tokenbank.ledger.accounts import wallet_id
from tokenbank.ledger.holds import Hold, get_hold, release_expired, reserve
from tokenbank.ledger.idempotency import KeyPurpose, Request, reserved_key
from tokenbank.ledger.inputs import check_amount, check_expires_at, check_metadata
from tokenbank.ledger.journal import Receipt, record_transfer
from tokenbank.ledger.models import (
    HoldKind,
    HoldStatus,
    Source,
    SystemAccount,
    TransferKind,
    accounts,
    holds,
    transfers,
)
from tokenbank.ledger.postings import CREDIT_SOURCES, explain_unapplied, move

#: A freeze's deadline: never reached, so no sweep expires it.
FROZEN_UNTIL = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Clawback:
    """``taken`` left the wallet (in transfer ``transfer_id``); ``debt`` was added to its debt."""

    user_id: str
    taken: int
    debt: int
    transfer_id: int | None
    balance: int
    replayed: bool = False


def _lock_wallet(conn: Connection, user_id: str, now: datetime) -> Any:
    """Lock the wallet, release its holds past their deadline and expire its tokens past
    their expiry (they count for nothing)."""
    account_id = wallet_id(conn, user_id, lock=True)
    release_expired(conn, account_id=account_id, now=now)
    buckets.expire_due(conn, account_id=account_id, now=now)
    row = conn.execute(
        sa.select(accounts.c.id, accounts.c.balance, accounts.c.held, accounts.c.debt)
        .where(accounts.c.user_id == user_id)
        .with_for_update()
    ).first()
    if row is None:
        raise UnknownUser(user_id)
    return row


def _earlier(conn: Connection, key: str) -> Any:
    """The transfer an earlier call with this key made (its id and amount), if any."""
    return conn.execute(
        sa.select(transfers.c.id, transfers.c.amount).where(transfers.c.idempotency_key == key)
    ).first()


def credit_purchase(
    conn: Connection,
    *,
    user_id: str,
    reference: str,
    tokens: int,
    bonus_tokens: int,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    event_at: datetime | None = None,
    now: datetime | None = None,
    expires_at: datetime | None = None,
) -> tuple[Receipt, Receipt | None]:
    """Credit a paid purchase and its bonus, once per ``reference`` (the purchase), in
    buckets of source ``purchase`` that expire at ``expires_at`` (None: never, the default;
    an operator may set a validity for purchased tokens).

    The two credits are one step (``atomic``): a purchase is never credited without its
    bonus, even in an autocommit unit where each credit alone would commit by itself.
    """
    now = now or utcnow()
    expires_at = check_expires_at(expires_at, now)
    metadata = check_metadata(metadata)
    requests = [
        Request(
            key=reserved_key(KeyPurpose(kind.value), reference),
            kind=kind,
            user_id=user_id,
            amount=check_amount(amount),
            description=description,
            metadata=metadata,
            event_at=event_at,
        )
        for kind, amount in ((TransferKind.PURCHASE, tokens), (TransferKind.BONUS, bonus_tokens))
        if kind is TransferKind.PURCHASE or amount != 0
    ]
    receipts: list[Receipt] = []
    with atomic(conn):
        for request in requests:
            assert request.amount is not None
            system, total = CREDIT_SOURCES[request.kind]
            receipt = move(
                conn,
                request,
                amount=request.amount,
                system=system,
                total=total,
                source=Source.PURCHASE,
                expires_at=expires_at,
                now=now,
            )
            receipts.append(receipt or explain_unapplied(conn, request))
    return receipts[0], receipts[1] if len(receipts) > 1 else None


def claw_back(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    reference: str,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
    frozen: int | None = None,
) -> Clawback:
    """Take ``amount`` tokens back: what the wallet can give now, the rest as debt.

    ``frozen`` names the freeze of a lost dispute: it ends here, and its tokens are taken
    first, before any other in the order of use. Frozen tokens of a bucket that expired
    during the dispute are still the wallet's (a pending hold's tokens never expire), so
    the clawback gets them; released first, they would expire and leave only debt.

    The transfer's key makes a repeat with the same ``reference`` take nothing more. When
    nothing could be taken there is no transfer, so the caller records that the clawback
    happened (billing does, per refund and per dispute) and does not repeat it.
    """
    amount = check_amount(amount)
    key = reserved_key(KeyPurpose.CLAWBACK, reference)
    metadata = check_metadata(metadata)
    now = now or utcnow()
    with atomic(conn):
        wallet = _lock_wallet(conn, user_id, now)
        done = _earlier(conn, key)
        if done is not None:
            return Clawback(
                user_id=user_id,
                taken=done.amount,
                debt=amount - done.amount,
                transfer_id=done.id,
                balance=wallet.balance,
                replayed=True,
            )
        freeze = 0 if frozen is None else _end_freeze(conn, frozen, wallet.id, now)
        taken = max(0, min(amount, wallet.balance - wallet.held + freeze))
        debt = amount - taken
        balance = wallet.balance - taken
        conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == wallet.id)
            .values(balance=balance, debt=accounts.c.debt + debt, held=accounts.c.held - freeze)
        )
        transfer_id = None
        if taken:
            transfer_id = record_transfer(
                conn,
                key=key,
                kind=TransferKind.CLAWBACK,
                debit_account_id=wallet.id,
                credit_account_id=SystemAccount.REFUNDS,
                amount=taken,
                wallet_id=wallet.id,
                wallet_balance=balance,
                description=description,
                metadata={**(metadata or {}), "owed": amount, "debt": debt},
                event_at=now,
                now=now,
            )
        from_freeze = min(taken, freeze)
        if frozen is not None and freeze:
            buckets.settle_hold(
                conn, hold_id=frozen, spent=from_freeze, transfer_id=transfer_id, now=now
            )
        if taken > from_freeze:
            buckets.draw(
                conn,
                account_id=wallet.id,
                amount=taken - from_freeze,
                now=now,
                transfer_id=transfer_id,
            )
        if freeze > from_freeze:
            # What the freeze held beyond the clawback is free again; in a bucket that
            # expired meanwhile it expires now.
            balance -= buckets.expire_due(conn, account_id=wallet.id, now=now)
    return Clawback(
        user_id=user_id, taken=taken, debt=debt, transfer_id=transfer_id, balance=balance
    )


def _end_freeze(conn: Connection, hold_id: int, account_id: int, now: datetime) -> int:
    """End the wallet's pending freeze ``hold_id`` for a clawback; returns the tokens it
    held (0 when it had already ended, an operator having released it)."""
    ended = conn.execute(
        sa.update(holds)
        .where(
            holds.c.id == hold_id,
            holds.c.account_id == account_id,
            holds.c.kind == HoldKind.FREEZE.value,
            holds.c.status == HoldStatus.PENDING.value,
        )
        .values(status=HoldStatus.VOIDED.value, resolved_at=now)
        .returning(holds.c.amount)
    ).scalar()
    return int(ended or 0)


@dataclass(frozen=True, slots=True)
class Restore:
    """``given`` came back to the wallet (in transfer ``transfer_id``); ``cancelled`` was
    taken off its debt."""

    user_id: str
    given: int
    cancelled: int
    transfer_id: int | None
    balance: int
    replayed: bool = False


def restore(
    conn: Connection,
    *,
    user_id: str,
    reference: str,
    taken: int,
    debt: int,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Restore:
    """Undo a clawback that took ``taken`` tokens and recorded ``debt``: the tokens come
    back, the debt is cancelled, and debt that was meanwhile collected from the wallet
    (``settle_debt``) comes back as tokens too. The transfer's key makes a repeat with the
    same ``reference`` give nothing more; when nothing is given there is no transfer, so
    the caller records that the restore happened (billing does, per refund)."""
    if taken < 0 or debt < 0 or taken + debt == 0:
        raise InvalidArgument("amount", "a restore gives back a positive number of tokens")
    key = reserved_key(KeyPurpose.RESTORE, reference)
    metadata = check_metadata(metadata)
    now = now or utcnow()
    with atomic(conn):
        wallet = _lock_wallet(conn, user_id, now)
        done = _earlier(conn, key)
        if done is not None:
            return Restore(
                user_id=user_id,
                given=done.amount,
                cancelled=taken + debt - done.amount,
                transfer_id=done.id,
                balance=wallet.balance,
                replayed=True,
            )
        cancelled = min(debt, wallet.debt)
        given = taken + debt - cancelled
        balance = wallet.balance + given
        conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == wallet.id)
            .values(balance=balance, debt=accounts.c.debt - cancelled)
        )
        transfer_id = None
        if given:
            transfer_id = record_transfer(
                conn,
                key=key,
                kind=TransferKind.RESTORE,
                debit_account_id=SystemAccount.REFUNDS,
                credit_account_id=wallet.id,
                amount=given,
                wallet_id=wallet.id,
                wallet_balance=balance,
                description=description,
                metadata={**(metadata or {}), "debt_cancelled": cancelled},
                event_at=now,
                now=now,
            )
            # What a clawback took comes back as purchased tokens that never expire.
            buckets.fill(
                conn,
                account_id=wallet.id,
                transfer_id=transfer_id,
                source=Source.PURCHASE,
                amount=given,
                expires_at=None,
                now=now,
            )
    return Restore(
        user_id=user_id, given=given, cancelled=cancelled, transfer_id=transfer_id, balance=balance
    )


def overrun(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    reference: str,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Clawback:
    """Spend ``amount`` that work cost beyond what its hold reserved (the estimate fell
    short): what the wallet has available now, the rest added to its debt, so the wallet
    never goes negative. The debt then follows the clawback policy, as a clawback's does.

    As with ``claw_back``, a repeat with the same ``reference`` takes nothing more; when
    nothing could be taken there is no transfer, so the caller records that the overrun
    was settled and does not repeat it.
    """
    amount = check_amount(amount)
    key = reserved_key(KeyPurpose.OVERRUN, reference)
    metadata = check_metadata(metadata)
    now = now or utcnow()
    with atomic(conn):
        wallet = _lock_wallet(conn, user_id, now)
        done = _earlier(conn, key)
        if done is not None:
            return Clawback(
                user_id=user_id,
                taken=done.amount,
                debt=amount - done.amount,
                transfer_id=done.id,
                balance=wallet.balance,
                replayed=True,
            )
        taken = max(0, min(amount, wallet.balance - wallet.held))
        debt = amount - taken
        balance = wallet.balance - taken
        conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == wallet.id)
            .values(
                balance=balance,
                debt=accounts.c.debt + debt,
                total_spent=accounts.c.total_spent + taken,
            )
        )
        transfer_id = None
        if taken:
            transfer_id = record_transfer(
                conn,
                key=key,
                kind=TransferKind.SPEND,
                debit_account_id=wallet.id,
                credit_account_id=SystemAccount.CONSUMPTION,
                amount=taken,
                wallet_id=wallet.id,
                wallet_balance=balance,
                description=description,
                metadata={**(metadata or {}), "overrun": amount, "debt": debt},
                event_at=now,
                now=now,
            )
            buckets.draw(conn, account_id=wallet.id, amount=taken, now=now, transfer_id=transfer_id)
    return Clawback(
        user_id=user_id, taken=taken, debt=debt, transfer_id=transfer_id, balance=balance
    )


def settle_debt(
    conn: Connection,
    *,
    user_id: str,
    reference: str,
    description: str | None = None,
    now: datetime | None = None,
) -> Clawback:
    """Collect the wallet's debt from its available tokens, as far as they go."""
    key = reserved_key(KeyPurpose.SETTLE, reference)
    now = now or utcnow()
    with atomic(conn):
        wallet = _lock_wallet(conn, user_id, now)
        taken = max(0, min(wallet.debt, wallet.balance - wallet.held))
        if (
            taken == 0
            or conn.execute(
                sa.select(transfers.c.id).where(transfers.c.idempotency_key == key)
            ).first()
        ):
            return Clawback(
                user_id=user_id, taken=0, debt=wallet.debt, transfer_id=None, balance=wallet.balance
            )
        balance = wallet.balance - taken
        conn.execute(
            sa.update(accounts)
            .where(accounts.c.id == wallet.id)
            .values(balance=balance, debt=accounts.c.debt - taken)
        )
        transfer_id = record_transfer(
            conn,
            key=key,
            kind=TransferKind.CLAWBACK,
            debit_account_id=wallet.id,
            credit_account_id=SystemAccount.REFUNDS,
            amount=taken,
            wallet_id=wallet.id,
            wallet_balance=balance,
            description=description or "Debt settled",
            metadata={"settles_debt": taken},
            event_at=now,
            now=now,
        )
        buckets.draw(conn, account_id=wallet.id, amount=taken, now=now, transfer_id=transfer_id)
    return Clawback(
        user_id=user_id,
        taken=taken,
        debt=wallet.debt - taken,
        transfer_id=transfer_id,
        balance=balance,
    )


def freeze(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    reference: str,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Hold | None:
    """Reserve up to ``amount`` tokens with no deadline, once per ``reference``; None when
    the wallet has nothing available to freeze."""
    amount = check_amount(amount)
    key = reserved_key(KeyPurpose.FREEZE, reference)
    metadata = check_metadata(metadata)
    now = now or utcnow()
    with atomic(conn):
        wallet = _lock_wallet(conn, user_id, now)
        existing = conn.execute(sa.select(holds.c.id).where(holds.c.idempotency_key == key)).first()
        if existing is not None:
            return get_hold(conn, hold_id=existing.id)
        frozen = min(amount, wallet.balance - wallet.held)
        if frozen <= 0:
            return None
        return reserve(
            conn,
            user_id=user_id,
            amount=frozen,
            key=key,
            kind=HoldKind.FREEZE,
            expires_at=FROZEN_UNTIL,
            description=description,
            metadata=metadata,
            now=now,
        )
