"""Request and response bodies of the JSON API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from tokenbank.ledger.journal import MAX_AMOUNT, MAX_DESCRIPTION_LENGTH
from tokenbank.ledger.models import MAX_KEY_LENGTH

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
    dict[str, Any] | None, Field(default=None, description="Up to 4 KB of JSON, kept as given.")
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(Body):
    email: Annotated[str | None, Field(default=None, max_length=320)] = None
    name: Annotated[str | None, Field(default=None, max_length=200)] = None


class UserOut(BaseModel):
    user_id: str
    email: str | None
    name: str | None
    created_at: datetime


class BalanceOut(BaseModel):
    user_id: str
    available: int = Field(description="Tokens that can be spent now.")
    held: int = Field(description="Tokens reserved by pending holds.")
    balance: int = Field(description="available + held.")
    total_purchased: int
    total_granted: int
    total_spent: int
    debt: int = Field(default=0, description="Clawed back (refund, dispute) but not covered.")


class SpendIn(Body):
    amount: Amount
    idempotency_key: Key
    description: Description = None
    metadata: Metadata = None


class ReceiptOut(BaseModel):
    transfer_id: int
    kind: str
    user_id: str
    amount: int
    balance: int = Field(description="The wallet's balance right after this transfer.")
    replayed: bool = Field(description="True when this repeats the first result of the key.")


class HoldIn(Body):
    amount: Amount
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


class PostIn(Body):
    amount: Amount


class RefundIn(Body):
    idempotency_key: Key
    amount: Annotated[StrictInt | None, Field(default=None, gt=0, le=MAX_AMOUNT)] = None
    reason: Description = None


class GrantIn(Body):
    amount: Amount
    reason: Annotated[str, Field(min_length=1, max_length=MAX_DESCRIPTION_LENGTH)]
    idempotency_key: Key


class TransactionOut(BaseModel):
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


class TransactionsOut(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for older transactions.")


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


class PackageOut(BaseModel):
    id: str
    name: dict[str, str]
    features: dict[str, list[str]]
    tokens: int
    bonus_tokens: int
    total_tokens: int
    price: int = Field(description="In the currency's minor unit (cents, fen).")
    currency: str
    price_per_token: str = Field(description="Major units per token, bonus included.")
    savings_percent: int = Field(description="Saved per token against the smallest package.")
    badge: str | None


class PackagesOut(BaseModel):
    currency: str
    packages: list[PackageOut]


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
