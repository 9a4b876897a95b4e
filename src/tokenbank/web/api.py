"""The JSON API under /api/v1: parse, authorise, call one service function, render."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tokenbank import identity, ledger, users
from tokenbank.apikeys.service import ApiKey, Scope
from tokenbank.db import Database
from tokenbank.faults import NONE as NO_FAULTS
from tokenbank.faults import Faults
from tokenbank.identity import SignedIn
from tokenbank.ledger import TransferKind
from tokenbank.web.auth import authorize, requires
from tokenbank.web.observe import Metrics
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import (
    BalanceOut,
    GrantIn,
    HoldIn,
    HoldOut,
    PortalIn,
    PortalOut,
    PostIn,
    ReceiptOut,
    RefundIn,
    SpendIn,
    TransactionOut,
    TransactionsOut,
    UserIn,
    UserOut,
)

UserId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00-\x20\x7f/]+$",
        description="The host app's user id.",
    ),
]
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Reader = Annotated[ApiKey | SignedIn, Depends(requires(Scope.READ, signed_in_users=True))]
Spender = Annotated[ApiKey | SignedIn, Depends(requires(Scope.SPEND))]
Admin = Annotated[ApiKey | SignedIn, Depends(requires(Scope.ADMIN))]
Kinds = Annotated[list[TransferKind] | None, Query(description="Only these kinds.")]
Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor")]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/problem+json": {}}}
    for status, text in (
        (400, "Unreadable request body"),
        (401, "Missing, unknown or revoked API key"),
        (403, "The key lacks the scope"),
        (404, "No such user, transfer or hold"),
        (409, "Idempotency conflict, or the operation no longer applies"),
        (413, "Request too large"),
        (415, "The body is not JSON"),
        (422, "Invalid request"),
        (429, "Too many wrong API keys from this address"),
        (503, "The database is unavailable for now: retry after Retry-After seconds"),
    )
}
SPEND_PROBLEMS = {**PROBLEMS, 402: {"description": "Insufficient tokens (with buy_url)"}}
CSV_COLUMNS = ("created_at", "kind", "amount", "balance_after", "description", "transfer_id")


def _receipt(receipt: ledger.Receipt) -> ReceiptOut:
    return ReceiptOut(
        transfer_id=receipt.transfer_id,
        kind=receipt.kind.value,
        user_id=receipt.user_id,
        amount=receipt.amount,
        balance=receipt.balance,
        replayed=receipt.replayed,
    )


def _hold(hold: ledger.Hold) -> HoldOut:
    return HoldOut(
        hold_id=hold.id,
        user_id=hold.user_id,
        amount=hold.amount,
        status=hold.status.value,
        expires_at=hold.expires_at,
        created_at=hold.created_at,
        resolved_at=hold.resolved_at,
        posted_amount=hold.posted_amount,
        transfer_id=hold.transfer_id,
        replayed=hold.replayed,
    )


def _transaction(item: ledger.HistoryItem) -> TransactionOut:
    return TransactionOut(
        transfer_id=item.transfer_id,
        kind=item.kind.value,
        amount=item.amount,
        balance_after=item.balance_after,
        description=item.description,
        metadata=item.metadata,
        refund_of=item.refund_of_id,
        idempotency_key=item.idempotency_key,
        event_at=item.event_at,
        created_at=item.created_at,
    )


def _read_balance(db: Database, user_id: str) -> ledger.Balance:
    with db.read() as conn:
        return ledger.balance(conn, user_id=user_id)


def _spend(db: Database, user_id: str, body: SpendIn) -> ledger.Receipt:
    with db.autocommit(wallet=user_id) as conn:
        return ledger.spend(
            conn,
            user_id=user_id,
            amount=body.amount,
            idempotency_key=body.idempotency_key,
            description=body.description,
            metadata=body.metadata,
        )


def build_router(  # noqa: PLR0915 - one closure per route
    *,
    db: Database,
    metrics: Metrics,
    default_hold_ttl: int,
    public_url: str,
    portal_link_ttl: timedelta,
    faults: Faults = NO_FAULTS,
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute)

    # The two hottest routes come first (routes are matched in order) and answer with a
    # ready JSONResponse: the model in the decorator documents it, without FastAPI
    # validating the answer a second time on every request.
    @router.get("/users/{user_id}/balance", tags=["tokens"], response_model=BalanceOut)
    async def get_balance(user_id: UserId, request: Request) -> JSONResponse:
        await authorize(request, Scope.READ, signed_in_users=True)
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
            }
        )

    @router.post(
        "/users/{user_id}/spend",
        status_code=201,
        tags=["tokens"],
        responses=SPEND_PROBLEMS,
        response_model=ReceiptOut,
    )
    async def spend(user_id: UserId, body: SpendIn, request: Request) -> JSONResponse:
        """Spend tokens now. 402 ``insufficient_tokens`` changes nothing."""
        await authorize(request, Scope.SPEND)
        receipt = None
        if db.has_async:  # PostgreSQL: the common case in one round trip, in the event loop
            async with db.async_autocommit() as conn:
                receipt = await ledger.try_spend(
                    conn,
                    user_id=user_id,
                    amount=body.amount,
                    idempotency_key=body.idempotency_key,
                    description=body.description,
                    metadata=body.metadata,
                )
        if receipt is None:  # SQLite, or a replay, a refusal, holds to release...
            receipt = await run_in_threadpool(_spend, db, user_id, body)
        faults.point("spend.committed")
        if not receipt.replayed:
            metrics.spends.inc()
            metrics.tokens_spent.inc(receipt.amount)
        return JSONResponse(
            {
                "transfer_id": receipt.transfer_id,
                "kind": receipt.kind.value,
                "user_id": receipt.user_id,
                "amount": receipt.amount,
                "balance": receipt.balance,
                "replayed": receipt.replayed,
            },
            status_code=201,
        )

    @router.put("/users/{user_id}", tags=["users"])
    def put_user(user_id: UserId, body: UserIn, _: Spender) -> UserOut:
        """Create the user and their wallet, or update their email and name."""
        with db.autocommit(wallet=user_id) as conn:
            user = users.upsert_user(conn, user_id=user_id, email=body.email, name=body.name)
        return UserOut(
            user_id=user.id, email=user.email, name=user.name, created_at=user.created_at
        )

    @router.post("/users/{user_id}/portal-sessions", status_code=201, tags=["users"])
    def portal_session(
        user_id: UserId, _: Spender, body: Annotated[PortalIn | None, Body()] = None
    ) -> PortalOut:
        """A one-time link, valid for minutes, that signs the user in to tokenbank's pages
        (balance, history, buying tokens). Send the user's browser to ``url``."""
        with db.transaction() as conn:
            token, expires_at = identity.create_portal_link(
                conn,
                user_id=user_id,
                next_path=(body or PortalIn()).return_path,
                ttl=portal_link_ttl,
            )
        return PortalOut(url=f"{public_url}/portal/{token}", expires_at=expires_at)

    @router.post(
        "/users/{user_id}/holds", status_code=201, tags=["holds"], responses=SPEND_PROBLEMS
    )
    def create_hold(user_id: UserId, body: HoldIn, _: Spender) -> HoldOut:
        """Reserve tokens before work whose cost is not known yet; post or void it after."""
        with db.autocommit(wallet=user_id) as conn:
            hold = ledger.hold(
                conn,
                user_id=user_id,
                amount=body.amount,
                idempotency_key=body.idempotency_key,
                ttl_seconds=body.ttl_seconds or default_hold_ttl,
                description=body.description,
                metadata=body.metadata,
            )
        return _hold(hold)

    @router.post("/holds/{hold_id}/post", tags=["holds"])
    def post_hold(hold_id: RowId, body: PostIn, _: Spender) -> ReceiptOut:
        """Spend at most the held amount and release the rest. Repeating it is safe."""
        with db.autocommit() as conn:
            receipt = ledger.post_hold(conn, hold_id=hold_id, amount=body.amount)
        if not receipt.replayed:
            metrics.spends.inc()
            metrics.tokens_spent.inc(receipt.amount)
        return _receipt(receipt)

    @router.post("/holds/{hold_id}/void", tags=["holds"])
    def void_hold(hold_id: RowId, _: Spender) -> HoldOut:
        """Release the hold in full. Repeating it is safe."""
        with db.autocommit() as conn:
            return _hold(ledger.void_hold(conn, hold_id=hold_id))

    @router.post("/transfers/{transfer_id}/refund", status_code=201, tags=["tokens"])
    def refund(transfer_id: RowId, body: RefundIn, _: Spender) -> ReceiptOut:
        """Give back all (no amount) or part of a spend, such as a failed generation."""
        with db.autocommit() as conn:
            receipt = ledger.refund(
                conn,
                transfer_id=transfer_id,
                amount=body.amount,
                idempotency_key=body.idempotency_key,
                description=body.reason,
            )
        return _receipt(receipt)

    @router.post("/users/{user_id}/grants", status_code=201, tags=["tokens"])
    def grant(user_id: UserId, body: GrantIn, _: Admin) -> ReceiptOut:
        """Give free tokens (admin keys only)."""
        with db.autocommit(wallet=user_id) as conn:
            receipt = ledger.credit(
                conn,
                user_id=user_id,
                amount=body.amount,
                kind=TransferKind.GRANT,
                idempotency_key=body.idempotency_key,
                description=body.reason,
            )
        if not receipt.replayed:
            metrics.credits.labels("grant").inc()
        return _receipt(receipt)

    @router.get("/users/{user_id}/transactions", tags=["tokens"])
    def transactions(
        user_id: UserId,
        _: Reader,
        kind: Kinds = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Cursor = None,
    ) -> TransactionsOut:
        """Newest first, in pages that stay stable while new transactions arrive."""
        with db.read() as conn:
            page = ledger.history(
                conn,
                user_id=user_id,
                limit=limit,
                before=None if cursor is None else int(cursor),
                kinds=kind,
            )
        return TransactionsOut(
            items=[_transaction(item) for item in page.items],
            next_cursor=None if page.next_cursor is None else str(page.next_cursor),
        )

    @router.get(
        "/users/{user_id}/transactions.csv",
        tags=["tokens"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}},
    )
    def transactions_csv(user_id: UserId, _: Reader, kind: Kinds = None) -> StreamingResponse:
        """Every transaction as CSV, newest first, streamed page by page."""
        with db.read() as conn:
            first = ledger.history(conn, user_id=user_id, limit=500, kinds=kind)

        def lines() -> Iterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(CSV_COLUMNS)
            page = first
            while True:
                for item in page.items:
                    writer.writerow(
                        (
                            item.created_at.isoformat(),
                            item.kind.value,
                            item.amount,
                            item.balance_after,
                            item.description or "",
                            item.transfer_id,
                        )
                    )
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                if page.next_cursor is None:
                    return
                with db.read() as conn:
                    page = ledger.history(
                        conn, user_id=user_id, limit=500, before=page.next_cursor, kinds=kind
                    )

        filename = f"transactions-{user_id}.csv".replace('"', "")
        return StreamingResponse(
            lines(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )

    return router
