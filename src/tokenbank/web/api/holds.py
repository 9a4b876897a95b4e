"""Holds over the API: reserve tokens before work whose cost is not known yet, then post
what it cost or void it. A hold names an amount, or a feature and quantity that the
catalog prices (the most the work may cost)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.engine import Connection

from tokenbank import entitlements, ledger
from tokenbank.billing.coverage import covered_features, use_covered
from tokenbank.web.api.responses import PROBLEMS, SPEND_PROBLEMS
from tokenbank.web.deps import DatabaseDep, RowId, RuntimeDep, Spender, UserId
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import HoldIn, HoldOut, PostIn, ReceiptOut, hold_out, receipt_out

router = APIRouter(prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["holds"])


@router.post("/users/{user_id}/holds", status_code=201, responses=SPEND_PROBLEMS)
def create_hold(user_id: UserId, body: HoldIn, _: Spender, parts: RuntimeDep) -> HoldOut:
    """Reserve tokens before work whose cost is not known yet; post or void it after. An
    ``amount``, or a ``feature`` and ``quantity`` priced by the catalog (422
    ``unknown_feature`` for one it does not price)."""
    amount = entitlements.cost_of(
        parts.catalog, amount=body.amount, feature=body.feature, quantity=body.quantity
    )
    if body.feature in covered_features(parts.catalog):  # a plan may cover it
        assert body.feature is not None
        covered = use_covered(
            parts.db,
            parts.catalog,
            user_id=user_id,
            feature=body.feature,
            quantity=1 if body.quantity is None else body.quantity,
            amount=amount,
            idempotency_key=body.idempotency_key,
            spend=False,
            ttl_seconds=body.ttl_seconds or parts.default_hold_ttl,
            description=body.description,
            metadata=body.metadata,
        )
        if covered is not None:
            return hold_out(covered)
    with parts.db.autocommit(wallet=user_id) as conn:
        hold = ledger.hold(
            conn,
            user_id=user_id,
            amount=amount,
            idempotency_key=body.idempotency_key,
            ttl_seconds=body.ttl_seconds or parts.default_hold_ttl,
            description=body.description,
            metadata=body.metadata,
            feature=body.feature,
            quantity=body.quantity,
        )
    return hold_out(hold)


@router.post("/holds/{hold_id}/post")
def post_hold(hold_id: RowId, body: PostIn, _: Spender, parts: RuntimeDep) -> ReceiptOut:
    """Spend at most the held amount and release the rest. Repeating it is safe. A hold
    the user's plan covers (``covered``) records the use and takes no tokens."""
    with parts.db.autocommit() as conn:
        if ledger.get_hold(conn, hold_id=hold_id).kind is ledger.HoldKind.COVERED:
            return _covered_post(conn, hold_id, body.amount)
        receipt = ledger.post_hold(
            conn, hold_id=hold_id, amount=body.amount, log_from=parts.large_spend
        )
    if not receipt.replayed:
        parts.metrics.spends.inc()
        parts.metrics.tokens_spent.inc(receipt.amount)
    return receipt_out(receipt)


def _covered_post(conn: Connection, hold_id: int, amount: int) -> ReceiptOut:
    posted = ledger.post_covered(conn, hold_id=hold_id, amount=amount)
    return ReceiptOut(
        transfer_id=None,
        kind=ledger.TransferKind.SPEND.value,
        user_id=posted.user_id,
        amount=0,
        balance=ledger.balance(conn, user_id=posted.user_id).balance,
        replayed=posted.replayed,
        feature=posted.feature,
        quantity=posted.quantity,
        covered=True,
    )


@router.post("/holds/{hold_id}/void")
def void_hold(hold_id: RowId, _: Spender, db: DatabaseDep) -> HoldOut:
    """Release the hold in full. Repeating it is safe."""
    with db.autocommit() as conn:
        return hold_out(ledger.void_hold(conn, hold_id=hold_id))
