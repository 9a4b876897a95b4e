"""Grants over the API: free tokens, given with an admin key."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from tokenbank import grants, ledger
from tokenbank.columns import utcnow
from tokenbank.web.api.responses import PROBLEMS
from tokenbank.web.deps import Admin, DatabaseDep, MetricsDep, UserId
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import GrantIn, GrantOut, grant_out

router = APIRouter(prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["tokens"])


@router.post("/users/{user_id}/grants", status_code=201)
async def grant(
    user_id: UserId, body: GrantIn, who: Admin, db: DatabaseDep, metrics: MetricsDep
) -> GrantOut:
    """Give free tokens to a known user (admin keys only), with a reason; audited. They
    expire at ``expires_at``, or ``expires_in_days`` from now, or never."""
    actor = f"api_key:{who.id}"
    now = utcnow()
    expires_at = body.expires_at
    if body.expires_in_days is not None:
        expires_at = grants.expiry(days=body.expires_in_days, now=now)
    given = await run_in_threadpool(
        lambda: grants.grant(
            db,
            user_id=user_id,
            amount=body.amount,
            reason=body.reason,
            idempotency_key=body.idempotency_key,
            actor=actor,
            expires_at=expires_at,
            source=ledger.Source(body.source),
            now=now,
        )
    )
    if not given.replayed:
        metrics.credits.labels("grant").inc()
    return grant_out(given)
