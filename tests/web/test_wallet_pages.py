"""The wallet and admin pages and their languages, through the app in-process, on SQLite
and PostgreSQL: what each page shows, its filters and pages, the CSV, who may see what."""

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient

from tests.web.test_pages import _csrf, _register, _user_id
from tokenbank import identity, ledger
from tokenbank.db import Database
from tokenbank.web.i18n import negotiate


def _grant(db: Database, user_id: str, amount: int, key: str, reason: str = "gift") -> None:
    with db.transaction() as conn:
        ledger.credit(
            conn,
            user_id=user_id,
            amount=amount,
            kind=ledger.TransferKind.GRANT,
            idempotency_key=key,
            description=reason,
        )


def _spend(db: Database, user_id: str, amount: int, key: str, description: str = "") -> None:
    with db.transaction() as conn:
        ledger.spend(
            conn, user_id=user_id, amount=amount, idempotency_key=key, description=description
        )


def _signed_in(client: TestClient, email: str = "ann@example.com") -> str:
    assert _register(client, email).status_code == 303
    return _user_id(client)


def test_dashboard_shows_balance_low_balance_warning_and_last_five(
    client: TestClient, db: Database
) -> None:
    user = _signed_in(client)
    assert "data-low-balance" in client.get("/dashboard").text  # 0 < the default of 100
    _grant(db, user, 1_000, "g1")
    for n in range(7):
        _spend(db, user, 10, f"s{n}")
    page = client.get("/dashboard").text
    assert 'data-available="930"' in page
    assert "data-low-balance" not in page
    assert re.search(r"data-spent>\s*70<", page)
    assert page.count('<tr data-kind="') == 5
    assert 'id="balance-widget"' in page and 'hx-trigger="every 10s"' in page


def test_transactions_keyset_pages_of_fifty_with_kind_filter(
    client: TestClient, db: Database
) -> None:
    user = _signed_in(client)
    _grant(db, user, 1_000, "g1")
    for n in range(60):
        _spend(db, user, 1, f"s{n}")
    first = client.get("/transactions").text
    assert first.count('<tr data-kind="') == 50
    cursor = re.search(r'href="/transactions\?before=(\d+)"', first)
    assert cursor is not None
    second = client.get(f"/transactions?before={cursor.group(1)}").text
    assert second.count('<tr data-kind="') == 11  # 10 spends and the grant
    assert 'rel="next"' not in second
    grants = client.get("/transactions?kind=grant").text
    assert grants.count('<tr data-kind="grant"') == 1 and 'data-kind="spend"' not in grants
    assert client.get("/transactions?kind=nonsense").status_code == 200  # shows everything


def test_csv_exports_the_filtered_view_and_defuses_formulas(
    client: TestClient, db: Database
) -> None:
    user = _signed_in(client)
    _grant(db, user, 100, "g1", reason="=HYPERLINK('http://evil')")
    _spend(db, user, 30, "s1", description="image generation")
    exported = client.get("/transactions.csv")
    assert exported.headers["content-disposition"] == 'attachment; filename="transactions.csv"'
    assert exported.text.startswith("\ufeffdate_utc,")  # a BOM: spreadsheets read UTF-8
    rows = list(csv.DictReader(io.StringIO(exported.text.removeprefix("\ufeff"))))
    assert [(r["kind"], r["tokens"], r["balance_after"]) for r in rows] == [
        ("spend", "-30", "70"),
        ("grant", "100", "100"),
    ]
    assert rows[1]["description"] == "'=HYPERLINK('http://evil')"
    spends = client.get("/transactions.csv?kind=spend")
    assert 'filename="transactions-spend.csv"' in spends.headers["content-disposition"]
    spent = csv.DictReader(io.StringIO(spends.text.removeprefix("\ufeff")))
    assert [(r["kind"], r["description"]) for r in spent] == [("spend", "image generation")]


def test_wallet_pages_need_a_session(client: TestClient) -> None:
    for path in ("/dashboard", "/transactions", "/transactions.csv", "/account"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == f"/login?next={path}"
    widget = client.get("/fragments/balance-widget")
    assert widget.status_code == 286 and widget.text == ""  # htmx stops polling


def test_fragments_render_the_current_balance(client: TestClient, db: Database) -> None:
    user = _signed_in(client)
    _grant(db, user, 42, "g1")
    widget = client.get("/fragments/balance-widget")
    assert widget.status_code == 200 and 'data-available="42"' in widget.text
    assert "<html" not in widget.text
    card = client.get("/fragments/balance-card")
    assert 'id="balance-card"' in card.text and "data-low-balance" in card.text


def test_language_follows_choice_then_cookie_then_accept_language(client: TestClient) -> None:
    chinese = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}
    login = client.get("/login", headers=chinese)
    assert '<html lang="zh-CN">' in login.text and "登录" in login.text
    assert login.headers["vary"] == "Cookie, Accept-Language"
    assert '<html lang="en">' in client.get("/login", headers={"Accept-Language": "fr"}).text
    # A visitor's menu choice, kept in a cookie, beats the browser.
    token = _csrf(client)
    chosen = client.post(
        "/language",
        data={"language": "en", "csrf_token": token, "next": "/pricing"},
        follow_redirects=False,
    )
    assert chosen.status_code == 303 and chosen.headers["location"] == "/pricing"
    assert '<html lang="en">' in client.get("/login", headers=chinese).text
    client.cookies.delete("tb_lang")
    # Nothing chosen at registration: the browser decides, until the account page says.
    _register(client)
    assert '<html lang="zh-CN">' in client.get("/dashboard", headers=chinese).text
    token = _csrf(client, "/account")
    saved = client.post(
        "/account/language",
        data={"language": "en", "csrf_token": token},
        headers=chinese,
        follow_redirects=False,
    )
    assert saved.headers["location"] == "/account?changed=language"
    account = client.get("/account?changed=language", headers=chinese).text
    assert '<html lang="en">' in account and "Language saved." in account
    bad = client.post(
        "/account/language", data={"language": "xx", "csrf_token": token}, headers=chinese
    )
    assert bad.status_code == 422 and "Choose one of the languages offered." in bad.text


def test_registration_keeps_the_language_picked_before(client: TestClient, db: Database) -> None:
    token = _csrf(client)
    client.post("/language", data={"language": "zh-CN", "csrf_token": token})
    _register(client)
    user = _user_id(client)
    with db.read() as conn:
        session = identity.session_user(conn, token=client.cookies["tb_session"])
    assert session is not None and session.user_id == user and session.language == "zh-CN"
    assert '<html lang="zh-CN">' in client.get("/dashboard").text


def test_admin_pages_are_for_admins(client: TestClient, db: Database) -> None:
    user = _signed_in(client)
    for path in ("/admin", "/admin/purchases", "/admin/webhooks", "/admin/catalog"):
        assert client.get(path).status_code == 403
    token = _csrf(client, "/dashboard")
    refused = client.post(
        f"/admin/users/{user}/grants",
        data={"amount": "5", "reason": "x", "key": "k1", "csrf_token": token},
    )
    assert refused.status_code == 403
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).available == 0


def test_admin_finds_a_user_and_grants_once_per_form(client: TestClient, db: Database) -> None:
    user = _signed_in(client, "boss@example.com")
    with db.transaction() as conn:
        identity.set_admin(conn, user_id=user, admin=True)
    found = client.get("/admin?q=boss@example.com", follow_redirects=False)
    assert found.headers["location"] == f"/admin/users/{user}"
    assert "No user matches" in client.get("/admin?q=nobody").text
    page = client.get(f"/admin/users/{user}").text
    key = re.search(r'name="key" value="([^"]+)"', page)
    assert key is not None
    token = _csrf(client, f"/admin/users/{user}")
    form = {"amount": "250", "reason": "support", "key": key.group(1), "csrf_token": token}
    for _ in range(2):
        sent = client.post(f"/admin/users/{user}/grants", data=form, follow_redirects=False)
        assert sent.headers["location"] == f"/admin/users/{user}?granted=250"
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).total_granted == 250
        (item,) = ledger.history(conn, user_id=user).items
    assert item.description == "support" and item.metadata == {"granted_by": f"user:{user}"}
    for amount, reason in (("0", "support"), ("ten", "support"), ("5", " ")):
        bad = client.post(
            f"/admin/users/{user}/grants",
            data={"amount": amount, "reason": reason, "key": f"k-{amount}", "csrf_token": token},
        )
        assert bad.status_code == 422
    assert client.get("/admin/users/nobody").status_code == 404


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("zh-CN", "zh-CN"),
        ("zh-TW,en;q=0.1", "zh-CN"),
        ("en-GB,zh;q=0.8", "en"),
        ("fr-FR,de;q=0.9", "en"),
        ("fr;q=0.9,zh;q=0.5", "zh-CN"),
        ("", "en"),
        ("zh;q=0,en", "en"),
        ("*", "en"),
    ],
)
def test_accept_language_negotiation(header: str, expected: str) -> None:
    assert negotiate(header) == expected
