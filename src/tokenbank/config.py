"""Settings, read once at the entrypoint (CLI or server) and passed down explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VAR_DIR = Path("var")


class Settings(BaseSettings):
    """Every setting comes from a ``TOKENBANK_``-prefixed environment variable or ``.env``.

    The Stripe keys keep Stripe's own standard names (``STRIPE_SECRET_KEY``...), so an
    existing deployment's environment works unchanged.
    """

    model_config = SettingsConfigDict(
        env_prefix="TOKENBANK_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "production"] = "development"
    database_url: str = f"sqlite:///{DEFAULT_VAR_DIR / 'tokenbank.db'}"
    # Connections per pool, per process (PostgreSQL: one pool for transactions, one for
    # reads and one-operation units). See docs/benchmarks.md for how it was chosen.
    database_pool_size: int = Field(default=16, ge=1, le=512)
    public_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    var_dir: Path = DEFAULT_VAR_DIR
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    default_hold_ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    stripe_secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_SECRET_KEY")
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_WEBHOOK_SECRET")
    )
    stripe_publishable_key: str | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_PUBLISHABLE_KEY")
    )
    stripe_api_base: str | None = Field(
        default=None, validation_alias=AliasChoices("STRIPE_API_BASE")
    )
