"""What the pages call things and how they word errors, in every language the pages
speak (each text goes through the catalogs: ``N_`` marks it, ``Language.gettext`` says it)."""

from __future__ import annotations

from tokenbank import ledger
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
STATUS_NAMES = {
    "pending": N_("Pending"),
    "paid": N_("Paid"),
    "failed": N_("Failed"),
    "expired": N_("Expired"),
    "canceled": N_("Canceled"),
    "needs_review": N_("Under review"),
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
        if item.kind is ledger.TransferKind.BONUS:
            return lang.gettext("Bonus with %(package)s", package=name)
        return lang.gettext("Purchase of %(package)s", package=name)
    if "settles_debt" in meta:
        return lang.gettext("Tokens owed, collected from a purchase")
    if purchase is not None:
        # The first marker the metadata carries names what happened to the purchase.
        for marker, text in PURCHASE_EVENTS:
            if meta.get(marker):
                return lang.gettext(text, purchase=purchase)
    return item.description or ""


#: How the history names what happened to a purchase, by the metadata marker it carries.
PURCHASE_EVENTS = (
    ("refund_failed", N_("A refund failed: tokens returned (purchase #%(purchase)s)")),
    ("reversed", N_("Purchase reversed after review (#%(purchase)s)")),
    ("refund_id", N_("Payment refunded (purchase #%(purchase)s)")),
    ("dispute_id", N_("Payment disputed (purchase #%(purchase)s)")),
)


#: What the pages say for the domain errors a form can run into, by code (and field).
ERROR_TEXTS = {
    "invalid_credentials": N_("That email and password do not match an account."),
    "email_taken": N_("An account with this email already exists. Sign in instead."),
    "rate_limited": N_("Too many attempts. Try again in %(seconds)s seconds."),
    "unknown_package": N_("This package is not on sale any more."),
    "payment_provider_error": N_("The payment service refused the request."),
    "payment_provider_unavailable": N_(
        "The payment service did not answer. Try again in a moment."
    ),
    "database_unavailable": N_("tokenbank is unavailable for a moment. Try again shortly."),
    "purchase_closed": N_("This purchase has ended. Start a new one."),
    "payments_not_configured": N_("Payments are not configured on this server."),
    "validation_error:password": N_("The password must be %(min)s to %(max)s characters long."),
    "validation_error:new_password": N_("The password must be %(min)s to %(max)s characters long."),
    "validation_error:email": N_("Enter a valid email address."),
    "validation_error:name": N_("The name is too long."),
    "validation_error:amount": N_("Enter a whole number of tokens greater than zero."),
    "validation_error:description": N_("Give a reason of at most 500 characters."),
    "validation_error:reason": N_("Give a reason of at most 500 characters."),
    "validation_error:decision": N_("Choose one of the decisions offered."),
    "nothing_to_review": N_("This purchase was already decided."),
    "idempotency_conflict": N_("This form was already sent with other values. Reload the page."),
    "not_found": N_("There is no such user or record."),
    "payment_mismatch": N_("The payment does not match its purchase; it was not credited."),
    "webhook_failed": N_("The event could not be processed."),
    "validation_error:language": N_("Choose one of the languages offered."),
}


def error_text(lang: Language, exc: TokenbankError) -> str:
    """A domain error as a sentence in the page's language (English text as a fallback)."""
    key = exc.code
    if isinstance(exc, ledger.InvalidArgument):
        key = f"{exc.code}:{exc.field}"
    message = ERROR_TEXTS.get(key)
    if message is not None:
        return lang.gettext(
            message,
            seconds=getattr(exc, "retry_after", ""),
            min=MIN_LENGTH,
            max=MAX_LENGTH,
        )
    if isinstance(exc, ledger.InvalidArgument):
        field, _, detail = str(exc).partition(": ")
        return f"{field.replace('_', ' ').capitalize()} {detail}."
    text = str(exc)
    return text[:1].upper() + text[1:] + "."
