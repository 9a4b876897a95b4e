"""The catalog in Stripe: one product per package, and its current price by lookup key.

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
from tokenbank.errors import PaymentProviderError, PaymentProviderUnavailable
from tokenbank.payments.stripe import Price, Stripe

LOOKUP_PREFIX = "tokenbank_"


@dataclass(frozen=True, slots=True)
class SyncStep:
    package_id: str
    action: str  # "create product", "update product", "create price", "archive price", "ok"
    detail: str = ""


def product_id(package_id: str) -> str:
    return f"{LOOKUP_PREFIX}{package_id}"


def plan_sync(stripe: Stripe, catalog: Catalog) -> list[SyncStep]:
    """What ``sync_catalog`` would do, reading Stripe only."""
    prices = {
        p.lookup_key: p
        for p in stripe.active_prices()
        if p.lookup_key and p.lookup_key.startswith(LOOKUP_PREFIX)
    }
    steps: list[SyncStep] = []
    for package in catalog.packages:
        steps.extend(_package_steps(stripe, package, prices.pop(package.lookup_key, None)))
    for lookup_key, price in sorted(prices.items()):
        package_id = lookup_key.removeprefix(LOOKUP_PREFIX)
        steps.append(SyncStep(package_id, "archive price", f"{price.id} (not in the catalog)"))
        steps.append(SyncStep(package_id, "update product", "inactive"))
    return steps


def _package_steps(stripe: Stripe, package: Package, price: Price | None) -> list[SyncStep]:
    steps = []
    product = stripe.product(product_id(package.id))
    name = package.localized_name("en")
    if product is None:
        if package.active:
            steps.append(SyncStep(package.id, "create product", name))
    elif (
        product.get("name") != name
        or product.get("description") != package.summary()
        or bool(product.get("active")) != package.active
    ):
        steps.append(SyncStep(package.id, "update product", name))
    current = (
        price is not None
        and price.unit_amount == package.price
        and price.currency == package.currency
    )
    if package.active and not current:
        steps.append(SyncStep(package.id, "create price", f"{package.price} {package.currency}"))
    if price is not None and (not current or not package.active):
        steps.append(SyncStep(package.id, "archive price", price.id))
    if not steps:
        steps.append(SyncStep(package.id, "ok"))
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
    for step in steps:
        if not dry_run:
            _apply(stripe, catalog, step)
        if progress is not None:
            progress(step)
    return steps


def _apply(stripe: Stripe, catalog: Catalog, step: SyncStep) -> None:
    package = catalog.find(step.package_id)
    name = package.localized_name("en") if package else step.package_id
    active = bool(package and package.active)
    if step.action == "create product":
        assert package is not None
        stripe.create_product(
            product_id=product_id(step.package_id),
            name=name,
            description=package.summary(),
            metadata={"tokenbank_package_id": step.package_id},
        )
    elif step.action == "update product":
        stripe.update_product(
            product_id(step.package_id),
            name=name,
            description=package.summary() if package else None,
            active=active,
        )
    elif step.action == "create price":
        assert package is not None
        stripe.create_price(
            product_id=product_id(package.id),
            unit_amount=package.price,
            currency=package.currency,
            lookup_key=package.lookup_key,
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
        with self._lock:
            fresh = time.monotonic() - self._loaded_at <= self._ttl
            prices = self._prices
        if not fresh:
            loaded_at = time.monotonic()
            try:
                prices = self._stripe.prices_by_lookup_key(
                    [p.lookup_key for p in self._catalog.packages]
                )
            except PaymentProviderError:
                prices = {}
            except PaymentProviderUnavailable:
                prices, loaded_at = {}, self._loaded_at  # ask again next time
            with self._lock:
                self._prices, self._loaded_at = prices, loaded_at
        price = prices.get(package.lookup_key)
        if price and price.unit_amount == package.price and price.currency == package.currency:
            return price.id
        return None
