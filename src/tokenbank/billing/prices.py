"""The catalog in Stripe: one product per package and per plan, and their current prices by
lookup key (a package's one-time price; a plan's monthly and yearly recurring prices).

Stripe prices cannot change amount, so a new amount is a new price that takes over the
lookup key (``transfer_lookup_key``); the old one is archived. Syncing twice changes
nothing the second time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tokenbank.billing.catalog import Catalog, Package
from tokenbank.billing.plans import Interval, Plan
from tokenbank.errors import PaymentProviderError, PaymentProviderUnavailable
from tokenbank.payments.stripe import Price, Stripe

LOOKUP_PREFIX = "tokenbank_"


@dataclass(frozen=True, slots=True)
class SyncStep:
    #: What the step is about: a package's id, or ``plan:<id>`` (``plan:<id>/<interval>``
    #: for one of a plan's prices).
    item: str
    action: str  # "create product", "update product", "create price", "archive price", "ok"
    detail: str = ""
    product_id: str = ""
    lookup_key: str = ""


@dataclass(frozen=True, slots=True)
class _Offer:
    """One price the catalog wants in Stripe."""

    item: str
    lookup_key: str
    amount: int
    currency: str
    interval: str | None


@dataclass(frozen=True, slots=True)
class _Product:
    """One product the catalog wants in Stripe, with its prices."""

    item: str
    product_id: str
    name: str
    description: str
    active: bool
    metadata: dict[str, str]
    offers: tuple[_Offer, ...]


def product_id(package_id: str) -> str:
    return f"{LOOKUP_PREFIX}{package_id}"


def plan_product_id(plan_id: str) -> str:
    return f"{LOOKUP_PREFIX}plan_{plan_id}"


def _products(catalog: Catalog) -> list[_Product]:
    products = [
        _Product(
            item=package.id,
            product_id=product_id(package.id),
            name=package.localized_name("en"),
            description=package.summary(),
            active=package.active,
            metadata={"tokenbank_package_id": package.id},
            offers=(_Offer(package.id, package.lookup_key, package.price, package.currency, None),),
        )
        for package in catalog.packages
    ]
    products += [_plan_product(plan) for plan in catalog.plans]
    return products


def _plan_product(plan: Plan) -> _Product:
    return _Product(
        item=f"plan:{plan.id}",
        product_id=plan_product_id(plan.id),
        name=plan.localized_name("en"),
        description=plan.summary(),
        active=plan.active,
        metadata={"tokenbank_plan_id": plan.id},
        offers=tuple(
            _Offer(
                f"plan:{plan.id}/{interval.value}",
                plan.lookup_key(interval),
                plan.price(interval),
                plan.currency,
                interval.value,
            )
            for interval in Interval
        ),
    )


def plan_sync(stripe: Stripe, catalog: Catalog) -> list[SyncStep]:
    """What ``sync_catalog`` would do, reading Stripe only."""
    prices = {
        p.lookup_key: p
        for p in stripe.active_prices()
        if p.lookup_key and p.lookup_key.startswith(LOOKUP_PREFIX)
    }
    steps: list[SyncStep] = []
    for product in _products(catalog):
        steps.extend(_product_steps(stripe, product))
        for offer in product.offers:
            steps.extend(_price_steps(product, offer, prices.pop(offer.lookup_key, None)))
    retired: set[str] = set()
    for lookup_key, price in sorted(prices.items()):
        item = lookup_key.removeprefix(LOOKUP_PREFIX)
        steps.append(
            SyncStep(item, "archive price", f"{price.id} (not in the catalog)", price.product_id)
        )
        if price.product_id not in retired:
            retired.add(price.product_id)
            steps.append(SyncStep(item, "update product", "inactive", price.product_id))
    return steps


def _product_steps(stripe: Stripe, product: _Product) -> list[SyncStep]:
    found = stripe.product(product.product_id)
    if found is None:
        if product.active:
            return [SyncStep(product.item, "create product", product.name, product.product_id)]
        return []
    if (
        found.get("name") != product.name
        or found.get("description") != product.description
        or bool(found.get("active")) != product.active
    ):
        return [SyncStep(product.item, "update product", product.name, product.product_id)]
    return []


def _price_steps(product: _Product, offer: _Offer, price: Price | None) -> list[SyncStep]:
    steps = []
    current = (
        price is not None
        and price.unit_amount == offer.amount
        and price.currency == offer.currency
        and price.interval == offer.interval
    )
    if product.active and not current:
        every = f" every {offer.interval}" if offer.interval else ""
        steps.append(
            SyncStep(
                offer.item,
                "create price",
                f"{offer.amount} {offer.currency}{every}",
                product.product_id,
                offer.lookup_key,
            )
        )
    if price is not None and (not current or not product.active):
        steps.append(SyncStep(offer.item, "archive price", price.id, product.product_id))
    if not steps:
        steps.append(SyncStep(offer.item, "ok"))
    return steps


def sync_catalog(
    stripe: Stripe,
    catalog: Catalog,
    *,
    dry_run: bool = False,
    progress: Callable[[SyncStep], None] | None = None,
) -> list[SyncStep]:
    """Make Stripe's products and prices match the catalog; returns the steps taken."""
    steps = plan_sync(stripe, catalog)
    products = {p.product_id: p for p in _products(catalog)}
    offers = {o.lookup_key: o for p in products.values() for o in p.offers}
    for step in steps:
        if not dry_run:
            _apply(stripe, step, products.get(step.product_id), offers.get(step.lookup_key))
        if progress is not None:
            progress(step)
    return steps


def _apply(stripe: Stripe, step: SyncStep, product: _Product | None, offer: _Offer | None) -> None:
    if step.action == "create product":
        assert product is not None
        stripe.create_product(
            product_id=product.product_id,
            name=product.name,
            description=product.description,
            metadata=product.metadata,
        )
    elif step.action == "update product":
        stripe.update_product(
            step.product_id,
            name=product.name if product else step.item,
            description=product.description if product else None,
            active=bool(product and product.active),
        )
    elif step.action == "create price":
        assert offer is not None
        stripe.create_price(
            product_id=step.product_id,
            unit_amount=offer.amount,
            currency=offer.currency,
            lookup_key=offer.lookup_key,
            interval=offer.interval,
        )
    elif step.action == "archive price":
        stripe.archive_price(step.detail.split(" ", 1)[0])


class PriceBook:
    """The synced Stripe price of each package, looked up once and kept for a while.

    A checkout uses the synced price when its amount and currency match the catalog, so
    Stripe's dashboard shows sales by product; otherwise the price is sent inline.
    """

    def __init__(self, stripe: Stripe, catalog: Catalog, *, ttl_seconds: float = 600) -> None:
        self._stripe, self._catalog, self._ttl = stripe, catalog, ttl_seconds
        self._lock = threading.Lock()
        self._prices: dict[str, Price] = {}
        self._loaded_at = -float("inf")

    def price_id(self, package: Package) -> str | None:
        """Call from a worker thread: a refresh asks Stripe (outside the lock)."""
        return self._synced(package.lookup_key, package.price, package.currency)

    def plan_price_id(self, plan: Plan, interval: Interval) -> str | None:
        """The plan's synced recurring price for ``interval``, if it matches the catalog."""
        return self._synced(plan.lookup_key(interval), plan.price(interval), plan.currency)

    def _synced(self, lookup_key: str, amount: int, currency: str) -> str | None:
        with self._lock:
            fresh = time.monotonic() - self._loaded_at <= self._ttl
            prices = self._prices
        if not fresh:
            loaded_at = time.monotonic()
            try:
                prices = self._stripe.prices_by_lookup_key(
                    [p.lookup_key for p in self._catalog.packages]
                    + [p.lookup_key(i) for p in self._catalog.plans for i in Interval]
                )
            except PaymentProviderError:
                prices = {}
            except PaymentProviderUnavailable:
                prices, loaded_at = {}, self._loaded_at  # ask again next time
            with self._lock:
                self._prices, self._loaded_at = prices, loaded_at
        price = prices.get(lookup_key)
        if price and price.unit_amount == amount and price.currency == currency:
            return price.id
        return None
