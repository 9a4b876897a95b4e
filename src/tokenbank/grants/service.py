"""``grant``: the one way free tokens are given, for the API, the command line and the admin
pages alike, so the rules cannot drift apart between them."""

from __future__ import annotations

from typing import Any

import structlog

from tokenbank import audit, ledger, users
from tokenbank.db import Database

log = structlog.get_logger("tokenbank.grants")


def grant(
    db: Database,
    *,
    user_id: str,
    amount: int,
    reason: str,
    idempotency_key: str,
    actor: str,
    metadata: dict[str, Any] | None = None,
) -> ledger.Receipt:
    """Credit ``amount`` free tokens to an existing user, once per ``idempotency_key``.

    A grant is a decision about money, so it needs a reason, is audited (who, why) in the
    transaction that credits, and is given only to a user tokenbank knows: a typo in a user
    id must not open a wallet nobody owns. ``actor`` names who decided (``user:<id>``,
    ``api_key:<id>``, ``cli:<login>``); it is kept in the audit log, not on the transfer, so a
    retry with the same key is a replay whoever sends it. A replay returns the first receipt
    and writes nothing.
    """
    reason = audit.check_reason(reason)
    with db.transaction(wallet=user_id) as conn:
        users.get_user(conn, user_id=user_id)
        receipt = ledger.credit(
            conn,
            user_id=user_id,
            amount=amount,
            kind=ledger.TransferKind.GRANT,
            idempotency_key=idempotency_key,
            description=reason,
            metadata=metadata,
        )
        if not receipt.replayed:
            audit.record(
                conn,
                actor=actor,
                action="grant",
                subject=f"user:{user_id}",
                reason=reason,
                details={"amount": amount, "transfer_id": receipt.transfer_id},
            )
    if not receipt.replayed:
        log.info(
            "grant_credited",
            user_id=user_id,
            tokens=receipt.amount,
            transfer_id=receipt.transfer_id,
            actor=actor,
        )
    return receipt
