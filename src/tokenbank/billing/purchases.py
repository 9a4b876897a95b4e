"""Starting a purchase: a pending row first, then the Stripe object that will pay it.

The purchase is stored (price and tokens copied from the catalog) and committed before
Stripe is called, so a payment can always be matched to what was offered. The Stripe call
happens with nothing locked and carries an idempotency key stored on the purchase, so a
retried call can never create a second session or charge.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tokenbank.billing.catalog import Catalog, Package
from tokenbank.billing.models import (
    PurchaseFlow,
    PurchaseStatus,
    ReviewDecision,
    purchases,
    stripe_customers,
)
from tokenbank.billing.prices import PriceBook
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import (
    PaymentMismatch,
    PaymentProviderError,
    PurchaseClosed,
    UnknownPackage,
    UnknownPurchase,
)
from tokenbank.faults import NONE as NO_FAULTS
from tokenbank.faults import Faults
from tokenbank.ledger import IdempotencyConflict
from tokenbank.ledger.inputs import check_key
from tokenbank.payments.stripe import CheckoutSession, Stripe
from tokenbank.users import get_user

ClawbackPolicy = Literal["debt", "negative"]


@dataclass(frozen=True, slots=True)
class Purchase:
    id: int
    user_id: str
    package_id: str
    tokens: int
    bonus_tokens: int
    amount: int
    currency: str
    flow: PurchaseFlow
    status: PurchaseStatus
    checkout_session_id: str | None
    payment_intent_id: str | None
    failure_code: str | None
    failure_message: str | None
    refunded_amount: int
    clawed_back_tokens: int
    created_at: datetime
    paid_at: datetime | None
    #: Random and unique: the Stripe idempotency key of what is created for this purchase,
    #: and the proof in Stripe metadata that an object was made for this very purchase.
    reference: str
    #: The caller's key for starting it, if one was given.
    idempotency_key: str | None = None
    #: Why an admin must look, and what they decided (see ``reviews``).
    review: str | None = None
    review_decision: ReviewDecision | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    #: Days the tokens stay usable once paid (the package's terms when sold); None: forever.
    tokens_expire_days: int | None = None

    @property
    def awaiting_review(self) -> bool:
        return self.review is not None and self.review_decision is None

    @property
    def total_tokens(self) -> int:
        return self.tokens + self.bonus_tokens


def to_purchase(row: Any) -> Purchase:
    return Purchase(
        id=row.id,
        user_id=row.user_id,
        package_id=row.package_id,
        tokens=row.tokens,
        bonus_tokens=row.bonus_tokens,
        amount=row.amount,
        currency=row.currency,
        flow=PurchaseFlow(row.flow),
        status=PurchaseStatus(row.status),
        checkout_session_id=row.checkout_session_id,
        payment_intent_id=row.payment_intent_id,
        failure_code=row.failure_code,
        failure_message=row.failure_message,
        refunded_amount=row.refunded_amount,
        clawed_back_tokens=row.clawed_back_tokens,
        created_at=row.created_at,
        paid_at=row.paid_at,
        reference=row.stripe_idempotency_key,
        idempotency_key=row.idempotency_key,
        review=row.review,
        review_decision=ReviewDecision(row.review_decision) if row.review_decision else None,
        reviewed_by=row.reviewed_by,
        reviewed_at=row.reviewed_at,
        tokens_expire_days=row.tokens_expire_days,
    )


@dataclass(frozen=True, slots=True)
class CheckoutStart:
    purchase: Purchase
    checkout_session_id: str
    url: str


@dataclass(frozen=True, slots=True)
class PaymentStart:
    purchase: Purchase
    payment_intent_id: str
    client_secret: str


def get_purchase(conn: Connection, *, purchase_id: int) -> Purchase:
    row = conn.execute(sa.select(purchases).where(purchases.c.id == purchase_id)).first()
    if row is None:
        raise UnknownPurchase(str(purchase_id))
    return to_purchase(row)


def lock_purchase(conn: Connection, *, purchase_id: int) -> Purchase:
    """The purchase, its row locked until the transaction ends: every change to a purchase
    after it started (a settle, a review) waits here for the one before it."""
    row = conn.execute(
        sa.select(purchases).where(purchases.c.id == purchase_id).with_for_update()
    ).first()
    if row is None:
        raise UnknownPurchase(str(purchase_id))
    return to_purchase(row)


def tokens_for(row: sa.Row[Any], *, amount: int) -> int:
    """The tokens that ``amount`` of the purchase's price bought, rounded down: what a
    refund or a dispute of that much takes back. ``row`` is the purchase's table row, read
    inside the transaction that changes it."""
    total = int(row.tokens + row.bonus_tokens)
    return total * min(amount, int(row.amount)) // int(row.amount)


def find_purchase(
    conn: Connection,
    *,
    checkout_session_id: str | None = None,
    payment_intent_id: str | None = None,
) -> Purchase | None:
    """The purchase that a Stripe Checkout Session or PaymentIntent was made for."""
    if checkout_session_id is not None:
        lookup = purchases.c.checkout_session_id == checkout_session_id
    elif payment_intent_id is not None:
        lookup = purchases.c.payment_intent_id == payment_intent_id
    else:
        return None
    row = conn.execute(sa.select(purchases).where(lookup)).first()
    return None if row is None else to_purchase(row)


def list_purchases(
    conn: Connection,
    *,
    user_id: str | None = None,
    status: PurchaseStatus | None = None,
    awaiting_review: bool = False,
    limit: int = 50,
    before: int | None = None,
) -> list[Purchase]:
    """Newest first; ``before`` is the last id of the previous page; ``awaiting_review``:
    only purchases flagged for an admin who has not decided yet."""
    query = sa.select(purchases).order_by(purchases.c.id.desc()).limit(limit)
    if awaiting_review:
        query = query.where(purchases.c.review.is_not(None), purchases.c.review_decision.is_(None))
    if user_id is not None:
        query = query.where(purchases.c.user_id == user_id)
    if status is not None:
        query = query.where(purchases.c.status == PurchaseStatus(status).value)
    if before is not None:
        query = query.where(purchases.c.id < before)
    return [to_purchase(row) for row in conn.execute(query)]


def count_awaiting_review(conn: Connection) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(
                purchases.c.review.is_not(None), purchases.c.review_decision.is_(None)
            )
        ).scalar_one()
    )


def sales_by_package(conn: Connection) -> dict[str, int]:
    """How many paid purchases each package has had."""
    rows = conn.execute(
        sa.select(purchases.c.package_id, sa.func.count())
        .where(purchases.c.status == PurchaseStatus.PAID.value)
        .group_by(purchases.c.package_id)
    )
    return {package: int(count) for package, count in rows}


def _on_sale(catalog: Catalog, package_id: str) -> Package:
    package = catalog.find(package_id)
    if package is None or not package.active:
        raise UnknownPackage(package_id)
    return package


_insert_purchase = {
    name: dialect.insert(purchases).on_conflict_do_nothing(index_elements=["idempotency_key"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def _open_purchase(
    db: Database,
    *,
    user_id: str,
    package: Package,
    flow: PurchaseFlow,
    idempotency_key: str | None,
) -> tuple[Purchase, bool]:
    """The pending purchase, committed; True when ``idempotency_key`` found an earlier one
    (a retry), which must be for the same user, package and flow."""
    if idempotency_key is not None:
        check_key(idempotency_key)
    now = utcnow()
    with db.transaction() as conn:
        get_user(conn, user_id=user_id)  # raises UnknownUser
        purchase_id = conn.execute(
            _insert_purchase[conn.dialect.name]
            .values(
                user_id=user_id,
                package_id=package.id,
                tokens=package.tokens,
                bonus_tokens=package.bonus_tokens,
                amount=package.price,
                currency=package.currency,
                flow=flow.value,
                status=PurchaseStatus.PENDING.value,
                # Unique per purchase and per database, so two installations sharing one
                # Stripe account can never collide on a key.
                stripe_idempotency_key=f"tokenbank-{secrets.token_hex(12)}",
                idempotency_key=idempotency_key,
                tokens_expire_days=package.expires_after_days,
                created_at=now,
                updated_at=now,
            )
            .returning(purchases.c.id)
        ).scalar()
        if purchase_id is not None:
            return get_purchase(conn, purchase_id=purchase_id), False
        row = conn.execute(
            sa.select(purchases).where(purchases.c.idempotency_key == idempotency_key)
        ).one()
    earlier = to_purchase(row)
    if (earlier.user_id, earlier.package_id, earlier.flow) != (user_id, package.id, flow):
        differs = (
            "another user's"
            if earlier.user_id != user_id
            else "another package's"
            if earlier.package_id != package.id
            else "another flow's"
        )
        raise IdempotencyConflict(
            cast(str, idempotency_key), f"it started purchase {earlier.id}, {differs}"
        )
    return earlier, True


def _give_up(db: Database, purchase_id: int, error: PaymentProviderError) -> None:
    """Stripe refused the request (not a timeout: then it may have happened, and the
    purchase stays pending for a retry or for ``reconcile``)."""
    with db.transaction() as conn:
        conn.execute(
            sa.update(purchases)
            .where(purchases.c.id == purchase_id, purchases.c.status == PurchaseStatus.PENDING)
            .values(
                status=PurchaseStatus.FAILED.value,
                failure_code="payment_provider_error",
                failure_message=str(error)[:500],
                updated_at=utcnow(),
            )
        )


_insert_customer = {
    name: dialect.insert(stripe_customers).on_conflict_do_nothing(index_elements=["user_id"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def customer_for(
    db: Database, stripe: Stripe, *, user_id: str, idempotency_key: str | None = None
) -> str:
    """The user's Stripe customer, made on their first purchase and kept (one row per user;
    two first purchases racing may leave Stripe one unused customer, never a wrong one).

    ``idempotency_key``: derived from the purchase that needs the customer, so a retried
    call never makes a second one, and no other installation can share the key."""
    with db.read() as conn:
        found = conn.execute(
            sa.select(stripe_customers.c.customer_id).where(stripe_customers.c.user_id == user_id)
        ).scalar()
        if found is not None:
            return str(found)
        email = get_user(conn, user_id=user_id).email
    customer_id = stripe.create_customer(
        user_id=user_id,
        email=email,
        idempotency_key=idempotency_key or f"tokenbank-customer-{secrets.token_hex(12)}",
    )
    with db.transaction() as conn:
        conn.execute(
            _insert_customer[conn.dialect.name],
            {"user_id": user_id, "customer_id": customer_id, "created_at": utcnow()},
        )
        return str(
            conn.execute(
                sa.select(stripe_customers.c.customer_id).where(
                    stripe_customers.c.user_id == user_id
                )
            ).scalar_one()
        )


def _metadata(purchase: Purchase) -> dict[str, str]:
    """Only for finding the purchase again (the reference proves it is this one, not a
    purchase of the same id in another installation); amounts come from our own row."""
    return {
        "tokenbank_purchase_id": str(purchase.id),
        "tokenbank_reference": purchase.reference,
        "tokenbank_user_id": purchase.user_id,
        "tokenbank_package_id": purchase.package_id,
    }


def start_checkout(
    db: Database,
    stripe: Stripe,
    catalog: Catalog,
    *,
    user_id: str,
    package_id: str,
    success_url: str,
    cancel_url: str,
    locale: str | None = None,
    prices: PriceBook | None = None,
    idempotency_key: str | None = None,
    faults: Faults = NO_FAULTS,
) -> CheckoutStart:
    """A pending purchase and the Stripe Checkout Session that pays it.

    Three steps, each committed or sent before the next: the purchase row, the Stripe call
    (with the purchase's own Stripe idempotency key), the session id on the row. A retry
    with the same ``idempotency_key`` resumes wherever the first attempt stopped: it
    finds the purchase, and Stripe answers the repeated call with the same session, so a
    crash or a lost answer never makes a second session or charge.

    ``success_url`` and ``cancel_url`` may hold ``{PURCHASE_ID}`` and
    ``{PURCHASE_REFERENCE}`` (the purchase's unguessable reference: a link holding it may
    cancel the purchase without a signed-in session, as Stripe's cancel link does); Stripe
    fills in
    ``{CHECKOUT_SESSION_ID}``. With ``prices``, the package's synced Stripe price is used
    when it still matches the catalog; otherwise the price is sent inline.
    """
    package = _on_sale(catalog, package_id)
    purchase, again = _open_purchase(
        db,
        user_id=user_id,
        package=package,
        flow=PurchaseFlow.CHECKOUT,
        idempotency_key=idempotency_key,
    )
    faults.point("purchase.opened")
    if again:
        _still_open(purchase)
        if purchase.checkout_session_id is not None:
            session = stripe.checkout_session(purchase.checkout_session_id)
            return _checkout_start(purchase, session, success_url)
    price_id = prices.price_id(package) if prices is not None else None
    line_item: dict[str, Any] = (
        {"price": price_id, "quantity": 1}
        if price_id
        else {
            "price_data": {
                "currency": package.currency,
                "unit_amount": package.price,
                "product_data": {
                    "name": package.localized_name(locale or "en"),
                    "description": package.summary(locale or "en"),
                },
            },
            "quantity": 1,
        }
    )
    try:
        customer_id = customer_for(
            db, stripe, user_id=user_id, idempotency_key=f"{purchase.reference}-customer"
        )
        session = stripe.create_checkout_session(
            line_item=line_item,
            customer_id=customer_id,
            client_reference_id=str(purchase.id),
            metadata=_metadata(purchase),
            success_url=_filled(success_url, purchase),
            cancel_url=_filled(cancel_url, purchase),
            locale={"zh-CN": "zh"}.get(locale or "", locale),
            idempotency_key=purchase.reference,
        )
    except PaymentProviderError as exc:
        _give_up(db, purchase.id, exc)
        raise
    faults.point("purchase.created")
    purchase = _store_id(db, purchase.id, purchases.c.checkout_session_id, session.id)
    return _checkout_start(purchase, session, success_url)


def _filled(url: str, purchase: Purchase) -> str:
    return url.replace("{PURCHASE_ID}", str(purchase.id)).replace(
        "{PURCHASE_REFERENCE}", purchase.reference
    )


def _store_id(db: Database, purchase_id: int, column: sa.Column[Any], stripe_id: str) -> Purchase:
    """The last step: the Stripe object's id on the purchase (unless a settle that learned
    it from Stripe got there first)."""
    with db.transaction() as conn:
        conn.execute(
            sa.update(purchases)
            .where(purchases.c.id == purchase_id, column.is_(None))
            .values({column.name: stripe_id, "updated_at": utcnow()})
        )
        return get_purchase(conn, purchase_id=purchase_id)


def _still_open(purchase: Purchase) -> None:
    """A retry may resume a pending purchase, or report one already paid; no other."""
    if purchase.status not in (PurchaseStatus.PENDING, PurchaseStatus.PAID):
        raise PurchaseClosed(purchase.id, purchase.status.value)


def _checkout_start(
    purchase: Purchase, session: CheckoutSession, success_url: str
) -> CheckoutStart:
    if purchase.checkout_session_id not in (None, session.id):
        raise PaymentMismatch(f"session {session.id} is not purchase {purchase.id}'s")
    # A session that is no longer open has no URL: its buyer goes to the success page,
    # which tells how the purchase ended.
    url = session.url or success_url.replace("{CHECKOUT_SESSION_ID}", session.id).replace(
        "{PURCHASE_ID}", str(purchase.id)
    )
    return CheckoutStart(purchase=purchase, checkout_session_id=session.id, url=url)


def start_payment(
    db: Database,
    stripe: Stripe,
    catalog: Catalog,
    *,
    user_id: str,
    package_id: str,
    idempotency_key: str | None = None,
    faults: Faults = NO_FAULTS,
) -> PaymentStart:
    """A pending purchase and the PaymentIntent an embedded card form confirms (the same
    three steps, and the same resuming, as ``start_checkout``)."""
    package = _on_sale(catalog, package_id)
    purchase, again = _open_purchase(
        db,
        user_id=user_id,
        package=package,
        flow=PurchaseFlow.PAYMENT_INTENT,
        idempotency_key=idempotency_key,
    )
    faults.point("purchase.opened")
    if again:
        _still_open(purchase)
        if purchase.payment_intent_id is not None:
            intent = stripe.payment_intent(purchase.payment_intent_id)
            assert intent.client_secret is not None
            return PaymentStart(
                purchase=purchase, payment_intent_id=intent.id, client_secret=intent.client_secret
            )
    try:
        customer_id = customer_for(
            db, stripe, user_id=user_id, idempotency_key=f"{purchase.reference}-customer"
        )
        intent = stripe.create_payment_intent(
            amount=purchase.amount,
            currency=purchase.currency,
            customer_id=customer_id,
            metadata=_metadata(purchase),
            description=f"{package.localized_name('en')}: {package.total_tokens} tokens",
            idempotency_key=purchase.reference,
        )
    except PaymentProviderError as exc:
        _give_up(db, purchase.id, exc)
        raise
    faults.point("purchase.created")
    purchase = _store_id(db, purchase.id, purchases.c.payment_intent_id, intent.id)
    assert intent.client_secret is not None
    return PaymentStart(
        purchase=purchase, payment_intent_id=intent.id, client_secret=intent.client_secret
    )
