"""Plans: what a subscription sells, read from the catalog's ``[plans.<id>]`` tables.

A plan grants an allowance of tokens each month (``tokens_per_month``), billed monthly or
yearly (a yearly price cheaper than twelve months), and says what becomes of the allowance
a month leaves unused: ``reset`` (it expires when the next month's is granted) or
``rollover`` (it stays, up to ``rollover_cap`` tokens carried over). A plan may instead, or
as well, make named features unlimited while it is active (``unlimited``), with an optional
fair-use cap of units per month for each. Like packages, plans are decided here, on the
server: a subscription copies its terms from the plan it was sold, never from a client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from tokenbank.billing.money import MINIMUM_CHARGE, to_major

#: The keys a ``[plans.<id>]`` table may have.
PLAN_KEYS = frozenset(
    {
        "name",
        "features",
        "tokens_per_month",
        "price_month",
        "price_year",
        "unused",
        "rollover_cap",
        "trial_days",
        "unlimited",
        "fair_use",
        "badge",
        "active",
    }
)
#: The longest trial Stripe takes (``subscription_data.trial_period_days``).
MAX_TRIAL_DAYS = 730


class Interval(StrEnum):
    """How often a subscription is billed; its allowance is granted monthly either way."""

    MONTH = "month"
    YEAR = "year"


class Unused(StrEnum):
    """What becomes of a month's allowance left unused when the next is granted."""

    RESET = "reset"
    ROLLOVER = "rollover"


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: dict[str, str]
    #: By locale: the lines the pricing page lists under the plan.
    features: dict[str, list[str]]
    #: The allowance granted each month (0 for a plan that only makes features unlimited).
    tokens_per_month: int
    #: By interval, in minor units of ``currency``.
    prices: dict[Interval, int]
    currency: str
    unused: Unused = Unused.RESET
    #: With ``rollover``: the most unused allowance carried into the next month.
    rollover_cap: int | None = None
    #: Days of Stripe trial before the first payment; None: none.
    trial_days: int | None = None
    #: Features that take no tokens while the plan is active, with the most units a month
    #: may use of each (None: no cap).
    unlimited: dict[str, int | None] | None = None
    badge: str | None = None
    active: bool = True

    def price(self, interval: Interval) -> int:
        return self.prices[interval]

    def lookup_key(self, interval: Interval) -> str:
        """The Stripe price's lookup key: a new amount means a new price under the same key."""
        return f"tokenbank_plan_{self.id}_{interval.value}"

    def localized_name(self, locale: str) -> str:
        return self.name.get(locale) or self.name["en"]

    def summary(self) -> str:
        """What the plan gives, for Stripe's product description (Checkout shows it under
        the name): "5,000 tokens every month", "Unlimited image; 2,000 tokens every month"."""
        parts = [f"Unlimited {name}" for name in self.unlimited or {}]
        if self.tokens_per_month:
            parts.append(f"{self.tokens_per_month:,} tokens every month")
        return "; ".join(parts)

    @property
    def yearly_savings(self) -> Decimal:
        """The fraction a year billed yearly saves against twelve months (0.17 is 17 %)."""
        return 1 - Decimal(self.prices[Interval.YEAR]) / (12 * self.prices[Interval.MONTH])

    def monthly_price_of_year(self) -> Decimal:
        """What a month costs when billed yearly, in major units (for "$24.17 / month")."""
        return to_major(self.prices[Interval.YEAR], self.currency) / 12


def parse_plans(
    raw: object,
    *,
    currency: str | None,
    features: frozenset[str],
    badges: tuple[str, ...],
    is_id: Callable[[object], bool],
    locales: tuple[str, ...],
    max_tokens: int,
    problems: list[str],
) -> tuple[Plan, ...]:
    """``[plans.<id>]`` tables; every problem is added to ``problems``. A catalog without
    plans is valid: it sells packages only."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.append("plans must be tables: [plans.<id>]")
        return ()
    plans = []
    for plan_id, entry in raw.items():
        where = f"plan {plan_id!r}"
        if not is_id(plan_id):
            problems.append(f"{where}: id must be 1-64 ASCII letters, digits, '-' or '_'")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a table")
            continue
        plan = _plan(
            entry,
            plan_id,
            where,
            currency=currency,
            features=features,
            badges=badges,
            locales=locales,
            max_tokens=max_tokens,
            problems=problems,
        )
        if plan is not None:
            plans.append(plan)
    return tuple(plans)


def _whole(value: object, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def _plan(
    entry: dict[str, Any],
    plan_id: str,
    where: str,
    *,
    currency: str | None,
    features: frozenset[str],
    badges: tuple[str, ...],
    locales: tuple[str, ...],
    max_tokens: int,
    problems: list[str],
) -> Plan | None:
    before = len(problems)
    for unknown in sorted(set(entry) - PLAN_KEYS):
        problems.append(f"{where}: unknown key {unknown!r}")
    name = entry.get("name")
    if not isinstance(name, dict) or not all(
        isinstance(name.get(locale), str) and name[locale].strip() for locale in locales
    ):
        problems.append(f"{where}: name needs text for each of {', '.join(locales)}")
    lines = entry.get("features", {})
    if not isinstance(lines, dict) or not all(
        isinstance(v, list) and all(isinstance(i, str) for i in v) for v in lines.values()
    ):
        problems.append(f"{where}: features must map each locale to a list of strings")
    tokens = _whole(entry.get("tokens_per_month", 0), 0, max_tokens)
    if tokens is None:
        problems.append(f"{where}: tokens_per_month must be a whole number, 0-{max_tokens}")
    prices = _prices(entry, where, currency, problems)
    unused, cap = _policy(entry, where, max_tokens, problems)
    trial_raw = entry.get("trial_days")
    trial = None if trial_raw is None else _whole(trial_raw, 1, MAX_TRIAL_DAYS)
    if trial_raw is not None and trial is None:
        problems.append(f"{where}: trial_days must be a whole number, 1-{MAX_TRIAL_DAYS}")
    unlimited = _unlimited(entry, where, features, problems)
    if tokens == 0 and not unlimited:
        problems.append(f"{where}: a plan grants tokens_per_month, or makes features unlimited")
    badge = entry.get("badge")
    if badge is not None and badge not in badges:
        problems.append(f"{where}: badge must be one of {', '.join(badges)}")
    active = entry.get("active", True)
    if not isinstance(active, bool):
        problems.append(f"{where}: active must be true or false")
    if currency is None:
        problems.append(f"{where}: the catalog needs a currency for its plans")
    if len(problems) > before:
        return None
    assert isinstance(name, dict) and isinstance(lines, dict)
    assert tokens is not None and unused is not None and currency is not None
    return Plan(
        id=plan_id,
        name=dict(name),
        features={k: list(v) for k, v in lines.items()},
        tokens_per_month=tokens,
        prices=prices,
        currency=currency,
        unused=unused,
        rollover_cap=cap,
        trial_days=trial,
        unlimited=unlimited or None,
        badge=badge,
        active=active,
    )


def _prices(
    entry: dict[str, Any], where: str, currency: str | None, problems: list[str]
) -> dict[Interval, int]:
    """``price_month`` and ``price_year``, a year cheaper than twelve months."""
    prices: dict[Interval, int] = {}
    for interval in Interval:
        field = f"price_{interval.value}"
        price = _whole(entry.get(field), 1, 10**11)
        if price is None:
            problems.append(f"{where}: {field} must be a whole number of minor units >= 1")
        elif currency is not None and price < MINIMUM_CHARGE.get(currency, 0):
            problems.append(f"{where}: {field} is below Stripe's minimum charge")
        else:
            prices[interval] = price
    if len(prices) == 2 and prices[Interval.YEAR] >= 12 * prices[Interval.MONTH]:
        problems.append(f"{where}: price_year must be less than 12 x price_month")
    return prices


def _policy(
    entry: dict[str, Any], where: str, max_tokens: int, problems: list[str]
) -> tuple[Unused | None, int | None]:
    """``unused`` and, for ``rollover``, its ``rollover_cap``."""
    unused_raw = entry.get("unused", Unused.RESET.value)
    unused = Unused(unused_raw) if unused_raw in tuple(Unused) else None
    if unused is None:
        problems.append(f"{where}: unused must be 'reset' or 'rollover'")
    cap_raw = entry.get("rollover_cap")
    cap = None
    if unused is Unused.ROLLOVER:
        cap = _whole(cap_raw, 1, max_tokens)
        if cap is None:
            problems.append(f"{where}: rollover needs rollover_cap, a whole number 1-{max_tokens}")
    elif cap_raw is not None:
        problems.append(f"{where}: rollover_cap is only for unused = 'rollover'")
    return unused, cap


def _unlimited(
    entry: dict[str, Any], where: str, features: frozenset[str], problems: list[str]
) -> dict[str, int | None]:
    """``unlimited = ["image"]`` and ``fair_use = {image = 500}``: the features the plan
    makes free while active, and each one's cap of units a month."""
    names = entry.get("unlimited", [])
    caps = entry.get("fair_use", {})
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"{where}: unlimited must be a list of feature ids")
        return {}
    if len(set(names)) != len(names):
        problems.append(f"{where}: unlimited names a feature twice")
    for unknown in sorted(set(names) - features):
        problems.append(f"{where}: unlimited names {unknown!r}, which [features] does not price")
    if not isinstance(caps, dict):
        problems.append(f"{where}: fair_use must be a table of feature = units per month")
        return {}
    for feature, cap in caps.items():
        if feature not in names:
            problems.append(f"{where}: fair_use caps {feature!r}, which is not unlimited")
        elif _whole(cap, 1, 10**9) is None:
            problems.append(f"{where}: fair_use for {feature!r} must be a whole number >= 1")
    return {name: caps.get(name) for name in names}
