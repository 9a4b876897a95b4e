"""The signed-in user's wallet pages: dashboard, transactions (with CSV export) and the
fragments htmx refreshes every 10 seconds (the header widget and the balance card)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tokenbank import billing, ledger
from tokenbank.db import Database
from tokenbank.web.render import PAGE_HEADERS, Pages, RowId, describe
from tokenbank.web.routing import StrictRoute

PAGE_SIZE = 50
CSV_BATCH = 500
#: htmx's "stop polling" status: a signed-out page stops asking.
STOP_POLLING = 286


def build_router(*, db: Database, pages: Pages) -> APIRouter:
    router = APIRouter(
        include_in_schema=False, default_response_class=HTMLResponse, route_class=StrictRoute
    )

    @router.get("/dashboard")
    async def dashboard(request: Request, purchased: RowId = None) -> Response:
        user = await pages.require_user(request)
        lang = await pages.language(request)
        balance, page, recent, bought = await run_in_threadpool(
            _overview, db, user.user_id, purchased
        )
        toasts = []
        if bought is not None:
            toasts.append(
                {
                    "tone": "good",
                    "text": lang.ngettext(
                        "Payment received: %(tokens)s token was added to your balance.",
                        "Payment received: %(tokens)s tokens were added to your balance.",
                        bought.total_tokens,
                        tokens=lang.number(bought.total_tokens),
                    ),
                }
            )
        return await pages.render(
            request,
            "dashboard.html",
            balance=balance,
            history=page.items,
            purchases=recent,
            toasts=toasts,
        )

    @router.get("/transactions")
    async def transactions(
        request: Request, kind: str | None = None, before: RowId = None
    ) -> Response:
        user = await pages.require_user(request)
        kinds = _kinds(kind)
        page = await run_in_threadpool(_history, db, user.user_id, kinds, before, PAGE_SIZE)
        return await pages.render(
            request,
            "transactions.html",
            items=page.items,
            next_cursor=page.next_cursor,
            kind=kinds[0].value if kinds else "",
            before=before,
        )

    @router.get("/transactions.csv")
    async def transactions_csv(request: Request, kind: str | None = None) -> Response:
        """Every transaction of the filtered view, oldest last, as the pages show them."""
        user = await pages.require_user(request)
        lang = await pages.language(request)
        kinds = _kinds(kind)
        name = f"transactions-{kinds[0].value}.csv" if kinds else "transactions.csv"
        return StreamingResponse(
            _csv_rows(db, user.user_id, kinds, partial(describe, lang=lang, catalog=pages.catalog)),
            media_type="text/csv; charset=utf-8",
            headers={
                **PAGE_HEADERS,
                "Content-Disposition": f'attachment; filename="{name}"',
            },
        )

    @router.get("/fragments/balance-widget")
    async def balance_widget(request: Request) -> Response:
        return await _fragment(request, "fragments/balance_widget.html")

    @router.get("/fragments/balance-card")
    async def balance_card(request: Request) -> Response:
        return await _fragment(request, "fragments/balance_card.html")

    async def _fragment(request: Request, template: str) -> Response:
        user = await pages.browsers.signed_in(request)
        wallet = None if user is None else await run_in_threadpool(pages.balance, user.user_id)
        if wallet is None:
            return Response(status_code=STOP_POLLING, headers=PAGE_HEADERS)
        return await pages.render(request, template, wallet=wallet, balance=wallet)

    return router


def _kinds(kind: str | None) -> list[ledger.TransferKind]:
    """The kind filter: an unknown value shows everything rather than failing."""
    try:
        return [ledger.TransferKind(kind)] if kind else []
    except ValueError:
        return []


def _overview(
    db: Database, user_id: str, purchased: int | None
) -> tuple[ledger.Balance, ledger.HistoryPage, list[billing.Purchase], billing.Purchase | None]:
    with db.read() as conn:
        balance = ledger.balance(conn, user_id=user_id)
        page = ledger.history(conn, user_id=user_id, limit=5)
        recent = billing.list_purchases(conn, user_id=user_id, limit=3)
        bought = None
        if purchased is not None:
            try:
                found = billing.get_purchase(conn, purchase_id=purchased)
            except billing.UnknownPurchase:
                found = None
            if found and found.user_id == user_id and found.status is billing.PurchaseStatus.PAID:
                bought = found
    return balance, page, recent, bought


def _history(
    db: Database,
    user_id: str,
    kinds: list[ledger.TransferKind],
    before: int | None,
    limit: int,
) -> ledger.HistoryPage:
    with db.read() as conn:
        return ledger.history(conn, user_id=user_id, kinds=kinds, before=before, limit=limit)


CSV_HEADER = ("date_utc", "kind", "description", "tokens", "balance_after", "transfer_id")


def _cell(text: str | None) -> str:
    """Text a spreadsheet would run as a formula is quoted (CSV injection)."""
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text or ""


def _csv_rows(
    db: Database,
    user_id: str,
    kinds: list[ledger.TransferKind],
    description: Callable[[ledger.HistoryItem], str],
) -> Iterator[str]:
    """In batches: a long history is never held in memory whole. Starts with a byte-order
    mark, so spreadsheet programs read the UTF-8 (Chinese descriptions) as UTF-8."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush(rows: list[Any]) -> str:
        writer.writerows(rows)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield "\ufeff" + flush([CSV_HEADER])
    before = None
    while True:
        page = _history(db, user_id, kinds, before, CSV_BATCH)
        yield flush(
            [
                (
                    item.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    item.kind.value,
                    _cell(description(item)),
                    item.amount,
                    item.balance_after,
                    item.transfer_id,
                )
                for item in page.items
            ]
        )
        if page.next_cursor is None:
            return
        before = page.next_cursor
