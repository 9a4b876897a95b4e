"""The wallet pages (web/pages/wallet.py) on SQLite and PostgreSQL: what each page shows, its
filters and pages, the CSV, the fragments."""

from __future__ import annotations

import csv
import io
import re

from fastapi.testclient import TestClient

from tests.web.browsing import new_user
from tokenbank import ledger
from tokenbank.db import Database


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


def test_dashboard_shows_balance_low_balance_warning_and_last_five(
    client: TestClient, db: Database
) -> None:
    user = new_user(client)
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


def test_history_keyset_pages_of_fifty_with_kind_filter(client: TestClient, db: Database) -> None:
    user = new_user(client)
    _grant(db, user, 1_000, "g1")
    for n in range(60):
        _spend(db, user, 1, f"s{n}")
    first = client.get("/history").text
    assert first.count('<tr data-kind="') == 50
    cursor = re.search(r'href="/history\?before=(\d+)"', first)
    assert cursor is not None
    second = client.get(f"/history?before={cursor.group(1)}").text
    assert second.count('<tr data-kind="') == 11  # 10 spends and the grant
    assert 'rel="next"' not in second
    grants = client.get("/history?kind=grant").text
    assert grants.count('<tr data-kind="grant"') == 1 and 'data-kind="spend"' not in grants
    assert client.get("/history?kind=nonsense").status_code == 200  # shows everything


def test_csv_exports_the_filtered_view_and_defuses_formulas(
    client: TestClient, db: Database
) -> None:
    user = new_user(client)
    _grant(db, user, 100, "g1", reason="=HYPERLINK('http://evil')")
    _spend(db, user, 30, "s1", description="image generation")
    exported = client.get("/history.csv")
    assert exported.headers["content-disposition"] == 'attachment; filename="history.csv"'
    assert exported.text.startswith("\ufeffdate_utc,")  # a BOM: spreadsheets read UTF-8
    rows = list(csv.DictReader(io.StringIO(exported.text.removeprefix("\ufeff"))))
    assert [(r["kind"], r["tokens"], r["balance_after"]) for r in rows] == [
        ("spend", "-30", "70"),
        ("grant", "100", "100"),
    ]
    assert rows[1]["description"] == "'=HYPERLINK('http://evil')"
    spends = client.get("/history.csv?kind=spend")
    assert 'filename="history-spend.csv"' in spends.headers["content-disposition"]
    spent = csv.DictReader(io.StringIO(spends.text.removeprefix("\ufeff")))
    assert [(r["kind"], r["description"]) for r in spent] == [("spend", "image generation")]


def test_wallet_pages_need_a_session(client: TestClient) -> None:
    for path in ("/dashboard", "/history", "/history.csv", "/account"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == f"/login?next={path}"
    widget = client.get("/fragments/balance-widget")
    assert widget.status_code == 286 and widget.text == ""  # htmx stops polling


def test_fragments_render_the_current_balance(client: TestClient, db: Database) -> None:
    user = new_user(client)
    _grant(db, user, 42, "g1")
    widget = client.get("/fragments/balance-widget")
    assert widget.status_code == 200 and 'data-available="42"' in widget.text
    assert "<html" not in widget.text
    card = client.get("/fragments/balance-card")
    assert 'id="balance-card"' in card.text and "data-low-balance" in card.text


def test_the_history_keeps_its_earlier_address(client: TestClient) -> None:
    new_user(client)
    for old, new in (
        ("/transactions", "/history"),
        ("/transactions?kind=spend&before=9", "/history?kind=spend&before=9"),
        ("/transactions.csv?kind=grant", "/history.csv?kind=grant"),
    ):
        moved = client.get(old, follow_redirects=False)
        assert moved.status_code == 308 and moved.headers["location"] == new
