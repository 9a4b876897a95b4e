"""Stripe, through its official SDK: the only module that imports ``stripe``.

Everything tokenbank asks of Stripe goes through ``Stripe``, which answers with small
frozen records of the fields billing reads. With ``api_base`` set (``STRIPE_API_BASE``) the
same calls go to the built-in emulator instead of api.stripe.com: one code path for both.

Webhook signatures are checked here rather than with the SDK's ``verify_header``, which
accepts timestamps from the future, a header with several ``t=`` values, and raises
``TypeError`` on non-ASCII input. The scheme is the one Stripe documents: HMAC-SHA256 of
``"{t}.{raw body}"`` under the endpoint secret, compared with every ``v1`` value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import stripe
import structlog

from tokenbank.errors import (
    InvalidEvent,
    InvalidSignature,
    PaymentProviderError,
    PaymentProviderUnavailable,
    StripeObjectMissing,
    TokenbankError,
    WebhooksNotConfigured,
)

#: Stripe's own default and the tolerance its docs recommend; applied both ways here.
SIGNATURE_TOLERANCE_SECONDS = 300
#: A real header is ``t=`` and one or two ``v1=`` (two while a secret rotates), plus ``v0=``.
MAX_SIGNATURE_HEADER = 1024
STRIPE_JS_URL = "https://js.stripe.com/v3/"
_V1 = re.compile(r"[0-9a-f]{64}")
_EVENT_ID = re.compile(r"[A-Za-z0-9_]{1,255}")
_EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,100}")
#: Stripe object ids (cs_..., pi_..., re_..., dp_..., ch_...) as events carry them.
OBJECT_ID = re.compile(r"[A-Za-z0-9_]{1,255}")

log = structlog.get_logger("tokenbank.payments")


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str | None
    status: str  # open, complete, expired
    payment_status: str  # paid, unpaid, no_payment_required
    amount_total: int | None
    currency: str | None
    client_reference_id: str | None
    payment_intent_id: str | None
    metadata: dict[str, str]
    created: int
    mode: str = "payment"
    #: The subscription a completed subscription-mode session made.
    subscription_id: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentIntent:
    id: str
    status: str  # requires_payment_method, processing, succeeded, canceled, ...
    amount: int
    amount_received: int
    currency: str
    client_secret: str | None
    metadata: dict[str, str]
    failure_code: str | None
    failure_message: str | None
    created: int
    #: From its latest charge, when read with it (``payment_intent(with_charge=True)``) or
    #: when there is none: how much of it was refunded, and whether it was ever disputed.
    #: None: not read.
    charge_refunded: int | None = None
    charge_disputed: bool | None = None


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    amount: int
    currency: str
    status: str  # pending, requires_action, succeeded, failed, canceled
    payment_intent_id: str | None
    created: int


@dataclass(frozen=True, slots=True)
class Dispute:
    id: str
    amount: int
    currency: str
    status: str  # warning_needs_response, needs_response, under_review, won, lost, ...
    payment_intent_id: str | None
    created: int


@dataclass(frozen=True, slots=True)
class Event:
    """A verified webhook delivery. ``object`` is the payload's snapshot: a hint of what
    changed, never the truth to act on."""

    id: str
    type: str
    created: int
    api_version: str | None
    livemode: bool
    object: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Price:
    id: str
    product_id: str
    unit_amount: int | None
    currency: str
    lookup_key: str | None
    active: bool
    #: How often a recurring price bills (``month``, ``year``); None for a one-time price.
    interval: str | None = None


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription as the current API version has it: the period lives on its (one)
    item, and a scheduled cancel is ``cancel_at`` or ``cancel_at_period_end``."""

    id: str
    status: str
    customer_id: str | None
    item_id: str | None
    price: Price | None
    current_period_start: int | None
    current_period_end: int | None
    trial_end: int | None
    cancel_at: int | None
    cancel_at_period_end: bool
    ended_at: int | None
    latest_invoice_id: str | None
    metadata: dict[str, str]
    created: int


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    price_id: str | None
    period_start: int
    period_end: int
    proration: bool
    amount: int


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice; ``subscription_id`` from ``parent.subscription_details`` (the current
    API version has no top-level ``subscription``), the service period from its lines."""

    id: str
    status: str  # draft, open, paid, uncollectible, void
    billing_reason: str | None
    subscription_id: str | None
    customer_id: str | None
    amount_paid: int
    currency: str
    lines: tuple[InvoiceLine, ...]
    paid_at: int | None
    created: int

    @property
    def period(self) -> tuple[int, int] | None:
        """The service period bought: the subscription line's (not a proration's)."""
        for line in self.lines:
            if not line.proration:
                return line.period_start, line.period_end
        return None


def _id(value: Any) -> str | None:
    """An expandable field: an id string, an expanded object, or nothing."""
    if value is None or isinstance(value, str):
        return value
    return cast(str, value["id"])


def _session(data: dict[str, Any]) -> CheckoutSession:
    return CheckoutSession(
        id=data["id"],
        url=data.get("url"),
        status=data.get("status") or "open",
        payment_status=data.get("payment_status") or "unpaid",
        amount_total=data.get("amount_total"),
        currency=data.get("currency"),
        client_reference_id=data.get("client_reference_id"),
        payment_intent_id=_id(data.get("payment_intent")),
        metadata=dict(data.get("metadata") or {}),
        created=int(data.get("created") or 0),
        mode=data.get("mode") or "payment",
        subscription_id=_id(data.get("subscription")),
    )


def _intent(data: dict[str, Any]) -> PaymentIntent:
    error = data.get("last_payment_error") or {}
    charge = data.get("latest_charge")
    # An id: the charge was not read with it. None: there is no charge, so nothing to show.
    shown = charge if isinstance(charge, dict) else {} if charge is None else None
    return PaymentIntent(
        id=data["id"],
        status=data["status"],
        amount=int(data["amount"]),
        amount_received=int(data.get("amount_received") or 0),
        currency=data["currency"],
        client_secret=data.get("client_secret"),
        metadata=dict(data.get("metadata") or {}),
        failure_code=error.get("decline_code") or error.get("code"),
        failure_message=error.get("message"),
        created=int(data.get("created") or 0),
        charge_refunded=None if shown is None else int(shown.get("amount_refunded") or 0),
        charge_disputed=None if shown is None else bool(shown.get("disputed")),
    )


def _refund(data: dict[str, Any]) -> Refund:
    return Refund(
        id=data["id"],
        amount=int(data["amount"]),
        currency=data["currency"],
        status=data.get("status") or "succeeded",
        payment_intent_id=_id(data.get("payment_intent")),
        created=int(data.get("created") or 0),
    )


def _dispute(data: dict[str, Any]) -> Dispute:
    return Dispute(
        id=data["id"],
        amount=int(data["amount"]),
        currency=data["currency"],
        status=data["status"],
        payment_intent_id=_id(data.get("payment_intent")),
        created=int(data.get("created") or 0),
    )


def _price(data: dict[str, Any]) -> Price:
    return Price(
        id=data["id"],
        product_id=cast(str, _id(data["product"])),
        unit_amount=data.get("unit_amount"),
        currency=data["currency"],
        lookup_key=data.get("lookup_key"),
        active=bool(data.get("active")),
        interval=(data.get("recurring") or {}).get("interval"),
    )


def _subscription(data: dict[str, Any]) -> Subscription:
    items = (data.get("items") or {}).get("data") or []
    item = items[0] if items else {}
    price = item.get("price")
    return Subscription(
        id=data["id"],
        status=data["status"],
        customer_id=_id(data.get("customer")),
        item_id=item.get("id"),
        price=_price(price) if isinstance(price, dict) else None,
        current_period_start=item.get("current_period_start"),
        current_period_end=item.get("current_period_end"),
        trial_end=data.get("trial_end"),
        cancel_at=data.get("cancel_at"),
        cancel_at_period_end=bool(data.get("cancel_at_period_end")),
        ended_at=data.get("ended_at"),
        latest_invoice_id=_id(data.get("latest_invoice")),
        metadata=dict(data.get("metadata") or {}),
        created=int(data.get("created") or 0),
    )


def _invoice(data: dict[str, Any]) -> Invoice:
    parent = data.get("parent") or {}
    details = parent.get("subscription_details") or {}
    lines = []
    for line in (data.get("lines") or {}).get("data") or []:
        pricing = (line.get("pricing") or {}).get("price_details") or {}
        item = (line.get("parent") or {}).get("subscription_item_details") or {}
        period = line.get("period") or {}
        lines.append(
            InvoiceLine(
                price_id=_id(pricing.get("price")),
                period_start=int(period.get("start") or 0),
                period_end=int(period.get("end") or 0),
                proration=bool(item.get("proration")),
                amount=int(line.get("amount") or 0),
            )
        )
    return Invoice(
        id=data["id"],
        status=data.get("status") or "draft",
        billing_reason=data.get("billing_reason"),
        subscription_id=_id(details.get("subscription")),
        customer_id=_id(data.get("customer")),
        amount_paid=int(data.get("amount_paid") or 0),
        currency=data.get("currency") or "",
        lines=tuple(lines),
        paid_at=(data.get("status_transitions") or {}).get("paid_at"),
        created=int(data.get("created") or 0),
    )


def _plain(obj: Any) -> dict[str, Any]:
    return cast(dict[str, Any], obj.to_dict())


class Stripe:
    """One Stripe account, reached through the SDK's ``StripeClient``.

    Every call is a network round trip: callers make them with no database rows locked.
    """

    def __init__(
        self,
        *,
        secret_key: str,
        webhook_secret: str | None = None,
        api_base: str | None = None,
        timeout_seconds: float = 20,
        max_network_retries: int = 2,
    ) -> None:
        self.webhook_secret = webhook_secret
        self.api_base = api_base
        self._secret_key = secret_key
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=timeout_seconds),
        )

    @property
    def js_url(self) -> str:
        """Where pages load Stripe.js from: Stripe's, or the emulator's stand-in."""
        return f"{self.api_base.rstrip('/')}/v3/" if self.api_base else STRIPE_JS_URL

    # -- webhooks ---------------------------------------------------------------------------

    @property
    def livemode(self) -> bool:
        """Whether this deployment's key is a live one (``sk_live_``/``rk_live_``); events
        of the other mode are never acted on."""
        return self._secret_key.startswith(("sk_live_", "rk_live_"))

    def verify_event(
        self, payload: bytes, signature: str | None, *, now: float | None = None
    ) -> Event:
        """The event in ``payload`` if ``signature`` proves Stripe sent it within five
        minutes of ``now`` (either way); fails closed when no webhook secret is configured.
        Raises ``InvalidSignature``, ``InvalidEvent`` or ``WebhooksNotConfigured``."""
        if not self.webhook_secret:
            raise WebhooksNotConfigured("no webhook signing secret is configured")
        timestamp, candidates = parse_signature(signature)
        skew = (time.time() if now is None else now) - timestamp
        if abs(skew) > SIGNATURE_TOLERANCE_SECONDS:
            log.warning("webhook_signature_skew", skew_seconds=round(skew))
            when = "old" if skew > 0 else "far in the future"
            raise InvalidSignature(f"the signature's timestamp is too {when} ({skew:+.0f} s)")
        expected = hmac.new(
            self.webhook_secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256
        ).hexdigest()
        if not any(hmac.compare_digest(expected, value) for value in candidates):
            raise InvalidSignature("no signature matches the payload")
        return parse_event(payload)

    # -- calls ------------------------------------------------------------------------------

    def _call(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except stripe.StripeError as exc:
            raise provider_error(what, exc) from exc

    def create_customer(self, *, user_id: str, email: str | None, idempotency_key: str) -> str:
        params: dict[str, Any] = {"metadata": {"tokenbank_user_id": user_id}}
        if email:
            params["email"] = email
        customer = self._call(
            "create a customer",
            self._client.v1.customers.create,
            params,
            {"idempotency_key": idempotency_key},
        )
        return cast(str, customer.id)

    def create_checkout_session(
        self,
        *,
        line_item: dict[str, Any],
        customer_id: str | None,
        client_reference_id: str,
        metadata: dict[str, str],
        success_url: str,
        cancel_url: str,
        locale: str | None,
        idempotency_key: str,
    ) -> CheckoutSession:
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [line_item],
            "client_reference_id": client_reference_id,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if customer_id:
            params["customer"] = customer_id
        if locale:
            params["locale"] = locale
        session = self._call(
            "create a Checkout Session",
            self._client.v1.checkout.sessions.create,
            params,
            {"idempotency_key": idempotency_key},
        )
        return _session(_plain(session))

    def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer_id: str | None,
        metadata: dict[str, str],
        description: str,
        idempotency_key: str,
    ) -> PaymentIntent:
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "metadata": metadata,
            "description": description,
            "payment_method_types": ["card"],
        }
        if customer_id:
            params["customer"] = customer_id
        intent = self._call(
            "create a PaymentIntent",
            self._client.v1.payment_intents.create,
            params,
            {"idempotency_key": idempotency_key},
        )
        return _intent(_plain(intent))

    def checkout_session(self, session_id: str) -> CheckoutSession:
        found = self._call(
            "read a Checkout Session", self._client.v1.checkout.sessions.retrieve, session_id
        )
        return _session(_plain(found))

    def payment_intent(self, payment_intent_id: str, *, with_charge: bool = False) -> PaymentIntent:
        """``with_charge``: its latest charge in the same request, for what it says of
        refunds and disputes."""
        params = {"expand": ["latest_charge"]} if with_charge else {}
        found = self._call(
            "read a PaymentIntent",
            self._client.v1.payment_intents.retrieve,
            payment_intent_id,
            params,
        )
        return _intent(_plain(found))

    def expire_checkout_session(self, session_id: str) -> CheckoutSession:
        """Close an open session's page, so that nothing can pay it any more. Stripe
        refuses one that is no longer open (paid, or expired already): the caller then
        reads it."""
        found = self._call(
            "expire a Checkout Session", self._client.v1.checkout.sessions.expire, session_id
        )
        return _session(_plain(found))

    def cancel_payment_intent(self, payment_intent_id: str, *, reason: str) -> PaymentIntent:
        """Cancel a PaymentIntent nobody will pay (``reason``: Stripe's
        ``abandoned``, ``requested_by_customer``...); refused once it succeeded."""
        found = self._call(
            "cancel a PaymentIntent",
            self._client.v1.payment_intents.cancel,
            payment_intent_id,
            {"cancellation_reason": reason},
        )
        return _intent(_plain(found))

    def charge_payment_intent_id(self, charge_id: str) -> str | None:
        found = self._call("read a charge", self._client.v1.charges.retrieve, charge_id)
        return _id(_plain(found).get("payment_intent"))

    def refunds_of(self, payment_intent_id: str) -> list[Refund]:
        return [
            _refund(r)
            for r in self._list(
                "list refunds", self._client.v1.refunds, {"payment_intent": payment_intent_id}
            )
        ]

    def disputes_of(self, payment_intent_id: str) -> list[Dispute]:
        return [
            _dispute(d)
            for d in self._list(
                "list disputes", self._client.v1.disputes, {"payment_intent": payment_intent_id}
            )
        ]

    def _list(self, what: str, service: Any, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        page = self._call(what, service.list, {"limit": 100, **params})
        try:
            for item in page.auto_paging_iter():
                yield _plain(item)
        except stripe.StripeError as exc:
            raise provider_error(what, exc) from exc

    def sessions_since(self, created_gte: int) -> Iterator[CheckoutSession]:
        params = {"created": {"gte": created_gte}}
        for data in self._list("list Checkout Sessions", self._client.v1.checkout.sessions, params):
            yield _session(data)

    def payment_intents_since(self, created_gte: int) -> Iterator[PaymentIntent]:
        params = {"created": {"gte": created_gte}}
        for data in self._list("list PaymentIntents", self._client.v1.payment_intents, params):
            yield _intent(data)

    def refunds_since(self, created_gte: int) -> Iterator[Refund]:
        params = {"created": {"gte": created_gte}}
        for data in self._list("list refunds", self._client.v1.refunds, params):
            yield _refund(data)

    def disputes_since(self, created_gte: int) -> Iterator[Dispute]:
        params = {"created": {"gte": created_gte}}
        for data in self._list("list disputes", self._client.v1.disputes, params):
            yield _dispute(data)

    # -- subscriptions ----------------------------------------------------------------------

    def create_subscription_checkout(
        self,
        *,
        line_item: dict[str, Any],
        customer_id: str,
        client_reference_id: str,
        metadata: dict[str, str],
        description: str,
        trial_days: int | None,
        success_url: str,
        cancel_url: str,
        locale: str | None,
        idempotency_key: str,
    ) -> CheckoutSession:
        """A subscription-mode Checkout Session. The metadata goes on the session and, through
        ``subscription_data``, on the subscription (and each of its invoices)."""
        subscription_data: dict[str, Any] = {"metadata": metadata, "description": description}
        if trial_days:
            subscription_data["trial_period_days"] = trial_days
        params: dict[str, Any] = {
            "mode": "subscription",
            "line_items": [line_item],
            "customer": customer_id,
            "client_reference_id": client_reference_id,
            "metadata": metadata,
            "subscription_data": subscription_data,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if locale:
            params["locale"] = locale
        session = self._call(
            "create a Checkout Session",
            self._client.v1.checkout.sessions.create,
            params,
            {"idempotency_key": idempotency_key},
        )
        return _session(_plain(session))

    def subscription(self, subscription_id: str) -> Subscription:
        found = self._call(
            "read a subscription", self._client.v1.subscriptions.retrieve, subscription_id
        )
        return _subscription(_plain(found))

    def update_subscription(self, subscription_id: str, params: dict[str, Any]) -> Subscription:
        found = self._call(
            "update a subscription", self._client.v1.subscriptions.update, subscription_id, params
        )
        return _subscription(_plain(found))

    def invoice(self, invoice_id: str) -> Invoice:
        found = self._call("read an invoice", self._client.v1.invoices.retrieve, invoice_id)
        return _invoice(_plain(found))

    def invoices_of(self, subscription_id: str) -> list[Invoice]:
        params = {"subscription": subscription_id}
        return [_invoice(i) for i in self._list("list invoices", self._client.v1.invoices, params)]

    def invoice_of_payment(self, payment_intent_id: str) -> str | None:
        """The invoice a PaymentIntent paid (the current API version links them only
        through InvoicePayments), or None for a payment that paid no invoice."""
        params = {"payment": {"type": "payment_intent", "payment_intent": payment_intent_id}}
        for payment in self._list(
            "list invoice payments", self._client.v1.invoice_payments, params
        ):
            return _id(payment.get("invoice"))
        return None

    def payment_intents_of_invoice(self, invoice_id: str) -> list[str]:
        params = {"invoice": invoice_id}
        found = []
        for payment in self._list(
            "list invoice payments", self._client.v1.invoice_payments, params
        ):
            intent = (payment.get("payment") or {}).get("payment_intent")
            if isinstance(intent, str | dict):
                found.append(cast(str, _id(intent)))
        return found

    def subscriptions_since(self, created_gte: int) -> Iterator[Subscription]:
        params = {"created": {"gte": created_gte}, "status": "all"}
        for data in self._list("list subscriptions", self._client.v1.subscriptions, params):
            yield _subscription(data)

    def invoices_since(self, created_gte: int) -> Iterator[Invoice]:
        params = {"created": {"gte": created_gte}}
        for data in self._list("list invoices", self._client.v1.invoices, params):
            yield _invoice(data)

    def price(self, price_id: str) -> Price:
        return _price(_plain(self._call("read a price", self._client.v1.prices.retrieve, price_id)))

    def billing_portal_url(self, *, customer_id: str, return_url: str) -> str:
        portal = self._call(
            "open the billing portal",
            self._client.v1.billing_portal.sessions.create,
            {"customer": customer_id, "return_url": return_url},
        )
        return cast(str, portal.url)

    # -- catalog ----------------------------------------------------------------------------

    def prices_by_lookup_key(self, lookup_keys: list[str]) -> dict[str, Price]:
        found: dict[str, Price] = {}
        for start in range(0, len(lookup_keys), 10):  # Stripe takes at most 10 keys a call
            params = {"lookup_keys": lookup_keys[start : start + 10], "active": True}
            for data in self._list("list prices", self._client.v1.prices, params):
                price = _price(data)
                if price.lookup_key:
                    found[price.lookup_key] = price
        return found

    def active_prices(self) -> list[Price]:
        return [
            _price(p) for p in self._list("list prices", self._client.v1.prices, {"active": True})
        ]

    def product(self, product_id: str) -> dict[str, Any] | None:
        try:
            return _plain(
                self._call("read a product", self._client.v1.products.retrieve, product_id)
            )
        except StripeObjectMissing:
            return None

    def create_product(
        self, *, product_id: str, name: str, description: str, metadata: dict[str, str]
    ) -> None:
        self._call(
            "create a product",
            self._client.v1.products.create,
            {"id": product_id, "name": name, "description": description, "metadata": metadata},
        )

    def update_product(
        self, product_id: str, *, name: str, description: str | None, active: bool
    ) -> None:
        params: dict[str, Any] = {"name": name, "active": active}
        if description is not None:
            params["description"] = description
        self._call(
            "update a product",
            self._client.v1.products.update,
            product_id,
            params,
        )

    def create_price(
        self,
        *,
        product_id: str,
        unit_amount: int,
        currency: str,
        lookup_key: str,
        interval: str | None = None,
    ) -> Price:
        """A price that takes over ``lookup_key``; recurring every ``interval`` (a plan's)
        or one-time (a package's)."""
        params: dict[str, Any] = {
            "product": product_id,
            "unit_amount": unit_amount,
            "currency": currency,
            "lookup_key": lookup_key,
            "transfer_lookup_key": True,
            "metadata": {"tokenbank": "1"},
        }
        if interval is not None:
            params["recurring"] = {"interval": interval}
        created = self._call("create a price", self._client.v1.prices.create, params)
        return _price(_plain(created))

    def archive_price(self, price_id: str) -> None:
        self._call("archive a price", self._client.v1.prices.update, price_id, {"active": False})


def provider_error(what: str, exc: stripe.StripeError) -> TokenbankError:
    """A Stripe failure as tokenbank's error: worth retrying (unreachable, timed out, rate
    limited, a 5xx, a request with the same idempotency key still running) or not."""
    status = exc.http_status or 0
    message = f"Stripe could not {what}: {exc.user_message or exc}"
    if isinstance(exc, stripe.IdempotencyError) and status == 400:
        # The key was used with other parameters: retrying the same request never helps.
        return PaymentProviderError(message)
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError | stripe.IdempotencyError):
        return PaymentProviderUnavailable(message, retry_after=5)
    if status >= 500 or status == 429 or isinstance(exc, stripe.APIError):
        return PaymentProviderUnavailable(message, retry_after=5)
    if status == 404:
        return StripeObjectMissing(message)
    return PaymentProviderError(message)


def parse_signature(header: str | None) -> tuple[int, list[str]]:
    """The timestamp and ``v1`` signatures of a ``Stripe-Signature`` header, read strictly:
    printable ASCII of bounded length, exactly one ``t``, at least one well-formed ``v1``
    (other schemes, such as ``v0``, are ignored)."""
    if not header:
        raise InvalidSignature("no Stripe-Signature header")
    if len(header) > MAX_SIGNATURE_HEADER or not (header.isascii() and header.isprintable()):
        raise InvalidSignature("the Stripe-Signature header is malformed")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals or not key or not value:
            raise InvalidSignature("the Stripe-Signature header is malformed")
        if key == "t":
            if timestamp is not None:
                raise InvalidSignature("the Stripe-Signature header has more than one timestamp")
            if not (value.isascii() and value.isdigit()) or len(value) > 12:
                raise InvalidSignature("the Stripe-Signature timestamp is not a number")
            timestamp = int(value)
        elif key == "v1":
            if not _V1.fullmatch(value):
                raise InvalidSignature("a v1 signature is not 64 hexadecimal digits")
            signatures.append(value)
    if timestamp is None or not signatures:
        raise InvalidSignature("the Stripe-Signature header needs t= and v1=")
    return timestamp, signatures


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise InvalidEvent("the event repeats a key")
    return found


def parse_event(payload: bytes | str) -> Event:
    """An event from its JSON (verified, or stored in the inbox after verification);
    ``InvalidEvent`` unless it has the shape of a Stripe event."""
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError: ValueError
        raise InvalidEvent(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("the body is not a JSON object")
    event_id, kind, created = data.get("id"), data.get("type"), data.get("created")
    body = data.get("data")
    obj = body.get("object") if isinstance(body, dict) else None
    api_version, livemode = data.get("api_version"), data.get("livemode", False)
    problems = [
        ("id", isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id)),
        ("type", isinstance(kind, str) and _EVENT_TYPE.fullmatch(kind)),
        ("created", type(created) is int and 0 <= created < 2**40),
        ("data.object", isinstance(obj, dict)),
        ("livemode", isinstance(livemode, bool)),
        (
            "api_version",
            api_version is None
            or (
                isinstance(api_version, str)
                and len(api_version) <= 64
                and api_version.isprintable()
            ),
        ),
    ]
    wrong = [name for name, ok in problems if not ok]
    if wrong:
        raise InvalidEvent(f"not a Stripe event: bad or missing {', '.join(wrong)}")
    return Event(
        id=cast(str, event_id),
        type=cast(str, kind),
        created=cast(int, created),
        api_version=cast("str | None", api_version),
        livemode=cast(bool, livemode),
        object=cast(dict[str, Any], obj),
    )
