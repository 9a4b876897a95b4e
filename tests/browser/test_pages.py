"""The pages in a real browser (Debian's Chromium) against the service and the Stripe
emulator running as processes: what a newcomer, a buyer in the modal, a Chinese-speaking
user, a phone and an admin see and do."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    PASSWORD,
    LiveService,
    NewPage,
    StartService,
    pay_on_hosted_page,
    register_confirmed,
    sign_in,
    unique_email,
    watch_console,
)
from tests.browser.layout import WIDTHS, layout_problems

REPO = Path(__file__).resolve().parents[2]
Shoot = Callable[[Page, str], Path]


def _available(page: Page) -> int:
    return int(
        page.locator("#balance-widget [data-available]").get_attribute("data-available") or -1
    )


def test_newcomer_registers_buys_with_checkout_and_downloads_csv(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service()
    page = new_page()
    page.goto(f"{service.base_url}/pricing")
    expect(page.get_by_role("heading", name="Buy tokens", level=1)).to_be_visible()
    expect(page.locator("[data-package=plus] .badge")).to_have_text("Most popular")
    expect(page.locator("[data-package=plus] .price")).to_have_text("$20.00")
    expect(page.locator("[data-package=plus] .bonus")).to_have_text("+200 bonus")
    screenshot(page, "en-pricing")

    register_confirmed(page, service, unique_email("newcomer"))
    expect(page.locator("[data-low-balance]")).to_be_visible()  # 0 tokens: below the threshold
    screenshot(page, "en-dashboard-new")

    page.goto(f"{service.base_url}/pricing")
    page.locator("[data-package=plus] button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/checkout/"))
    expect(page.get_by_text("$20.00").first).to_be_visible()
    screenshot(page, "en-stripe-checkout")
    pay_on_hosted_page(page, "4242 4242 4242 4242")

    page.wait_for_url(re.compile(r"/purchase/success\?session_id="))
    expect(page.get_by_role("heading", name="Thank you!")).to_be_visible()
    expect(page.locator("[data-credited]")).to_have_attribute("data-credited", "2200")
    screenshot(page, "en-purchase-success")

    page.get_by_role("link", name="Go to your dashboard").click()
    page.wait_for_url(re.compile(r"/dashboard\?purchased="))
    expect(page.locator(".toast.good")).to_contain_text("2,200 tokens were added")
    expect(page.locator("#balance-card [data-available]")).to_have_attribute(
        "data-available", "2200"
    )
    expect(page.locator("#balance-card [data-purchased]")).to_have_text("2,200")
    expect(page.locator("[data-low-balance]")).to_have_count(0)
    assert _available(page) == 2200
    screenshot(page, "en-dashboard")

    page.get_by_role("link", name="History").first.click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-kind", "bonus")
    expect(rows.nth(1)).to_have_attribute("data-kind", "purchase")
    expect(rows.nth(1).locator("td.num").first).to_have_text("+2,000")
    expect(rows.nth(0).locator("td.num").last).to_have_text("2,200")  # running balance
    screenshot(page, "en-history")

    page.get_by_label("Kind").select_option("purchase")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"kind=purchase"))
    expect(page.locator("tbody tr")).to_have_count(1)
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == "history-purchase.csv"
    text = Path(download.path()).read_text(encoding="utf-8-sig")  # with a byte-order mark
    table = list(csv.DictReader(io.StringIO(text)))  # the pages' CSV: as the reader reads
    assert [(r["Kind"], r["Status"], r["Tokens"], r["Balance"]) for r in table] == [
        ("Purchase", "Completed", "2000", "2000")
    ]


def test_embedded_modal_declined_card_credits_nothing_then_pays(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service(purchase_flow="payment_intent")
    page = new_page()
    register_confirmed(page, service, unique_email("modal"))
    page.goto(f"{service.base_url}/pricing")
    page.locator("[data-package=starter] button[type=submit]").click()

    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text("Starter")
    expect(dialog).to_contain_text("500 tokens")
    expect(dialog).to_contain_text("$5.00")
    dialog.get_by_label("Card number").fill("4000 0000 0000 0002")
    dialog.get_by_label("Expiry").fill("12 / 34")
    dialog.get_by_label("CVC").fill("123")
    screenshot(page, "en-pricing-modal")
    dialog.get_by_role("button", name="Pay now").click()
    expect(dialog.get_by_role("alert")).to_contain_text("declined")
    expect(page.locator(".toast.error")).to_contain_text("declined")
    screenshot(page, "en-pricing-modal-declined")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.locator("[data-package=starter] button[type=submit]")).to_be_focused()
    page.reload()
    assert _available(page) == 0

    page.locator("[data-package=starter] button[type=submit]").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Card number").fill("4242 4242 4242 4242")
    dialog.get_by_label("Expiry").fill("12 / 34")
    dialog.get_by_label("CVC").fill("123")
    dialog.get_by_role("button", name="Pay now").click()
    expect(dialog.get_by_role("heading", name="Thank you!")).to_be_visible()
    expect(dialog.locator("[data-credited]")).to_have_attribute("data-credited", "500")
    screenshot(page, "en-pricing-modal-paid")
    dialog.get_by_role("button", name="Close").click()
    page.wait_for_url(f"{service.base_url}/dashboard")
    assert _available(page) == 500
    page.goto(f"{service.base_url}/history")
    expect(page.locator("tbody tr")).to_have_count(1)


def test_chinese_pages_with_yuan(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service(catalog=REPO / "catalogs" / "cny.toml")
    page = new_page(locale="zh-CN")
    page.goto(f"{service.base_url}/pricing")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_role("heading", name="购买代币", level=1)).to_be_visible()
    standard = page.locator("[data-package=cny-500]")
    expect(standard.locator("h2")).to_have_text("标准包")
    expect(standard.locator(".price")).to_have_text("¥45.00")
    expect(standard.locator(".badge")).to_have_text("最受欢迎")
    expect(standard.locator(".bonus")).to_have_text("另赠 50")
    expect(page.get_by_text("代币会过期吗？")).to_be_visible()
    screenshot(page, "zh-CN-pricing")

    register_confirmed(page, service, unique_email("zh"), name="李雷")
    expect(page.get_by_role("heading", name="李雷，您好")).to_be_visible()
    expect(page.get_by_text("您的余额不足")).to_be_visible()
    page.goto(f"{service.base_url}/pricing")
    standard.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/checkout/"))
    pay_on_hosted_page(page, "4242 4242 4242 4242")
    page.wait_for_url(re.compile(r"/purchase/success"))
    expect(page.get_by_role("heading", name="谢谢您！")).to_be_visible()
    expect(page.get_by_text("已支付 ¥45.00")).to_be_visible()
    page.goto(f"{service.base_url}/history")
    expect(page.get_by_role("heading", name="历史记录")).to_be_visible()
    expect(page.locator("tbody tr").first).to_contain_text("赠送")
    expect(page.locator("tbody tr").last).to_contain_text("月")  # 11月21日 08:42
    screenshot(page, "zh-CN-history")

    # A choice on the account page beats the browser's language.
    page.goto(f"{service.base_url}/account")
    page.get_by_label("页面语言").select_option("en")
    page.get_by_role("button", name="保存语言").click()
    expect(page.get_by_text("Language saved.")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "en")


def test_phone_widget_follows_a_spend_made_through_the_api(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service()
    user_id = f"phone-{uuid.uuid4().hex[:8]}"
    email = unique_email("phone")
    service.create_user(user_id, email, PASSWORD)
    service.cli("grant", user_id, "500", "--reason", "welcome")
    key = service.api_key("spend")
    page = new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    sign_in(page, service, email)
    assert _available(page) == 500
    overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert overflow is False  # nothing wider than the phone
    screenshot(page, "en-phone-dashboard")

    spent = httpx.post(
        f"{service.base_url}/api/v1/users/{user_id}/spend",
        json={"amount": 120, "idempotency_key": "phone-spend-1"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert spent.status_code == 201, spent.text
    widget = page.locator("#balance-widget [data-available]")
    expect(widget).to_have_attribute("data-available", "380", timeout=15_000)
    expect(page.locator("#balance-card [data-available]")).to_have_attribute(
        "data-available", "380", timeout=15_000
    )
    expect(page.locator("#balance-card [data-spent]")).to_have_text("120")
    screenshot(page, "en-phone-dashboard-after-spend")
    page.goto(f"{service.base_url}/pricing")
    screenshot(page, "en-phone-pricing")
    # The menu is folded behind its button, and opens to every page.
    history = page.get_by_role("navigation", name="Main").get_by_role("link", name="History")
    expect(history).to_be_hidden()
    menu = page.get_by_role("button", name="Menu")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    screenshot(page, "en-phone-menu")
    history.click()
    page.wait_for_url(f"{service.base_url}/history")
    expect(page.locator("table.history tr[data-kind='spend'] td.tokens")).to_have_text("-120")


def _failed_purchase_event(service: LiveService, user_id: str) -> tuple[int, str]:
    """A purchase whose webhook failed: Stripe was failing (500) whenever tokenbank asked
    it about the payment. Returns the purchase id and the failed event's id; Stripe is
    well again, and its retries are turned away, so the replay button is what settles it."""
    admin_key = service.api_key("admin")
    started = httpx.post(
        f"{service.base_url}/api/v1/users/{user_id}/checkout-sessions",
        json={"package_id": "plus"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert started.status_code == 201, started.text
    purchase_id = started.json()["purchase_id"]
    failing = [{"method": "GET", "path": "/v1/*", "status": 500, "times": 10_000}]
    httpx.post(f"{service.emulator_url}/_emulator/api_faults", json={"faults": failing})
    session_id = started.json()["checkout_session_id"]
    paid = httpx.post(f"{service.emulator_url}/_emulator/checkout_sessions/{session_id}/pay")
    assert paid.status_code == 200, paid.text
    deadline = time.monotonic() + 20
    failed: list[dict[str, str]] = []
    while not failed and time.monotonic() < deadline:
        listed = json.loads(service.cli("webhooks", "list", "--failed", "--json").stdout)
        failed = [e for e in listed if e["type"] == "checkout.session.completed"]
        time.sleep(0.2)
    assert failed, "the webhook did not fail as arranged"
    httpx.post(
        f"{service.emulator_url}/_emulator/webhooks/config",
        json={"url": "http://127.0.0.1:9/nowhere"},
    )
    httpx.post(f"{service.emulator_url}/_emulator/api_faults", json={"faults": []})
    return purchase_id, failed[0]["event_id"]


def test_admin_grants_tokens_and_replays_a_failed_webhook(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service(extra_env={"TOKENBANK_LOW_BALANCE_THRESHOLD": "50"})
    admin_email = unique_email("admin")
    service.create_user("admin-1", admin_email, PASSWORD, admin=True)
    service.create_user("grace", "grace@example.com", PASSWORD)
    page = new_page()
    sign_in(page, service, admin_email)

    page.get_by_role("link", name="Admin").click()
    page.get_by_label("User id or email").fill("grace@example.com")
    page.get_by_role("button", name="Find user").click()
    page.wait_for_url(f"{service.base_url}/admin/users/grace")
    page.get_by_label("Tokens", exact=True).fill("250")
    page.get_by_label(re.compile("^Reason")).fill("Support credit for ticket 42")
    form: dict[str, str | float | bool] = {
        name: page.locator(f"input[name={name}]").first.input_value()
        for name in ("csrf_token", "key", "amount", "reason")
    }
    page.get_by_role("button", name="Grant", exact=True).click()
    expect(page.locator(".toast.good")).to_contain_text("Granted 250 tokens")
    expect(page.locator(".balance[data-available]")).to_have_attribute("data-available", "250")
    expect(page.locator("tbody tr[data-kind=grant]")).to_contain_text(
        "Support credit for ticket 42"
    )
    screenshot(page, "en-admin-user")
    # The same form sent again (a retry after a timeout): its idempotency key grants once.
    again = page.request.post(f"{service.base_url}/admin/users/grace/grants", form=form)
    assert again.ok
    page.reload()
    expect(page.locator(".balance[data-available]")).to_have_attribute("data-available", "250")

    purchase_id, event_id = _failed_purchase_event(service, "grace")
    page.goto(f"{service.base_url}/admin/webhooks?failed=1")
    row = page.locator(f"tr[data-event='{event_id}']")
    expect(row.locator(".pill.failed")).to_be_visible()
    expect(row).to_contain_text("PaymentProviderUnavailable")
    screenshot(page, "en-admin-webhooks-failed")
    row.get_by_role("button", name="Replay").click()
    expect(row.locator(".pill.processed")).to_be_visible()
    expect(page.locator(".toast.good")).to_contain_text("The event was processed")

    page.goto(f"{service.base_url}/admin/purchases?status=paid")
    expect(page.locator(f"tbody tr:has-text('{purchase_id}')").first).to_have_attribute(
        "data-status", "paid"
    )
    screenshot(page, "en-admin-purchases")
    page.goto(f"{service.base_url}/admin/users/grace")
    expect(page.locator(".balance[data-available]")).to_have_attribute("data-available", "2450")
    page.goto(f"{service.base_url}/admin/catalog")
    expect(page.locator("tbody tr")).to_have_count(4)
    screenshot(page, "en-admin-catalog")

    # Admin pages are for admins only.
    other = new_page()
    sign_in(other, service, "grace@example.com")
    response = other.goto(f"{service.base_url}/admin/webhooks")
    assert response is not None and response.status == 403


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
    .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label'))
    .map(el => el.outerHTML)"""


@pytest.mark.parametrize(
    "tour",
    [("en", "default.toml", "plus"), ("zh-CN", "cny.toml", "cny-500")],
    ids=["en", "zh-CN"],
)
def test_every_page_renders_cleanly_in_both_languages(
    live_service: StartService, new_page: NewPage, screenshot: Shoot, tour: tuple[str, str, str]
) -> None:
    """A screenshot of every page; no script errors or CSP refusals; every field labelled."""
    locale, catalog, package = tour
    service = live_service(catalog=REPO / "catalogs" / catalog)
    user_id = f"tour-{locale}-{uuid.uuid4().hex[:6]}"
    email = unique_email(user_id)
    service.create_user(user_id, email, PASSWORD, admin=True)
    service.cli("grant", user_id, "300", "--reason", "welcome")
    # Tokens that expire: the dashboard and the admin's user page list them.
    promo = ("--expires-in", "7", "--source", "promo")
    service.cli("grant", user_id, "40", "--reason", "launch week", *promo)
    key = service.api_key("admin")
    auth = {"Authorization": f"Bearer {key}"}
    spent = httpx.post(
        f"{service.base_url}/api/v1/users/{user_id}/spend",
        json={"amount": 25, "idempotency_key": f"{user_id}-1", "description": "chat reply"},
        headers=auth,
    )
    assert spent.status_code == 201, spent.text
    paid = httpx.post(
        f"{service.base_url}/api/v1/users/{user_id}/checkout-sessions",
        json={"package_id": package},
        headers=auth,
    ).json()
    httpx.post(
        f"{service.emulator_url}/_emulator/checkout_sessions/{paid['checkout_session_id']}/pay"
    )
    left = httpx.post(
        f"{service.base_url}/api/v1/users/{user_id}/checkout-sessions",
        json={"package_id": package},
        headers=auth,
    ).json()
    page = new_page(locale=locale)
    errors = watch_console(page, service.base_url)

    def visit(path: str, name: str, status: int = 200) -> None:
        """The page at a laptop's width and a phone's: nothing overflows or overlaps."""
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 844})
            response = page.goto(f"{service.base_url}{path}")
            assert response is not None and response.status == status, (path, response)
            expect(page.locator("html")).to_have_attribute("lang", locale)
            assert page.evaluate(UNLABELLED) == [], path
            assert layout_problems(page) == [], (path, width)
            # One compact header row, signed in or out (the menu folds on a phone).
            assert page.evaluate("document.querySelector('header.top').offsetHeight") <= 64
            screenshot(page, f"{locale}-page-{name}" + ("-phone" if width < 600 else ""))

    visit("/login", "login")
    visit("/register", "register")
    visit("/password/forgot", "password-forgot")
    visit("/pricing", "pricing-signed-out")
    sign_in(page, service, email)
    visit("/dashboard", "dashboard")
    # The spend of 25 above took the promotion's tokens first: 15 of its 40 are left.
    expect(page.locator("[data-expiring] li")).to_contain_text("15")
    visit("/pricing", "pricing-signed-in")
    visit("/history", "history")
    visit("/account", "account")
    visit(f"/purchase/success?session_id={paid['checkout_session_id']}", "purchase-success")
    # Back from Stripe without paying, by the cancel link Stripe holds for the purchase.
    session = httpx.get(
        f"{service.emulator_url}/v1/checkout/sessions/{left['checkout_session_id']}",
        headers={"Authorization": f"Bearer {service.env['STRIPE_SECRET_KEY']}"},
    ).json()
    visit(session["cancel_url"].removeprefix(service.base_url), "purchase-cancel")
    retry = page.locator(f"form[action='/buy/{package}'] button")
    retry.click()  # the same package again: to Stripe (the page's CSP lets the form go there)
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/checkout/"))
    visit("/admin", "admin-users")
    visit(f"/admin/users/{user_id}", "admin-user")
    expect(page.locator("[data-expiring] li")).to_have_count(1)  # what is left of the promotion
    visit("/admin/purchases", "admin-purchases")
    visit("/admin/webhooks", "admin-webhooks")
    visit("/admin/catalog", "admin-catalog")
    visit("/admin/usage", "admin-usage")
    visit("/chat", "chat")
    visit("/keys", "keys")
    assert errors == []
    visit("/portal/not-a-real-link", "portal-link-invalid", status=400)
    visit("/password/reset/not-a-real-link", "password-reset-invalid", status=400)

    # A portal link from the host app lands its user signed in, on the page it names.
    link = httpx.post(
        f"{service.base_url}/api/v1/users/{user_id}/portal-sessions",
        json={"return_path": "/history"},
        headers=auth,
    ).json()["url"]
    fresh = new_page(locale=locale)
    fresh.goto(link)
    assert fresh.url == f"{service.base_url}/history"
    expect(fresh.locator("#balance-widget")).to_be_visible()


def test_buying_works_without_javascript(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service()
    page = new_page(java_script_enabled=False)
    register_confirmed(page, service, unique_email("nojs"))
    page.goto(f"{service.base_url}/pricing")
    page.locator("[data-package=starter] button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/checkout/"))
    pay_on_hosted_page(page, "4242 4242 4242 4242")
    page.wait_for_url(re.compile(r"/purchase/success"))
    expect(page.locator("[data-credited]")).to_have_attribute("data-credited", "500")
    page.goto(f"{service.base_url}/history")
    page.get_by_label("Kind").select_option("purchase")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"kind=purchase"))
    expect(page.locator("tbody tr")).to_have_count(1)
    screenshot(page, "en-nojs-history")


@pytest.mark.parametrize(
    "tour",
    [("en", "default.toml", "pro"), ("zh-CN", "cny.toml", "cny-pro")],
    ids=["en", "zh-CN"],
)
def test_subscribing_on_the_pricing_page_then_the_portal_and_a_failed_renewal(
    live_service: StartService, new_page: NewPage, screenshot: Shoot, tour: tuple[str, str, str]
) -> None:
    """Subscribe on the pricing page (monthly / yearly switch), see the plan on the
    dashboard, cancel in the billing portal, then a renewal that fails shows the banner.
    An instance of its own: the emulator's clock moves a month."""
    locale, catalog, plan = tour
    service = live_service(
        catalog=REPO / "catalogs" / catalog, extra_env={"TOKENBANK_LOW_BALANCE_THRESHOLD": "1"}
    )
    user_id = f"plans-{locale}-{uuid.uuid4().hex[:6]}"
    email = unique_email(user_id)
    service.create_user(user_id, email, PASSWORD)
    page = new_page(locale=locale)
    errors = watch_console(page, service.base_url)

    def check(name: str) -> None:
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 844})
            page.reload()
            assert page.evaluate(UNLABELLED) == []
            problems = layout_problems(page)
            assert problems == [], (name, width, problems)
            screenshot(page, f"{locale}-plans-{name}" + ("-phone" if width < 600 else ""))

    sign_in(page, service, email)
    page.goto(f"{service.base_url}/pricing")
    check("pricing")
    card = page.locator(f"[data-plan='{plan}']")
    monthly, yearly = card.locator("button[value=month]"), card.locator("button[value=year]")
    expect(monthly).to_be_visible()
    expect(yearly).to_be_hidden()
    page.locator("label[for=interval-year]").click()
    expect(yearly).to_be_visible()
    expect(monthly).to_be_hidden()
    page.locator("label[for=interval-month]").click()
    monthly.click()
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/checkout/"))
    # 0341 attaches; its charges fail (the renewals). The page speaks the user's language.
    page.locator("#card-number").fill("4000000000000341")
    page.locator("#card-expiry").fill("12 / 34")
    page.locator("#card-cvc").fill("123")
    page.locator("form button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(service.base_url) + "/dashboard"))
    plan_card = page.locator(".plan-card")
    expect(plan_card).to_have_attribute("data-plan", plan)
    expect(plan_card).to_have_attribute("data-status", re.compile("active|trialing"))
    check("dashboard")
    # The billing portal: cancel at the period's end, then back.
    page.locator(".plan-card form button").click()
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/billing_portal/"))
    page.get_by_role("button", name="Cancel plan").click()
    expect(page.get_by_role("status")).to_contain_text("canceled at the end")
    page.get_by_role("button", name="Don't cancel").click()
    expect(page.get_by_role("status")).to_contain_text("will renew")
    page.get_by_role("link", name="Return").click()
    page.wait_for_url(re.compile(re.escape(service.base_url) + "/dashboard"))
    expect(page.locator("[data-renews], .plan-card .meta")).not_to_have_count(0)
    # A month later the renewal fails (a trial ends first on a plan that has one).
    for _ in range(2):
        httpx.post(
            f"{service.emulator_url}/_emulator/clock/advance", json={"seconds": 31 * 86400 + 7200}
        ).raise_for_status()
        time.sleep(1.5)  # the webhooks
    page.goto(f"{service.base_url}/dashboard")
    expect(page.locator("[data-past-due]")).to_be_visible()
    expect(plan_card).to_have_attribute("data-status", "past_due")
    check("past-due")
    assert errors == []


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
def test_the_chat_streams_an_answer_with_its_cost_then_offers_to_buy(
    live_service: StartService, new_page: NewPage, screenshot: Shoot, locale: str
) -> None:
    """A signed-in user picks a model (its price shown), sends a prompt: the answer streams
    in word by word, says what it cost, and the header balance follows. When the tokens
    run out, the buy dialog opens. Then a key made on the keys page works with the SDK's
    protocol, is shown once, and is refused once revoked."""
    service = live_service()
    user_id = f"chat-{locale}-{uuid.uuid4().hex[:6]}"
    email = unique_email(user_id)
    service.create_user(user_id, email, PASSWORD)
    service.cli("grant", user_id, "400", "--reason", "welcome")
    page = new_page(locale=locale)
    errors = watch_console(page, service.base_url)
    sign_in(page, service, email)
    page.goto(f"{service.base_url}/chat")
    expect(page.locator("#chat-model option").first).to_contain_text("50,000")
    page.locator("#chat-prompt").fill("[[tokens=30]]")
    page.locator("form[data-chat] button[type=submit]").click()
    answer = page.locator(".message.assistant").last
    # Streaming: part of the answer shows before the whole of it.
    expect(answer).to_contain_text("w3", timeout=10_000)
    assert "w30" not in answer.inner_text()
    expect(answer).to_contain_text("w30", timeout=15_000)
    # 1 word + 3 in, 30 out: ceil((4 x 50,000 + 30 x 200,000) / 1,000,000) = 7 tokens.
    expect(answer.locator(".hint")).to_contain_text("7")
    expect(page.locator("#balance-widget [data-available]")).to_have_attribute(
        "data-available", "393"
    )
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 844})
        assert layout_problems(page) == [], width
        screenshot(page, f"{locale}-chat" + ("-phone" if width < 600 else ""))
    # The large model's hold (4,096 output tokens at 1,000,000 a million) is more than is left.
    page.locator("#chat-model").select_option("emulator-large")
    page.locator("#chat-prompt").fill("hello again")
    page.locator("form[data-chat] button[type=submit]").click()
    dialog = page.locator("dialog[data-short]")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("link")).to_have_attribute("href", "/pricing")
    screenshot(page, f"{locale}-chat-out-of-tokens")
    dialog.locator("[data-close]").click()

    page.goto(f"{service.base_url}/keys")
    page.locator("#key-name").fill("laptop")
    page.locator("#key-cap").fill("100")
    page.locator("form[action='/keys'] button").click()
    secret = page.locator("[data-secret]").inner_text()
    assert secret.startswith("tbu_")
    screenshot(page, f"{locale}-keys-new")
    listed = httpx.get(
        f"{service.base_url}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    assert listed.status_code == 200
    page.goto(f"{service.base_url}/keys")
    assert secret not in page.content()
    page.locator("form[action$='/revoke'] button").first.click()
    expect(page.locator(".badge.warn")).to_have_count(1)
    refused = httpx.get(
        f"{service.base_url}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    assert refused.status_code == 401
    # The browser logs the 402 it was answered (the refusal the dialog is for); no other.
    assert [e for e in errors if "/chat/stream" not in e or "402" not in e] == []
