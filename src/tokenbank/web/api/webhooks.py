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
    """Stripe's events. The signature is checked on the raw body and every event is stored
    once. It is then applied in the same transaction that marks it processed: here, when
    this process has a settling slot free, or else by ``tokenbank worker`` (``queued``)."""
    payload = await request.body()
    settling = parts.webhook_slots.take()
    try:
        processed = await run_in_threadpool(
            billing.receive,
            parts.db,
            selling.stripe,
            payload=payload,
            signature=request.headers.get("stripe-signature"),
            policy=selling.policy,
            catalog=selling.catalog,
            settle=settling,
        )
    finally:
        if settling:
            parts.webhook_slots.give()
    if processed.changed:
        parts.faults.point("webhook.committed")
    parts.metrics.webhooks.labels(
        "duplicate" if processed.duplicate else "queued" if processed.queued else "processed"
    ).inc()
    return {
        "received": True,
        "duplicate": processed.duplicate,
        "queued": processed.queued,
        "outcome": processed.outcome,
    }
