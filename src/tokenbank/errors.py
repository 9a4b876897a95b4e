"""Every error tokenbank raises on purpose, in one tree, each with a stable ``code``.

    TokenbankError
    ├── ConfigurationError            settings that cannot work (a bad URL, a missing secret)
    │   └── CatalogError              the catalog file is missing or wrong
    ├── NotConfigured                 a part this request needs is switched off here
    │   ├── PaymentsNotConfigured     no Stripe key: nothing is sold
    │   └── WebhooksNotConfigured     no webhook secret: Stripe's events are refused
    ├── Unavailable                   a dependency is down for now: retry after a while
    │   ├── DatabaseUnavailable
    │   ├── SchemaOutOfDate           the database is behind this version's migrations
    │   └── PaymentProviderUnavailable
    ├── InvalidArgument               a value the caller sent is not acceptable (by field)
    ├── UnknownPackage                no such package on sale
    ├── UnknownFeature                no such feature in the catalog
    ├── NotFound
    │   ├── UnknownUser · UnknownTransfer · UnknownHold · UnknownApiKey
    │   ├── UnknownPurchase · UnknownEvent
    │   └── UnknownModel · UnknownLlmKey
    ├── Conflict                      the request no longer fits what was recorded
    │   ├── IdempotencyConflict · RefundExceedsSpend · NotRefundable
    │   ├── HoldNotPending · HoldFrozen · UserExists · EmailTaken
    │   ├── PaymentMismatch · PurchaseClosed · NothingToReview
    │   └── CallInProgress            a model call with this key is still running
    ├── InsufficientTokens
    ├── KeyCapReached                 a user key spent its cap for the day
    ├── Unauthenticated               who is asking could not be established
    │   ├── InvalidApiKey
    │   └── InvalidCredentials
    ├── Forbidden                     who is asking may not do this
    ├── RateLimited
    ├── InvalidPortalLink
    ├── InvalidSignature              a webhook Stripe did not sign (or signed long ago)
    ├── InvalidEvent                  a signed webhook whose body is not an event
    ├── PaymentProviderError          Stripe refused a request (retrying will not help)
    │   └── StripeObjectMissing
    ├── UpstreamError                 a model's upstream failed before any output
    │   └── UpstreamTimeout
    └── ProcessingFailed              a stored webhook could not be applied (Stripe retries)

Each error is a business outcome with data, never a crash. What it becomes is decided in
one table per surface, each with a test that no error is missing: the HTTP status
(``web/problems.py``), the command line's exit status (``cli/common.py``) and the page's
sentence in every language (``web/texts.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class TokenbankError(Exception):
    code = "tokenbank_error"


def nearest(table: Mapping[type[TokenbankError], T], exc: TokenbankError) -> T:
    """What ``table`` says for the nearest class of ``exc`` (itself, else its family): the
    lookup behind the HTTP status, exit status and page text tables."""
    return next(table[kind] for kind in type(exc).__mro__ if kind in table)


# --- what the operator set up ----------------------------------------------------------


class ConfigurationError(TokenbankError):
    code = "configuration_error"


class CatalogError(ConfigurationError):
    """The catalog file is missing or invalid; ``problems`` lists every mistake found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class NotConfigured(TokenbankError):
    code = "not_configured"


class PaymentsNotConfigured(NotConfigured):
    code = "payments_not_configured"


class WebhooksNotConfigured(NotConfigured):
    code = "webhooks_not_configured"


# --- what is down for now ---------------------------------------------------------------


class Unavailable(TokenbankError):
    """Nothing was changed, and the same request is expected to work a little later: the
    HTTP layer answers 503 with ``Retry-After``."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


class SchemaOutOfDate(Unavailable):
    code = "schema_out_of_date"


class PaymentProviderUnavailable(Unavailable):
    """Stripe could not be reached, timed out, was rate limiting or failed (5xx): nothing
    is known to have happened, and the same request may be retried."""

    code = "payment_provider_unavailable"


# --- what the caller sent ---------------------------------------------------------------


class InvalidArgument(TokenbankError):
    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class MixedScriptEmail(InvalidArgument):
    """An address whose local part mixes scripts (``homoglyph`` with a Cyrillic "o")."""

    code = "email_mixed_scripts"

    def __init__(self) -> None:
        super().__init__("email", "its name before the @ mixes letters of different scripts")


class WeakPassword(InvalidArgument):
    """A password long enough but too easy to guess; ``reason`` says why, as one of
    ``REASONS`` (the pages word each in the user's language)."""

    code = "weak_password"
    REASONS = ("common", "personal", "keyboard", "repeat", "sequence", "date", "guessable")

    def __init__(self, reason: str, field: str = "password") -> None:
        super().__init__(field, f"too easy to guess ({reason})")
        self.reason = reason


class UnknownPackage(TokenbankError):
    code = "unknown_package"

    def __init__(self, package_id: str) -> None:
        self.package_id = package_id
        super().__init__(f"no package {package_id!r} is on sale")


class UnknownPlan(TokenbankError):
    code = "unknown_plan"

    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        super().__init__(f"no plan {plan_id!r} is on sale")


class UnknownFeature(TokenbankError):
    """A spend, hold or check of a feature the catalog does not price."""

    code = "unknown_feature"

    def __init__(self, feature: str) -> None:
        self.feature = feature
        super().__init__(f"no feature {feature!r} in the catalog")


class NotFound(TokenbankError):
    code = "not_found"


class UnknownUser(NotFound):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"no wallet for user {user_id!r}")
        self.user_id = user_id


class UnknownTransfer(NotFound):
    def __init__(self, transfer_id: int | str) -> None:
        if isinstance(transfer_id, int):
            super().__init__(f"no transfer {transfer_id}")
        else:
            super().__init__(f"no transfer with idempotency key {transfer_id!r}")
        self.transfer_id = transfer_id


class UnknownHold(NotFound):
    def __init__(self, hold_id: int) -> None:
        super().__init__(f"no hold {hold_id}")
        self.hold_id = hold_id


class UnknownApiKey(NotFound):
    def __init__(self, key_id: int) -> None:
        super().__init__(f"no API key {key_id}")


class UnknownPurchase(NotFound):
    code = "unknown_purchase"

    def __init__(self, reference: str) -> None:
        super().__init__(f"no purchase {reference}")


class NoSubscription(NotFound):
    code = "no_subscription"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} has no subscription")


class UnknownEvent(NotFound):
    code = "unknown_event"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"no event {event_id} in the inbox")


class UnknownModel(NotFound):
    """No model with this id in the models file (OpenAI's own code for it)."""

    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"the model {model!r} does not exist; GET /v1/models lists them")
        self.model = model


class UnknownLlmKey(NotFound):
    code = "unknown_llm_key"

    def __init__(self, key_id: int) -> None:
        super().__init__(f"no model key {key_id} for this user")


# --- what no longer fits what was recorded ------------------------------------------------


class Conflict(TokenbankError):
    code = "conflict"


class IdempotencyConflict(Conflict):
    """The key was already used for a different operation or different parameters."""

    code = "idempotency_conflict"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used with other parameters: {detail}"
        )
        self.key = key
        self.detail = detail


class NotRefundable(Conflict):
    code = "not_refundable"

    def __init__(self, transfer_id: int, kind: str) -> None:
        super().__init__(f"transfer {transfer_id} is a {kind}, only spends can be refunded")
        self.transfer_id = transfer_id


class RefundExceedsSpend(Conflict):
    code = "refund_exceeds_spend"

    def __init__(self, transfer_id: int, *, requested: int, refundable: int) -> None:
        super().__init__(
            f"transfer {transfer_id}: {requested} requested, only {refundable} left to refund"
        )
        self.transfer_id = transfer_id
        self.requested = requested
        self.refundable = refundable


class HoldNotPending(Conflict):
    code = "hold_not_pending"

    def __init__(self, hold_id: int, status: str) -> None:
        super().__init__(f"hold {hold_id} is {status}, not pending")
        self.hold_id = hold_id
        self.status = status


class HoldFrozen(Conflict):
    """The hold is a freeze (a disputed payment's tokens): only billing may end it."""

    code = "hold_frozen"

    def __init__(self, hold_id: int) -> None:
        super().__init__(f"hold {hold_id} freezes disputed tokens; it ends with the dispute")
        self.hold_id = hold_id


class UserExists(Conflict):
    code = "user_exists"

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} already exists")
        self.user_id = user_id


class EmailTaken(Conflict):
    code = "email_taken"

    def __init__(self, email: str) -> None:
        super().__init__(f"email {email!r} belongs to another user")
        self.email = email


class PaymentMismatch(Conflict):
    """Stripe reports a payment that does not match the purchase it names: never credited;
    the purchase waits for an admin's decision."""

    code = "payment_mismatch"


class PurchaseClosed(Conflict):
    """A retried purchase request whose purchase can no longer be paid."""

    code = "purchase_closed"

    def __init__(self, purchase_id: int, status: str) -> None:
        super().__init__(f"purchase {purchase_id} is {status}: start a new one with a new key")
        self.purchase_id = purchase_id


class SubscriptionExists(Conflict):
    """A second subscription for a user who has one: a plan change, not a new purchase."""

    code = "subscription_exists"

    def __init__(self, user_id: str, status: str) -> None:
        super().__init__(
            f"user {user_id!r} already has a subscription ({status}): change its plan"
            " (POST /api/v1/users/{id}/subscription/change) instead of subscribing again"
        )


class SubscriptionEnded(Conflict):
    """A change to a subscription that can no longer change (canceled, or not paid yet)."""

    code = "subscription_not_changeable"

    def __init__(self, status: str) -> None:
        super().__init__(f"the subscription is {status}: it cannot be changed now")


class NothingToReview(Conflict):
    code = "nothing_to_review"

    def __init__(self, purchase_id: int) -> None:
        super().__init__(f"purchase {purchase_id} is not waiting for a review")


class CallInProgress(Conflict):
    """A model call with this idempotency key has not finished yet."""

    code = "call_in_progress"

    def __init__(self, key: str) -> None:
        super().__init__(f"the call with idempotency key {key!r} is still running")


class InsufficientTokens(TokenbankError):
    code = "insufficient_tokens"

    def __init__(self, user_id: str, *, requested: int, available: int) -> None:
        super().__init__(
            f"insufficient tokens: user {user_id!r} has {available} available, {requested} needed"
        )
        self.user_id = user_id
        self.requested = requested
        self.available = available


class KeyCapReached(TokenbankError):
    """A user's model key would spend more than its cap for the day (UTC)."""

    code = "key_cap_reached"

    def __init__(self, *, cap: int, used: int, requested: int) -> None:
        super().__init__(
            f"this key may spend {cap} tokens a day: {used} are used or held today,"
            f" and this call may cost {requested}"
        )
        self.cap = cap
        self.used = used
        self.requested = requested


# --- who is asking ----------------------------------------------------------------------


class Unauthenticated(TokenbankError):
    code = "unauthorized"


class InvalidApiKey(Unauthenticated):
    def __init__(self, detail: str = "missing, unknown or revoked API key") -> None:
        super().__init__(detail)


class InvalidCredentials(Unauthenticated):
    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("wrong email or password")


class Forbidden(TokenbankError):
    code = "forbidden"


class EmailNotVerified(Forbidden):
    """The account's email address is not confirmed yet: it may read, not buy."""

    code = "email_not_verified"

    def __init__(self) -> None:
        super().__init__("confirm your email address first")


class RateLimited(TokenbankError):
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many attempts; try again in {retry_after} seconds")
        self.retry_after = retry_after


class InvalidPortalLink(TokenbankError):
    code = "invalid_link"

    def __init__(self) -> None:
        super().__init__("this sign-in link is invalid, expired or already used")


class InvalidEmailLink(TokenbankError):
    """A link from a mail (confirm, reset, change of address) that is unknown, expired,
    used, or outdated by a later change to the account."""

    code = "invalid_email_link"

    def __init__(self) -> None:
        super().__init__("this link is invalid, expired or already used")


# --- Stripe -------------------------------------------------------------------------------


class InvalidSignature(TokenbankError):
    code = "invalid_signature"


class InvalidEvent(TokenbankError):
    """A validly signed delivery whose body is not a Stripe event."""

    code = "invalid_event"


class PaymentProviderError(TokenbankError):
    """Stripe refused a request tokenbank made (retrying the same request will not help)."""

    code = "payment_provider_error"


class StripeObjectMissing(PaymentProviderError):
    """Stripe has no object with this id (404)."""

    code = "stripe_object_missing"


# --- model upstreams ---------------------------------------------------------------------


class UpstreamError(TokenbankError):
    """A model's upstream could not be reached or failed before any output (nothing was
    charged; retrying may help)."""

    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class ProcessingFailed(TokenbankError):
    """Applying a stored event failed; the inbox keeps the error and Stripe should retry."""

    code = "webhook_failed"
