"""Accounts in a real browser, with mail that really goes out: the service sends over SMTP
to the test's own server, and the test follows the links of what arrived there, as the
owner of the mailbox would. Signing up, confirming the address before buying, a
forgotten password, and the same in Chinese."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    MAIL_FROM,
    PASSWORD,
    NewPage,
    StartService,
    pay_on_hosted_page,
    register,
    show_mail,
    sign_in,
    take_refusals,
    unique_email,
    watch_console,
)
from tests.smtp import Received

Shoot = Callable[[Page, str], Path]

NEW_PASSWORD = "lantern orbit walnut pebble"
#: The notice on every page while the address is not confirmed (not the low-balance one).
UNCONFIRMED = ".notice.warn:has(form[action='/account/verify'])"


def _check_parts(received: Received, email: str, subject: str, button: str) -> None:
    """A mail to ``email`` from tokenbank's address, in plain text and in HTML, whose two
    parts carry the same link (the one whose path starts with ``button``)."""
    message = received.message
    assert received.recipients == [email]
    assert str(message["To"]) == email
    assert str(message["From"]) == MAIL_FROM
    assert str(message["Subject"]) == subject
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    assert received.text.strip() and received.html.strip()
    path = received.link(button)
    (url,) = {u for u in re.findall(r"https?://\S+", received.text) if path in u}
    assert f'href="{url}"' in received.html


def test_sign_up_confirms_the_address_by_mail_before_buying(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service()
    email = unique_email("signup")
    page = new_page()
    errors = watch_console(page, service.base_url)

    register(page, service, email)
    expect(page.get_by_role("heading", name="Check your inbox", level=1)).to_be_visible()
    expect(page.get_by_text(f"We sent a mail to {email}.")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)  # not signed in
    answer = page.locator("main").inner_text()
    screenshot(page, "en-register-check-inbox")

    received = service.mail(email)
    _check_parts(received, email, "Confirm your email address", "/verify/")
    assert "Welcome to tokenbank." in received.text
    assert "Confirm my address" in received.text and "Confirm my address" in received.html
    first_link = received.link("/verify/")

    # Not confirmed yet: the account signs in and reads, every page says what is missing,
    # and buying is refused.
    sign_in(page, service, email)
    waiting = page.locator(UNCONFIRMED)
    expect(waiting).to_contain_text(
        f"Confirm your email address to buy tokens: follow the link we sent to {email}."
    )
    expect(waiting.get_by_role("button", name="Send the link again")).to_be_visible()
    screenshot(page, "en-dashboard-unconfirmed")
    page.goto(f"{service.base_url}/pricing")
    expect(waiting).to_contain_text("Confirm your email address to buy tokens")
    with (
        page.expect_console_message(lambda m: "status of 403" in m.text),
        page.expect_response(f"{service.base_url}/buy/plus") as bought,
    ):
        page.locator("[data-package=plus] button[type=submit]").click()
    assert bought.value.status == 403
    expect(page.locator(".toast.error")).to_contain_text(
        "Confirm your email address to buy tokens: follow the link we sent you, or send a new"
        " one from your account page."
    )
    assert page.url == f"{service.base_url}/pricing"
    assert take_refusals(errors, 403) == []
    screenshot(page, "en-pricing-unconfirmed-refused")

    # The link again, from the notice: a second mail, with a link of its own.
    waiting.get_by_role("button", name="Send the link again").click()
    page.wait_for_url(f"{service.base_url}/account?changed=verify_sent")
    expect(page.get_by_text("We sent the link again. It works for 3 days.")).to_be_visible()
    again = service.mail(email, count=2)
    _check_parts(again, email, "Confirm your email address", "/verify/")
    assert again.link("/verify/") != first_link
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{service.base_url}/login")

    # The mail as its reader sees it; its button leads to a page with one button.
    show_mail(page, again)
    screenshot(page, "en-mail-verify")
    page.get_by_role("link", name="Confirm my address").click()
    page.wait_for_url(f"{service.base_url}{again.link('/verify/')}")
    expect(page.get_by_role("heading", name="Confirm your email address", level=1)).to_be_visible()
    screenshot(page, "en-verify")
    page.get_by_role("button", name="Confirm my address").click()
    page.wait_for_url(f"{service.base_url}/login?done=verified")
    expect(page.locator(".notice.good")).to_have_text(
        "Your email address is confirmed. Sign in to go on."
    )

    sign_in(page, service, email)
    expect(page.locator(UNCONFIRMED)).to_have_count(0)
    page.goto(f"{service.base_url}/pricing")
    page.locator("[data-package=plus] button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/checkout/"))
    expect(page.get_by_text("$20.00").first).to_be_visible()
    pay_on_hosted_page(page, "4242 4242 4242 4242")
    page.wait_for_url(re.compile(r"/purchase/success\?session_id="))
    expect(page.locator("[data-credited]")).to_have_attribute("data-credited", "2200")
    page.get_by_role("link", name="Go to your dashboard").click()
    page.wait_for_url(re.compile(r"/dashboard\?purchased="))
    expect(page.locator("#balance-card [data-available]")).to_have_attribute(
        "data-available", "2200"
    )
    expect(page.locator("#balance-widget [data-available]")).to_have_attribute(
        "data-available", "2200"
    )
    screenshot(page, "en-dashboard-confirmed-bought")
    assert errors == []

    # Signing up again with the address answers as for a new one; the mail tells its owner.
    stranger = new_page()
    stranger_errors = watch_console(stranger, service.base_url)
    register(stranger, service, email)
    assert stranger.locator("main").inner_text() == answer
    told = service.mail(email, count=3)
    _check_parts(told, email, "Someone tried to sign up with your address", "/login")
    assert "It already has one, so no account was opened." in told.text
    assert stranger_errors == []


def test_forgotten_password_reset_by_mail_signs_every_session_out(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service()
    email = unique_email("forgot")
    service.create_user(f"forgot-{uuid.uuid4().hex[:8]}", email, PASSWORD)
    elsewhere = new_page()  # the same account, signed in on another device
    sign_in(elsewhere, service, email)
    page = new_page()
    errors = watch_console(page, service.base_url)

    page.goto(f"{service.base_url}/login")
    page.get_by_role("link", name="Forgot your password?").click()
    page.wait_for_url(f"{service.base_url}/password/forgot")
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Send the link").click()
    expect(page.get_by_text(f"If an account uses {email}, we sent it a link")).to_be_visible()
    screenshot(page, "en-password-forgot-sent")

    received, opened = service.open_mail_link(page, email, "/password/reset/")
    _check_parts(received, email, "Choose a new password", "/password/reset/")
    assert opened is not None and opened.status == 200
    expect(page.get_by_role("heading", name="Choose a new password", level=1)).to_be_visible()

    # A common password is refused, with the reason.
    page.get_by_label(re.compile("^New password")).fill("password123")
    with page.expect_navigation() as answer:
        page.get_by_role("button", name="Save password").click()
    refused = answer.value
    assert refused is not None and refused.status == 422
    expect(page.get_by_role("alert")).to_have_text(
        "This password is one of the most common ones, or close to one."
        " Use a few unrelated words, or a longer password."
    )
    screenshot(page, "en-password-reset-weak")
    assert take_refusals(errors, 422) == []

    page.get_by_label(re.compile("^New password")).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Save password").click()
    page.wait_for_url(f"{service.base_url}/login?done=reset")
    expect(page.locator(".notice.good")).to_have_text(
        "Your new password is saved, and every session was signed out. Sign in."
    )

    # The other device was signed out.
    elsewhere.goto(f"{service.base_url}/dashboard")
    expect(elsewhere).to_have_url(re.compile(re.escape(f"{service.base_url}/login")))
    expect(elsewhere.get_by_role("button", name="Sign out")).to_have_count(0)

    # The old password no longer opens the account; the new one does.
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation() as answer:
        page.locator("form[action='/login'] button[type=submit]").click()
    assert answer.value is not None and answer.value.status == 401
    expect(page.get_by_role("alert")).to_have_text(
        "That email and password do not match an account."
    )
    assert take_refusals(errors, 401) == []
    sign_in(page, service, email, NEW_PASSWORD)

    # The link worked once.
    used = page.goto(f"{service.base_url}{received.link('/password/reset/')}")
    assert used is not None and used.status == 400
    expect(page.get_by_role("heading", name="This link cannot be used", level=1)).to_be_visible()
    screenshot(page, "en-password-reset-used-link")
    assert take_refusals(errors, 400) == []


def test_sign_up_in_chinese_sends_a_chinese_mail(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service()
    email = unique_email("zh-signup")
    page = new_page(locale="zh-CN")
    errors = watch_console(page, service.base_url)

    register(page, service, email, name="韩梅梅")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_role("heading", name="请查收邮件", level=1)).to_be_visible()
    screenshot(page, "zh-CN-register-check-inbox")

    received = service.mail(email)
    _check_parts(received, email, "确认你的电子邮件地址", "/verify/")
    assert str(received.message["Content-Language"]) == "zh-CN"
    for part in (received.text, received.html):
        assert "欢迎使用 tokenbank。" in part
        assert "确认这个地址属于你，即可购买代币。" in part
        assert "确认我的地址" in part
    assert '<html lang="zh-CN">' in received.html
    show_mail(page, received)
    screenshot(page, "zh-CN-mail-verify")

    # Confirmed while signed in: back to the account page, which says so.
    sign_in(page, service, email)
    waiting = page.locator(UNCONFIRMED)
    expect(waiting).to_contain_text(
        f"确认电子邮件地址后才能购买代币：请打开我们发送到 {email} 的链接。"
    )
    expect(waiting.get_by_role("button", name="重新发送链接")).to_be_visible()
    _, opened = service.open_mail_link(page, email, "/verify/")
    assert opened is not None and opened.status == 200
    expect(page.get_by_role("heading", name="确认你的电子邮件地址", level=1)).to_be_visible()
    screenshot(page, "zh-CN-verify")
    page.get_by_role("button", name="确认我的地址").click()
    page.wait_for_url(f"{service.base_url}/account?changed=verified")
    expect(page.get_by_text("你的电子邮件地址已确认：现在可以购买代币了。")).to_be_visible()
    expect(page.locator(UNCONFIRMED)).to_have_count(0)
    assert errors == []


def test_a_confirmed_newcomer_sees_the_trial_and_when_it_expires(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    """With a trial configured, confirming the address gives it (once per person), and the
    dashboard says how many tokens expire when, in English and in Chinese."""
    service = live_service(
        extra_env={"TOKENBANK_TRIAL_TOKENS": "120", "TOKENBANK_TRIAL_DAYS": "14"}
    )
    email = unique_email("trial")
    page = new_page()
    errors = watch_console(page, service.base_url)
    register(page, service, email)
    page.goto(f"{service.base_url}{service.mail(email).link('/verify/')}")
    page.get_by_role("button", name="Confirm my address").click()
    page.wait_for_url(f"{service.base_url}/login?done=verified")
    confirmed_at = datetime.now(UTC)
    sign_in(page, service, email)
    card = page.locator("#balance-card")
    expect(card.locator("[data-available]")).to_have_attribute("data-available", "120")
    expiring = card.locator("[data-expiring] li")
    expect(expiring).to_have_count(1)
    expect(expiring).to_contain_text("120 tokens expire on")
    expect(expiring).to_contain_text("(from your free trial)")
    expires_at = datetime.fromisoformat(str(expiring.get_attribute("data-expires-at")))
    assert abs(expires_at - (confirmed_at + timedelta(days=14))) < timedelta(minutes=2)
    # The date as the page writes it: "Dec 21, 2026, ..." in the reader's zone (UTC here).
    expect(expiring).to_contain_text(f"{expires_at:%b} {expires_at.day}, {expires_at.year}")
    screenshot(page, "en-dashboard-trial")
    page.goto(f"{service.base_url}/account")
    page.locator("select[name=language]").select_option("zh-CN")
    page.locator("form[action='/account/language'] button[type=submit]").click()
    page.goto(f"{service.base_url}/dashboard")
    expect(page.locator("#balance-card [data-expiring] li")).to_contain_text(
        f"120 代币将于 {expires_at.year}年{expires_at.month}月{expires_at.day}日"
    )
    expect(page.locator("#balance-card [data-expiring] li")).to_contain_text("(来自免费试用)")
    screenshot(page, "zh-dashboard-trial")
    assert errors == []
