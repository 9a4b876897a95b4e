"""The catalog, customers, keys, idempotency, lists and the form decoder, through the SDK."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import stripe
from stripe.params import CustomerCreateParams

from tests.emulator.conftest import Harness, plain
from tokenbank.emulator.forms import FormError, decode_form


def test_form_decoding_nests_like_stripe() -> None:
    params = decode_form(
        "metadata[purchase_id]=7&line_items[0][price_data][product_data][name]=Starter"
        "&line_items[0][quantity]=2&line_items[1][price]=price_x&expand[0]=payment_intent"
        "&lookup_keys[]=a&lookup_keys[]=b&created[gte]=1700000000&active=true&empty="
    )
    assert params == {
        "metadata": {"purchase_id": "7"},
        "line_items": [
            {"price_data": {"product_data": {"name": "Starter"}}, "quantity": "2"},
            {"price": "price_x"},
        ],
        "expand": ["payment_intent"],
        "lookup_keys": ["a", "b"],
        "created": {"gte": "1700000000"},
        "active": "true",
        "empty": "",
    }
    assert decode_form("items[10]=k&items[2]=c") == {"items": ["c", "k"]}
    with pytest.raises(FormError):
        decode_form("a=1&a[b]=2")


def test_recurring_prices_bill_monthly_or_yearly(emu: Harness) -> None:
    client = emu.client
    product = client.v1.products.create({"id": "plan_pro", "name": "Pro"})
    monthly = client.v1.prices.create(
        {
            "product": product.id,
            "unit_amount": 2900,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    assert monthly.type == "recurring"
    assert plain(monthly.recurring) == {
        "interval": "month",
        "interval_count": 1,
        "meter": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }
    yearly = client.v1.prices.create(
        {
            "product": product.id,
            "unit_amount": 29000,
            "currency": "usd",
            "recurring": {"interval": "year", "interval_count": 1, "usage_type": "licensed"},
        }
    )
    assert yearly.recurring is not None and yearly.recurring.interval == "year"
    listed = client.v1.prices.list({"type": "recurring"})
    assert {p.id for p in listed.data} == {monthly.id, yearly.id}


@pytest.mark.parametrize(
    "recurring",
    [
        {"interval": "fortnight"},
        {"interval_count": 1},
        {"interval": "week"},
        {"interval": "month", "interval_count": 3},
        {"interval": "month", "usage_type": "metered"},
        {"interval": "month", "meter": "mtr_1"},
    ],
)
def test_a_recurring_price_the_emulator_cannot_bill_is_refused(
    emu: Harness, recurring: dict[str, Any]
) -> None:
    product = emu.client.v1.products.create({"name": "Pro"})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        emu.client.v1.prices.create(
            {
                "product": product.id,
                "unit_amount": 2900,
                "currency": "usd",
                "recurring": recurring,  # type: ignore[typeddict-item]
            }
        )
    assert (refused.value.param or "").startswith("recurring")


def test_products_and_prices_with_lookup_key_transfer_and_archive(emu: Harness) -> None:
    client = emu.client
    product = client.v1.products.create(
        {"id": "tokens_starter", "name": "Starter", "metadata": {"tokens": "1000"}}
    )
    assert (product.id, product.object, product.active) == ("tokens_starter", "product", True)
    assert plain(product.metadata) == {"tokens": "1000"}
    with pytest.raises(stripe.InvalidRequestError) as taken:
        client.v1.products.create({"id": "tokens_starter", "name": "Again"})
    assert taken.value.code == "resource_already_exists"

    first = client.v1.prices.create(
        {"product": product.id, "unit_amount": 2000, "currency": "usd", "lookup_key": "starter"}
    )
    assert first.id.startswith("price_") and len(first.id) == 30
    assert (first.unit_amount, first.currency, first.type, first.lookup_key) == (
        2000,
        "usd",
        "one_time",
        "starter",
    )
    with pytest.raises(stripe.InvalidRequestError) as used:
        client.v1.prices.create(
            {"product": product.id, "unit_amount": 2500, "currency": "usd", "lookup_key": "starter"}
        )
    assert used.value.param == "lookup_key"
    second = client.v1.prices.create(
        {
            "product": product.id,
            "unit_amount": 2500,
            "currency": "usd",
            "lookup_key": "starter",
            "transfer_lookup_key": True,
            "nickname": "Starter v2",
        }
    )
    assert client.v1.prices.retrieve(first.id).lookup_key is None
    found = client.v1.prices.list({"lookup_keys": ["starter"], "active": True})
    assert [p.id for p in found.data] == [second.id]

    archived = client.v1.prices.update(first.id, {"active": False, "metadata": {"old": "yes"}})
    assert archived.active is False and plain(archived.metadata) == {"old": "yes"}
    assert [p.id for p in client.v1.prices.list({"active": True}).data] == [second.id]
    assert [p.id for p in client.v1.prices.list({"product": product.id}).data] == [
        second.id,
        first.id,
    ]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.update(second.id, cast(Any, {"unit_amount": 1}))

    renamed = client.v1.products.update(
        product.id, {"name": "Starter pack", "active": False, "metadata": {"tokens": ""}}
    )
    assert (renamed.name, renamed.active, plain(renamed.metadata)) == ("Starter pack", False, {})
    assert client.v1.products.list({"active": True}).data == []
    assert [p.id for p in client.v1.products.list().data] == [product.id]

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.prices.retrieve("price_missing")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


def test_customers(emu: Harness) -> None:
    customer = emu.client.v1.customers.create(
        {"email": "alice@example.com", "name": "Alice", "metadata": {"user_id": "alice"}}
    )
    assert customer.id.startswith("cus_") and customer.email == "alice@example.com"
    updated = emu.client.v1.customers.update(customer.id, {"name": "Alice B."})
    assert updated.name == "Alice B." and plain(updated.metadata) == {"user_id": "alice"}
    assert emu.client.v1.customers.retrieve(customer.id).name == "Alice B."


def test_keys_are_checked(emu: Harness) -> None:
    wrong = stripe.StripeClient("sk_live_real", base_addresses={"api": emu.url})
    with pytest.raises(stripe.AuthenticationError):
        wrong.v1.products.list()
    publishable = stripe.StripeClient("pk_test_browser", base_addresses={"api": emu.url})
    with pytest.raises(stripe.AuthenticationError):
        publishable.v1.products.list()
    response = emu.http.get("/v1/products")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"

    emu.emulator.api_key = "sk_test_the_one"
    with pytest.raises(stripe.AuthenticationError):
        emu.client.v1.products.list()
    right = stripe.StripeClient("sk_test_the_one", base_addresses={"api": emu.url})
    assert right.v1.products.list().data == []


def test_idempotency_key_replays_and_rejects_other_params(emu: Harness) -> None:
    params: CustomerCreateParams = {"email": "bob@example.com"}
    first = emu.client.v1.customers.create(params, {"idempotency_key": "signup-bob"})
    again = emu.client.v1.customers.create(params, {"idempotency_key": "signup-bob"})
    assert first.id == again.id
    assert len(emu.client.v1.customers.list().data) == 1
    with pytest.raises(stripe.IdempotencyError):
        emu.client.v1.customers.create(
            {"email": "carol@example.com"}, {"idempotency_key": "signup-bob"}
        )
    with pytest.raises(stripe.IdempotencyError):
        emu.client.v1.products.create({"name": "X"}, {"idempotency_key": "signup-bob"})

    headers = {"Authorization": "Bearer sk_test_x", "Idempotency-Key": "raw-1"}
    one = emu.http.post("/v1/customers", data={"email": "d@example.com"}, headers=headers)
    two = emu.http.post("/v1/customers", data={"email": "d@example.com"}, headers=headers)
    assert one.json() == two.json()
    assert two.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in one.headers
    assert one.headers["Request-Id"].startswith("req_")


def test_lists_paginate_newest_first_with_created_filters(emu: Harness) -> None:
    created = [emu.client.v1.customers.create({"email": f"u{i}@example.com"}) for i in range(23)]
    newest_first = [c.id for c in reversed(created)]
    page = emu.client.v1.customers.list({"limit": 10})
    assert page.has_more is True and [c.id for c in page.data] == newest_first[:10]
    assert page.url == "/v1/customers"
    assert [c.id for c in page.auto_paging_iter()] == newest_first
    tail = emu.client.v1.customers.list({"limit": 5, "starting_after": newest_first[19]})
    assert [c.id for c in tail.data] == newest_first[20:] and tail.has_more is False
    before = emu.client.v1.customers.list({"limit": 3, "ending_before": newest_first[5]})
    assert [c.id for c in before.data] == newest_first[2:5] and before.has_more is True

    now = int(time.time())
    assert (
        len(emu.client.v1.customers.list({"created": {"gte": now - 60}, "limit": 100}).data) == 23
    )
    assert emu.client.v1.customers.list({"created": {"gt": now + 60}}).data == []
    with pytest.raises(stripe.InvalidRequestError):
        emu.client.v1.customers.list({"limit": 101})


def test_unknown_urls_answer_like_stripe(emu: Harness) -> None:
    response = emu.http.get("/v1/quotes", headers={"Authorization": "Bearer sk_test_x"})
    assert response.status_code == 404
    assert "Unrecognized request URL" in response.json()["error"]["message"]
    assert emu.http.get("/_emulator/health").json() == {"ok": True}


def test_public_url_is_used_for_hosted_pages(emu: Harness) -> None:
    emu.emulator.public_url = "https://pay.example.test"
    price = emu.client.v1.prices.create(
        {"product_data": {"name": "Pack"}, "unit_amount": 500, "currency": "eur"}
    )
    session = emu.client.v1.checkout.sessions.create(
        {"mode": "payment", "line_items": [{"price": price.id, "quantity": 1}]}
    )
    assert session.url == f"https://pay.example.test/checkout/{session.id}"
    assert session.id.startswith("cs_test_") and len(session.id) == 66
