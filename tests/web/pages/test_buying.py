"""Buying tokens on tokenbank's own pages: pricing, Checkout, the embedded card form, and the
pages a buyer comes back to."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.stripe_emulator import EmulatorServer, make_billing
from tests.web.browsing import form_token, new_user, signed_in_user
from tests.web.conftest import PASSWORDS, SETTINGS
from tokenbank.billing import PurchaseFlow
from tokenbank.db import Database
from tokenbank.web.app import create_app


def _browser(db: Database, emulator: EmulatorServer, flow: PurchaseFlow) -> TestClient:
    emulator.reset()
    app = create_app(
        SETTINGS, db=db, passwords=PASSWORDS, seller=make_billing(emulator.url, flow=flow)
    )
    return TestClient(app, base_url="https://tokens.example")


@pytest.fixture
def browser(db: Database, emulator_server: EmulatorServer) -> Iterator[TestClient]:
    with _browser(db, emulator_server, PurchaseFlow.CHECKOUT) as client:
        yield client


def test_pricing_shows_every_package_to_anyone(browser: TestClient) -> None:
    page = browser.get("/pricing")
    assert page.status_code == 200
    for text in ("Starter", "$5.00", "Plus", "$20.00", "+ 200 bonus", "Most popular", "Best value"):
        assert text in page.text
    assert "Sign in to buy" in page.text


def test_buying_goes_to_checkout_and_back(
    browser: TestClient, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    token = form_token(browser, "/pricing")
    answer = browser.post("/buy/plus", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    checkout_url = answer.headers["location"]
    assert checkout_url.startswith(f"{emulator_server.url}/checkout/cs_test_")
    assert emulator_server.url in answer.headers["content-security-policy"]
    session_id = checkout_url.rsplit("/", 1)[1]
    assert emulator_server.pay(session_id).status_code == 200
    # Back from Stripe before any webhook: the page settles the payment itself.
    done = browser.get("/purchase/success", params={"session_id": session_id})
    assert done.status_code == 200
    assert "2,200" in done.text and "tokens were added" in done.text
    dashboard = browser.get("/dashboard")
    assert "2,200" in dashboard.text
    cancelled = browser.get("/purchase/cancel")
    assert "Nothing was charged" in cancelled.text


def test_a_stranger_on_the_success_page_learns_nothing(
    browser: TestClient, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    token = form_token(browser, "/pricing")
    answer = browser.post("/buy/starter", data={"csrf_token": token}, follow_redirects=False)
    session_id = answer.headers["location"].rsplit("/", 1)[1]
    emulator_server.pay(session_id)
    browser.cookies.clear()
    page = browser.get("/purchase/success", params={"session_id": session_id})
    assert page.status_code == 200 and "data-credited" not in page.text
    assert "tokens were added" not in page.text
    assert browser.get("/purchase/success", params={"session_id": "cs_nope"}).status_code == 200


def test_buying_needs_a_session_and_a_csrf_token(browser: TestClient) -> None:
    assert browser.post("/buy/plus", data={"csrf_token": "x"}).status_code == 403
    token = form_token(browser, "/login")
    answer = browser.post("/buy/plus", data={"csrf_token": token}, follow_redirects=False)
    assert answer.headers["location"] == "/login?next=/pricing"


def test_the_embedded_form_loads_stripe_js_from_the_emulator(
    db: Database, emulator_server: EmulatorServer
) -> None:
    with _browser(db, emulator_server, PurchaseFlow.PAYMENT_INTENT) as browser:
        new_user(browser)
        user_id = signed_in_user(browser)
        token = form_token(browser, "/pricing")
        page = browser.post("/buy/pro", data={"csrf_token": token})
        assert page.status_code == 200, page.text
        assert f'src="{emulator_server.url}/v3/"' in page.text
        secret = re.search(r'data-client-secret="([^"]+)"', page.text)
        assert secret and secret.group(1).startswith("pi_")
        assert "$50.00" in page.text
        assert "script-src 'self' " + emulator_server.url in page.headers["content-security-policy"]
        purchases = browser.get(f"/api/v1/users/{user_id}/purchases").json()["items"]
        assert [(p["package_id"], p["flow"]) for p in purchases] == [("pro", "payment_intent")]


def test_the_success_page_waits_for_stripe_then_shows_the_tokens(
    browser: TestClient, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    token = form_token(browser, "/pricing")
    answer = browser.post("/buy/starter", data={"csrf_token": token}, follow_redirects=False)
    session_id = answer.headers["location"].rsplit("/", 1)[1]
    url = f"/purchase/success?session_id={session_id}"
    waiting = browser.get(url)
    assert waiting.status_code == 200 and "Confirming your payment" in waiting.text
    assert f'hx-get="{url}&amp;tries=1"' in waiting.text and 'hx-trigger="every 2s"' in waiting.text
    # Polls are counted: after about a minute the page stops asking and says so.
    slow = browser.get(f"{url}&tries=30", headers={"HX-Request": "true"})
    assert "taking longer than usual" in slow.text and "hx-get" not in slow.text
    assert '<meta http-equiv="refresh" content="3">' in waiting.text  # without JavaScript
    assert emulator_server.pay(session_id).status_code == 200
    polled = browser.get(url, headers={"HX-Request": "true"})
    assert "<html" not in polled.text and "hx-trigger" not in polled.text
    assert 'data-credited="500"' in polled.text
    link = re.search(r'href="(/dashboard\?purchased=\d+)"', polled.text)
    assert link is not None
    dashboard = browser.get(link.group(1))
    assert 'data-available="500"' in dashboard.text and "500 tokens were added" in dashboard.text


def test_buying_answers_json_for_the_pricing_page_script(
    db: Database, emulator_server: EmulatorServer
) -> None:
    with _browser(db, emulator_server, PurchaseFlow.PAYMENT_INTENT) as client:
        new_user(client)
        token = form_token(client, "/pricing")
        json_headers = {"Accept": "application/json", "Accept-Language": "zh-CN"}
        started = client.post("/buy/plus", data={"csrf_token": token}, headers=json_headers)
        assert started.status_code == 200
        body = started.json()
        assert body["client_secret"].startswith("pi_") and body["price"] == "US$20.00"
        assert body["summary"] == "2,200 个代币"
        unknown = client.post("/buy/nope", data={"csrf_token": token}, headers=json_headers)
        assert unknown.status_code == 422
        assert unknown.headers["content-type"] == "application/problem+json"
        assert unknown.json()["code"] == "unknown_package"
        assert unknown.json()["detail"] == "该代币包已停售。"
        expired = client.post("/buy/plus", data={"csrf_token": "x"}, headers=json_headers)
        assert expired.status_code == 403 and expired.json()["code"] == "csrf"
