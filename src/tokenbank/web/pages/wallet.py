"""The signed-in user's wallet pages: dashboard, history (with CSV export) and the
fragments htmx refreshes every 10 seconds (the header widget and the balance card)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tokenbank import billing, ledger
from tokenbank.billing import coverage
from tokenbank.billing.catalog import Catalog
from tokenbank.db import Database
from tokenbank.errors import NoSubscription, UnknownPurchase
from tokenbank.web.deps import DatabaseDep, Lang, PagesDep, PageUser, QueryRowId, Visitor
from tokenbank.web.exports import attachment, cell, history_csv_lines, history_page
from tokenbank.web.routing import PageRoute
from tokenbank.web.runtime import runtime
from tokenbank.web.security import PAGE_HEADERS
from tokenbank.web.texts import KIND_NAMES, describe

router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)
PAGE_SIZE = 50
#: htmx's "stop polling" status: a signed-out page stops asking.
STOP_POLLING = 286


@router.get("/dashboard")
async def dashboard(
    request: Request,
    *,
    user: PageUser,
    lang: Lang,
    pages: PagesDep,
    db: DatabaseDep,
    purchased: QueryRowId = None,
    subscribed: Annotated[int | None, Query(ge=0, le=1)] = None,
) -> Response:
    balance, page, recent, bought = await run_in_threadpool(_overview, db, user.user_id, purchased)
    plan, allowance, usage = await run_in_threadpool(_plan, db, user.user_id, pages.catalog)
    toasts = []
    if subscribed and plan is not None and plan.status.value in ("active", "trialing"):
        toasts.append({"tone": "good", "text": lang.gettext("Your plan is active.")})
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
    # With a plan, the "Manage subscription" form goes on to Stripe's billing portal.
    headers = runtime(request).buying_headers if plan is not None else None
    return await pages.render(
        request,
        "dashboard.html",
        headers=headers,
        balance=balance,
        history=page.items,
        purchases=recent,
        toasts=toasts,
        plan=plan,
        allowance=allowance,
        usage=usage,
    )


def _plan(
    db: Database, user_id: str, catalog: Catalog | None
) -> tuple[billing.Subscription | None, billing.Allowance | None, list[coverage.Usage]]:
    """The user's subscription, this month's allowance and the use of its unlimited
    features, if they have one."""
    with db.read() as conn:
        try:
            found = billing.get_subscription(conn, user_id=user_id)
        except NoSubscription:
            return None, None, []
        usage = coverage.usage(conn, catalog, subscription_id=found.id, user_id=user_id)
        return found, billing.allowance(conn, found), usage


@router.get("/history")
async def history(
    request: Request,
    *,
    user: PageUser,
    pages: PagesDep,
    db: DatabaseDep,
    kind: str | None = None,
    before: QueryRowId = None,
) -> Response:
    kinds = _kinds(kind)
    page = await run_in_threadpool(
        partial(history_page, db, user_id=user.user_id, kinds=kinds, before=before, limit=PAGE_SIZE)
    )
    return await pages.render(
        request,
        "history.html",
        items=page.items,
        next_cursor=page.next_cursor,
        kind=kinds[0].value if kinds else "",
        before=before,
    )


@router.get("/history.csv")
async def history_csv(
    user: PageUser, lang: Lang, pages: PagesDep, db: DatabaseDep, kind: str | None = None
) -> Response:
    """Every transfer of the filtered view, newest first, as the history page shows it:
    in the reader's language and time zone (ISO 8601 with its offset, which spreadsheets
    read), with a status column."""
    kinds = _kinds(kind)
    name = f"history-{kinds[0].value}.csv" if kinds else "history.csv"
    words = partial(describe, lang=lang, catalog=pages.catalog)
    completed = lang.gettext("Completed")
    catalog = pages.catalog

    def row(item: ledger.HistoryItem) -> tuple[object, ...]:
        feature = item.feature
        if feature is not None and catalog is not None:
            feature = catalog.feature_name(feature, lang.tag)
        return (
            item.created_at.astimezone(lang.zone).isoformat(timespec="seconds"),
            lang.gettext(KIND_NAMES[item.kind]),
            cell(words(item)),
            completed,
            item.amount,
            item.balance_after,
            item.transfer_id,
            cell(feature),
            "" if item.quantity is None else item.quantity,
        )

    headings = (
        lang.gettext("Date (%(zone)s)", zone=lang.zone_name),
        lang.gettext("Kind"),
        lang.gettext("Description"),
        lang.gettext("Status"),
        lang.gettext("Tokens"),
        lang.gettext("Balance"),
        lang.gettext("Transfer"),
        lang.gettext("Feature"),
        lang.gettext("Quantity"),
    )
    lines = await run_in_threadpool(
        partial(
            history_csv_lines, db, user_id=user.user_id, kinds=kinds, headings=headings, row=row
        )
    )
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={**PAGE_HEADERS, "Content-Disposition": attachment(name)},
    )


@router.get("/fragments/balance-widget")
async def balance_widget(request: Request, visitor: Visitor, pages: PagesDep) -> Response:
    return await _fragment(request, visitor, pages, "fragments/balance_widget.html")


@router.get("/fragments/balance-card")
async def balance_card(request: Request, visitor: Visitor, pages: PagesDep) -> Response:
    return await _fragment(request, visitor, pages, "fragments/balance_card.html")


async def _fragment(request: Request, visitor: Visitor, pages: PagesDep, template: str) -> Response:
    wallet = None if visitor is None else await run_in_threadpool(pages.balance, visitor.user_id)
    if wallet is None:
        return Response(status_code=STOP_POLLING, headers=PAGE_HEADERS)
    return await pages.render(request, template, wallet=wallet, balance=wallet)


@router.get("/transactions")
@router.get("/transactions.csv")
async def moved(request: Request) -> Response:
    """The history's earlier address: bookmarks and old links still arrive."""
    target = request.url.path.replace("/transactions", "/history", 1)
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(target, status_code=308, headers=PAGE_HEADERS)


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
            except UnknownPurchase:
                found = None
            if found and found.user_id == user_id and found.status is billing.PurchaseStatus.PAID:
                bought = found
    return balance, page, recent, bought
