"""What the worker tests share: wallets with holds past their deadline, and jobs that
count their runs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tests.conftest import EPOCH
from tokenbank import ledger
from tokenbank.db import Database
from tokenbank.ledger import TransferKind
from tokenbank.worker import Done, Run

#: When the holds of ``holds_past_due`` were made; they expire a minute later.
MADE = EPOCH
LATER = EPOCH + timedelta(hours=1)


def holds_past_due(db: Database, *, wallets: int, per_wallet: int, made: datetime = MADE) -> int:
    """``wallets`` users each with ``per_wallet`` holds of 10 tokens made at ``made``, past
    their deadline a minute later; returns how many holds."""
    for n in range(wallets):
        user_id = f"user-{n}"
        with db.transaction(wallet=user_id) as conn:
            ledger.open_wallet(conn, user_id=user_id, now=made)
            ledger.credit(
                conn,
                user_id=user_id,
                amount=10 * per_wallet,
                kind=TransferKind.GRANT,
                idempotency_key=f"grant-{n}",
                now=made,
            )
            for h in range(per_wallet):
                ledger.hold(
                    conn,
                    user_id=user_id,
                    amount=10,
                    idempotency_key=f"hold-{n}-{h}",
                    ttl_seconds=60,
                    now=made,
                )
    return wallets * per_wallet


@dataclass
class Counting:
    """A job's work that counts its runs, and fails when told to."""

    items: int = 1
    failing: Exception | None = None
    problem: str | None = None
    runs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, run: Run) -> Done:
        with self._lock:
            self.runs += 1
        if self.failing is not None:
            raise self.failing
        return Done(items=self.items, problem=self.problem)
