"""3D Secure in a real browser: Stripe's card 4000 0025 0000 3155 asks its holder to
authenticate, on Stripe Checkout (the emulator's hosted page) and in the card form's modal
(the Stripe.js stand-in's challenge frame over tokenbank's own dialog, under its CSP). A
completed challenge pays and credits the tokens; a failed one credits nothing, says why, and
another card then pays."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import ConsoleMessage, FrameLocator, Locator, Page, expect

from tests.browser.conftest import (
    LiveService,
    NewPage,
    StartService,
    pay_on_hosted_page,
    register_confirmed,
    unique_email,
    watch_console,
)

Shoot = Callable[[Page, str], Path]
AUTHENTICATION_CARD = "4000 0025 0000 3155"
GOOD_CARD = "4242 4242 4242 4242"
FAILED = "We are unable to authenticate your payment method"
CHALLENGE = "3D Secure authentication"


def _available(page: Page, service: LiveService) -> int:
    page.goto(f"{service.base_url}/dashboard")
    widget = page.locator("#balance-widget [data-available]")
    return int(widget.get_attribute("data-available") or -1)


def _policy_refusals(page: Page) -> list[str]:
    """Every Content-Security-Policy refusal the browser logs, whichever script caused it
    (``watch_console`` keeps to our pages' own locations; the stand-in's script is not)."""
    refusals: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refusals.append(f"{message.location.get('url', '')}: {message.text}")

    page.on("console", console)
    return refusals


def _to_checkout(page: Page, service: LiveService) -> None:
    page.goto(f"{service.base_url}/pricing")
    page.locator("[data-package=starter] button[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(service.emulator_url) + "/checkout/"))


def _checkout_challenge(page: Page, service: LiveService) -> None:
    pay_on_hosted_page(page, AUTHENTICATION_CARD)
    page.wait_for_url(
        re.compile(re.escape(service.emulator_url) + r"/checkout/cs_test_\w+/authenticate$")
    )
    expect(page.get_by_role("heading", name="Confirm this payment with your bank")).to_be_visible()
    expect(page.get_by_text("ending in 3155")).to_be_visible()


def test_checkout_challenge_completed_pays_and_failed_lets_another_card_pay(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service()
    page = new_page()
    errors = watch_console(page, service.base_url)
    refusals = _policy_refusals(page)
    register_confirmed(page, service, unique_email("3ds-checkout"))

    _to_checkout(page, service)
    _checkout_challenge(page, service)
    screenshot(page, "en-3ds-checkout-challenge")
    page.get_by_role("button", name="Complete authentication").click()
    page.wait_for_url(re.compile(r"/purchase/success\?session_id="))
    expect(page.get_by_role("heading", name="Thank you!")).to_be_visible()
    expect(page.locator("[data-credited]")).to_have_attribute("data-credited", "500")
    assert _available(page, service) == 500

    _to_checkout(page, service)
    checkout_url = page.url
    _checkout_challenge(page, service)
    page.get_by_role("button", name="Fail authentication").click()
    page.wait_for_url(checkout_url)
    expect(page.get_by_role("alert")).to_contain_text(FAILED)
    screenshot(page, "en-3ds-checkout-failed")
    assert _available(page, service) == 500  # nothing credited for the failed challenge
    page.goto(checkout_url)
    expect(page.get_by_role("alert")).to_contain_text(FAILED)
    pay_on_hosted_page(page, GOOD_CARD)
    page.wait_for_url(re.compile(r"/purchase/success\?session_id="))
    expect(page.locator("[data-credited]")).to_have_attribute("data-credited", "500")
    assert _available(page, service) == 1000

    page.goto(f"{service.base_url}/history")
    expect(page.locator("tbody tr[data-kind=purchase]")).to_have_count(2)
    assert errors == []
    assert refusals == []


def _card_form(page: Page, service: LiveService) -> Locator:
    """The pricing page's card form modal for the Starter package."""
    page.goto(f"{service.base_url}/pricing")
    page.locator("[data-package=starter] button[type=submit]").click()
    dialog = page.locator("dialog.modal")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Card number")).to_be_visible()
    return dialog


def _pay_in_modal(dialog: Locator, card: str) -> None:
    dialog.get_by_label("Card number").fill(card)
    dialog.get_by_label("Expiry").fill("12 / 34")
    dialog.get_by_label("CVC").fill("123")
    dialog.get_by_role("button", name="Pay now").click()


def _modal_challenge(page: Page) -> tuple[Locator, FrameLocator]:
    """The stand-in's challenge over the page, and the bank's page in its frame."""
    challenge = page.get_by_role("dialog", name=CHALLENGE)
    expect(challenge).to_be_visible()
    bank = page.frame_locator(f"iframe[title='{CHALLENGE}']")
    expect(bank.get_by_text("ending in 3155")).to_be_visible()
    return challenge, bank


def test_card_form_challenge_completed_pays_and_failed_lets_another_card_pay(
    live_service: StartService, new_page: NewPage, screenshot: Shoot
) -> None:
    service = live_service(purchase_flow="payment_intent")
    page = new_page()
    errors = watch_console(page, service.base_url)
    refusals = _policy_refusals(page)
    register_confirmed(page, service, unique_email("3ds-modal"))

    dialog = _card_form(page, service)
    _pay_in_modal(dialog, AUTHENTICATION_CARD)
    challenge, bank = _modal_challenge(page)
    screenshot(page, "en-3ds-modal-challenge")
    bank.get_by_role("button", name="Complete authentication").click()
    expect(challenge).to_have_count(0)
    expect(dialog.get_by_role("heading", name="Thank you!")).to_be_visible()
    expect(dialog.locator("[data-credited]")).to_have_attribute("data-credited", "500")
    dialog.get_by_role("button", name="Close").click()
    page.wait_for_url(f"{service.base_url}/dashboard")
    assert _available(page, service) == 500

    dialog = _card_form(page, service)
    _pay_in_modal(dialog, AUTHENTICATION_CARD)
    challenge, bank = _modal_challenge(page)
    bank.get_by_role("button", name="Fail authentication").click()
    expect(challenge).to_have_count(0)
    expect(dialog.get_by_role("alert")).to_contain_text(FAILED)
    screenshot(page, "en-3ds-modal-failed")

    # Closing the challenge (its button, or Escape) instead of answering it fails it too.
    dialog.get_by_role("button", name="Pay now").click()
    challenge, bank = _modal_challenge(page)
    challenge.get_by_role("button", name="Close").click()
    expect(challenge).to_have_count(0)
    expect(dialog.get_by_role("alert")).to_contain_text(FAILED)
    dialog.get_by_role("button", name="Pay now").click()
    challenge, bank = _modal_challenge(page)
    page.keyboard.press("Escape")  # Escape closes the challenge, not the card form under it
    expect(challenge).to_have_count(0)
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("alert")).to_contain_text(FAILED)

    _pay_in_modal(dialog, GOOD_CARD)
    expect(dialog.get_by_role("heading", name="Thank you!")).to_be_visible()
    expect(dialog.locator("[data-credited]")).to_have_attribute("data-credited", "500")
    dialog.get_by_role("button", name="Close").click()
    page.wait_for_url(f"{service.base_url}/dashboard")
    assert _available(page, service) == 1000
    page.goto(f"{service.base_url}/history")
    expect(page.locator("tbody tr[data-kind=purchase]")).to_have_count(2)
    assert errors == []
    assert refusals == []
