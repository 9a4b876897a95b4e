"""The browser-test machinery itself: Chromium reaches a live tokenbank, screenshots land
where reviewers look, the CLI helpers act on that instance's database, and its mail
reaches the test's SMTP server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page

from tests.browser.conftest import MAIL_FROM, NewPage, StartService


def test_login_page_renders_in_chromium(
    live_service: StartService,
    new_page: NewPage,
    screenshot: Callable[[Page, str], Path],
) -> None:
    service = live_service()
    assert httpx.get(f"{service.base_url}/healthz").json() == {"status": "ok"}
    page = new_page()

    response = page.goto(f"{service.base_url}/login")

    assert response is not None
    assert response.status == 200
    email = page.locator("form input[name='email']")
    email.wait_for(state="visible")
    assert email.is_visible()
    path = screenshot(page, "smoke-login")
    assert path.is_file()
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert path.stat().st_size > 5_000


def test_cli_creates_a_user_and_an_api_key_on_the_instance(live_service: StartService) -> None:
    service = live_service()

    created = service.create_user(
        "smoke-admin", "smoke-admin@example.com", "correct horse 9", admin=True
    )
    secret = service.api_key("read", "admin", name="smoke")

    assert created.stdout.strip() == "created admin user smoke-admin <smoke-admin@example.com>"
    assert secret.startswith("tb_")
    listed = service.cli("apikeys", "list").stdout
    assert secret[:9] in listed  # the key's prefix, never its secret
    assert secret not in listed
    balance = httpx.get(
        f"{service.base_url}/api/v1/users/smoke-admin/balance",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert balance.status_code == 200, balance.text
    packages = httpx.get(f"{service.base_url}/api/v1/packages")
    assert packages.status_code == 200
    assert packages.json(), "the catalog was not synced to the emulator"


def test_the_instance_mails_through_the_test_smtp_server(
    live_service: StartService, new_page: NewPage
) -> None:
    service = live_service()
    service.create_user("smoke-mail", "smoke-mail@example.com", "correct horse 9")
    page = new_page()
    page.goto(f"{service.base_url}/password/forgot")
    page.locator("form input[name='email']").fill("smoke-mail@example.com")
    page.locator("form[action='/password/forgot'] button[type=submit]").click()

    received = service.mail("smoke-mail@example.com")

    assert received.sender == "billing@tokenbank.test"  # the envelope's, from MAIL_FROM
    assert str(received.message["From"]) == MAIL_FROM
    assert received.recipients == ["smoke-mail@example.com"]
    path = received.link("/password/reset/")
    assert f"{service.base_url}{path}" in received.text  # TOKENBANK_PUBLIC_URL
    opened = service.open_mail_link(page, "smoke-mail@example.com", "/password/reset/")[1]
    assert opened is not None and opened.status == 200
    assert page.url == f"{service.base_url}{path}"
    # Sent by the app process itself, which records it a moment after the server took it.
    deadline = time.monotonic() + 10
    sent = ""
    while "reset" not in sent and time.monotonic() < deadline:
        sent = service.cli("mail", "list", "--status=sent", "--to=smoke-mail@example.com").stdout
    assert "reset" in sent, sent
