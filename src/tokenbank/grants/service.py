"""``grant``: the one way free tokens are given, for the API, the command line and the admin
pages alike, so the rules cannot drift apart between them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank import audit, ledger, users
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import InvalidArgument
from tokenbank.ledger.models import buckets

log = structlog.get_logger("tokenbank.grants")

#: Where a grant's tokens may say they came from: the trial has its own path
#: (``grant_trial``), and purchases are credited by billing.
SOURCES = (ledger.Source.ADMIN, ledger.Source.PROMO)
#: The furthest a grant may expire: ten years, far past any promotion.
MAX_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Grant(ledger.Receipt):
    """A grant's receipt, with what its tokens are (``source``) and when they expire (None:
    never): a replay says the first grant's, whatever the retry asked."""

    source: ledger.Source = ledger.Source.ADMIN
    expires_at: datetime | None = None


def expiry(*, days: int, now: datetime | None = None) -> datetime:
    """When a grant that lasts ``days`` (1 to ``MAX_DAYS``) from ``now`` expires."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidArgument("expires_in_days", f"must be a whole number of days, 1-{MAX_DAYS}")
    return (now or utcnow()) + timedelta(days=days)


def check_grant_expiry(expires_at: object, *, now: datetime) -> datetime | None:
    """A grant's expiry: None (never), or an aware time after ``now``, within ``MAX_DAYS``."""
    if expires_at is None:
        return None
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise InvalidArgument("expires_at", "must be a date and time with its UTC offset")
    if expires_at <= now:
        raise InvalidArgument("expires_at", "must be in the future")
    if expires_at > now + timedelta(days=MAX_DAYS):
        raise InvalidArgument("expires_at", f"must be within {MAX_DAYS} days")
    return expires_at.astimezone(UTC)  # as the bucket keeps it, and a replay answers


def check_source(source: object) -> ledger.Source:
    for allowed in SOURCES:
        if source == allowed:
            return allowed
    raise InvalidArgument("source", f"must be one of {', '.join(SOURCES)}")


def grant(
    db: Database,
    *,
    user_id: str,
    amount: int,
    reason: str,
    idempotency_key: str,
    actor: str,
    metadata: dict[str, Any] | None = None,
    expires_at: datetime | None = None,
    source: ledger.Source = ledger.Source.ADMIN,
    now: datetime | None = None,
) -> Grant:
    """Credit ``amount`` free tokens to an existing user, once per ``idempotency_key``.

    A grant is a decision about money, so it needs a reason, is audited (who, why) in the
    transaction that credits, and is given only to a user tokenbank knows: a typo in a user
    id must not open a wallet nobody owns. ``actor`` names who decided (``user:<id>``,
    ``api_key:<id>``, ``cli:<login>``); it is kept in the audit log, not on the transfer, so a
    retry with the same key is a replay whoever sends it. A replay returns the first receipt
    and writes nothing.

    ``source`` says what the tokens are to the reports (``admin``: an operator's decision,
    ``promo``: a promotion); ``expires_at``, when they stop being usable (None: never).
    """
    reason = audit.check_reason(reason)
    source = check_source(source)
    now = now or utcnow()
    refused: InvalidArgument | None = None
    try:
        expires_at = check_grant_expiry(expires_at, now=now)
    except InvalidArgument as exc:
        # A retry of a grant whose expiry has passed since is still that grant's replay.
        refused, expires_at = exc, None
    with db.transaction(wallet=user_id) as conn:
        users.get_user(conn, user_id=user_id)
        used = isinstance(idempotency_key, str) and ledger.transfer_exists(
            conn, idempotency_key=idempotency_key
        )
        if refused is not None and not used:
            raise refused
        receipt = ledger.credit(
            conn,
            user_id=user_id,
            amount=amount,
            kind=ledger.TransferKind.GRANT,
            idempotency_key=idempotency_key,
            description=reason,
            metadata=metadata,
            source=source,
            expires_at=expires_at,
            now=now,
        )
        if not receipt.replayed:
            audit.record(
                conn,
                actor=actor,
                action="grant",
                subject=f"user:{user_id}",
                reason=reason,
                details={
                    "amount": amount,
                    "transfer_id": receipt.transfer_id,
                    "source": source.value,
                    "expires_at": None if expires_at is None else expires_at.isoformat(),
                },
                now=now,
            )
        else:
            source, expires_at = _terms(conn, receipt.transfer_id)
    if not receipt.replayed:
        log.info(
            "grant_credited",
            user_id=user_id,
            tokens=receipt.amount,
            transfer_id=receipt.transfer_id,
            actor=actor,
            source=source.value,
            expires_at=None if expires_at is None else expires_at.isoformat(),
        )
    given = {field.name: getattr(receipt, field.name) for field in fields(receipt)}
    return Grant(**given, source=source, expires_at=expires_at)


def _terms(conn: Connection, transfer_id: int) -> tuple[ledger.Source, datetime | None]:
    """The source and expiry a credit's tokens were given with (its bucket's; a grant made
    before buckets were kept had an admin's tokens that never expire)."""
    row = conn.execute(
        sa.select(buckets.c.source, buckets.c.expires_at).where(
            buckets.c.transfer_id == transfer_id
        )
    ).first()
    if row is None:
        return ledger.Source.ADMIN, None
    return ledger.Source(row.source), row.expires_at
