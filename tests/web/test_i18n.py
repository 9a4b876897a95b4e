"""The pages' languages: the translation catalogs are complete, the formats follow the
locale, and the language is chosen as documented (choice, cookie, Accept-Language)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from tests.web.browsing import form_token, new_user, signed_in_user
from tokenbank import identity, ledger
from tokenbank.billing.catalog import load_catalog
from tokenbank.db import Database
from tokenbank.web import i18n
from tokenbank.web.i18n import negotiate
from tokenbank.web.texts import describe

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "src" / "tokenbank" / "web"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _source_messages() -> set[str]:
    """Every string the pages' code and templates mark for translation, read fresh."""
    found: set[str] = set()
    for directory, method, options in (
        (WEB, "python", {}),
        (WEB / "templates", "jinja2", {"extensions": "jinja2.ext.i18n", "trimmed": "true"}),
    ):
        pattern = "**.py" if method == "python" else "**.html"
        for _, _, message, _, _ in extract_from_dir(
            directory,
            method_map=[(pattern, method)],
            options_map={pattern: options},
            keywords=KEYWORDS,
        ):
            found.update([message] if isinstance(message, str) else message[:1])
    return found


def _catalog(locale: str) -> dict[str, tuple[str, bool]]:
    """Message (a plural by its singular) -> (translation, fuzzy)."""
    with (WEB / "locales" / locale / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po, locale=locale)
    entries = {}
    for m in catalog:
        if not m.id:
            continue
        key = m.id if isinstance(m.id, str) else m.id[0]
        text = m.string if isinstance(m.string, str) else "".join(m.string or ())
        entries[key] = (text, m.fuzzy)
    return entries


def test_every_string_is_in_both_catalogs_and_translated_into_chinese() -> None:
    source = _source_messages()
    assert len(source) > 150
    for locale in ("en", "zh_CN"):
        catalog = _catalog(locale)
        missing = source - set(catalog)
        assert not missing, f"{locale}: run `make messages`; missing {sorted(missing)[:5]}"
        assert not set(catalog) - source, f"{locale}: obsolete entries"
    for message, (translation, fuzzy) in _catalog("zh_CN").items():
        assert translation and not fuzzy, f"untranslated: {message!r}"
        assert re.search(r"[\u4e00-\u9fff]", translation) or message in {
            "Webhooks",
            "Download CSV",
        }, f"not Chinese: {message!r} -> {translation!r}"
        assert sorted(PLACEHOLDER.findall(translation)) == sorted(PLACEHOLDER.findall(message))


def test_money_numbers_and_dates_follow_the_locale() -> None:
    en, zh = i18n.language("en"), i18n.language("zh-CN")
    assert (en.money(2000, "usd"), en.money(4500, "cny")) == ("$20.00", "CN¥45.00")
    assert (zh.money(4500, "cny"), zh.money(2000, "usd")) == ("¥45.00", "US$20.00")
    assert en.money(1000, "jpy") == "¥1,000"  # no minor unit
    assert en.unit_price(Decimal("20") / 2200, "usd") == "$0.009091"
    assert zh.percent(Decimal("0.18")) == "18%"
    assert (en.number(12345), en.signed(5), en.signed(-5)) == ("12,345", "+5", "-5")
    moment = datetime(2026, 11, 21, 8, 42, tzinfo=UTC)
    assert en.datetime(moment) == "Nov 21, 2026, 8:42\u202fAM UTC"  # CLDR: a narrow space
    assert zh.datetime(moment) == "2026年11月21日 08:42 UTC"
    assert zh.gettext("Buy tokens") == "购买代币"
    assert zh.gettext("Granted %(tokens)s tokens.", tokens="5") == "已发放 5 个代币。"


def test_an_unknown_language_falls_back_to_english() -> None:
    assert i18n.language("xx").tag == "en"
    chosen = i18n.choose(chosen=None, cookie="zh-CN", accept_language="en")
    assert chosen.tag == "zh-CN"
    assert i18n.choose(chosen="en", cookie="zh-CN", accept_language="zh").tag == "en"
    assert i18n.choose(chosen=None, cookie="bogus", accept_language=None).tag == "en"


def _item(
    kind: ledger.TransferKind, metadata: dict[str, object] | None, text: str
) -> ledger.HistoryItem:
    moment = datetime(2026, 11, 21, tzinfo=UTC)
    return ledger.HistoryItem(
        entry_id=1,
        transfer_id=1,
        kind=kind,
        amount=1,
        balance_after=1,
        description=text,
        metadata=metadata,
        refund_of_id=None,
        idempotency_key="k",
        event_at=moment,
        created_at=moment,
    )


def test_history_describes_what_tokenbank_wrote_in_the_page_language() -> None:
    catalog = load_catalog(ROOT / "catalogs" / "cny.toml")
    zh, en = i18n.language("zh-CN"), i18n.language("en")
    bought = {"purchase_id": 3, "package_id": "cny-500"}
    purchase = _item(ledger.TransferKind.PURCHASE, bought, "Purchase of cny-500")
    assert describe(purchase, lang=zh, catalog=catalog) == "购买标准包"
    assert describe(purchase, lang=en, catalog=catalog) == "Purchase of Standard"
    assert (
        describe(_item(ledger.TransferKind.BONUS, bought, ""), lang=zh, catalog=catalog)
        == "购买标准包赠送"
    )
    refund = _item(ledger.TransferKind.CLAWBACK, {"purchase_id": 3, "refund_id": "re_1"}, "x")
    assert describe(refund, lang=zh, catalog=catalog) == "已退款（订单 #3）"
    # What an app or an admin wrote is theirs: shown as written.
    spend = _item(ledger.TransferKind.SPEND, {"package_id": "cny-500"}, "chat reply")
    assert describe(spend, lang=zh, catalog=catalog) == "chat reply"


def test_language_follows_choice_then_cookie_then_accept_language(client: TestClient) -> None:
    chinese = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}
    login = client.get("/login", headers=chinese)
    assert '<html lang="zh-CN">' in login.text and "登录" in login.text
    assert login.headers["vary"] == "Cookie, Accept-Language"
    assert '<html lang="en">' in client.get("/login", headers={"Accept-Language": "fr"}).text
    # A visitor's menu choice, kept in a cookie, beats the browser.
    token = form_token(client)
    chosen = client.post(
        "/language",
        data={"language": "en", "csrf_token": token, "next": "/pricing"},
        follow_redirects=False,
    )
    assert chosen.status_code == 303 and chosen.headers["location"] == "/pricing"
    assert '<html lang="en">' in client.get("/login", headers=chinese).text
    client.cookies.delete("tb_lang")
    # Nothing chosen at registration: the browser decides, until the account page says.
    new_user(client)
    assert '<html lang="zh-CN">' in client.get("/dashboard", headers=chinese).text
    token = form_token(client, "/account")
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
    token = form_token(client)
    client.post("/language", data={"language": "zh-CN", "csrf_token": token})
    new_user(client)
    user = signed_in_user(client)
    with db.read() as conn:
        session = identity.session_user(conn, token=client.cookies["tb_session"])
    assert session is not None and session.user_id == user and session.language == "zh-CN"
    assert '<html lang="zh-CN">' in client.get("/dashboard").text


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


@pytest.mark.parametrize(
    ("tag", "zone", "full", "short", "name"),
    [
        ("en", None, "Dec 7, 2026, 4:07 AM UTC", "Dec 7, 4:07 AM", "UTC"),
        ("en", "Asia/Shanghai", "Dec 7, 2026, 12:07 PM GMT+08:00", "Dec 7, 12:07 PM", "China Time"),
        ("en", "America/New_York", "Dec 6, 2026, 11:07 PM ET", "Dec 6, 11:07 PM", "Eastern Time"),
        ("zh-CN", "Asia/Shanghai", "2026年12月7日 12:07 GMT+08:00", "12月7日 12:07", "中国时间"),
        ("en", "Mars/Olympus", "Dec 7, 2026, 4:07 AM UTC", "Dec 7, 4:07 AM", "UTC"),  # unknown
    ],
)
def test_times_in_the_readers_zone(
    tag: str, zone: str | None, full: str, short: str, name: str
) -> None:
    moment = datetime(2026, 12, 7, 4, 7, tzinfo=UTC)
    lang = i18n.zoned(tag, zone)
    assert _spaced(lang.datetime(moment)) == full
    if datetime.now(UTC).year == 2026:  # else the short form says the year
        assert _spaced(lang.when(moment)) == short
    assert lang.zone_name == name


def _spaced(text: str) -> str:
    """CLDR puts a narrow no-break space before AM/PM."""
    return text.replace("\u202f", " ")


def test_a_short_time_of_another_year_says_the_year() -> None:
    moment = datetime(2020, 1, 2, 3, 4, tzinfo=UTC)
    assert _spaced(i18n.zoned("en", None).when(moment)) == "Jan 2, 2020, 3:04 AM"


def test_prices_per_thousand_tokens_are_to_the_cent() -> None:
    assert i18n.language("en").per_thousand(Decimal("0.0090909091"), "usd") == "$9.09"
    assert i18n.language("zh-CN").per_thousand(Decimal("0.05"), "cny") == "¥50.00"


def test_a_time_carries_its_own_offset_summer_or_winter() -> None:
    berlin = i18n.zoned("en", "Europe/Berlin")
    assert berlin.datetime(datetime(2026, 7, 1, 12, tzinfo=UTC)).endswith("GMT+02:00")
    assert berlin.datetime(datetime(2026, 1, 1, 12, tzinfo=UTC)).endswith("GMT+01:00")


def test_a_zone_from_a_cookie_reaches_the_cache_only_when_known() -> None:
    """The browser's zone arrives in a cookie anyone can write: junk falls back to UTC and
    is never kept (a cache keyed by it would grow without bound)."""
    before = i18n.zoned.cache_info().currsize
    # "localtime" and the like are files of the zone database, not places: "localtime"
    # would be the server's own zone.
    for junk in ("Mars/Olympus", "x" * 4000, "../../etc/passwd", "", "localtime", "posixrules"):
        assert i18n.language("en").in_zone(junk).zone.key == "UTC"
    assert i18n.zoned.cache_info().currsize == before
    assert i18n.language("en").in_zone("Asia/Tokyo").zone.key == "Asia/Tokyo"
