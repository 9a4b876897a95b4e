"""Currencies as Stripe counts them: amounts are integers in the currency's minor unit.

Stripe's own exponent rules, not ISO 4217's (Babel's) where the two differ: ISK and the
three-decimal currencies are special cases at Stripe (https://docs.stripe.com/currencies).
"""

from __future__ import annotations

from decimal import Decimal

#: Decimal places of the minor unit for the currencies a catalog may use.
EXPONENTS: dict[str, int] = {
    "usd": 2, "eur": 2, "gbp": 2, "cny": 2, "hkd": 2, "sgd": 2, "aud": 2, "cad": 2, "nzd": 2,
    "chf": 2, "sek": 2, "nok": 2, "dkk": 2, "pln": 2, "czk": 2, "inr": 2, "brl": 2, "mxn": 2,
    "twd": 2, "thb": 2, "myr": 2, "php": 2, "idr": 2, "zar": 2, "aed": 2, "isk": 2,
    "jpy": 0, "krw": 0, "vnd": 0, "clp": 0, "pyg": 0, "ugx": 0, "xaf": 0, "xof": 0,
}  # fmt: skip

#: Stripe's minimum charge per currency, in minor units, where it is published.
MINIMUM_CHARGE: dict[str, int] = {
    "usd": 50, "eur": 50, "gbp": 30, "aud": 50, "cad": 50, "chf": 50, "jpy": 50, "sgd": 50,
    "hkd": 400, "nzd": 50, "sek": 300, "nok": 300, "dkk": 250, "mxn": 1000, "inr": 50,
}  # fmt: skip

SYMBOLS = {"usd": "$", "cny": "¥", "eur": "€", "gbp": "£", "jpy": "¥"}


def to_major(amount: int, currency: str) -> Decimal:
    """``1999`` USD cents as ``Decimal("19.99")``: for display and ratios, never for storage."""
    return Decimal(amount).scaleb(-EXPONENTS[currency])


def format_amount(amount: int, currency: str) -> str:
    """A plain rendering (``$19.99``, ``¥45.00``), the same in every locale."""
    digits = EXPONENTS[currency]
    major = f"{to_major(amount, currency):,.{digits}f}"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{major}" if symbol else f"{major} {currency.upper()}"
