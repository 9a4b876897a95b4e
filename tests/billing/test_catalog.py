"""The catalog file, its checks, and its sync to Stripe products and prices."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import stripe

from tests.stripe_emulator import SECRET_KEY, EmulatorServer, make_billing
from tokenbank import billing
from tokenbank.billing.catalog import Catalog, catalog_warnings, features_catalog, parse_catalog
from tokenbank.billing.plans import Interval, Unused
from tokenbank.ledger.inputs import MAX_AMOUNT

CATALOGS = Path("catalogs")


def _package(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "small",
        "tokens": 100,
        "bonus_tokens": 0,
        "price": 1000,
        "name": {"en": "Small", "zh-CN": "小"},
        **overrides,
    }


def test_the_shipped_catalogs_are_valid() -> None:
    usd = billing.load_catalog(CATALOGS / "default.toml")
    assert (usd.currency, len(usd.on_sale)) == ("usd", 4)
    bonuses = [p.bonus_tokens / p.tokens for p in usd.packages]
    assert bonuses == sorted(bonuses) and bonuses[-1] > 0  # growing bonus
    cny = billing.load_catalog(CATALOGS / "cny.toml")
    offered = [(p.price, p.tokens, p.bonus_tokens, p.badge) for p in cny.packages]
    assert offered == [
        (1000, 100, 0, None),
        (4500, 500, 50, "popular"),
        (8000, 1000, 200, None),
        (35000, 5000, 1500, "best_value"),
    ]
    assert catalog_warnings(usd) == catalog_warnings(cny) == []
    assert cny.base is not None
    assert round(cny.packages[1].savings_against(cny.base), 3) == Decimal("0.182")


@pytest.mark.parametrize(
    ("packages", "problem"),
    [
        ([_package(), _package()], "duplicate id"),
        ([_package(tokens=0)], "tokens must be a whole number >= 1"),
        ([_package(price=-5)], "price must be a whole number >= 1"),
        ([_package(bonus_tokens=1.5)], "bonus_tokens must be a whole number"),
        ([_package(currency="xyz")], "unknown currency"),
        ([_package(name={"en": "Small"})], "name needs text for each of en, zh-CN"),
        ([_package(badge="cheap")], "badge must be one of"),
        ([_package(price=10**9, tokens=1)], "outside the sane band"),
        ([_package(price=10, currency="usd")], "below Stripe's minimum charge"),
        ([_package(), _package(id="cny", currency="cny")], "several currencies"),
        ([_package(active=False)], "no package is active"),
        ([_package(id="has space")], "id must be"),
        ([_package(expires_after_days=0)], "expires_after_days must be a whole number"),
        ([_package(expires_after_days=36_501)], "expires_after_days must be a whole number"),
        ([_package(expires_after_days="30")], "expires_after_days must be a whole number"),
        ([], "no [[packages]]"),
    ],
)
def test_mistakes_are_reported(packages: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(billing.CatalogError) as caught:
        parse_catalog({"currency": "usd", "packages": packages}, source="test")
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_a_bigger_package_costing_more_per_token_is_a_warning() -> None:
    catalog = parse_catalog(
        {"currency": "usd", "packages": [_package(), _package(id="big", tokens=200, price=3000)]},
        source="test",
    )
    assert catalog_warnings(catalog) == ["'big' costs more per token than the smaller 'small'"]


def test_sync_creates_then_keeps_then_follows_changes(emulator_server: EmulatorServer) -> None:
    emulator_server.reset()
    seller = make_billing(emulator_server.url)
    catalog = seller.catalog
    assert {s.action for s in billing.sync_catalog(seller.stripe, catalog, dry_run=True)} == {
        "create product",
        "create price",
    }
    assert seller.stripe.active_prices() == []  # a dry run changes nothing
    first = billing.sync_catalog(seller.stripe, catalog)
    assert len([s for s in first if s.action == "create price"]) == 4 + 3 * 2  # plans: 2 each
    assert {s.action for s in billing.sync_catalog(seller.stripe, catalog)} == {"ok"}
    # What the package gives is the product's description: Checkout shows it under the name.
    product = seller.stripe.product("tokenbank_plus") or {}
    assert (product.get("name"), product.get("description")) == ("Plus", "2,000 tokens + 200 bonus")

    plus = catalog.find("plus")
    assert plus is not None
    changed = Catalog(
        packages=tuple(
            replace(p, price=2500) if p.id == "plus" else p
            for p in catalog.packages
            if p.id != "scale"
        ),
        currency="usd",
        source="test",
        plans=catalog.plans,
    )
    steps = {(s.item, s.action) for s in billing.sync_catalog(seller.stripe, changed)}
    assert ("plus", "create price") in steps and ("plus", "archive price") in steps
    assert ("scale", "archive price") in steps
    prices = {p.lookup_key: p for p in seller.stripe.active_prices()}
    assert prices[plus.lookup_key].unit_amount == 2500
    assert "tokenbank_scale" not in prices
    assert {s.action for s in billing.sync_catalog(seller.stripe, changed)} == {"ok"}
    # Checkout then uses the synced price of a package whose amount matches.
    book = billing.PriceBook(seller.stripe, changed)
    assert book.price_id(replace(plus, price=2500)) == prices[plus.lookup_key].id
    assert book.price_id(plus) is None  # the catalog says 2000: sent inline instead


def test_sync_gives_each_plan_a_monthly_and_a_yearly_price_and_follows_changes(
    emulator_server: EmulatorServer,
) -> None:
    emulator_server.reset()
    seller = make_billing(emulator_server.url)
    catalog = seller.catalog
    billing.sync_catalog(seller.stripe, catalog)
    prices = {p.lookup_key: p for p in seller.stripe.active_prices()}
    month, year = prices["tokenbank_plan_pro_month"], prices["tokenbank_plan_pro_year"]
    assert (month.unit_amount, month.interval, year.unit_amount, year.interval) == (
        2900,
        "month",
        29000,
        "year",
    )
    assert month.product_id == year.product_id == "tokenbank_plan_pro"
    product = seller.stripe.product("tokenbank_plan_studio") or {}
    assert (product.get("name"), product.get("description")) == (
        "Studio",
        "Unlimited image; 2,000 tokens every month",
    )
    assert prices["tokenbank_plus"].interval is None  # packages stay one-time

    pro = catalog.plan("pro")
    assert pro is not None
    dearer = replace(pro, prices={**pro.prices, Interval.YEAR: 27000})
    changed = replace(
        catalog,
        plans=tuple(dearer if p.id == "pro" else p for p in catalog.plans if p.id != "basic"),
    )
    steps = [(s.item, s.action) for s in billing.sync_catalog(seller.stripe, changed)]
    assert ("plan:pro/year", "create price") in steps
    assert ("plan:pro/year", "archive price") in steps
    assert ("plan:pro/month", "ok") in steps
    # The plan taken out: both its prices archived, its product made inactive once.
    assert steps.count(("plan_basic_month", "archive price")) == 1
    assert steps.count(("plan_basic_year", "archive price")) == 1
    assert len([s for s in steps if s[1] == "update product"]) == 1
    prices = {p.lookup_key: p for p in seller.stripe.active_prices()}
    assert prices["tokenbank_plan_pro_year"].unit_amount == 27000
    assert "tokenbank_plan_basic_month" not in prices
    assert (seller.stripe.product("tokenbank_plan_basic") or {}).get("active") is False
    assert {s.action for s in billing.sync_catalog(seller.stripe, changed)} == {"ok"}


def test_a_checkout_for_a_pack_refuses_a_recurring_price(emulator_server: EmulatorServer) -> None:
    """The emulator answers as Stripe does to a payment-mode session given a plan's price."""
    emulator_server.reset()
    seller = make_billing(emulator_server.url)
    billing.sync_catalog(seller.stripe, seller.catalog)
    price = seller.stripe.prices_by_lookup_key(["tokenbank_plan_pro_month"])
    sdk = stripe.StripeClient(SECRET_KEY, base_addresses={"api": emulator_server.url})
    with pytest.raises(stripe.InvalidRequestError, match="recurring price"):
        sdk.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "line_items": [{"price": price["tokenbank_plan_pro_month"].id, "quantity": 1}],
                "success_url": "https://tokens.example/ok",
            }
        )


def _feature(**overrides: Any) -> dict[str, Any]:
    return {"name": {"en": "Image", "zh-CN": "图片"}, "tokens": 40, **overrides}


def test_the_shipped_catalogs_price_features_in_both_languages() -> None:
    for name in ("default.toml", "cny.toml"):
        catalog = billing.load_catalog(CATALOGS / name)
        assert {f.id for f in catalog.features} >= {"image", "chat_message"}
        for feature in catalog.features:
            assert feature.tokens >= 1
            assert feature.localized_name("en") != feature.localized_name("zh-CN")
    usd = billing.load_catalog(CATALOGS / "default.toml")
    assert [(f.id, f.tokens) for f in usd.features][:2] == [("chat_message", 5), ("image", 40)]


def test_features_are_read_and_named_and_a_catalog_without_any_is_valid() -> None:
    bare = parse_catalog({"currency": "usd", "packages": [_package()]}, source="test")
    assert bare.features == () and bare.feature("image") is None
    catalog = parse_catalog(
        {
            "currency": "usd",
            "packages": [_package()],
            "features": {"image": _feature(), "chat-message_2": _feature(tokens=1)},
        },
        source="test",
    )
    image = catalog.feature("image")
    assert image is not None and image.tokens == 40
    assert (image.localized_name("zh-CN"), image.localized_name("fr")) == ("图片", "Image")
    assert catalog.feature_name("image", "zh-CN") == "图片"
    # A history line of a feature since taken out of the catalog is named by its id.
    assert catalog.feature_name("video", "en") == "video"


@pytest.mark.parametrize(
    ("features", "problem"),
    [
        ({"image": _feature(tokens=0)}, "tokens (per unit) must be a whole number >= 1"),
        ({"image": _feature(tokens=2.5)}, "tokens (per unit) must be a whole number >= 1"),
        ({"image": _feature(tokens=True)}, "tokens (per unit) must be a whole number >= 1"),
        ({"image": _feature(tokens=MAX_AMOUNT + 1)}, f"must be at most {MAX_AMOUNT}"),
        ({"image": {"name": {"en": "Image"}, "tokens": 1}}, "name needs text for each of"),
        ({"image": _feature(name={"en": "Image", "zh-CN": " "})}, "name needs text"),
        ({"image": _feature(price=40)}, "unknown key 'price'"),
        ({"has space": _feature()}, "id must be 1-64 ASCII letters"),
        ({"x" * 65: _feature()}, "id must be 1-64 ASCII letters"),
        ({"图片": _feature()}, "id must be 1-64 ASCII letters"),
        ({"image": 40}, "feature 'image': not a table"),
        ([_feature()], "features must be tables"),
    ],
)
def test_feature_mistakes_are_reported_with_the_packages(features: Any, problem: str) -> None:
    with pytest.raises(billing.CatalogError) as caught:
        parse_catalog(
            {"currency": "usd", "packages": [_package(tokens=0)], "features": features},
            source="test",
        )
    problems = caught.value.problems
    assert any(problem in p for p in problems), problems
    assert any("package 'small'" in p for p in problems)  # one report lists both


def test_a_service_that_sells_nothing_reads_the_catalog_for_its_features(tmp_path: Path) -> None:
    assert features_catalog(tmp_path / "absent.toml") is None
    catalog = features_catalog(CATALOGS / "default.toml")
    assert catalog is not None and catalog.feature("image") is not None
    broken = tmp_path / "broken.toml"
    broken.write_text('currency = "usd"\n[features.image]\ntokens = 1\n')
    with pytest.raises(billing.CatalogError):
        features_catalog(broken)


# --- plans ---------------------------------------------------------------------------------


def _plan(**overrides: Any) -> dict[str, Any]:
    return {
        "name": {"en": "Pro", "zh-CN": "专业版"},
        "tokens_per_month": 5000,
        "price_month": 2900,
        "price_year": 29000,
        **overrides,
    }


def _with_plans(plans: Any, **extra: Any) -> Catalog:
    return parse_catalog(
        {
            "currency": "usd",
            "packages": [_package()],
            "features": {"image": _feature()},
            "plans": plans,
            **extra,
        },
        source="test",
    )


def test_the_shipped_catalogs_sell_plans_monthly_and_yearly_in_both_languages() -> None:
    for name in ("default.toml", "cny.toml"):
        catalog = billing.load_catalog(CATALOGS / name)
        assert len(catalog.plans_on_sale) == 3
        for plan in catalog.plans:
            assert plan.currency == catalog.currency
            assert plan.price(Interval.YEAR) < 12 * plan.price(Interval.MONTH)
            assert plan.localized_name("en") != plan.localized_name("zh-CN")
            assert plan.features["en"] and plan.features["zh-CN"]
        policies = {(p.unused, p.rollover_cap is not None) for p in catalog.plans}
        assert policies == {(Unused.RESET, False), (Unused.ROLLOVER, True)}
        assert any(p.trial_days for p in catalog.plans)
        assert any(p.unlimited for p in catalog.plans)
    usd = billing.load_catalog(CATALOGS / "default.toml")
    pro = usd.plan("pro")
    assert pro is not None
    assert (pro.tokens_per_month, pro.rollover_cap, pro.trial_days) == (5000, 5000, 7)
    assert pro.lookup_key(Interval.YEAR) == "tokenbank_plan_pro_year"
    assert round(pro.yearly_savings, 2) == Decimal("0.17")
    studio = usd.plan("studio")
    assert studio is not None and studio.unlimited == {"image": 1000}


def test_a_catalog_without_plans_sells_packages_only() -> None:
    bare = parse_catalog({"currency": "usd", "packages": [_package()]}, source="test")
    assert bare.plans == () and bare.plan("pro") is None


def test_plans_are_read_with_their_defaults() -> None:
    catalog = _with_plans(
        {
            "basic": _plan(),
            "unlimited": _plan(tokens_per_month=0, unlimited=["image"], active=False),
            "capped": _plan(unlimited=["image"], fair_use={"image": 300}),
        }
    )
    basic = catalog.plan("basic")
    assert basic is not None
    assert (basic.unused, basic.rollover_cap, basic.trial_days, basic.unlimited) == (
        Unused.RESET,
        None,
        None,
        None,
    )
    assert basic.prices == {Interval.MONTH: 2900, Interval.YEAR: 29000}
    assert [p.id for p in catalog.plans_on_sale] == ["basic", "capped"]
    assert catalog.plan("unlimited") is not None
    assert catalog.plan("unlimited").unlimited == {"image": None}  # type: ignore[union-attr]
    assert catalog.plan("capped").unlimited == {"image": 300}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("plans", "problem"),
    [
        ({"pro": _plan(price_year=34800)}, "price_year must be less than 12 x price_month"),
        ({"pro": _plan(price_year=40000)}, "price_year must be less than 12 x price_month"),
        ({"pro": _plan(price_month=0)}, "price_month must be a whole number"),
        ({"pro": _plan(price_year=None)}, "price_year must be a whole number"),
        ({"pro": _plan(price_month=10, price_year=100)}, "below Stripe's minimum charge"),
        ({"pro": _plan(tokens_per_month=-1)}, "tokens_per_month must be a whole number"),
        ({"pro": _plan(tokens_per_month=2.5)}, "tokens_per_month must be a whole number"),
        ({"pro": _plan(tokens_per_month=0)}, "grants tokens_per_month, or makes features"),
        ({"pro": _plan(unused="keep")}, "unused must be 'reset' or 'rollover'"),
        ({"pro": _plan(unused="rollover")}, "rollover needs rollover_cap"),
        ({"pro": _plan(unused="rollover", rollover_cap=0)}, "rollover needs rollover_cap"),
        ({"pro": _plan(rollover_cap=100)}, "rollover_cap is only for unused = 'rollover'"),
        ({"pro": _plan(trial_days=0)}, "trial_days must be a whole number, 1-730"),
        ({"pro": _plan(trial_days=731)}, "trial_days must be a whole number, 1-730"),
        ({"pro": _plan(unlimited=["video"])}, "unlimited names 'video', which [features]"),
        ({"pro": _plan(unlimited="image")}, "unlimited must be a list of feature ids"),
        ({"pro": _plan(unlimited=["image", "image"])}, "unlimited names a feature twice"),
        ({"pro": _plan(fair_use={"image": 5})}, "fair_use caps 'image', which is not unlimited"),
        (
            {"pro": _plan(unlimited=["image"], fair_use={"image": 0})},
            "fair_use for 'image' must be a whole number >= 1",
        ),
        ({"pro": _plan(name={"en": "Pro"})}, "name needs text for each of en, zh-CN"),
        ({"pro": _plan(features=["x"])}, "features must map each locale"),
        ({"pro": _plan(badge="cheap")}, "badge must be one of"),
        ({"pro": _plan(active="yes")}, "active must be true or false"),
        ({"pro": _plan(tokens=5000)}, "unknown key 'tokens'"),
        ({"has space": _plan()}, "id must be 1-64 ASCII letters"),
        ({"pro": 5}, "plan 'pro': not a table"),
        ([_plan()], "plans must be tables"),
    ],
)
def test_plan_mistakes_are_reported_with_the_packages(plans: Any, problem: str) -> None:
    with pytest.raises(billing.CatalogError) as caught:
        parse_catalog(
            {
                "currency": "usd",
                "packages": [_package(tokens=0)],
                "features": {"image": _feature()},
                "plans": plans,
            },
            source="test",
        )
    problems = caught.value.problems
    assert any(problem in p for p in problems), problems
    assert any("package 'small'" in p for p in problems)  # one report lists both


def test_a_plan_cannot_take_a_packages_stripe_lookup_key() -> None:
    with pytest.raises(billing.CatalogError) as caught:
        parse_catalog(
            {
                "currency": "usd",
                "packages": [_package(id="plan_pro_month")],
                "plans": {"pro": _plan()},
            },
            source="test",
        )
    assert any("lookup key is a package's" in p for p in caught.value.problems)
