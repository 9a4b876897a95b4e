"""Plain helpers that put a ledger in a known state."""

from __future__ import annotations

from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import TransferKind


def wallet(db: Database, user_id: str = "alice", tokens: int = 0) -> None:
    with db.transaction() as conn:
        ledger.open_wallet(conn, user_id=user_id)
        if tokens:
            ledger.credit(
                conn,
                user_id=user_id,
                amount=tokens,
                kind=TransferKind.GRANT,
                idempotency_key=f"seed-{user_id}",
            )
