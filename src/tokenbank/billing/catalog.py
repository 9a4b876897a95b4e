"""The catalog: the token packages and plans on sale, and the features tokens buy, read
from a TOML file chosen in settings (plans: ``billing/plans.py``).

Prices and tokens are decided here, on the server: a purchase copies them from the catalog
when it is created, and nothing a client or a Stripe event says can change them. So do
features: a spend of ``3 x image`` is priced from the catalog's ``[features.image]``, never
from a number the caller sends (``tokenbank.entitlements.price_feature``).
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenbank.billing.money import EXPONENTS, MINIMUM_CHARGE, to_major
from tokenbank.billing.plans import Interval, Plan, parse_plans
from tokenbank.errors import CatalogError
from tokenbank.ledger.inputs import MAX_AMOUNT

LOCALES = ("en", "zh-CN")
BADGES = ("popular", "best_value")
#: A price per token outside this band (in major units) is almost surely a typo.
PRICE_PER_TOKEN_BAND = (Decimal("0.00001"), Decimal("10"))
MAX_TOKENS = 10**9
#: An id (of a package or a feature): what a URL, a lookup key and a log line carry as is.
MAX_ID_LENGTH = 64
FEATURE_KEYS = frozenset({"name", "tokens"})

#: The longest a package's tokens may be made to last (100 years: "practically never").
MAX_VALID_DAYS = 36_500


@dataclass(frozen=True, slots=True)
class Package:
    id: str
    name: dict[str, str]
    features: dict[str, list[str]]
    tokens: int
    bonus_tokens: int
    price: int  # minor units of ``currency``
    currency: str
    badge: str | None
    active: bool
    #: Days its tokens stay usable after the purchase is paid; None: they never expire.
    expires_after_days: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.tokens + self.bonus_tokens

    @property
    def price_per_token(self) -> Decimal:
        """Major units per token, bonus included."""
        return to_major(self.price, self.currency) / self.total_tokens

    @property
    def lookup_key(self) -> str:
        """The Stripe price's lookup key: a new amount means a new price under the same key."""
        return f"tokenbank_{self.id}"

    def localized_name(self, locale: str) -> str:
        return self.name.get(locale) or self.name["en"]

    def summary(self, locale: str = "en") -> str:
        """What the package gives, for Stripe's product description (Checkout shows it
        under the name): "2,000 tokens + 200 bonus", "2,000 代币，另赠 200"."""
        if locale == "zh-CN":
            bonus = f"，另赠 {self.bonus_tokens:,}" if self.bonus_tokens else ""
            return f"{self.tokens:,} 代币{bonus}"
        bonus = f" + {self.bonus_tokens:,} bonus" if self.bonus_tokens else ""
        return f"{self.tokens:,} tokens{bonus}"

    def savings_against(self, base: Package) -> Decimal:
        """The fraction saved per token compared with ``base`` (0.18 is 18 %)."""
        return 1 - self.price_per_token / base.price_per_token


@dataclass(frozen=True, slots=True)
class Feature:
    """Something the app does that costs a fixed number of tokens per unit (an image, a chat
    message): callers spend ``{"feature": "image", "quantity": 3}`` and the server prices it."""

    id: str
    name: dict[str, str]
    #: Tokens per unit.
    tokens: int

    def localized_name(self, locale: str) -> str:
        return self.name.get(locale) or self.name["en"]


@dataclass(frozen=True, slots=True)
class Catalog:
    packages: tuple[Package, ...]
    currency: str
    source: str
    features: tuple[Feature, ...] = ()
    plans: tuple[Plan, ...] = ()

    def feature(self, feature_id: str) -> Feature | None:
        return next((f for f in self.features if f.id == feature_id), None)

    def feature_name(self, feature_id: str, locale: str) -> str:
        """How a history line names a feature: the catalog's name, or its id once the
        catalog no longer has it."""
        found = self.feature(feature_id)
        return found.localized_name(locale) if found else feature_id

    @property
    def on_sale(self) -> tuple[Package, ...]:
        return tuple(p for p in self.packages if p.active)

    @property
    def plans_on_sale(self) -> tuple[Plan, ...]:
        return tuple(p for p in self.plans if p.active)

    def plan(self, plan_id: str) -> Plan | None:
        return next((p for p in self.plans if p.id == plan_id), None)

    def plan_for_lookup_key(self, lookup_key: str | None) -> tuple[Plan, Interval] | None:
        """The plan and interval a synced Stripe price is for (the portal's plan switch
        names only a price)."""
        for plan in self.plans:
            for interval in Interval:
                if plan.lookup_key(interval) == lookup_key:
                    return plan, interval
        return None

    def find(self, package_id: str) -> Package | None:
        return next((p for p in self.packages if p.id == package_id), None)

    @property
    def base(self) -> Package | None:
        """The smallest package on sale: the yardstick for savings."""
        return min(self.on_sale, key=lambda p: p.total_tokens, default=None)


def load_catalog(path: Path) -> Catalog:
    """Read and validate a catalog; raises ``CatalogError`` listing every problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(str(path), ["file not found"]) from None
    except OSError as exc:  # a directory, no permission...
        raise CatalogError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_catalog(raw, source=str(path))


def features_catalog(path: Path) -> Catalog | None:
    """The catalog of a service that sells nothing (no Stripe key): its features still
    price spends. None when there is no such file (such a service needs none); an invalid
    one is a ``CatalogError``, as when selling."""
    if not path.is_file():
        return None
    return load_catalog(path)


def parse_catalog(raw: dict[str, Any], *, source: str) -> Catalog:
    problems: list[str] = []
    default_currency = raw.get("currency")
    entries = raw.get("packages")
    if not isinstance(entries, list) or not entries:
        raise CatalogError(source, ["no [[packages]]"])
    packages: list[Package] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"package {number}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a table")
            continue
        package_id = entry.get("id")
        if not is_catalog_id(package_id):
            problems.append(f"{where}: id must be 1-64 ASCII letters, digits, '-' or '_'")
            continue
        assert isinstance(package_id, str)
        where = f"package {package_id!r}"
        if package_id in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(package_id)
        found = _package(entry, package_id, default_currency, where, problems)
        if found is not None:
            packages.append(found)
    currencies = {p.currency for p in packages}
    if len(currencies) > 1:
        problems.append(f"packages use several currencies ({', '.join(sorted(currencies))})")
    if packages and not any(p.active for p in packages):
        problems.append("no package is active")
    features = _features(raw.get("features", {}), problems)
    plans = parse_plans(
        raw.get("plans"),
        currency=packages[0].currency if packages else _currency(default_currency),
        features=frozenset(f.id for f in features),
        badges=BADGES,
        is_id=is_catalog_id,
        locales=LOCALES,
        max_tokens=MAX_TOKENS,
        problems=problems,
    )
    keys = {p.lookup_key for p in packages}
    for plan in plans:
        for interval in Interval:
            if plan.lookup_key(interval) in keys:
                problems.append(f"plan {plan.id!r}: its Stripe lookup key is a package's")
    if problems:
        raise CatalogError(source, problems)
    return Catalog(
        packages=tuple(packages),
        currency=packages[0].currency,
        source=source,
        features=features,
        plans=plans,
    )


def _currency(value: object) -> str | None:
    """The catalog's ``currency``, when it is one Stripe knows."""
    return value.lower() if isinstance(value, str) and value.lower() in EXPONENTS else None


def is_catalog_id(value: object) -> bool:
    """1-64 ASCII letters, digits, '-' or '_': the shape of package and feature ids."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isascii()
        and value.replace("-", "").replace("_", "").isalnum()
    )


def _features(raw: object, problems: list[str]) -> tuple[Feature, ...]:
    """``[features.<id>]`` tables: ``name = {en = ..., zh-CN = ...}`` and ``tokens``, the
    price of one unit. A catalog without any is valid: spends then name amounts."""
    if not isinstance(raw, dict):
        problems.append("features must be tables: [features.<id>]")
        return ()
    features = []
    for feature_id, entry in raw.items():
        where = f"feature {feature_id!r}"
        if not is_catalog_id(feature_id):
            problems.append(f"{where}: id must be 1-64 ASCII letters, digits, '-' or '_'")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a table")
            continue
        before = len(problems)
        for unknown in sorted(set(entry) - FEATURE_KEYS):
            problems.append(f"{where}: unknown key {unknown!r} (a feature has name and tokens)")
        name = entry.get("name")
        if not isinstance(name, dict) or not all(
            isinstance(name.get(locale), str) and name[locale].strip() for locale in LOCALES
        ):
            problems.append(f"{where}: name needs text for each of {', '.join(LOCALES)}")
        tokens = entry.get("tokens")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            problems.append(f"{where}: tokens (per unit) must be a whole number >= 1")
        elif tokens > MAX_AMOUNT:
            problems.append(f"{where}: tokens (per unit) must be at most {MAX_AMOUNT}")
        if len(problems) > before:
            continue
        assert isinstance(name, dict) and isinstance(tokens, int)
        features.append(Feature(id=feature_id, name=dict(name), tokens=tokens))
    return tuple(features)


def _package(
    entry: dict[str, Any],
    package_id: str,
    default_currency: object,
    where: str,
    problems: list[str],
) -> Package | None:
    before = len(problems)
    tokens, bonus, price = entry.get("tokens"), entry.get("bonus_tokens", 0), entry.get("price")
    for field, value, minimum in (
        ("tokens", tokens, 1),
        ("bonus_tokens", bonus, 0),
        ("price", price, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(f"{where}: {field} must be a whole number >= {minimum}")
        elif field != "price" and value > MAX_TOKENS:
            problems.append(f"{where}: {field} must be at most {MAX_TOKENS}")
    asked = entry.get("currency", default_currency)
    currency = _currency(asked)
    if currency is None:
        problems.append(f"{where}: unknown currency {asked!r}")
    name = entry.get("name")
    if not isinstance(name, dict) or not all(
        isinstance(name.get(locale), str) and name[locale].strip() for locale in LOCALES
    ):
        problems.append(f"{where}: name needs text for each of {', '.join(LOCALES)}")
    features = entry.get("features", {})
    if not isinstance(features, dict) or not all(
        isinstance(v, list) and all(isinstance(i, str) for i in v) for v in features.values()
    ):
        problems.append(f"{where}: features must map each locale to a list of strings")
    badge = entry.get("badge")
    if badge is not None and badge not in BADGES:
        problems.append(f"{where}: badge must be one of {', '.join(BADGES)}")
    active = entry.get("active", True)
    if not isinstance(active, bool):
        problems.append(f"{where}: active must be true or false")
    days = _valid_days(entry.get("expires_after_days"), where, problems)
    if len(problems) > before:
        return None
    assert isinstance(tokens, int) and isinstance(price, int) and isinstance(bonus, int)
    assert currency is not None and isinstance(name, dict)
    package = Package(
        id=package_id,
        name=dict(name),
        features={k: list(v) for k, v in features.items()},
        tokens=tokens,
        bonus_tokens=bonus,
        price=price,
        currency=currency,
        badge=badge,
        active=active,
        expires_after_days=days,
    )
    low, high = PRICE_PER_TOKEN_BAND
    if not low <= package.price_per_token <= high:
        problems.append(
            f"{where}: {package.price_per_token:.6f} {currency.upper()} per token is outside"
            f" the sane band {low}-{high}"
        )
    if price < MINIMUM_CHARGE.get(currency, 0):
        problems.append(f"{where}: price is below Stripe's minimum charge")
    return package


def _valid_days(days: object, where: str, problems: list[str]) -> int | None:
    """A package's ``expires_after_days``: absent (its tokens never expire) or 1-36,500."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALID_DAYS:
        problems.append(f"{where}: expires_after_days must be a whole number, 1-{MAX_VALID_DAYS}")
        return None
    return days


def catalog_warnings(catalog: Catalog) -> list[str]:
    """Things that are allowed but probably unintended: a bigger package that costs more per
    token than a smaller one."""
    warnings = []
    ordered = sorted(catalog.on_sale, key=lambda p: p.total_tokens)
    for smaller, bigger in itertools.pairwise(ordered):
        if bigger.price_per_token > smaller.price_per_token:
            warnings.append(f"{bigger.id!r} costs more per token than the smaller {smaller.id!r}")
    return warnings
