"""What the pages call things and how they word errors, in every language the pages
speak (each text goes through the catalogs: ``N_`` marks it, ``Language.gettext`` says it)."""

from __future__ import annotations

from tokenbank import errors, ledger
from tokenbank.billing.catalog import Catalog
from tokenbank.errors import TokenbankError
from tokenbank.identity.passwords import MAX_LENGTH, MIN_LENGTH
from tokenbank.web.i18n import N_, Language

#: How the pages name each kind of transfer and each purchase status.
KIND_NAMES = {
    ledger.TransferKind.PURCHASE: N_("Purchase"),
    ledger.TransferKind.BONUS: N_("Bonus"),
    ledger.TransferKind.GRANT: N_("Grant"),
    ledger.TransferKind.SPEND: N_("Spend"),
    ledger.TransferKind.REFUND: N_("Refund"),
    ledger.TransferKind.CLAWBACK: N_("Clawback"),
    ledger.TransferKind.RESTORE: N_("Returned"),
    ledger.TransferKind.EXPIRY: N_("Expiry"),
}
#: The kinds the history page filters by.
FILTER_KINDS = KIND_NAMES
#: Where tokens came from, as the dashboard says what expires ("from your free trial").
SOURCE_NAMES = {
    ledger.Source.PURCHASE: N_("purchased"),
    ledger.Source.SUBSCRIPTION: N_("from your plan"),
    ledger.Source.TRIAL: N_("from your free trial"),
    ledger.Source.PROMO: N_("from a promotion"),
    ledger.Source.ADMIN: N_("given to you"),
}
#: How the history describes an expiry, by the source of the tokens that expired.
EXPIRY_TEXTS = {
    ledger.Source.PURCHASE: N_("Purchased tokens expired"),
    ledger.Source.SUBSCRIPTION: N_("Unused plan tokens expired"),
    ledger.Source.TRIAL: N_("Free trial tokens expired"),
    ledger.Source.PROMO: N_("Promotional tokens expired"),
    ledger.Source.ADMIN: N_("Granted tokens expired"),
}
STATUS_NAMES = {
    "pending": N_("Pending"),
    "paid": N_("Paid"),
    "failed": N_("Failed"),
    "expired": N_("Expired"),
    "canceled": N_("Canceled"),
    "needs_review": N_("Under review"),
}
#: A subscription's status as its subscriber reads it (Stripe's statuses).
SUBSCRIPTION_STATES = {
    "pending": N_("Starting"),
    "expired": N_("Not started"),
    "incomplete": N_("Awaiting payment"),
    "incomplete_expired": N_("Not started"),
    "trialing": N_("Free trial"),
    "active": N_("Active"),
    "past_due": N_("Payment failed"),
    "unpaid": N_("Unpaid"),
    "paused": N_("Paused"),
    "canceled": N_("Canceled"),
}
#: Why a purchase ended without tokens, for its buyer (by failure code).
FAILURE_TEXTS = {
    "not_started": N_("It never reached the payment service; nothing was charged."),
    "unknown_to_stripe": N_("The payment service has no record of it; nothing was charged."),
    "expired": N_("The checkout page expired; nothing was charged."),
    "canceled": N_("The payment was canceled; nothing was charged."),
    "refused": N_("The payment did not match the purchase and was not accepted."),
}


def describe(item: ledger.HistoryItem, *, lang: Language, catalog: Catalog | None) -> str:
    """A history line's description. Entries tokenbank writes itself (purchases, refunds,
    disputes, debt) are described in the page's language from their metadata; what an app
    or an admin wrote is shown as written."""
    meta = item.metadata or {}
    purchase = meta.get("purchase_id")
    if "package_id" in meta and item.kind in {
        ledger.TransferKind.PURCHASE,
        ledger.TransferKind.BONUS,
    }:
        package = catalog.find(str(meta["package_id"])) if catalog else None
        name = package.localized_name(lang.tag) if package else str(meta["package_id"])
        text = (
            N_("Bonus with %(package)s")
            if item.kind is ledger.TransferKind.BONUS
            else N_("Purchase of %(package)s")
        )
        return lang.gettext(text, package=name)
    if "subscription_id" in meta:
        return _describe_plan(item, meta, lang=lang, catalog=catalog)
    if "llm_call" in meta and "input_tokens" in meta:
        return lang.gettext(
            "%(model)s: %(input)s in / %(output)s out",
            model=str(meta.get("model", "")),
            input=lang.number(int(meta["input_tokens"])),
            output=lang.number(int(meta.get("output_tokens", 0))),
        )
    fixed = _fixed_text(item, meta)
    if fixed is not None:
        return lang.gettext(fixed)
    if purchase is not None:
        # The first marker the metadata carries names what happened to the purchase.
        for marker, text in PURCHASE_EVENTS:
            if meta.get(marker):
                return lang.gettext(text, purchase=purchase)
    return item.description or ""


def _fixed_text(item: ledger.HistoryItem, meta: dict[str, object]) -> str | None:
    """The sentence of an entry that says the same whatever its amounts: debt collected,
    tokens expired."""
    if "settles_debt" in meta:
        return N_("Tokens owed, collected from a purchase")
    if item.kind is ledger.TransferKind.EXPIRY and meta.get("source") in EXPIRY_TEXTS:
        return EXPIRY_TEXTS[ledger.Source(str(meta["source"]))]
    return None


def _describe_plan(
    item: ledger.HistoryItem, meta: dict[str, object], *, lang: Language, catalog: Catalog | None
) -> str:
    """A plan's lines: a month's allowance, an upgrade's difference, a refund's clawback."""
    plan = catalog.plan(str(meta.get("plan_id"))) if catalog else None
    name = plan.localized_name(lang.tag) if plan else str(meta.get("plan_id", ""))
    if item.kind is ledger.TransferKind.CLAWBACK:
        return lang.gettext("Plan payment refunded")
    if meta.get("upgrade"):
        return lang.gettext("Upgrade to %(plan)s: the rest of this month", plan=name)
    return lang.gettext("%(plan)s plan: this month's tokens", plan=name)


#: How the history names what happened to a purchase, by the metadata marker it carries.
PURCHASE_EVENTS = (
    ("refund_failed", N_("A refund failed: tokens returned (purchase #%(purchase)s)")),
    ("reversed", N_("Purchase reversed after review (#%(purchase)s)")),
    ("refund_id", N_("Payment refunded (purchase #%(purchase)s)")),
    ("dispute_id", N_("Payment disputed (purchase #%(purchase)s)")),
)


#: Each error of ``tokenbank.errors`` -> what a page says about it. Every class is listed
#: (tests/test_errors.py checks it, and that each is translated).
ERROR_TEXTS: dict[type[TokenbankError], str] = {
    errors.TokenbankError: N_("The request could not be completed."),
    errors.ConfigurationError: N_("This server is not set up for this. Tell its operator."),
    errors.CatalogError: N_("This server is not set up for this. Tell its operator."),
    errors.NotConfigured: N_("This is not set up on this server."),
    errors.PaymentsNotConfigured: N_("Payments are not configured on this server."),
    errors.WebhooksNotConfigured: N_("Payment notifications are not set up on this server."),
    errors.Unavailable: N_("tokenbank is unavailable for a moment. Try again shortly."),
    errors.DatabaseUnavailable: N_("tokenbank is unavailable for a moment. Try again shortly."),
    errors.SchemaOutOfDate: N_("tokenbank is being updated. Try again shortly."),
    errors.PaymentProviderUnavailable: N_(
        "The payment service did not answer. Try again in a moment."
    ),
    errors.InvalidArgument: N_("The value of %(field)s is not accepted."),
    errors.MixedScriptEmail: N_(
        "This address mixes letters of different alphabets (such as Latin and Cyrillic)"
        " before the @. Type it as your mail provider shows it."
    ),
    errors.WeakPassword: N_("This password is too easy to guess."),
    errors.UnknownPackage: N_("This package is not on sale any more."),
    errors.UnknownPlan: N_("This plan is not on sale any more."),
    errors.UnknownFeature: N_("This feature is not offered."),
    errors.NotFound: N_("There is no such user or record."),
    errors.UnknownUser: N_("There is no such user."),
    errors.UnknownTransfer: N_("There is no such record."),
    errors.UnknownHold: N_("There is no such hold."),
    errors.UnknownApiKey: N_("There is no such API key."),
    errors.UnknownPurchase: N_("There is no such purchase."),
    errors.UnknownEvent: N_("There is no such event in the webhook inbox."),
    errors.NoSubscription: N_("You have no subscription."),
    errors.UnknownModel: N_("There is no such model."),
    errors.UnknownLlmKey: N_("There is no such key."),
    errors.Conflict: N_("This no longer applies. Reload the page."),
    errors.IdempotencyConflict: N_(
        "This form was already sent with other values. Reload the page."
    ),
    errors.NotRefundable: N_("Only spends can be refunded."),
    errors.RefundExceedsSpend: N_("That is more than is left to refund."),
    errors.HoldNotPending: N_("This hold has already ended."),
    errors.HoldFrozen: N_("These tokens are frozen while a payment is disputed."),
    errors.UserExists: N_("This user already exists."),
    errors.EmailTaken: N_("An account with this email already exists. Sign in instead."),
    errors.PaymentMismatch: N_("The payment does not match its purchase; it was not credited."),
    errors.PurchaseClosed: N_("This purchase has ended. Start a new one."),
    errors.SubscriptionExists: N_(
        "You already have a subscription. Change its plan instead of subscribing again."
    ),
    errors.SubscriptionEnded: N_("This subscription cannot be changed now."),
    errors.NothingToReview: N_("This purchase was already decided."),
    errors.InsufficientTokens: N_("There are not enough tokens for this."),
    errors.KeyCapReached: N_("This key has spent what it may spend today."),
    errors.CallInProgress: N_("This request is still running."),
    errors.Unauthenticated: N_("Sign in again to go on."),
    errors.InvalidApiKey: N_("The API key is missing, unknown or revoked."),
    errors.InvalidCredentials: N_("That email and password do not match an account."),
    errors.Forbidden: N_("Your account cannot do this."),
    errors.EmailNotVerified: N_(
        "Confirm your email address to buy tokens: follow the link we sent you, or send a"
        " new one from your account page."
    ),
    errors.RateLimited: N_("Too many attempts. Try again in %(seconds)s seconds."),
    errors.InvalidPortalLink: N_("This sign-in link is invalid, expired or already used."),
    errors.InvalidEmailLink: N_(
        "This link is invalid, has expired or was already used. Ask for a new one."
    ),
    errors.InvalidSignature: N_("The payment notification's signature is not valid."),
    errors.InvalidEvent: N_("The payment notification could not be read."),
    errors.PaymentProviderError: N_("The payment service refused the request."),
    errors.StripeObjectMissing: N_("The payment service has no such record."),
    errors.ProcessingFailed: N_("The event could not be processed."),
    errors.UpstreamError: N_("The model could not be reached. Try again."),
    errors.UpstreamTimeout: N_("The model took too long to answer. Try again."),
}
#: What a form says about a value it refused, by field (``InvalidArgument.field``).
FIELD_TEXTS = {
    "password": N_("The password must be %(min)s to %(max)s characters long."),
    "new_password": N_("The password must be %(min)s to %(max)s characters long."),
    "email": N_("Enter a valid email address."),
    "name": N_("Give a name of at most 200 characters, without control characters."),
    "daily_cap": N_("The daily limit is a whole number of tokens, or empty for none."),
    "prompt": N_("Write a message first."),
    "history": N_("The conversation could not be read. Reload the page."),
    "new_email": N_("This is already your address."),
    "amount": N_("Enter a whole number of tokens greater than zero."),
    "description": N_("Give a reason of at most 500 characters."),
    "reason": N_("Give a reason of at most 500 characters."),
    "decision": N_("Choose one of the decisions offered."),
    "language": N_("Choose one of the languages offered."),
    "time_zone": N_("Choose one of the time zones offered."),
}


#: Why a password was found too easy to guess (``WeakPassword.reason``), then one advice.
WEAK_PASSWORD_TEXTS = {
    "common": N_("This password is one of the most common ones, or close to one."),
    "personal": N_("This password contains your email address or your name."),
    "keyboard": N_("This password follows the keys of a keyboard (like qwerty)."),
    "repeat": N_("This password repeats characters or words (like aaaa or abcabc)."),
    "sequence": N_("This password is a sequence (like abcd or 6543)."),
    "date": N_("This password is mostly a date or a year."),
    "guessable": N_("This password is too easy to guess."),
}
PASSWORD_ADVICE = N_("Use a few unrelated words, or a longer password.")


def error_text(lang: Language, exc: TokenbankError) -> str:
    """An error as a sentence in the page's language: the field's own text for a refused
    value, else the text of the nearest class of ``exc`` in ``ERROR_TEXTS``."""
    message = None
    field = ""
    if isinstance(exc, errors.WeakPassword):
        return " ".join(
            lang.gettext(text)
            for text in (WEAK_PASSWORD_TEXTS.get(exc.reason, ""), PASSWORD_ADVICE)
            if text
        )
    if isinstance(exc, errors.InvalidArgument):
        field = exc.field
        # A refusal with a class of its own (MixedScriptEmail) says why; others the field.
        if type(exc) is errors.InvalidArgument or type(exc) not in ERROR_TEXTS:
            message = FIELD_TEXTS.get(field)
    if message is None:
        message = errors.nearest(ERROR_TEXTS, exc)
    return lang.gettext(
        message,
        seconds=getattr(exc, "retry_after", ""),
        min=MIN_LENGTH,
        max=MAX_LENGTH,
        field=field.replace("_", " "),
    )
