"""Pages for admin users: find a user (balance, history, purchases, grant tokens with a
reason), all purchases by status, purchases waiting for a decision, the webhook inbox with a
replay button, the catalog. Every route needs an admin (``PageAdmin``)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from tokenbank import billing, grants, ledger, users
from tokenbank.billing.catalog import catalog_warnings
from tokenbank.db import Database
from tokenbank.errors import (
    InvalidArgument,
    PaymentsNotConfigured,
    TokenbankError,
    UnknownEvent,
    UnknownUser,
)
from tokenbank.web.deps import (
    BillingDep,
    DatabaseDep,
    Lang,
    PageAdmin,
    PagesDep,
    QueryRowId,
    RowId,
    RuntimeDep,
)
from tokenbank.web.i18n import N_
from tokenbank.web.problems import status_of
from tokenbank.web.render import redirect
from tokenbank.web.routing import PageRoute
from tokenbank.web.texts import error_text

router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)
PAGE_SIZE = 50
T = TypeVar("T")
Row = TypeVar("Row", billing.Purchase, billing.InboxEvent)
DECISION_NAMES = {
    "credit": N_("Credit the tokens: the payment is right"),
    "refuse": N_("Refuse: never credit this payment"),
    "reverse": N_("Reverse: take the tokens back"),
    "dismiss": N_("Dismiss: the purchase is right as it is"),
}


@router.get("/admin")
async def admin_users(
    request: Request, _: PageAdmin, pages: PagesDep, db: DatabaseDep, q: str | None = None
) -> Response:
    found = await _read(db, users.find_users, query=q) if q else []
    if q and len(found) == 1 and (found[0].id == q.strip() or found[0].email == q.strip()):
        return redirect(f"/admin/users/{found[0].id}")
    return await pages.render(request, "admin/index.html", q=q, found=found)


@router.get("/admin/users/{user_id}")
async def admin_user(
    request: Request,
    *,
    user_id: str,
    _: PageAdmin,
    lang: Lang,
    pages: PagesDep,
    db: DatabaseDep,
    before: QueryRowId = None,
    granted: QueryRowId = None,
) -> Response:
    try:
        subject, balance, page, purchases = await run_in_threadpool(
            _user_overview, db, user_id, before
        )
    except UnknownUser:
        return await pages.render(
            request,
            "message.html",
            404,
            heading=lang.gettext("No such user"),
            message=lang.gettext("No user has the id %(id)s.", id=user_id),
            link="/admin",
            link_text=lang.gettext("Find another user"),
        )
    toasts = []
    if granted:
        toasts.append(
            {
                "tone": "good",
                "text": lang.gettext("Granted %(tokens)s tokens.", tokens=lang.number(granted)),
            }
        )
    return await pages.render(
        request,
        "admin/user.html",
        subject=subject,
        subject_balance=balance,
        items=page.items,
        next_cursor=page.next_cursor,
        subject_purchases=purchases,
        grant_key=f"admin-grant-{secrets.token_urlsafe(16)}",
        grant_max_days=grants.MAX_DAYS,
        toasts=toasts,
    )


@router.post("/admin/users/{user_id}/grants")
async def admin_grant(
    request: Request,
    user_id: str,
    admin: PageAdmin,
    lang: Lang,
    parts: RuntimeDep,
    *,
    amount: Annotated[str, Form(max_length=20)],
    reason: Annotated[str, Form(max_length=600)],
    key: Annotated[str, Form(max_length=100)],
    source: Annotated[str, Form(max_length=20)] = ledger.Source.ADMIN.value,
    expires_in_days: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Grant tokens, as an operator's decision or a promotion, lasting forever or some
    days. The form carries an idempotency key made when it was shown, so a double click or
    a resubmitted form grants once."""
    try:
        expires_at = None
        if expires_in_days.strip():  # 0 for text that is not a number: refused as such
            expires_at = grants.expiry(days=_whole(expires_in_days) or 0)
        receipt = await run_in_threadpool(
            partial(
                grants.grant,
                parts.db,
                user_id=user_id,
                amount=_whole(amount) or 0,
                reason=reason,
                idempotency_key=key,
                actor=f"user:{admin.user_id}",
                source=grants.check_source(source),
                expires_at=expires_at,
            )
        )
    except TokenbankError as exc:
        return await parts.pages.render(
            request,
            "message.html",
            status_of(exc),
            heading=lang.gettext("The grant was not made"),
            message=error_text(lang, exc),
            link=f"/admin/users/{user_id}",
            link_text=lang.gettext("Back to the user"),
        )
    if not receipt.replayed:
        parts.metrics.credits.labels("grant").inc()
    return redirect(f"/admin/users/{user_id}?granted={receipt.amount}")


def _whole(text: str) -> int | None:
    """A form's whole number, or None for anything else (the service says what is wrong)."""
    digits = text.strip()
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 12 else None


@router.get("/admin/purchases")
async def admin_purchases(
    request: Request,
    _: PageAdmin,
    pages: PagesDep,
    db: DatabaseDep,
    status: str | None = None,
    before: QueryRowId = None,
) -> Response:
    try:
        chosen = billing.PurchaseStatus(status) if status else None
    except ValueError:
        chosen = None
    found, cursor = _page(
        await _read(db, billing.list_purchases, status=chosen, before=before, limit=PAGE_SIZE + 1)
    )
    return await pages.render(
        request,
        "admin/purchases.html",
        purchases=found,
        next_cursor=cursor,
        status=chosen.value if chosen else "",
        statuses=[s.value for s in billing.PurchaseStatus],
    )


@router.get("/admin/reviews")
async def admin_reviews(
    request: Request,
    _: PageAdmin,
    lang: Lang,
    pages: PagesDep,
    db: DatabaseDep,
    resolved: QueryRowId = None,
) -> Response:
    """Purchases flagged for a decision (see ``billing.resolve_review``)."""
    found = await _read(db, billing.list_purchases, awaiting_review=True, limit=200)
    toasts = []
    if resolved:
        toasts.append(
            {"tone": "good", "text": lang.gettext("Purchase #%(id)s: decided.", id=resolved)}
        )
    return await pages.render(
        request,
        "admin/reviews.html",
        purchases=found,
        choices=billing.REVIEW_DECISIONS,
        decision_names=DECISION_NAMES,
        toasts=toasts,
    )


@router.post("/admin/purchases/{purchase_id}/review")
async def admin_review(
    request: Request,
    purchase_id: RowId,
    admin: PageAdmin,
    lang: Lang,
    parts: RuntimeDep,
    *,
    decision: Annotated[str, Form(max_length=16)],
    reason: Annotated[str, Form(max_length=600)],
) -> Response:
    """Decide about a flagged purchase: one service call, audited."""
    try:
        if parts.billing is None:
            raise PaymentsNotConfigured("payments are not configured")
        await run_in_threadpool(
            partial(
                billing.resolve_review,
                parts.db,
                purchase_id=purchase_id,
                decision=_decision(decision),
                actor=f"user:{admin.user_id}",
                reason=reason,
                policy=parts.billing.policy,
            )
        )
    except TokenbankError as exc:
        return await parts.pages.render(
            request,
            "message.html",
            status_of(exc),
            heading=lang.gettext("Nothing was decided"),
            message=error_text(lang, exc),
            link="/admin/reviews",
            link_text=lang.gettext("Back to the reviews"),
        )
    return redirect(f"/admin/reviews?resolved={purchase_id}")


@router.get("/admin/webhooks")
async def admin_webhooks(
    request: Request,
    _: PageAdmin,
    pages: PagesDep,
    db: DatabaseDep,
    failed: bool = False,
    before: QueryRowId = None,
) -> Response:
    events, cursor = _page(
        await _read(db, billing.list_events, failed=failed, before=before, limit=PAGE_SIZE + 1)
    )
    return await pages.render(
        request, "admin/webhooks.html", events=events, next_cursor=cursor, failed=failed
    )


@router.post("/admin/webhooks/{event_id}/replay")
async def admin_replay(
    request: Request, event_id: str, _: PageAdmin, lang: Lang, parts: RuntimeDep
) -> Response:
    """Settle a stored event again. htmx swaps the event's row; a plain form post goes back
    to the inbox."""
    seller = parts.billing
    if seller is None:
        return await parts.pages.render(
            request,
            "message.html",
            503,
            heading=lang.gettext("Replay is not available"),
            message=lang.gettext("Payments are not configured on this server."),
        )
    try:
        await run_in_threadpool(
            partial(
                billing.replay,
                parts.db,
                seller.stripe,
                event_id=event_id,
                policy=seller.policy,
                catalog=seller.catalog,
            )
        )
        toast = {"tone": "good", "text": lang.gettext("The event was processed.")}
    except TokenbankError as exc:
        toast = {
            "tone": "error",
            "text": lang.gettext("The event failed again: %(error)s", error=error_text(lang, exc)),
        }
    if not request.headers.get("hx-request"):
        return await parts.pages.render(
            request,
            "message.html",
            heading=event_id,
            message=toast["text"],
            link="/admin/webhooks",
            link_text=lang.gettext("Back to the webhook inbox"),
        )
    try:
        event = await _read(parts.db, billing.get_event, event_id=event_id)
    except UnknownEvent:
        return Response(status_code=404)
    response = await parts.pages.render(request, "fragments/webhook_row.html", e=event)
    # htmx shows the outcome as a toast (tokenbank.js listens for "tb:toast").
    response.headers["HX-Trigger"] = json.dumps({"tb:toast": toast}, ensure_ascii=True)
    return response


@router.get("/admin/catalog")
async def admin_catalog(
    request: Request, _: PageAdmin, pages: PagesDep, db: DatabaseDep, seller: BillingDep
) -> Response:
    if seller is None:
        return await pages.render(request, "admin/catalog.html", catalog=None)
    sold = await _read(db, billing.sales_by_package)
    catalog = seller.catalog
    rows = [
        {
            "package": p,
            "savings": p.savings_against(catalog.base) if catalog.base and p.active else 0,
            "sold": sold.get(p.id, 0),
        }
        for p in catalog.packages
    ]
    return await pages.render(
        request,
        "admin/catalog.html",
        catalog=catalog,
        rows=rows,
        warnings=catalog_warnings(catalog),
    )


def _decision(value: str) -> billing.ReviewDecision:
    try:
        return billing.ReviewDecision(value)
    except ValueError:
        raise InvalidArgument("decision", "choose one of the decisions offered") from None


async def _read(db: Database, service: Callable[..., T], /, **arguments: Any) -> T:
    """One read-only service call, in the thread pool."""

    def run() -> T:
        with db.read() as conn:
            return service(conn, **arguments)

    return await run_in_threadpool(run)


def _page(rows: list[Row]) -> tuple[list[Row], int | None]:
    """A page of ``PAGE_SIZE`` rows (fetched one more, to know if there is a next page) and
    the cursor for the next page: the last row's id."""
    if len(rows) > PAGE_SIZE:
        return rows[:PAGE_SIZE], rows[PAGE_SIZE - 1].id
    return rows, None


def _user_overview(
    db: Database, user_id: str, before: int | None
) -> tuple[users.User, ledger.Balance, ledger.HistoryPage, list[billing.Purchase]]:
    with db.read() as conn:
        subject = users.get_user(conn, user_id=user_id)
        balance = ledger.balance(conn, user_id=user_id)
        page = ledger.history(conn, user_id=user_id, before=before, limit=PAGE_SIZE)
        purchases = billing.list_purchases(conn, user_id=user_id, limit=20)
    return subject, balance, page, purchases
