"""What a feature costs, and whether a user can afford it.

A caller that spends ``{"feature": "image", "quantity": 3}`` never names a price: the
amount is computed here from the catalog, so a client cannot decide what its users pay.

A plan can make a feature unlimited (``billing.coverage``): its use then costs nothing
while the plan covers it, and ``check`` says so (``covered``).

``check`` answers "could this user do that now?" without changing anything: it is advice
for a page (grey out a button, show what is missing). The answer can be stale the moment
it is given; the hold or the spend that follows is the gate, and each is atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.billing.catalog import Catalog
from tokenbank.billing.coverage import coverage
from tokenbank.errors import InvalidArgument, UnknownFeature
from tokenbank.ledger.inputs import MAX_AMOUNT, check_amount

#: The most units one spend, hold or check may name: far above any real request, and small
#: enough that a typo is refused rather than priced.
MAX_QUANTITY = 1_000_000


def price_feature(catalog: Catalog | None, feature: str, quantity: int) -> int:
    """The tokens ``quantity`` units of ``feature`` cost, from the catalog.

    A feature the catalog does not price (or no catalog at all) is ``UnknownFeature``; a
    quantity that is not a whole number from 1 to ``MAX_QUANTITY``, or that would cost more
    than one operation may move, is ``InvalidArgument`` on ``quantity``.
    """
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidArgument("quantity", "must be a whole number")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidArgument("quantity", f"must be between 1 and {MAX_QUANTITY}")
    found = catalog.feature(feature) if catalog is not None else None
    if found is None:
        raise UnknownFeature(feature)
    amount = found.tokens * quantity
    if amount > MAX_AMOUNT:
        raise InvalidArgument(
            "quantity", f"{quantity} x {feature} costs more than {MAX_AMOUNT} tokens"
        )
    return amount


def cost_of(
    catalog: Catalog | None,
    *,
    amount: int | None = None,
    feature: str | None = None,
    quantity: int | None = None,
) -> int:
    """What a spend, hold or check costs: its ``amount``, or its ``feature`` priced for
    ``quantity`` units (1 when not given). Exactly one of the two: a caller that names a
    feature cannot also name its price."""
    if (feature is None) == (amount is None):
        raise InvalidArgument("feature", "name either a feature (and a quantity) or an amount")
    if feature is not None:
        return price_feature(catalog, feature, 1 if quantity is None else quantity)
    if quantity is not None:
        raise InvalidArgument("quantity", "goes with a feature; with an amount, leave it out")
    return check_amount(amount)


@dataclass(frozen=True, slots=True)
class Entitlement:
    """The answer of ``check``: whether ``cost`` tokens can be spent from ``available``."""

    allowed: bool
    cost: int
    available: int
    #: How many tokens are missing (0 when allowed).
    short_by: int
    #: The tokens that expire first, if any do: worth saying before a user buys more.
    expires_soonest: ledger.Expiring | None
    #: Where the user can buy more.
    buy_url: str
    #: The user's plan covers this use of an unlimited feature: it costs no tokens.
    covered: bool = False
    #: Units the plan still covers this month after this use (None: no cap, or not covered).
    covered_left: int | None = None


def check(
    conn: Connection,
    *,
    catalog: Catalog | None,
    user_id: str,
    buy_url: str,
    amount: int | None = None,
    feature: str | None = None,
    quantity: int | None = None,
    now: datetime | None = None,
) -> Entitlement:
    """Whether ``user_id`` can spend ``amount`` tokens, or ``quantity`` units of
    ``feature``, now. Reads only: run it in ``db.read()``. An unknown user is
    ``UnknownUser``, as for a balance."""
    cost = cost_of(catalog, amount=amount, feature=feature, quantity=quantity)
    balance = ledger.balance(conn, user_id=user_id, now=now)
    plan = (
        coverage(
            conn,
            catalog,
            user_id=user_id,
            feature=feature,
            quantity=1 if quantity is None else quantity,
            now=now,
        )
        if feature is not None
        else None
    )
    if plan is not None:
        return Entitlement(
            allowed=True,
            cost=0,
            available=balance.available,
            short_by=0,
            expires_soonest=balance.expiring[0] if balance.expiring else None,
            buy_url=buy_url,
            covered=True,
            covered_left=plan.left,
        )
    return Entitlement(
        allowed=cost <= balance.available,
        cost=cost,
        available=balance.available,
        short_by=max(0, cost - balance.available),
        expires_soonest=balance.expiring[0] if balance.expiring else None,
        buy_url=buy_url,
    )
