"""One error tree: every error tokenbank raises on purpose is defined in ``tokenbank.errors``,
and each has an HTTP status, a command-line exit status and a page text in every language
the pages speak. A new error missing from any of the three tables fails here."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

import tokenbank
from tokenbank import errors
from tokenbank.cli.common import EXIT_CODES
from tokenbank.web.problems import STATUS
from tokenbank.web.texts import ERROR_TEXTS, FIELD_TEXTS

LOCALES = Path(tokenbank.__file__).parent / "web" / "locales"


def _every_error() -> list[type[errors.TokenbankError]]:
    for module in pkgutil.walk_packages(tokenbank.__path__, "tokenbank."):
        if ".migrations." not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: list[type[errors.TokenbankError]] = []
    pending: list[type[errors.TokenbankError]] = [errors.TokenbankError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return sorted(found, key=lambda kind: kind.__name__)


ERRORS = _every_error()


def test_every_error_is_defined_in_the_tree() -> None:
    strays = [f"{k.__module__}.{k.__qualname__}" for k in ERRORS if k.__module__ != errors.__name__]
    assert strays == []
    assert len(ERRORS) >= 40


@pytest.mark.parametrize("kind", ERRORS, ids=lambda kind: kind.__name__)
def test_every_error_has_a_code_a_status_an_exit_and_a_text(
    kind: type[errors.TokenbankError],
) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", kind.code)
    assert kind in STATUS and 400 <= STATUS[kind] <= 599
    assert kind in EXIT_CODES and 1 <= EXIT_CODES[kind] <= 125
    assert kind in ERROR_TEXTS and ERROR_TEXTS[kind].strip()


def test_the_tables_name_nothing_outside_the_tree() -> None:
    for table in (STATUS, EXIT_CODES, ERROR_TEXTS):
        assert set(table) == set(ERRORS)


def test_statuses_follow_the_families() -> None:
    """A subclass answers like its family unless it says more precisely why."""
    families = {
        errors.NotFound: 404,
        errors.Conflict: 409,
        errors.Unauthenticated: 401,
        errors.Unavailable: 503,
        errors.NotConfigured: 503,
        errors.PaymentProviderError: 502,
    }
    for family, status in families.items():
        for kind in ERRORS:
            if issubclass(kind, family):
                assert STATUS[kind] == status, kind.__name__
    assert {EXIT_CODES[k] for k in ERRORS if issubclass(k, errors.Unavailable)} == {10}


@pytest.mark.parametrize("language", ["en", "zh_CN"])
def test_every_page_text_is_in_the_catalogs(language: str) -> None:
    with (LOCALES / language / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po)
    for text in {*ERROR_TEXTS.values(), *FIELD_TEXTS.values()}:
        message = catalog.get(text)
        assert message is not None, f"{text!r} is not in the {language} catalog"
        if language != "en":
            assert message.string, f"{text!r} is not translated into {language}"
