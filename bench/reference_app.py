"""The reference service for ``bench.http``: the least a FastAPI app can do for the same work.

FastAPI on uvicorn, async endpoints, a psycopg connection pool, no authentication, no
logging, no metrics. Its spend sends tokenbank's own one-statement spend (the same SQL text,
so the database does identical work: the wallet, its buckets and the draws on them) and
its balance is a one-row SELECT. Run as:

    TOKENBANK_DATABASE_URL=postgresql://... uvicorn bench.reference_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from tokenbank.ledger import SystemAccount
from tokenbank.ledger.postings import POSTGRES_SPEND

URL = os.environ["TOKENBANK_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
SPEND_SQL, _ = POSTGRES_SPEND.compile(psycopg_dialect.dialect())  # type: ignore[no-untyped-call]
BALANCE_SQL = "SELECT balance - held, held FROM accounts WHERE user_id = %s"

pool = AsyncConnectionPool(URL, min_size=16, max_size=16, open=False, kwargs={"autocommit": True})


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await pool.open()
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


class SpendIn(BaseModel):
    amount: int
    idempotency_key: str


@app.post("/spend/{user_id}", status_code=201)
async def spend(user_id: str, body: SpendIn) -> dict[str, Any]:
    now = datetime.now(UTC)
    params = {
        "amount": body.amount,
        "user_id": user_id,
        "key": body.idempotency_key,
        "kind": "spend",
        "system_id": int(SystemAccount.CONSUMPTION),
        "description": None,
        "metadata": None,
        "feature": None,
        "quantity": None,
        "event_at": now,
        "now": now,
    }
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute(SPEND_SQL, params)).fetchone()
    except psycopg.errors.DivisionByZero:  # fewer tokens in the buckets than the balance
        raise HTTPException(402, "insufficient tokens") from None
    if row is None or row[2] is None:
        raise HTTPException(402, "insufficient tokens")
    return {"transfer_id": row[2], "balance": row[1]}


@app.get("/balance/{user_id}")
async def balance(user_id: str) -> dict[str, Any]:
    async with pool.connection() as conn:
        row = await (await conn.execute(BALANCE_SQL, (user_id,))).fetchone()
    if row is None:
        raise HTTPException(404, "no such user")
    return {"available": row[0], "held": row[1]}
