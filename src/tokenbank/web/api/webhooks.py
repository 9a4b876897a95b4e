"""Stripe's webhook endpoint. Stripe signs its requests: no API key, no CSRF token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from tokenbank import billing
from tokenbank.web.api.responses import WEBHOOK_PROBLEMS
from tokenbank.web.deps import RuntimeDep, Selling
from tokenbank.web.routing import StrictRoute

router = APIRouter(route_class=StrictRoute, tags=["purchases"])


@router.post("/webhooks/stripe", responses=WEBHOOK_PROBLEMS)
async def stripe_webhook(request: Request, selling: Selling, parts: RuntimeDep) -> dict[str, Any]:
    """Stripe's events. The signature is checked on the raw body; every event is stored
    once, and applied in the same transaction that marks it processed."""
    payload = await request.body()
    processed = await run_in_threadpool(
        billing.receive,
        parts.db,
        selling.stripe,
        payload=payload,
        signature=request.headers.get("stripe-signature"),
        policy=selling.policy,
        catalog=selling.catalog,
    )
    if processed.changed:
        parts.faults.point("webhook.committed")
    parts.metrics.webhooks.labels("duplicate" if processed.duplicate else "processed").inc()
    return {"received": True, "duplicate": processed.duplicate, "outcome": processed.outcome}
