"""Selling tokens: the catalog, purchases through Stripe, the webhook inbox, Stripe refunds,
disputes, admin reviews and reconciliation. Calls the ledger; reaches Stripe only through
``tokenbank.payments.stripe``.

Settling a payment is split by concern: ``settlement`` (fetch Stripe's view, settle it
onto the purchase), ``credits``, ``payment_refunds`` (Stripe's money refunds), ``disputes``,
``reviews`` (what an admin decides), with ``outcomes`` carrying what changed and its log
lines. Callers outside billing use the names below."""

from __future__ import annotations

from dataclasses import dataclass

from tokenbank.billing.catalog import Catalog, Package, load_catalog
from tokenbank.billing.models import PurchaseFlow, PurchaseStatus, ReviewDecision
from tokenbank.billing.outcomes import Outcome
from tokenbank.billing.prices import PriceBook, SyncStep, plan_sync, sync_catalog
from tokenbank.billing.purchases import (
    CheckoutStart,
    ClawbackPolicy,
    PaymentStart,
    Purchase,
    count_awaiting_review,
    customer_for,
    find_purchase,
    get_purchase,
    list_purchases,
    sales_by_package,
    start_checkout,
    start_payment,
)
from tokenbank.billing.reconcile import Reconciliation, reconcile
from tokenbank.billing.renewals import RenewalOutcome, grant_due_months, sync_from_stripe
from tokenbank.billing.reviews import REVIEW_DECISIONS, resolve_review
from tokenbank.billing.settlement import (
    Payment,
    fetch_payment,
    settle,
    settle_from_stripe,
    settle_returning_buyer,
)
from tokenbank.billing.subscriptions import (
    GRACE,
    Allowance,
    Subscription,
    SubscriptionStart,
    allowance,
    cancel_subscription,
    change_subscription,
    get_subscription,
    list_subscriptions,
    resume_subscription,
    start_subscription,
)
from tokenbank.billing.unpaid import Resume, cancel_purchase, resume_purchase
from tokenbank.billing.webhooks import (
    HANDLED_EVENTS,
    InboxEvent,
    Pending,
    Processed,
    count_unsettled,
    get_event,
    list_events,
    receive,
    replay,
    settle_pending,
)
from tokenbank.config import Settings
from tokenbank.errors import (
    CatalogError,
    ConfigurationError,
    NothingToReview,
    PaymentMismatch,
    PaymentsNotConfigured,
    ProcessingFailed,
    PurchaseClosed,
    UnknownEvent,
    UnknownPackage,
    UnknownPurchase,
)
from tokenbank.payments.stripe import Stripe


@dataclass(frozen=True, slots=True)
class Billing:
    """What selling needs, built once at the entrypoint and passed down."""

    stripe: Stripe
    catalog: Catalog
    prices: PriceBook
    policy: ClawbackPolicy
    #: How the pages take a payment: Stripe Checkout, or a card form in the page.
    flow: PurchaseFlow
    publishable_key: str | None


def billing_from_settings(settings: Settings) -> Billing | None:
    """None when no Stripe key is configured: the service then runs without selling."""
    if settings.stripe_secret_key is None:
        return None
    if settings.stripe_api_base and settings.stripe_secret_key.get_secret_value().startswith(
        ("sk_live_", "rk_live_")
    ):
        raise ConfigurationError(
            f"STRIPE_API_BASE ({settings.stripe_api_base}) with a live STRIPE_SECRET_KEY: a live"
            " key goes to Stripe only; unset STRIPE_API_BASE (a leftover var/.env of make run?)"
        )
    stripe = Stripe(
        secret_key=settings.stripe_secret_key.get_secret_value(),
        webhook_secret=(
            settings.stripe_webhook_secret.get_secret_value()
            if settings.stripe_webhook_secret
            else None
        ),
        api_base=settings.stripe_api_base,
        timeout_seconds=settings.stripe_timeout_seconds,
        max_network_retries=settings.stripe_max_network_retries,
    )
    flow = (
        PurchaseFlow.CHECKOUT
        if settings.purchase_flow == "checkout"
        else PurchaseFlow.PAYMENT_INTENT  # "embedded" is its earlier name
    )
    if flow is PurchaseFlow.PAYMENT_INTENT and not settings.stripe_publishable_key:
        raise ConfigurationError(
            "TOKENBANK_PURCHASE_FLOW=payment_intent needs STRIPE_PUBLISHABLE_KEY for Stripe.js"
        )
    catalog = load_catalog(settings.catalog)
    return Billing(
        stripe=stripe,
        catalog=catalog,
        prices=PriceBook(stripe, catalog),
        policy=settings.clawback_policy,
        flow=flow,
        publishable_key=settings.stripe_publishable_key,
    )


__all__ = [
    "GRACE",
    "HANDLED_EVENTS",
    "REVIEW_DECISIONS",
    "Allowance",
    "Billing",
    "Catalog",
    "CatalogError",
    "CheckoutStart",
    "ClawbackPolicy",
    "InboxEvent",
    "NothingToReview",
    "Outcome",
    "Package",
    "Payment",
    "PaymentMismatch",
    "PaymentStart",
    "PaymentsNotConfigured",
    "Pending",
    "PriceBook",
    "Processed",
    "ProcessingFailed",
    "Purchase",
    "PurchaseClosed",
    "PurchaseFlow",
    "PurchaseStatus",
    "Reconciliation",
    "RenewalOutcome",
    "Resume",
    "ReviewDecision",
    "Subscription",
    "SubscriptionStart",
    "SyncStep",
    "UnknownEvent",
    "UnknownPackage",
    "UnknownPurchase",
    "allowance",
    "billing_from_settings",
    "cancel_purchase",
    "cancel_subscription",
    "change_subscription",
    "count_awaiting_review",
    "count_unsettled",
    "customer_for",
    "fetch_payment",
    "find_purchase",
    "get_event",
    "get_purchase",
    "get_subscription",
    "grant_due_months",
    "list_events",
    "list_purchases",
    "list_subscriptions",
    "load_catalog",
    "plan_sync",
    "receive",
    "reconcile",
    "replay",
    "resolve_review",
    "resume_purchase",
    "resume_subscription",
    "sales_by_package",
    "settle",
    "settle_from_stripe",
    "settle_pending",
    "settle_returning_buyer",
    "start_checkout",
    "start_payment",
    "start_subscription",
    "sync_catalog",
    "sync_from_stripe",
]
