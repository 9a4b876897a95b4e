"""Buying tokens on tokenbank's own pages: pricing, Checkout, the embedded card form, and the
pages a buyer comes back to."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.stripe_emulator import SECRET_KEY, EmulatorServer, make_billing
from tests.web.browsing import form_token, new_user, signed_in_user
from tests.web.conftest import PASSWORDS, SETTINGS
from tokenbank import billing
from tokenbank.billing import PurchaseFlow
from tokenbank.billing.models import purchases
from tokenbank.db import Database
from tokenbank.users.models import users
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
    # A new visitor is led to sign up; one with an account, to sign in.
    assert 'href="/register">Create an account to buy' in page.text
    assert 'href="/login?next=/pricing"' in page.text
    assert "$9.09 per 1,000 tokens" in page.text  # Plus: $20.00 for 2,200 tokens


def test_pricing_says_tokens_never_expire_only_while_no_pack_expires(
    db: Database, emulator_server: EmulatorServer
) -> None:
    with _browser(db, emulator_server, PurchaseFlow.CHECKOUT) as lasting:
        assert "Tokens never expire, and bigger packs" in lasting.get("/pricing").text
    catalog = make_billing(emulator_server.url).catalog
    packages = tuple(
        replace(p, expires_after_days=365) if p.id == "plus" else p for p in catalog.packages
    )
    seller = replace(make_billing(emulator_server.url), catalog=replace(catalog, packages=packages))
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS, seller=seller)
    with TestClient(app, base_url="https://tokens.example") as browser:
        page = browser.get("/pricing").text
        assert "Tokens never expire, and" not in page
        assert 'class="validity">Tokens usable for 365 days after purchase<' in page
        assert page.count('class="validity">Tokens never expire<') == len(packages) - 1
        chinese = browser.get("/pricing", headers={"accept-language": "zh-CN"}).text
        assert "购买后 365 天内可用" in chinese


def test_pricing_says_what_the_tokens_buy_at_the_prices_the_api_charges(
    browser: TestClient,
) -> None:
    page = browser.get("/pricing").text
    assert "What your tokens buy" in page
    assert re.search(r'data-feature="image"><span>Image</span> <strong>40 tokens each<', page)
    assert re.search(r'data-feature="chat_message"><span>Chat message</span> <strong>5 ', page)
    chinese = browser.get("/pricing", headers={"accept-language": "zh-CN"}).text
    assert 'data-feature="image"><span>图片</span>' in chinese


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
    # A buyer back signed out (another browser, a session that ended) is shown the way in.
    assert 'href="/login?next=/dashboard"' in page.text and "Sign in to see them." in page.text
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


def _session(emulator: EmulatorServer, session_id: str) -> dict[str, object]:
    found: dict[str, object] = emulator.http.get(
        f"/v1/checkout/sessions/{session_id}", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    ).json()
    return found


def _start(browser: TestClient, package: str = "plus") -> str:
    token = form_token(browser, "/pricing")
    answer = browser.post(f"/buy/{package}", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"].rsplit("/", 1)[1])


def _status(db: Database) -> str:
    with db.read() as conn:
        (purchase,) = billing.list_purchases(conn, user_id=_only_user(db), limit=5)
    return purchase.status.value


def _only_user(db: Database) -> str:
    with db.read() as conn:
        (user_id,) = conn.execute(sa.select(users.c.id)).scalars().all()
    return str(user_id)


def test_leaving_checkout_cancels_the_purchase_and_closes_its_page(
    browser: TestClient, db: Database, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    session_id = _start(browser)
    cancel_url = str(_session(emulator_server, session_id)["cancel_url"])
    assert cancel_url.startswith("https://tokens.example/purchase/cancel?purchase=")
    page = browser.get(cancel_url.removeprefix("https://tokens.example"))
    assert page.status_code == 200
    assert "Nothing was charged" in page.text and "The purchase is canceled" in page.text
    assert "Try Plus again" in page.text
    assert _status(db) == "canceled"
    assert _session(emulator_server, session_id)["status"] == "expired"
    assert emulator_server.pay(session_id).status_code >= 400  # nothing can pay it now
    # Stripe's word on the expiry arrives later: the buyer's cancel stands.
    emulator_server.settle()
    browser.get("/purchase/success", params={"session_id": session_id})
    assert _status(db) == "canceled"
    assert "Canceled" in browser.get("/dashboard").text


@pytest.mark.parametrize("query", ["", "&reference=tokenbank-0000", "&reference=x%00"])
def test_a_cancel_link_without_its_reference_changes_nothing(
    browser: TestClient, db: Database, emulator_server: EmulatorServer, query: str
) -> None:
    """Only Stripe's link (it holds the purchase's unguessable reference) cancels: another
    site cannot end a signed-in buyer's purchase by linking to this page."""
    new_user(browser)
    session_id = _start(browser)
    cancel_url = str(_session(emulator_server, session_id)["cancel_url"])
    purchase_id = cancel_url.split("purchase=")[1].split("&", maxsplit=1)[0]
    page = browser.get(f"/purchase/cancel?purchase={purchase_id}{query}")
    assert page.status_code in (200, 400, 422)
    assert _status(db) == "pending"
    assert _session(emulator_server, session_id)["status"] == "open"


def test_a_buyer_back_signed_out_cancels_with_stripes_link(
    browser: TestClient, db: Database, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    session_id = _start(browser)
    cancel_url = str(_session(emulator_server, session_id)["cancel_url"])
    browser.cookies.clear()
    page = browser.get(cancel_url.removeprefix("https://tokens.example"))
    assert "The purchase is canceled" in page.text and "Sign in to buy again" in page.text
    assert _status(db) == "canceled"


def test_a_cancel_after_paying_keeps_the_payment(
    browser: TestClient, db: Database, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    session_id = _start(browser)
    cancel_url = str(_session(emulator_server, session_id)["cancel_url"])
    assert emulator_server.pay(session_id).status_code == 200
    answer = browser.get(cancel_url.removeprefix("https://tokens.example"), follow_redirects=False)
    assert answer.status_code == 303 and "/dashboard?purchased=" in answer.headers["location"]
    assert _status(db) == "paid"


def test_the_dashboard_continues_or_cancels_a_pending_purchase(
    browser: TestClient, db: Database, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    session_id = _start(browser)
    dashboard = browser.get("/dashboard").text
    assert "Plus" in dashboard and "Pending" in dashboard
    continue_url = re.search(r'href="(/purchases/\d+/continue)"', dashboard)
    cancel_action = re.search(r'action="(/purchases/\d+/cancel)"', dashboard)
    assert continue_url and cancel_action
    again = browser.get(continue_url[1], follow_redirects=False)
    assert again.status_code == 303
    assert again.headers["location"] == f"{emulator_server.url}/checkout/{session_id}"
    # Cancel needs the page's CSRF token, like every form.
    assert browser.post(cancel_action[1], data={"csrf_token": "x"}).status_code == 403
    assert _status(db) == "pending"
    token = form_token(browser, "/dashboard")
    done = browser.post(cancel_action[1], data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303 and _status(db) == "canceled"
    assert "Continue paying" not in browser.get("/dashboard").text
    gone = browser.get(continue_url[1], follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/dashboard"


def test_someone_elses_purchase_can_be_neither_continued_nor_canceled(
    browser: TestClient, db: Database, emulator_server: EmulatorServer
) -> None:
    new_user(browser)
    _start(browser)
    dashboard = browser.get("/dashboard").text
    cancel_action = re.search(r'action="(/purchases/\d+/cancel)"', dashboard)
    assert cancel_action
    browser.cookies.clear()
    new_user(browser, email="mallory@example.com")
    token = form_token(browser, "/dashboard")
    browser.post(cancel_action[1], data={"csrf_token": token})
    continued = browser.get(cancel_action[1].replace("cancel", "continue"), follow_redirects=False)
    assert continued.headers["location"] == "/dashboard"
    with db.read() as conn:
        statuses = conn.execute(sa.select(purchases.c.status)).scalars().all()
    assert statuses == ["pending"]
