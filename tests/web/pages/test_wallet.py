"""The wallet pages (web/pages/wallet.py) on SQLite and PostgreSQL: what each page shows, its
filters and pages, the CSV, the fragments."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tests.web.browsing import PASSWORD, confirm_address, form_token, new_user, sign_in
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
    assert exported.text.startswith("\ufeffDate (UTC),")  # a BOM: spreadsheets read UTF-8
    rows = list(csv.reader(io.StringIO(exported.text.removeprefix("\ufeff"))))
    assert rows[0] == [
        "Date (UTC)",
        "Kind",
        "Description",
        "Status",
        "Tokens",
        "Balance",
        "Transfer",
        "Feature",
        "Quantity",
    ]
    assert [(r[1], r[3], r[4], r[5]) for r in rows[1:]] == [
        ("Spend", "Completed", "-30", "70"),
        ("Grant", "Completed", "100", "100"),
    ]
    assert rows[2][2] == "'=HYPERLINK('http://evil')"
    assert rows[1][0].endswith("+00:00")  # ISO 8601 with its offset
    spends = client.get("/history.csv?kind=spend")
    assert 'filename="history-spend.csv"' in spends.headers["content-disposition"]
    spent = list(csv.reader(io.StringIO(spends.text.removeprefix("\ufeff"))))[1:]
    assert [(r[1], r[2]) for r in spent] == [("Spend", "image generation")]


def test_times_are_in_the_readers_zone_named_and_the_csv_in_their_language(
    client: TestClient, db: Database
) -> None:
    """The account's zone, else the browser's (the cookie the pages' script keeps), else
    UTC; the CSV a Chinese reader downloads is in Chinese, in their zone, with a status."""
    user = new_user(client)
    _spend_free(db, user)
    assert "Date (UTC)" in client.get("/history").text
    client.cookies.set("tb_tz", "America/New_York")
    assert "Date (Eastern Time)" in client.get("/history").text
    token = form_token(client, "/account")
    saved = client.post(
        "/account/time-zone",
        data={"time_zone": "Asia/Shanghai", "csrf_token": token},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    page = client.get("/history").text
    assert "Date (China Time)" in page  # the account's zone beats the browser's
    account = client.get("/account").text
    assert "Times on these pages are in China Time." in account
    assert '<option value="Asia/Shanghai" selected>' in account
    refused = client.post(
        "/account/time-zone", data={"time_zone": "Mars/Olympus", "csrf_token": token}
    )
    assert refused.status_code == 422 and "Choose one of the time zones offered." in refused.text
    lang = form_token(client, "/account")
    client.post("/account/language", data={"language": "zh-CN", "csrf_token": lang})
    rows = list(csv.reader(io.StringIO(client.get("/history.csv").text.removeprefix("\ufeff"))))
    assert rows[0] == [
        "日期（中国时间）",
        "类型",
        "说明",
        "状态",
        "代币",
        "余额",
        "转账编号",
        "功能",
        "数量",
    ]
    assert rows[1][0].endswith("+08:00") and rows[1][3] == "已完成"


def test_expiring_tokens_on_the_dashboard_and_their_expiry_in_the_history(
    client: TestClient, db: Database
) -> None:
    """The dashboard says how many tokens expire when and where they came from; once they
    have expired the history says so, in the reader's language."""
    user = new_user(client)
    now = datetime.now(UTC)
    soon, later = now + timedelta(seconds=2), now + timedelta(days=30)
    with db.transaction() as conn:
        for key, amount, source, expires_at in (
            ("trial", 120, ledger.Source.TRIAL, soon),
            ("promo", 1_500, ledger.Source.PROMO, later),
            ("kept", 10, ledger.Source.ADMIN, None),
        ):
            ledger.credit(
                conn,
                user_id=user,
                amount=amount,
                kind=ledger.TransferKind.GRANT,
                idempotency_key=key,
                source=source,
                expires_at=expires_at,
            )
    page = client.get("/dashboard").text
    assert "120 tokens expire on" in page and "(from your free trial)" in page
    assert "1,500 tokens expire on" in page and "(from a promotion)" in page
    assert page.index("120 tokens") < page.index("1,500 tokens")  # soonest first
    assert page.count("<li data-expires-at=") == 2  # what never expires is not listed
    with db.autocommit() as conn:
        assert ledger.expire_grants(conn, now=soon) == 1
    history = client.get("/history?kind=expiry").text
    assert "Free trial tokens expired" in history and history.count('<tr data-kind="') == 1
    token = form_token(client, "/account")
    client.post("/account/language", data={"language": "zh-CN", "csrf_token": token})
    page = client.get("/dashboard").text
    assert "1,500 代币将于" in page and "过期" in page and "（来自促销）" not in page
    assert "(来自促销)" in page
    assert "免费试用代币已过期" in client.get("/history").text


def test_history_rows_say_something_and_filter_only_what_can_happen(
    client: TestClient, db: Database
) -> None:
    user = new_user(client)
    _grant(db, user, 100, "g1")
    _spend(db, user, 5, "s-bare")  # no description
    page = client.get("/history").text
    assert 'class="dash"' in page  # not an empty cell
    assert 'value="expiry"' in page  # a grant or a pack may expire
    assert 'value="spend"' in page
    assert 'class="menu-toggle"' in page  # the header folds on a phone


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


def _spend_free(db: Database, user_id: str) -> None:
    _grant(db, user_id, 10, "tz-g")
    _spend(db, user_id, 1, "tz-s", description="one")


@pytest.mark.parametrize(
    ("given", "kept"), [("Asia/Shanghai", "China Time"), ("Mars/Olympus", "UTC")]
)
def test_sign_up_keeps_the_browsers_time_zone(
    client: TestClient, db: Database, given: str, kept: str
) -> None:
    """The page's script fills in the browser's zone; one this system does not know is
    dropped, never a reason to refuse the sign-up."""
    token = form_token(client, "/register")
    form = {"email": "zoe@example.com", "password": PASSWORD, "time_zone": given}
    answer = client.post("/register", data={**form, "csrf_token": token})
    assert answer.status_code == 200 and 'class="notice error"' not in answer.text
    confirm_address(client, "zoe@example.com")
    assert sign_in(client, "zoe@example.com").status_code == 303
    assert f"Times on these pages are in {kept}." in client.get("/account").text


TIMES = "\N{MULTIPLICATION SIGN}"


def test_a_feature_spend_says_how_many_of_what_in_the_readers_language(
    client: TestClient, db: Database
) -> None:
    user = new_user(client)
    _grant(db, user, 1000, "g1")
    with db.transaction() as conn:
        ledger.spend(
            conn, user_id=user, amount=120, idempotency_key="f1", feature="image", quantity=3
        )
        ledger.spend(
            conn,
            user_id=user,
            amount=50,
            idempotency_key="f2",
            feature="retired_feature",  # no longer in the catalog: named by its id
            quantity=2,
            description="old model",
        )
    page = client.get("/history").text
    assert f'<span class="feature">3 {TIMES} Image</span>' in page
    assert f'<span class="feature">2 {TIMES} retired_feature</span> · old model' in page
    assert f"3 {TIMES} Image" in client.get("/dashboard").text
    rows = list(csv.reader(io.StringIO(client.get("/history.csv").text.removeprefix("\ufeff"))))
    assert [(r[4], r[-2], r[-1]) for r in rows[1:]] == [
        ("-50", "retired_feature", "2"),
        ("-120", "Image", "3"),
        ("1000", "", ""),
    ]
    lang = form_token(client, "/account")
    client.post("/account/language", data={"language": "zh-CN", "csrf_token": lang})
    assert f'<span class="feature">3 {TIMES} 图片</span>' in client.get("/history").text
