"""The browser-test machinery itself: Chromium reaches a live tokenbank, screenshots land
where reviewers look, and the CLI helpers act on that instance's database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page

from tests.browser.conftest import NewPage, StartService


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
