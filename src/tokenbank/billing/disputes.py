"""Disputes (chargebacks and inquiries): the disputed share of a purchase's tokens is frozen
while Stripe decides (paid tokens first), released if the dispute is won, clawed back if it
is lost (the frozen tokens first).

Each step happens once per dispute: the ``disputes`` row records the freeze and the
closing, and a closed dispute is never reopened by a stale snapshot. A Stripe refund during
an open inquiry takes its tokens out of the freeze (``unfreeze_open``, then ``refreeze``),
which is why ``payment_refunds`` uses this module.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.billing.models import DisputeStatus, disputes, purchases
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.purchases import tokens_for
from tokenbank.payments.stripe import Dispute

#: Dispute statuses at Stripe that mean "still being decided".
OPEN_DISPUTE = frozenset(
    {"warning_needs_response", "warning_under_review", "needs_response", "under_review"}
)
#: Stripe closed an inquiry without a chargeback: the tokens are released.
DISPUTE_RELEASED = frozenset({"won", "warning_closed", "prevented"})


def apply_dispute(
    conn: Connection, *, purchase_id: int, dispute: Dispute, outcome: Outcome, now: datetime
) -> None:
    """Freeze on the first sight of a dispute; release or claw back once it closes."""
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    known = conn.execute(sa.select(disputes).where(disputes.c.dispute_id == dispute.id)).first()
    if known is None:
        known = _open(conn, row, dispute, outcome, now)
    if known.status != DisputeStatus.OPEN or dispute.status in OPEN_DISPUTE:
        return  # closed once, never reopened; or still open
    if dispute.status in DISPUTE_RELEASED:
        if known.hold_id is not None:
            _release(conn, known.hold_id, now)
        conn.execute(
            sa.update(disputes)
            .where(disputes.c.id == known.id)
            .values(status=DisputeStatus.WON.value, closed_at=now)
        )
        outcome.record(
            "dispute_released",
            f"dispute {dispute.id} won: released the frozen tokens",
            dispute_id=dispute.id,
            dispute_status=dispute.status,
            tokens=int(known.tokens),
        )
        return
    taken = debt = 0
    owed = min(known.tokens, row.tokens + row.bonus_tokens - row.clawed_back_tokens)
    if owed > 0:
        clawback = ledger.claw_back(
            conn,
            user_id=row.user_id,
            amount=owed,
            reference=f"dispute:{dispute.id}",
            description=f"Dispute {dispute.id} of purchase {purchase_id} lost",
            metadata={"purchase_id": purchase_id, "dispute_id": dispute.id},
            now=now,
            frozen=known.hold_id,  # its tokens first, even those that expired while frozen
        )
        taken, debt = clawback.taken, clawback.debt
    elif known.hold_id is not None:
        _release(conn, known.hold_id, now)
    conn.execute(
        sa.update(disputes)
        .where(disputes.c.id == known.id)
        .values(status=DisputeStatus.LOST.value, closed_at=now, clawed_back=taken, debt=debt)
    )
    conn.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase_id)
        .values(clawed_back_tokens=purchases.c.clawed_back_tokens + max(owed, 0), updated_at=now)
    )
    note = f"dispute {dispute.id} lost: clawed back {taken} tokens"
    outcome.record(
        "dispute_clawed_back",
        note + (f", {debt} recorded as debt" if debt else ""),
        dispute_id=dispute.id,
        dispute_status=dispute.status,
        tokens=int(max(owed, 0)),
        taken=taken,
        debt=debt,
    )


def _open(
    conn: Connection, row: sa.Row[Any], dispute: Dispute, outcome: Outcome, now: datetime
) -> sa.Row[Any]:
    """The dispute's row, made with a freeze of what the wallet still has of its share."""
    remaining = row.tokens + row.bonus_tokens - row.clawed_back_tokens
    tokens = min(tokens_for(row, amount=dispute.amount), remaining)
    hold = None
    if tokens > 0:
        hold = ledger.freeze(
            conn,
            user_id=row.user_id,
            amount=tokens,
            reference=f"dispute:{dispute.id}",
            description=f"Frozen while dispute {dispute.id} is open",
            metadata={"purchase_id": row.id, "dispute_id": dispute.id},
            now=now,
        )
    dispute_row_id = conn.execute(
        sa.insert(disputes)
        .values(
            dispute_id=dispute.id,
            purchase_id=row.id,
            status=DisputeStatus.OPEN.value,
            amount=dispute.amount,
            tokens=tokens,
            hold_id=hold.id if hold else None,
            opened_at=now,
        )
        .returning(disputes.c.id)
    ).scalar_one()
    frozen = hold.amount if hold else 0
    outcome.record(
        "dispute_frozen",
        f"dispute {dispute.id} opened: froze {frozen} tokens",
        dispute_id=dispute.id,
        dispute_amount=dispute.amount,
        tokens=frozen,
    )
    return conn.execute(sa.select(disputes).where(disputes.c.id == dispute_row_id)).one()


def _release(conn: Connection, hold_id: int, now: datetime) -> None:
    """End a freeze; one that an operator already ended is left as it is."""
    with contextlib.suppress(ledger.HoldNotPending):
        ledger.void_hold(conn, hold_id=hold_id, now=now, unfreeze=True)


def unfreeze_open(conn: Connection, *, purchase_id: int, now: datetime) -> list[Any]:
    """Release the freezes of the purchase's open disputes; returns those disputes' rows,
    for ``refreeze`` once the tokens a Stripe refund takes back are gone."""
    frozen = list(
        conn.execute(
            sa.select(disputes).where(
                disputes.c.purchase_id == purchase_id,
                disputes.c.status == DisputeStatus.OPEN.value,
                disputes.c.hold_id.is_not(None),
            )
        )
    )
    for dispute in frozen:
        _release(conn, dispute.hold_id, now)
    return frozen


def refreeze(
    conn: Connection, *, purchase_id: int, frozen: list[Any], after: str, now: datetime
) -> None:
    """Freeze again what is still disputed of the purchase's remaining tokens (``after``:
    the Stripe refund that took the rest, which keeps the new freezes' keys unique)."""
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).one()
    remaining = row.tokens + row.bonus_tokens - row.clawed_back_tokens
    for dispute in frozen:
        tokens = min(dispute.tokens, remaining)
        hold = None
        if tokens > 0:
            hold = ledger.freeze(
                conn,
                user_id=row.user_id,
                amount=tokens,
                reference=f"dispute:{dispute.dispute_id}:after:{after}",
                description=f"Frozen while dispute {dispute.dispute_id} is open",
                metadata={"purchase_id": purchase_id, "dispute_id": dispute.dispute_id},
                now=now,
            )
        conn.execute(
            sa.update(disputes)
            .where(disputes.c.id == dispute.id)
            .values(tokens=tokens, hold_id=hold.id if hold else None)
        )
