"""Request and response bodies of the JSON API."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from tokenbank.audit import MAX_REASON_LENGTH
from tokenbank.entitlements import MAX_QUANTITY
from tokenbank.ledger.inputs import MAX_AMOUNT, MAX_DESCRIPTION_LENGTH
from tokenbank.ledger.models import MAX_FEATURE_LENGTH, MAX_KEY_LENGTH, HoldKind

if TYPE_CHECKING:
    from tokenbank import entitlements, grants, ledger
    from tokenbank.billing import Allowance, Package, Purchase, Subscription
    from tokenbank.billing.coverage import Usage
    from tokenbank.billing.plans import Plan

Amount = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT, description="Whole tokens.")]
Key = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Idempotency key: the same key and body return the first result.",
    ),
]
Description = Annotated[str | None, Field(default=None, max_length=MAX_DESCRIPTION_LENGTH)]
Metadata = Annotated[
    dict[str, Any] | None,
    Field(default=None, description="Up to 4 KB of JSON, nested at most 32 levels, kept as given."),
]


FeatureId = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=MAX_FEATURE_LENGTH,
        description="A feature of the catalog ([features.<id>]; the pricing page lists"
        " them): the server prices it. Instead of amount, never with it.",
        examples=["image"],
    ),
]
Quantity = Annotated[
    StrictInt | None,
    Field(
        default=None,
        gt=0,
        le=MAX_QUANTITY,
        description="Units of the feature (default 1); only with feature.",
    ),
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Priced(Body):
    """A body that names what it costs in one of two ways: an ``amount`` of tokens, or a
    ``feature`` (and a ``quantity``) that the server prices from its catalog. Never both:
    a caller cannot name the price of a feature."""

    amount: Annotated[StrictInt | None, Field(default=None, gt=0, le=MAX_AMOUNT)] = None
    feature: FeatureId = None
    quantity: Quantity = None

    @model_validator(mode="after")
    def _one_price(self) -> Priced:
        if self.feature is None:
            if self.amount is None:
                raise ValueError("name an amount, or a feature (and a quantity)")
            if self.quantity is not None:
                raise ValueError("quantity goes with a feature; with an amount, leave it out")
            return self
        if self.amount is not None:
            raise ValueError(
                "name either an amount or a feature, not both: a feature's price is the catalog's"
            )
        if self.quantity is None:
            self.quantity = 1
        return self


class UserIn(Body):
    email: Annotated[str | None, Field(default=None, max_length=320)] = None
    name: Annotated[str | None, Field(default=None, max_length=200)] = None


class UserOut(BaseModel):
    user_id: str
    email: str | None
    name: str | None
    created_at: datetime
    trial_granted: bool = Field(
        default=False,
        description="True when this request gave the user the free trial (TOKENBANK_TRIAL_"
        "TOKENS), once per person: never again for another spelling of the same address.",
    )


class ExpiringOut(BaseModel):
    amount: int = Field(
        description="What is left of the grant, including tokens a pending hold reserves in it "
        "(those expire too if the hold is voided or lapses after expires_at)."
    )
    expires_at: datetime
    source: str = Field(description="purchase, subscription, trial, promo or admin.")


class BalanceOut(BaseModel):
    user_id: str
    available: int = Field(description="Tokens that can be spent now.")
    held: int = Field(description="Tokens reserved by pending holds.")
    balance: int = Field(description="available + held.")
    total_purchased: int
    total_granted: int
    total_spent: int
    debt: int = Field(default=0, description="Clawed back (refund, dispute) but not covered.")
    expiring: list[ExpiringOut] = Field(
        default_factory=list,
        description="Tokens that will expire unless used first, soonest first (up to 20).",
    )


class SpendIn(Priced):
    idempotency_key: Key
    description: Description = None
    metadata: Metadata = None


class ReceiptOut(BaseModel):
    transfer_id: int | None = Field(
        description="The spend's transfer; null when the user's plan covered it (covered)."
    )
    kind: str
    user_id: str
    amount: int = Field(description="Tokens moved (0 when the plan covered it).")
    balance: int = Field(description="The wallet's balance right after this transfer.")
    replayed: bool = Field(description="True when this repeats the first result of the key.")
    feature: str | None = Field(default=None, description="The feature spent, if one was.")
    quantity: int | None = Field(default=None, description="Its units.")
    covered: bool = Field(
        default=False,
        description="True when the user's plan makes the feature unlimited: the use is"
        " recorded and no tokens were taken.",
    )


class HoldIn(Priced):
    idempotency_key: Key
    ttl_seconds: Annotated[StrictInt | None, Field(default=None, gt=0, le=7 * 24 * 3600)] = None
    description: Description = None
    metadata: Metadata = None


class HoldOut(BaseModel):
    hold_id: int
    user_id: str
    amount: int
    status: str
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None
    posted_amount: int | None
    transfer_id: int | None
    replayed: bool
    feature: str | None = Field(default=None, description="The feature held for, if one was.")
    quantity: int | None = Field(default=None, description="Its units.")
    covered: bool = Field(
        default=False,
        description="True when the user's plan covers the feature: the hold reserves no"
        " tokens, and posting it takes none.",
    )


class PostIn(Body):
    amount: Amount


class RefundIn(Body):
    idempotency_key: Key
    amount: Annotated[StrictInt | None, Field(default=None, gt=0, le=MAX_AMOUNT)] = None
    reason: Description = None


#: The start of an RFC 3339 date and time (the offset is checked by ``AwareDatetime``).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


class GrantIn(Body):
    amount: Amount
    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON_LENGTH)]
    idempotency_key: Key
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="When the tokens stop being usable, with its UTC offset; in the future,"
        " within 3650 days. Not with expires_in_days. Neither: they never expire.",
    )
    expires_in_days: Annotated[StrictInt | None, Field(default=None, ge=1, le=3650)] = Field(
        default=None, description="Days from now the tokens stay usable. Not with expires_at."
    )
    source: Literal["admin", "promo"] = Field(
        default="admin", description="What the tokens are: an operator's grant, or a promotion."
    )

    @field_validator("expires_at", mode="before")
    @classmethod
    def a_written_time(cls, value: object) -> object:
        """A date and time as text (RFC 3339), never a number of seconds: a Unix time
        read as a date is a mistake that would silently grant until an odd day."""
        if value is not None and not (isinstance(value, str) and _RFC3339.match(value)):
            raise ValueError("must be a date and time with its UTC offset, as text (RFC 3339)")
        return value

    @model_validator(mode="after")
    def one_expiry(self) -> GrantIn:
        if self.expires_at is not None and self.expires_in_days is not None:
            raise ValueError("give expires_at or expires_in_days, not both")
        return self


class GrantOut(ReceiptOut):
    source: str = Field(description="admin or promo: the first grant's, for a replay.")
    expires_at: datetime | None = Field(description="When the tokens expire; null: never.")


class TransferOut(BaseModel):
    transfer_id: int
    kind: str
    amount: int = Field(description="Signed: positive credits the wallet.")
    balance_after: int
    description: str | None
    metadata: dict[str, Any] | None
    refund_of: int | None
    idempotency_key: str
    event_at: datetime
    created_at: datetime
    feature: str | None = Field(default=None, description="The feature spent, if one was.")
    quantity: int | None = Field(default=None, description="Its units.")


class HistoryOut(BaseModel):
    items: list[TransferOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for older transfers.")


class CheckIn(Priced):
    """What a check asks about: an amount, or a feature and a quantity."""


class CheckOut(BaseModel):
    allowed: bool = Field(description="Whether the cost can be spent now. Advice only.")
    cost: int = Field(description="Tokens the feature and quantity (or the amount) cost.")
    available: int
    short_by: int = Field(description="Tokens missing; 0 when allowed.")
    expires_soonest: ExpiringOut | None = Field(
        description="The tokens that expire first, if any do."
    )
    buy_url: str = Field(description="Where the user can buy more tokens.")
    source: Literal["tokens", "subscription"] = Field(
        default="tokens",
        description="subscription: the user's plan makes the feature unlimited and covers"
        " this use (cost 0); tokens: it takes tokens, trial ones first as they expire first.",
    )
    covered_left: int | None = Field(
        default=None,
        description="With source subscription and a fair-use cap: units of the feature the"
        " plan still covers this month after this use.",
    )


class Health(BaseModel):
    status: str


class PortalIn(Body):
    return_path: Annotated[
        str,
        Field(
            default="/dashboard",
            min_length=1,
            max_length=500,
            description="Where the link lands, a path on tokenbank's site.",
        ),
    ] = "/dashboard"


class PortalOut(BaseModel):
    url: str = Field(description="One-time sign-in link; hand it to the user's browser.")
    expires_at: datetime


HttpUrl = Annotated[
    str,
    Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="An absolute http(s) URL; ``{PURCHASE_ID}`` and Stripe's"
        " ``{CHECKOUT_SESSION_ID}`` are filled in.",
    ),
]
PackageId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Locale = Annotated[str | None, Field(default=None, pattern=r"^(en|zh-CN)$")]


#: A price per token is a fraction of a cent: ten places, whatever the division gives.
PER_TOKEN_PLACES = Decimal("1e-10")


class PackageOut(BaseModel):
    id: str
    name: dict[str, str]
    features: dict[str, list[str]]
    tokens: int
    bonus_tokens: int
    total_tokens: int
    price: int = Field(description="In the currency's minor unit (cents, fen).")
    currency: str
    price_per_token: str = Field(
        description="Major units per token, bonus included, to 10 decimal places.",
        examples=["0.0090909091"],
    )
    savings_percent: int = Field(description="Saved per token against the smallest package.")
    badge: str | None
    expires_after_days: int | None = Field(
        default=None, description="Days its tokens stay usable after the purchase; null: never."
    )


class FeatureOut(BaseModel):
    id: str
    name: dict[str, str] = Field(description="By language tag (en, zh-CN).")
    tokens: int = Field(description="Tokens per unit: a spend of 3 costs 3 x this.")


class PackagesOut(BaseModel):
    currency: str
    packages: list[PackageOut]


class FeaturesOut(BaseModel):
    features: list[FeatureOut] = Field(
        description="What the tokens buy: spend, hold or check {feature, quantity} and the"
        " server prices it."
    )


PurchaseKey = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Idempotency key: a retry with it returns the same purchase and Stripe"
        " session or payment, never a second one.",
    ),
]


class CheckoutIn(Body):
    package_id: PackageId
    success_url: HttpUrl | None = None
    cancel_url: HttpUrl | None = None
    locale: Locale = None
    idempotency_key: PurchaseKey = None


class CheckoutOut(BaseModel):
    purchase_id: int
    checkout_session_id: str
    url: str = Field(description="Send the user's browser here (Stripe Checkout).")


class PaymentIntentIn(Body):
    package_id: PackageId
    idempotency_key: PurchaseKey = None


class PaymentIntentOut(BaseModel):
    purchase_id: int
    payment_intent_id: str
    client_secret: str = Field(description="For Stripe.js confirmCardPayment in the browser.")
    publishable_key: str | None
    amount: int
    currency: str
    tokens: int
    bonus_tokens: int


class PurchaseOut(BaseModel):
    purchase_id: int
    user_id: str
    package_id: str
    status: str = Field(
        description="pending, paid, failed, expired, canceled or needs_review (Stripe reports"
        " a payment that does not match: an admin decides)."
    )
    flow: str
    tokens: int
    bonus_tokens: int
    amount: int
    currency: str
    checkout_session_id: str | None
    payment_intent_id: str | None
    failure_code: str | None
    failure_message: str | None
    refunded_amount: int
    clawed_back_tokens: int
    created_at: datetime
    paid_at: datetime | None


class PurchasesOut(BaseModel):
    items: list[PurchaseOut]
    next_cursor: str | None


class BillingPortalIn(Body):
    return_url: HttpUrl


class BillingPortalOut(BaseModel):
    url: str


# From the domain's values to the bodies above.


def receipt_out(receipt: ledger.Receipt) -> ReceiptOut:
    return ReceiptOut(
        transfer_id=receipt.transfer_id,
        kind=receipt.kind.value,
        user_id=receipt.user_id,
        amount=receipt.amount,
        balance=receipt.balance,
        replayed=receipt.replayed,
        feature=receipt.feature,
        quantity=receipt.quantity,
    )


def grant_out(grant: grants.Grant) -> GrantOut:
    return GrantOut(
        **receipt_out(grant).model_dump(),
        source=grant.source.value,
        expires_at=grant.expires_at,
    )


def hold_out(hold: ledger.Hold) -> HoldOut:
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
        feature=hold.feature,
        quantity=hold.quantity,
        covered=hold.kind is HoldKind.COVERED,
    )


def transfer_out(item: ledger.HistoryItem) -> TransferOut:
    return TransferOut(
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
        feature=item.feature,
        quantity=item.quantity,
    )


def check_out(entitlement: entitlements.Entitlement) -> CheckOut:
    soonest = entitlement.expires_soonest
    return CheckOut(
        allowed=entitlement.allowed,
        cost=entitlement.cost,
        available=entitlement.available,
        short_by=entitlement.short_by,
        expires_soonest=None
        if soonest is None
        else ExpiringOut(
            amount=soonest.amount, expires_at=soonest.expires_at, source=soonest.source.value
        ),
        buy_url=entitlement.buy_url,
        source="subscription" if entitlement.covered else "tokens",
        covered_left=entitlement.covered_left,
    )


def package_out(package: Package, base: Package | None) -> PackageOut:
    savings = package.savings_against(base) if base else Decimal(0)
    per_token = package.price_per_token.quantize(PER_TOKEN_PLACES, rounding=ROUND_HALF_UP)
    return PackageOut(
        id=package.id,
        name=package.name,
        features=package.features,
        tokens=package.tokens,
        bonus_tokens=package.bonus_tokens,
        total_tokens=package.total_tokens,
        price=package.price,
        currency=package.currency,
        price_per_token=f"{per_token:f}",
        savings_percent=int((savings * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)),
        badge=package.badge,
        expires_after_days=package.expires_after_days,
    )


def purchase_out(purchase: Purchase) -> PurchaseOut:
    return PurchaseOut(
        purchase_id=purchase.id,
        user_id=purchase.user_id,
        package_id=purchase.package_id,
        status=purchase.status.value,
        flow=purchase.flow.value,
        tokens=purchase.tokens,
        bonus_tokens=purchase.bonus_tokens,
        amount=purchase.amount,
        currency=purchase.currency,
        checkout_session_id=purchase.checkout_session_id,
        payment_intent_id=purchase.payment_intent_id,
        failure_code=purchase.failure_code,
        failure_message=purchase.failure_message,
        refunded_amount=purchase.refunded_amount,
        clawed_back_tokens=purchase.clawed_back_tokens,
        created_at=purchase.created_at,
        paid_at=purchase.paid_at,
    )


# Plans and subscriptions.


class PlanOut(BaseModel):
    id: str
    name: dict[str, str]
    features: dict[str, list[str]]
    tokens_per_month: int
    prices: dict[str, int] = Field(
        description="By interval (month, year), in the currency's minor unit."
    )
    currency: str
    unused: Literal["reset", "rollover"] = Field(
        description="reset: a month's unused allowance expires when the next is granted;"
        " rollover: up to rollover_cap of it stays."
    )
    rollover_cap: int | None
    trial_days: int | None
    unlimited: dict[str, int | None] = Field(
        description="Features that take no tokens while the plan is active, with the most"
        " units a month may use of each (null: no cap)."
    )
    yearly_savings_percent: int
    badge: str | None


class PlansOut(BaseModel):
    plans: list[PlanOut]


class SubscribeIn(Body):
    plan_id: PackageId
    interval: Literal["month", "year"] = "month"
    success_url: HttpUrl | None = None
    cancel_url: HttpUrl | None = None
    locale: Locale = None
    idempotency_key: PurchaseKey = None


class SubscribeOut(BaseModel):
    subscription_id: int
    checkout_session_id: str
    url: str = Field(description="Send the user's browser here (Stripe Checkout).")


class ChangePlanIn(Body):
    plan_id: PackageId
    interval: Literal["month", "year"] = "month"


class AllowanceOut(BaseModel):
    tokens_per_month: int
    granted: int = Field(
        description="Granted for the current month, rollover and upgrades included."
    )
    left: int = Field(description="Of what this month granted, what is left to use now.")
    month_ends_at: datetime | None


class UnlimitedOut(BaseModel):
    feature: str
    used: int = Field(description="Units used this month, covered by the plan.")
    cap: int | None = Field(description="The fair-use cap a month; null: none.")


class SubscriptionOut(BaseModel):
    subscription_id: int
    user_id: str
    plan_id: str
    interval: Literal["month", "year"]
    status: str = Field(
        description="trialing, active, past_due, unpaid, paused, canceled, incomplete or"
        " incomplete_expired, as Stripe has it."
    )
    amount: int
    currency: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool = Field(
        description="Whether it ends at the period's end instead of renewing (also true"
        " when Stripe scheduled the cancel with cancel_at)."
    )
    ends_at: datetime | None
    allowance: AllowanceOut
    next_allowance_at: datetime | None = Field(
        description="When the next month's allowance is granted (null: none will be)."
    )
    unlimited: list[UnlimitedOut] = Field(
        default_factory=list,
        description="The features this month's plan makes unlimited, with the units used.",
    )


def plan_out(plan: Plan) -> PlanOut:
    return PlanOut(
        id=plan.id,
        name=plan.name,
        features=plan.features,
        tokens_per_month=plan.tokens_per_month,
        prices={interval.value: amount for interval, amount in plan.prices.items()},
        currency=plan.currency,
        unused=plan.unused.value,
        rollover_cap=plan.rollover_cap,
        trial_days=plan.trial_days,
        unlimited=dict(plan.unlimited or {}),
        yearly_savings_percent=int(
            (plan.yearly_savings * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        ),
        badge=plan.badge,
    )


def subscription_out(
    subscription: Subscription, allowance: Allowance, usage: Sequence[Usage] = ()
) -> SubscriptionOut:
    ends_at = subscription.ends_at
    next_at = None
    if subscription.renews or (ends_at is not None and allowance.month_end is not None):
        # The next month begins when this one ends: a renewal, or a yearly plan's next month.
        candidates = [t for t in (allowance.month_end, subscription.current_period_end) if t]
        next_at = min(candidates) if candidates else None
        if next_at is not None and ends_at is not None and next_at >= ends_at:
            next_at = None
    return SubscriptionOut(
        subscription_id=subscription.id,
        user_id=subscription.user_id,
        plan_id=subscription.plan_id,
        interval=subscription.interval.value,
        status=subscription.status.value,
        amount=subscription.amount,
        currency=subscription.currency,
        current_period_start=subscription.current_period_start,
        current_period_end=subscription.current_period_end,
        trial_end=subscription.trial_end,
        cancel_at_period_end=ends_at is not None,
        ends_at=ends_at,
        allowance=AllowanceOut(
            tokens_per_month=subscription.tokens_per_month,
            granted=allowance.granted,
            left=allowance.left,
            month_ends_at=allowance.month_end,
        ),
        next_allowance_at=next_at,
        unlimited=[UnlimitedOut(feature=u.feature, used=u.used, cap=u.cap) for u in usage],
    )


class LlmKeyIn(Body):
    name: str = Field(min_length=1, max_length=100, description="What the key is for.")
    daily_cap: StrictInt | None = Field(
        default=None, gt=0, le=10**15, description="The most it may spend a day (UTC), in tokens."
    )


class LlmKeyOut(BaseModel):
    id: int
    user_id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    daily_cap: int | None
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = Field(
        default=None, description="The whole key: in the answer that created it, never again."
    )


class LlmKeysOut(BaseModel):
    keys: list[LlmKeyOut]


class UsageRowOut(BaseModel):
    group: str = Field(description="The model id, or the day (UTC, YYYY-MM-DD).")
    calls: int
    ok: int
    refused: int
    failed: int
    aborted: int
    input_tokens: int
    output_tokens: int
    charged: int = Field(description="Tokens charged.")
    shortfall: int = Field(description="Tokens a call cost beyond what the wallet had (debt).")


class UsageOut(BaseModel):
    user_id: str
    group_by: str
    rows: list[UsageRowOut]
