"""Settings and secrets: development generates and keeps them, production insists on them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, SecretStr

from tokenbank.billing import PurchaseFlow, billing_from_settings
from tokenbank.config import Settings, env_files, instance_file, with_secrets
from tokenbank.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[1]
REAL = {
    "secret_key": "Jv3q9nq2u6ZrC0bT1pWm8sYd4kF7hL5xA-QeR_tUo2c",
    "stripe_secret_key": "sk_live_51Pq8rTzYxWvUtSrQpOnMlKjIh",
    "stripe_webhook_secret": "whsec_9aB3cD5eF7gH1iJ3kL5mN7oP9q",
    "public_url": "https://tokens.example",
    "smtp_url": "smtp+starttls://tokenbank:Zq8pW3nV@mail.tokens.example:587",
    "mail_from": "tokenbank <no-reply@tokens.example>",
}


def _settings(**values: Any) -> Settings:
    return Settings.model_validate(values)


def test_development_generates_one_key_and_keeps_it(tmp_path: Path) -> None:
    first = with_secrets(_settings(var_dir=tmp_path / "var"))
    again = with_secrets(_settings(var_dir=tmp_path / "var"))
    assert first.secret_key is not None and again.secret_key is not None
    key = first.secret_key.get_secret_value()
    assert len(key) >= 32 and key == again.secret_key.get_secret_value()
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert list((tmp_path / "var").iterdir()) == [tmp_path / "var" / "secret_key"]


def test_development_uses_a_given_key(tmp_path: Path) -> None:
    given = with_secrets(_settings(var_dir=tmp_path, secret_key="mine-" + "k" * 40))
    assert given.secret_key == SecretStr("mine-" + "k" * 40)
    assert not (tmp_path / "secret_key").exists()


def test_production_accepts_real_secrets() -> None:
    settings = with_secrets(_settings(env="production", **REAL))
    assert settings.secure_cookies


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("secret_key", None),
        ("secret_key", "change-me-please-change-me-please-change-me"),
        ("secret_key", "too-short-to-be-random"),
        ("stripe_secret_key", None),
        ("stripe_secret_key", "sk_live_xxxxxxxxxxxxxxxx"),
        ("stripe_webhook_secret", "whsec_your_secret_here"),
        ("stripe_webhook_secret", None),
        ("smtp_url", None),
        ("mail_from", "tokenbank <tokenbank@localhost>"),
    ],
)
def test_production_refuses_missing_or_placeholder_secrets(field: str, value: str | None) -> None:
    values = {**REAL, field: value}
    with pytest.raises(ConfigurationError) as caught:
        with_secrets(_settings(env="production", **{k: v for k, v in values.items() if v}))
    assert "production needs real secrets" in str(caught.value)


def test_secure_cookies_outside_localhost() -> None:
    assert not _settings(public_url="http://127.0.0.1:8000").secure_cookies
    assert not _settings(public_url="http://localhost:8000").secure_cookies
    assert _settings(public_url="https://tokens.example").secure_cookies


@pytest.mark.parametrize(
    ("setting", "flow"),
    [
        ("checkout", PurchaseFlow.CHECKOUT),
        ("payment_intent", PurchaseFlow.PAYMENT_INTENT),
        ("embedded", PurchaseFlow.PAYMENT_INTENT),  # the earlier name of the card form
    ],
)
def test_the_purchase_flow_setting_names_a_purchase_flow(setting: str, flow: PurchaseFlow) -> None:
    settings = _settings(
        stripe_secret_key="sk_test_x",
        stripe_publishable_key="pk_test_x",
        purchase_flow=setting,
    )
    seller = billing_from_settings(settings)
    assert seller is not None and seller.flow is flow


def test_a_card_form_needs_the_publishable_key() -> None:
    settings = _settings(stripe_secret_key="sk_test_x", purchase_flow="payment_intent")
    with pytest.raises(ConfigurationError, match="STRIPE_PUBLISHABLE_KEY"):
        billing_from_settings(settings)


def test_the_login_limit_keeps_its_earlier_name() -> None:
    assert _settings().login_limit_per_email == "10/10 minutes"
    assert _settings(login_limit_per_email="2/minute").login_limit_per_email == "2/minute"
    earlier = _settings(TOKENBANK_LOGIN_LIMIT_PER_ACCOUNT="3/minute")
    assert earlier.login_limit_per_email == "3/minute"
    assert _settings(TOKENBANK_LOGIN_LIMIT_PER_EMAIL="4/minute").login_limit_per_email == "4/minute"


def _env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"TOKENBANK_{name.upper()}"


def test_env_file_names_other_files_or_none() -> None:
    assert env_files({}) is None  # Settings.load decides
    assert env_files({"TOKENBANK_ENV_FILE": ""}) == ()
    assert env_files({"TOKENBANK_ENV_FILE": f"a.env{os.pathsep}b.env"}) == (
        Path("a.env"),
        Path("b.env"),
    )
    assert instance_file({"TOKENBANK_VAR_DIR": "/srv/tb"}) == Path("/srv/tb/.env")


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the var/.env a `make run` wrote, and no settings in the
    environment."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / ".env").write_text(
        "STRIPE_SECRET_KEY=sk_test_written_by_make_run\n"
        "STRIPE_API_BASE=http://127.0.0.1:12111\n"
        "TOKENBANK_PUBLIC_URL=http://127.0.0.1:8000\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("TOKENBANK_", "STRIPE_")):
            monkeypatch.delenv(name)
    return tmp_path


def test_settings_load_reads_env_files_and_the_environment_wins(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make run`` writes var/.env so a second terminal's CLI reaches the same emulator;
    a developer's .env overrides it, and the environment overrides both."""
    (checkout / ".env").write_text(
        "TOKENBANK_PUBLIC_URL=http://127.0.0.1:9000\nTOKENBANK_LOG_LEVEL=debug\n"
    )
    monkeypatch.setenv("TOKENBANK_LOG_LEVEL", "warning")
    loaded = Settings.load()
    assert loaded.stripe_secret_key == SecretStr("sk_test_written_by_make_run")
    assert loaded.stripe_api_base == "http://127.0.0.1:12111"
    assert loaded.public_url == "http://127.0.0.1:9000"  # ./.env over var/.env
    assert loaded.log_level == "warning"  # the environment over both
    # Settings built in code read no file: a test never picks up a developer's.
    assert Settings().stripe_secret_key is None


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_stripe_key_of_your_own_is_never_paired_with_the_emulators_address(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Stripe's settings come from one source: with a key in the environment or ./.env,
    the var/.env of an earlier `make run` is not read at all."""
    if where == "environment":
        monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_mine_0123456789abcdef")
    else:
        (checkout / ".env").write_text("STRIPE_SECRET_KEY=sk_test_mine_0123456789abcdef\n")
    loaded = Settings.load()
    assert loaded.stripe_secret_key == SecretStr("sk_test_mine_0123456789abcdef")
    assert loaded.stripe_api_base is None


def test_production_never_reads_the_development_file(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENBANK_ENV", "production")
    loaded = Settings.load()
    assert loaded.stripe_api_base is None and loaded.stripe_secret_key is None
    with pytest.raises(ConfigurationError, match="STRIPE_API_BASE"):
        with_secrets(_settings(env="production", stripe_api_base="http://127.0.0.1:1", **REAL))


def test_a_live_key_is_never_sent_to_another_address() -> None:
    settings = _settings(
        stripe_secret_key="sk_live_51Pq8rTzYxWvUtSrQpOnMlKjIh",
        stripe_api_base="http://127.0.0.1:12111",
    )
    with pytest.raises(ConfigurationError, match="live"):
        billing_from_settings(settings)


def test_env_example_lists_every_setting_with_its_default() -> None:
    """.env.example is the reference a newcomer copies: nothing missing, nothing stale."""
    listed: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if match := re.fullmatch(r"# ([A-Z][A-Z0-9_]+)=(.*)", line):
            listed[match[1]] = match[2].strip('"')
    expected = {}
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        expected[_env_name(name)] = "" if default is None else str(default)
    assert listed == expected
