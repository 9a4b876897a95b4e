"""A wallet over the API: its balance, spends, refunds of spends, the entitlement check,
and its history.

The two hottest routes (balance, spend) come first, since routes are matched in order;
they check the key and reach the service's parts directly and answer with a ready
``JSONResponse`` (the model in the decorator documents it), because on this path FastAPI's
dependency resolution and response validation cost more than the work itself
(docs/benchmarks.md). A spend of a feature takes the same path once the catalog has priced
it (a lookup in a tuple of a few features, in the event loop)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tokenbank import entitlements, ledger
from tokenbank.apikeys import Scope
from tokenbank.billing.coverage import covered_features, use_covered
from tokenbank.db import Database
from tokenbank.web.api.responses import PROBLEMS, SPEND_PROBLEMS
from tokenbank.web.auth import authorize
from tokenbank.web.deps import (
    Cursor,
    DatabaseDep,
    Kinds,
    Reader,
    RowId,
    RuntimeDep,
    Spender,
    UserId,
)
from tokenbank.web.exports import attachment, history_csv_lines
from tokenbank.web.routing import StrictRoute
from tokenbank.web.runtime import Runtime, runtime
from tokenbank.web.schemas import (
    BalanceOut,
    CheckIn,
    CheckOut,
    FeatureOut,
    FeaturesOut,
    HistoryOut,
    ReceiptOut,
    RefundIn,
    SpendIn,
    check_out,
    receipt_out,
    transfer_out,
)

router = APIRouter(prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["tokens"])


def _read_balance(db: Database, user_id: str) -> ledger.Balance:
    with db.read() as conn:
        return ledger.balance(conn, user_id=user_id)


def _spend(db: Database, user_id: str, body: SpendIn, amount: int, log_from: int) -> ledger.Receipt:
    with db.autocommit(wallet=user_id) as conn:
        return ledger.spend(
            conn,
            user_id=user_id,
            amount=amount,
            idempotency_key=body.idempotency_key,
            description=body.description,
            metadata=body.metadata,
            log_from=log_from,
            feature=body.feature,
            quantity=body.quantity,
        )


@router.get("/features")
def features(parts: RuntimeDep) -> FeaturesOut:
    """What the tokens buy and what each costs (public: no key needed, as the pricing page)."""
    priced = parts.catalog.features if parts.catalog is not None else ()
    return FeaturesOut(features=[FeatureOut(id=f.id, name=f.name, tokens=f.tokens) for f in priced])


@router.get("/users/{user_id}/balance", response_model=BalanceOut)
async def get_balance(user_id: UserId, request: Request) -> JSONResponse:
    await authorize(request, Scope.READ, signed_in_users=True)
    db = runtime(request).db
    if db.has_async:  # PostgreSQL: without leaving the event loop
        async with db.async_autocommit() as conn:
            balance = await ledger.balance_async(conn, user_id=user_id)
    else:
        balance = await run_in_threadpool(_read_balance, db, user_id)
    return JSONResponse(
        {
            "user_id": user_id,
            "available": balance.available,
            "held": balance.held,
            "balance": balance.balance,
            "total_purchased": balance.total_purchased,
            "total_granted": balance.total_granted,
            "total_spent": balance.total_spent,
            "debt": balance.debt,
            "expiring": [
                {
                    "amount": e.amount,
                    "expires_at": e.expires_at.isoformat(),
                    "source": e.source.value,
                }
                for e in balance.expiring
            ],
        }
    )


@router.post(
    "/users/{user_id}/spend",
    status_code=201,
    responses=SPEND_PROBLEMS,
    response_model=ReceiptOut,
)
async def spend(user_id: UserId, body: SpendIn, request: Request) -> JSONResponse:
    """Spend tokens now: an ``amount``, or a ``feature`` and ``quantity`` priced by the
    catalog (422 ``unknown_feature`` for one it does not price). 402 ``insufficient_tokens``
    changes nothing."""
    await authorize(request, Scope.SPEND)
    parts = runtime(request)
    amount = body.amount
    if amount is None:  # a feature (SpendIn names one or the other), priced by the catalog
        amount = entitlements.cost_of(parts.catalog, feature=body.feature, quantity=body.quantity)
        if body.feature in covered_features(parts.catalog):  # a plan may cover it
            covered = await run_in_threadpool(
                _covered_spend, parts.db, parts, user_id, body, amount
            )
            if covered is not None:
                return JSONResponse(covered, status_code=201)
    receipt = None
    if parts.db.has_async:  # PostgreSQL: the common case in one round trip, in the event loop
        async with parts.db.async_autocommit() as conn:
            receipt = await ledger.try_spend(
                conn,
                user_id=user_id,
                amount=amount,
                idempotency_key=body.idempotency_key,
                description=body.description,
                metadata=body.metadata,
                log_from=parts.large_spend,
                feature=body.feature,
                quantity=body.quantity,
            )
    if receipt is None:  # SQLite, or a replay, a refusal, holds to release...
        receipt = await run_in_threadpool(
            _spend, parts.db, user_id, body, amount, parts.large_spend
        )
    parts.faults.point("spend.committed")
    if not receipt.replayed:
        parts.metrics.spends.inc()
        parts.metrics.tokens_spent.inc(receipt.amount)
    answer: dict[str, object] = {
        "transfer_id": receipt.transfer_id,
        "kind": receipt.kind.value,
        "user_id": receipt.user_id,
        "amount": receipt.amount,
        "balance": receipt.balance,
        "replayed": receipt.replayed,
        "covered": False,
    }
    if body.feature is not None:  # a replay matched them: they are the transfer's own
        answer |= {"feature": body.feature, "quantity": body.quantity}
    return JSONResponse(answer, status_code=201)


def _covered_spend(
    db: Database, parts: Runtime, user_id: str, body: SpendIn, amount: int
) -> dict[str, object] | None:
    """A spend of a feature the user's plan makes unlimited: recorded, no tokens taken;
    None when the plan does not cover it (then it is a spend of tokens)."""
    assert body.feature is not None
    used = use_covered(
        db,
        parts.catalog,
        user_id=user_id,
        feature=body.feature,
        quantity=1 if body.quantity is None else body.quantity,
        amount=amount,
        idempotency_key=body.idempotency_key,
        spend=True,
        description=body.description,
        metadata=body.metadata,
    )
    if used is None:
        return None
    balance = _read_balance(db, user_id)
    return {
        "transfer_id": None,
        "kind": ledger.TransferKind.SPEND.value,
        "user_id": user_id,
        "amount": 0,
        "balance": balance.balance,
        "replayed": used.replayed,
        "feature": used.feature,
        "quantity": used.quantity,
        "covered": True,
    }


def _check(
    parts: RuntimeDep,
    *,
    user_id: str,
    feature: str | None,
    quantity: int | None,
    amount: int | None,
) -> entitlements.Entitlement:
    with parts.db.read() as conn:
        return entitlements.check(
            conn,
            catalog=parts.catalog,
            user_id=user_id,
            buy_url=parts.buy_url,
            feature=feature,
            quantity=quantity,
            amount=amount,
        )


@router.post("/users/{user_id}/check", responses=PROBLEMS)
def check(user_id: UserId, body: CheckIn, _: Reader, parts: RuntimeDep) -> CheckOut:
    """Whether the user could spend an ``amount``, or a ``feature`` and ``quantity``, now:
    the cost, what is available, what is missing and where to buy it. Changes nothing, and
    is advice (for greying out a button): the spend or hold that follows is the gate. Needs
    the ``read`` scope, as the balance does (a signed-in user may check their own)."""
    return check_out(
        _check(
            parts,
            user_id=user_id,
            feature=body.feature,
            quantity=body.quantity,
            amount=body.amount,
        )
    )


@router.post("/transfers/{transfer_id}/refund", status_code=201)
def refund(transfer_id: RowId, body: RefundIn, _: Spender, db: DatabaseDep) -> ReceiptOut:
    """Give back all (no amount) or part of a spend, such as a failed generation."""
    with db.autocommit() as conn:
        receipt = ledger.refund(
            conn,
            transfer_id=transfer_id,
            amount=body.amount,
            idempotency_key=body.idempotency_key,
            description=body.reason,
        )
    return receipt_out(receipt)


@router.get("/users/{user_id}/history")
@router.get("/users/{user_id}/transactions", deprecated=True)
def history(
    user_id: UserId,
    _: Reader,
    db: DatabaseDep,
    kind: Kinds = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> HistoryOut:
    """The wallet's transfers, newest first, in pages that stay stable while new ones
    arrive. (``/transactions``, its earlier name, stays as a deprecated alias.)"""
    with db.read() as conn:
        page = ledger.history(
            conn,
            user_id=user_id,
            limit=limit,
            before=None if cursor is None else int(cursor),
            kinds=kind,
        )
    return HistoryOut(
        items=[transfer_out(item) for item in page.items],
        next_cursor=None if page.next_cursor is None else str(page.next_cursor),
    )


@router.get(
    "/users/{user_id}/history.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
@router.get(
    "/users/{user_id}/transactions.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
    deprecated=True,
)
def history_csv(
    user_id: UserId, _: Reader, db: DatabaseDep, kind: Kinds = None
) -> StreamingResponse:
    """Every transfer of the wallet as CSV (the pages' export's columns), newest first,
    streamed."""
    lines = history_csv_lines(db, user_id=user_id, kinds=kind)
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": attachment(f"history-{user_id}.csv")},
    )
