"""Grants over the API: free tokens, given with an admin key."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from tokenbank import grants
from tokenbank.web.api.responses import PROBLEMS
from tokenbank.web.deps import Admin, DatabaseDep, MetricsDep, UserId
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import GrantIn, ReceiptOut, receipt_out

router = APIRouter(prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["tokens"])


@router.post("/users/{user_id}/grants", status_code=201)
async def grant(
    user_id: UserId, body: GrantIn, who: Admin, db: DatabaseDep, metrics: MetricsDep
) -> ReceiptOut:
    """Give free tokens to a known user (admin keys only), with a reason; audited."""
    actor = f"api_key:{who.id}"
    receipt = await run_in_threadpool(
        lambda: grants.grant(
            db,
            user_id=user_id,
            amount=body.amount,
            reason=body.reason,
            idempotency_key=body.idempotency_key,
            actor=actor,
        )
    )
    if not receipt.replayed:
        metrics.credits.labels("grant").inc()
    return receipt_out(receipt)
