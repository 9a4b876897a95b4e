"""Stripe's test cards: the numbers a person types and the ``pm_card_*`` tokens code sends.

Both map to one outcome, so the hosted page, Stripe.js stand-in and the API agree on what a
card does (is charged, is declined, or first asks its holder to authenticate). Unknown (even
Luhn-valid) numbers are refused like live cards in test mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, kw_only=True)
class TestCard:
    """One test card: how it looks on a charge and whether it is declined."""

    __test__ = False  # not a pytest test class

    number: str
    payment_method: str
    brand: str
    funding: str = "credit"
    country: str = "US"
    decline_code: str | None = None
    error_code: str = "card_declined"
    message: str = ""
    #: Refunds of its charges succeed, then fail a moment later (Stripe's 4000000000005126).
    refund_fails: bool = False
    #: Its bank asks the customer to authenticate (3D Secure) every one-time payment before
    #: it is charged (Stripe's 4000002500003155).
    authentication_required: bool = False

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def declined(self) -> bool:
        return self.decline_code is not None


CARDS: tuple[TestCard, ...] = (
    TestCard(number="4242424242424242", payment_method="pm_card_visa", brand="visa"),
    TestCard(number="5555555555554444", payment_method="pm_card_mastercard", brand="mastercard"),
    TestCard(number="378282246310005", payment_method="pm_card_amex", brand="amex"),
    TestCard(
        number="4000000000005126",
        payment_method="pm_card_refundFail",
        brand="visa",
        refund_fails=True,
    ),
    TestCard(
        number="4000002500003155",
        payment_method="pm_card_authenticationRequired",
        brand="visa",
        authentication_required=True,
    ),
    # Attaches to a customer, but every charge of it fails: the card for failed renewals.
    TestCard(
        number="4000000000000341",
        payment_method="pm_card_chargeCustomerFail",
        brand="visa",
        decline_code="generic_decline",
        message="Your card was declined.",
    ),
    TestCard(
        number="4000000000000002",
        payment_method="pm_card_chargeDeclined",
        brand="visa",
        decline_code="generic_decline",
        message="Your card was declined.",
    ),
    TestCard(
        number="4000000000009995",
        payment_method="pm_card_chargeDeclinedInsufficientFunds",
        brand="visa",
        decline_code="insufficient_funds",
        message="Your card has insufficient funds.",
    ),
    TestCard(
        number="4000000000009987",
        payment_method="pm_card_chargeDeclinedLostCard",
        brand="visa",
        decline_code="lost_card",
        message="Your card was declined.",
    ),
    TestCard(
        number="4000000000000069",
        payment_method="pm_card_chargeDeclinedExpiredCard",
        brand="visa",
        decline_code="expired_card",
        error_code="expired_card",
        message="Your card has expired.",
    ),
    TestCard(
        number="4000000000000127",
        payment_method="pm_card_chargeDeclinedIncorrectCvc",
        brand="visa",
        decline_code="incorrect_cvc",
        error_code="incorrect_cvc",
        message="Your card's security code is incorrect.",
    ),
)
BY_NUMBER = {card.number: card for card in CARDS}
BY_METHOD = {card.payment_method: card for card in CARDS}
UNKNOWN_CARD_MESSAGE = (
    "Your card was declined. Your request was in test mode, but used a non test card. "
    "Use one of Stripe's test cards, such as 4242 4242 4242 4242."
)


class CardInvalid(ValueError):
    """What a person typed is not a usable card; the message is shown next to the form."""


def luhn_valid(number: str) -> bool:
    """The checksum every real card number satisfies."""
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def read_card(*, number: str, expiry: str, cvc: str, now: datetime | None = None) -> TestCard:
    """Validate a typed card like Stripe's card form does and return its test card."""
    digits = re.sub(r"[\s-]", "", number or "")
    if not digits:
        raise CardInvalid("Your card number is incomplete.")
    if (
        not (digits.isascii() and digits.isdigit())
        or not 12 <= len(digits) <= 19
        or not luhn_valid(digits)
    ):
        raise CardInvalid("Your card number is invalid.")
    match = re.fullmatch(r"\s*(\d{1,2})\s*/?\s*(\d{2}|\d{4})\s*", expiry or "")
    if not match:
        raise CardInvalid("Your card's expiration date is incomplete.")
    month, year = int(match.group(1)), int(match.group(2))
    year = year + 2000 if year < 100 else year
    if not 1 <= month <= 12:
        raise CardInvalid("Your card's expiration date is invalid.")
    today = now or datetime.now(UTC)
    if (year, month) < (today.year, today.month):
        raise CardInvalid("Your card's expiration date is in the past.")
    if not (cvc or "").strip():
        raise CardInvalid("Your card's security code is incomplete.")
    if not re.fullmatch(r"\d{3,4}", cvc.strip()):
        raise CardInvalid("Your card's security code is invalid.")
    card = BY_NUMBER.get(digits)
    if card is None:
        raise CardInvalid(UNKNOWN_CARD_MESSAGE)
    return card
