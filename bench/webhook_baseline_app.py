"""The baseline webhook receiver for ``bench.webhooks``: the least a Stripe endpoint can do.

FastAPI on uvicorn, one async endpoint, a psycopg connection pool, no logging, no metrics.
It checks the ``Stripe-Signature`` header with the official SDK's
``stripe.Webhook.construct_event`` (HMAC-SHA256 of ``"{t}.{body}"``, five minutes'
tolerance, the body parsed as JSON), as Stripe's own examples do, and stores the event in an
inbox table keyed by its id (``ON CONFLICT DO NOTHING``: a duplicate is answered 200 and
stored once). It acts on nothing: processing is left for later. The app creates its table
when it starts and reads its settings then, so importing this module needs none. Run as:

    TOKENBANK_DATABASE_URL=postgresql://... STRIPE_WEBHOOK_SECRET=whsec_... \
        uvicorn bench.webhook_baseline_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import stripe
from fastapi import FastAPI, HTTPException, Request
from psycopg_pool import AsyncConnectionPool

INBOX = "bench_webhook_inbox"
CREATE_INBOX = (
    f"CREATE TABLE IF NOT EXISTS {INBOX} (event_id text PRIMARY KEY, type text NOT NULL,"
    " payload text NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
)
INSERT = (
    f"INSERT INTO {INBOX} (event_id, type, payload) VALUES (%s, %s, %s)"
    " ON CONFLICT (event_id) DO NOTHING"
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ["TOKENBANK_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    pool = AsyncConnectionPool(url, min_size=16, max_size=16, kwargs={"autocommit": True})
    async with pool:
        async with pool.connection() as conn:
            await conn.execute(CREATE_INBOX)
        app.state.pool = pool
        app.state.secret = os.environ["STRIPE_WEBHOOK_SECRET"]
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/webhooks/stripe")
async def stripe_webhook(request: Request) -> dict[str, Any]:
    payload = await request.body()
    state = request.app.state
    try:
        event = stripe.Webhook.construct_event(
            payload, request.headers.get("stripe-signature", ""), state.secret
        )
    except (ValueError, stripe.SignatureVerificationError):
        raise HTTPException(400, "invalid signature") from None
    pool: AsyncConnectionPool = state.pool
    async with pool.connection() as conn:
        cursor = await conn.execute(INSERT, (event.id, event.type, payload.decode()))
    return {"received": True, "duplicate": cursor.rowcount == 0}
