"""The pages' languages: Babel catalogs, the choice of language, and locale-aware formats.

Every string the pages show goes through gettext; the catalogs are the ``.po`` files under
``web/locales`` (kept up to date with ``make messages``), compiled in memory at start-up so
the repository holds no binary ``.mo`` files. A request's language is the signed-in user's
choice, else the ``tb_lang`` cookie (the language menu of signed-out visitors), else the
best match for the browser's ``Accept-Language``, else English.

Times are shown in the reader's time zone: the one kept on their account, else the one
their browser reports (the ``tb_tz`` cookie tokenbank.js keeps up to date), else UTC.
"""

from __future__ import annotations

import io
import zoneinfo
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import (
    format_date,
    format_datetime,
    format_skeleton,
    format_time,
    get_timezone_name,
)
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal, format_percent
from babel.support import NullTranslations, Translations
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup

from tokenbank.billing.money import to_major
from tokenbank.identity import known_time_zone
from tokenbank.users.models import LANGUAGES

Moment = datetime  # for annotations inside Language, where ``datetime`` is its method

LOCALES_DIR = Path(__file__).parent / "locales"
DEFAULT = "en"
LANGUAGE_COOKIE = "tb_lang"
#: The browser's time zone, as its script reports it (IANA name).
ZONE_COOKIE = "tb_tz"
#: How each language names itself, for the language menus.
LANGUAGE_NAMES = {"en": "English", "zh-CN": "简体中文"}


def N_(message: str) -> str:  # noqa: N802 - the conventional gettext marker
    """Mark a string for extraction; it is translated where it is shown."""
    return message


@cache
def _translations(language: str) -> NullTranslations:
    po = LOCALES_DIR / language.replace("-", "_") / "LC_MESSAGES" / "messages.po"
    if not po.exists():
        return NullTranslations()
    with po.open("rb") as source:
        catalog = read_po(source, locale=language.replace("-", "_"))
    compiled = io.BytesIO()
    write_mo(compiled, catalog)  # fuzzy entries are left out, as gettext does
    compiled.seek(0)
    return Translations(compiled)


@dataclass(frozen=True)
class Language:
    """One language's strings and formats, shared by every request in it."""

    tag: str  # BCP 47, as in <html lang>: "en", "zh-CN"
    translations: NullTranslations = field(repr=False)
    locale: Locale = field(repr=False)
    zone: zoneinfo.ZoneInfo = field(default=zoneinfo.ZoneInfo("UTC"))

    def gettext(self, message: str, **variables: Any) -> str:
        text = self.translations.gettext(message)
        return text % variables if variables else text

    def ngettext(self, singular: str, plural: str, n: int, **variables: Any) -> str:
        text = self.translations.ngettext(singular, plural, n)
        return text % {"num": n, **variables}

    def number(self, value: int | Decimal) -> str:
        return format_decimal(value, locale=self.locale)

    def signed(self, value: int) -> str:
        return ("+" if value > 0 else "") + format_decimal(value, locale=self.locale)

    def money(self, amount: int, currency: str) -> str:
        """``amount`` in minor units of ``currency``, as this locale writes it."""
        return format_currency(to_major(amount, currency), currency.upper(), locale=self.locale)

    def unit_price(self, major: Decimal, currency: str) -> str:
        """A price per token: a fraction of a cent needs more digits than the currency has."""
        return format_currency(
            major,
            currency.upper(),
            format="¤#,##0.00####",
            currency_digits=False,
            locale=self.locale,
        )

    def per_thousand(self, price_per_token: Decimal, currency: str) -> str:
        """What 1,000 tokens cost, to the currency's cents: "$9.09", not "$0.009091"."""
        return format_currency(
            (price_per_token * 1000).quantize(Decimal("0.01")), currency.upper(), locale=self.locale
        )

    def percent(self, fraction: Decimal | float) -> str:
        return format_percent(fraction, locale=self.locale)

    def datetime(self, moment: datetime) -> str:
        """A moment in the reader's zone, named: the locale's medium date with a short time
        ("Nov 21, 2026, 8:42 AM GMT+08:00", "2026年11月21日 08:42 UTC")."""
        local = moment.astimezone(self.zone)
        pattern = str(self.locale.datetime_formats["medium"])
        return (
            pattern.replace("{1}", format_date(local, "medium", locale=self.locale)).replace(
                "{0}", format_time(local, "short", tzinfo=self.zone, locale=self.locale)
            )
            + " "
            + self._zone_at(local)
        )

    def when(self, moment: Moment) -> str:
        """A moment in the reader's zone, short enough for a table on a phone ("Dec 7,
        12:07 PM"; the year only when it is not this one). The table's heading names the
        zone (``zone_name``)."""
        local = moment.astimezone(self.zone)
        this_year = local.year == datetime.now(self.zone).year
        day = format_skeleton("MMMd" if this_year else "yMMMd", local, locale=self.locale)
        time = format_time(local, "short", tzinfo=self.zone, locale=self.locale)
        pattern = str(self.locale.datetime_formats["medium"])
        return pattern.replace("{1}", day).replace("{0}", time)

    @property
    def zone_name(self) -> str:
        """The zone as this locale calls it ("China Time", "中国时间", "UTC")."""
        if self.zone.key in UTC_ZONES:
            return "UTC"
        return str(get_timezone_name(self.zone, "long", locale=self.locale))

    def _zone_at(self, local: Moment) -> str:
        """A short name for the zone after a time: "UTC", "ET", else its offset at that
        moment (summer and winter differ)."""
        if self.zone.key in UTC_ZONES:
            return "UTC"
        short = str(get_timezone_name(self.zone, "short", locale=self.locale))
        if len(short) <= 5:
            return short
        return str(format_datetime(local, "ZZZZ", tzinfo=self.zone, locale=self.locale))

    def in_zone(self, name: str | None) -> Language:
        """This language with times in zone ``name`` (an IANA name; unknown ones: UTC).
        ``name`` may come from a cookie: only a zone this system knows reaches the cache."""
        if not known_time_zone(name):
            return language(self.tag)
        return zoned(self.tag, name)

    def jinja_globals(self) -> dict[str, Any]:
        """``gettext``/``ngettext`` for Jinja's i18n extension (new-style: the translation
        is trusted, the variables are escaped) and ``_`` for plain calls."""

        @pass_context
        def gettext(context: Context, message: str, **variables: Any) -> str:
            text = self.translations.gettext(message)
            if context.eval_ctx.autoescape:
                return Markup(text) % variables  # noqa: S704 - our catalogs; values escaped
            return text % variables

        @pass_context
        def ngettext(context: Context, singular: str, plural: str, n: int, **variables: Any) -> str:
            text = self.translations.ngettext(singular, plural, n)
            values = {"num": n, **variables}
            if context.eval_ctx.autoescape:
                return Markup(text) % values  # noqa: S704 - our catalogs; values escaped
            return text % values

        return {"gettext": gettext, "ngettext": ngettext, "_": gettext}


UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Zulu", "Etc/Zulu"})


@cache
def zoned(tag: str, zone: str | None) -> Language:
    """``language(tag)`` in time zone ``zone``, kept per pair; callers pass only known zones
    (``Language.in_zone``), so the cache holds at most languages times zones."""
    base = language(tag)
    if not zone or zone == base.zone.key or not known_time_zone(zone):
        return base
    try:
        return replace(base, zone=zoneinfo.ZoneInfo(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return base


@cache
def language(tag: str) -> Language:
    if tag not in LANGUAGES:
        tag = DEFAULT
    return Language(
        tag=tag, translations=_translations(tag), locale=Locale.parse(tag.replace("-", "_"))
    )


def choose(*, chosen: str | None, cookie: str | None, accept_language: str | None) -> Language:
    """The language for a request: the user's choice, the visitor's cookie, the browser's."""
    for tag in (chosen, cookie):
        if tag in LANGUAGES:
            return language(tag)
    return language(negotiate(accept_language or ""))


def negotiate(header: str) -> str:
    """The best supported language for an ``Accept-Language`` header (RFC 9110 weights).

    Any Chinese the browser accepts is served as Simplified Chinese, the one Chinese
    translation there is; ``zh-TW`` or ``zh-Hant`` included, as better than English.
    """
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and weight > 0:
            ranked.append((-weight, position, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        primary = tag.split("-")[0]
        if primary == "zh":
            return "zh-CN"
        if primary == "en":
            return "en"
        if tag == "*":
            return DEFAULT
    return DEFAULT
