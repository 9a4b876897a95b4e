"""Settings, read once at the entrypoint (CLI or server) and passed down explicitly."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenbank.errors import ConfigurationError

DEFAULT_VAR_DIR = Path("var")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def env_files(environ: Mapping[str, str] | None = None) -> tuple[Path, ...] | None:
    """The ``.env`` files ``TOKENBANK_ENV_FILE`` names (``os.pathsep``-separated; empty for
    none), or None when it is not set and ``Settings.load`` decides."""
    environ = os.environ if environ is None else environ
    if (named := environ.get("TOKENBANK_ENV_FILE")) is None:
        return None
    return tuple(Path(path) for path in named.split(os.pathsep) if path)


def instance_file(environ: Mapping[str, str] | None = None) -> Path:
    """The settings ``make run`` writes for the instance it started (``var/.env``)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("TOKENBANK_VAR_DIR") or DEFAULT_VAR_DIR) / ".env"


class Settings(BaseSettings):
    """Every setting comes from a ``TOKENBANK_``-prefixed environment variable or, through
    ``load()``, a ``.env`` file (see ``env_files``); a ``Settings(...)`` built in code reads
    no file, so a test never picks up a developer's.

    The Stripe keys keep Stripe's own standard names (``STRIPE_SECRET_KEY``...), so an
    existing deployment's environment works unchanged.
    """

    model_config = SettingsConfigDict(
        env_prefix="TOKENBANK_",
        env_file=None,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    env: Literal["development", "production"] = "development"
    database_url: str = f"sqlite:///{DEFAULT_VAR_DIR / 'tokenbank.db'}"
    # Connections per pool, per process (PostgreSQL: one pool for transactions, one for
    # reads and one-operation units). See docs/benchmarks.md for how it was chosen.
    database_pool_size: int = Field(default=16, ge=1, le=512)
    # Off behind PgBouncer in transaction mode before 1.21 (docs/scaling.md).
    database_prepared_statements: bool = True
    public_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    var_dir: Path = DEFAULT_VAR_DIR
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    default_hold_ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Accounts on the web pages.
    session_days: int = Field(default=14, ge=1, le=365)
    portal_link_seconds: int = Field(default=300, ge=10, le=3600)
    # Rate limits in the ``limits`` notation; counted in the database by default, so every
    # process shares them. Any ``limits`` storage URI (``redis://...``) works as well.
    login_limit_per_ip: str = "30/10 minutes"
    login_limit_per_email: str = Field(
        default="10/10 minutes",
        validation_alias=AliasChoices(
            "TOKENBANK_LOGIN_LIMIT_PER_EMAIL",
            "TOKENBANK_LOGIN_LIMIT_PER_ACCOUNT",  # its earlier name
        ),
    )
    register_limit_per_ip: str = "10/hour"
    # Per address, whether or not it has an account (so a refusal tells nothing).
    register_limit_per_email: str = "5/hour"
    reset_limit_per_ip: str = "20/hour"
    reset_limit_per_email: str = "5/hour"
    # Mail a signed-in user asks for: the confirmation link again, a change of address.
    mail_limit_per_user: str = "5/hour"
    rate_limit_storage: str = "database"
    # Wrong API keys from one address, past which it gets 429 without its keys being read.
    api_key_failure_limit_per_ip: str = "20/minute"
    # Proxies whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips).
    forwarded_allow_ips: str = "127.0.0.1"
    # On SIGTERM, how long requests still running (model streams) may take to finish before
    # they are cancelled: a cancelled stream is charged what it streamed, and the process
    # exits (uvicorn's timeout_graceful_shutdown).
    shutdown_grace_seconds: int = Field(default=30, ge=1, le=3600)
    # Hosts besides public_url's that Stripe may send a buyer back to (success_url,
    # cancel_url, a billing portal's return_url), comma-separated: "app.example.com,...".
    allowed_return_hosts: str = ""

    # Selling tokens: the catalog file, what happens to the debt a clawback records when the
    # tokens were already spent (``debt``: kept as a record; ``negative``: collected from
    # the user's next purchase first) and which payment form the pages use.
    catalog: Path = Path("catalogs/default.toml")
    clawback_policy: Literal["debt", "negative"] = "debt"
    # "payment_intent": a card form (Stripe.js) in tokenbank's own page; "embedded" is the
    # earlier name for it, still accepted.
    purchase_flow: Literal["checkout", "payment_intent", "embedded"] = "checkout"
    #: The dashboard warns when a user's available tokens fall below this.
    low_balance_threshold: int = Field(default=100, ge=0)
    #: A spend of at least this many tokens gets a log line of its own (0: none).
    log_spends_from: int = Field(default=10_000, ge=0)

    # Free trial (docs/grants.md): tokens a new user gets once per person (0: no trial),
    # and the days they stay usable.
    trial_tokens: int = Field(default=0, ge=0, le=10**9)
    trial_days: int = Field(default=14, ge=1, le=3650)

    # The model gateway (docs/gateway.md): the models file, how long an upstream may take
    # between two chunks of its answer, the calls a key (or a user, through the host
    # app's key) may make, and the largest request body (prompts with images are big).
    models: Path = Path("catalogs/models.toml")
    llm_timeout_seconds: float = Field(default=600, gt=0, le=3600)
    llm_limit_per_key: str = "600/minute"
    llm_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)

    # The worker (docs/worker.md): how often it reconciles with Stripe, over how many hours.
    reconcile_minutes: int = Field(default=15, ge=1, le=24 * 60)
    reconcile_hours: int = Field(default=72, ge=1, le=24 * 90)
    # Stripe's webhooks (docs/stripe.md): how many deliveries one process settles in their
    # own request at once. A delivery past these is stored, answered 200 at once and
    # settled by ``tokenbank worker``, so a burst costs Stripe no timeouts (0: the worker
    # settles every event).
    webhook_settle_slots: int = Field(default=2, ge=0, le=64)

    # Mail (docs/pages.md): the SMTP server (smtp://, smtp+starttls:// or smtps://; none in
    # development: mail is kept in the outbox and shown at /_dev/mail), the From address,
    # whether each app process sends (``app``) or only ``tokenbank worker`` does
    # (``worker``), and whether a new account confirms its address before it may buy.
    smtp_url: SecretStr | None = None
    mail_from: str = "tokenbank <tokenbank@localhost>"
    mail_sender: Literal["app", "worker"] = "app"
    verify_email: bool = True

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
    # How long a call to Stripe may take, and how often the SDK retries one that failed
    # to connect, timed out or got a 409/429/5xx (with the same idempotency key).
    stripe_timeout_seconds: float = Field(default=20, gt=0, le=120)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)

    # Fault injection for the recovery tests (tokenbank.faults); refused in production.
    fault_injection: bool = False
    fault_points: str = ""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of this process: its environment, then ``./.env``; then, in
        development only, and only when neither names a Stripe key of its own, the
        ``var/.env`` that ``make run`` wrote (the emulator's address and keys), so a second
        terminal's commands reach the instance it started. Stripe's settings thus come
        together from one source: a key of yours is never paired with the emulator's
        address. ``TOKENBANK_ENV_FILE`` names the files instead. A value that is not valid
        is a ``ConfigurationError`` naming every such setting."""
        try:
            return cls._load(environ)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        except OSError as exc:  # an env file that is a directory, or not readable
            raise ConfigurationError(f"{exc.filename}: {exc.strerror or exc}") from None

    @classmethod
    def _load(cls, environ: Mapping[str, str] | None) -> Settings:
        named = env_files(environ)
        if named is not None:
            return cls(_env_file=named)
        own = cls(_env_file=Path(".env"))
        instance = instance_file(environ)
        if own.env != "development" or own.stripe_secret_key is not None:
            return own
        if not instance.is_file():
            return own
        return cls(_env_file=(instance, Path(".env")))

    @property
    def return_hosts(self) -> frozenset[str]:
        """Where Stripe may send a buyer back: this service, and the hosts allowed."""
        hosts = {h.strip().lower() for h in self.allowed_return_hosts.split(",") if h.strip()}
        return frozenset({*hosts, (urlsplit(self.public_url).hostname or "").lower()} - {""})

    @property
    def cookie_prefix(self) -> str:
        """``__Host-`` in production: the browser then only accepts the cookie over HTTPS,
        for this host alone (no Domain), for every path."""
        return "__Host-" if self.env == "production" else ""

    @property
    def secure_cookies(self) -> bool:
        """``Secure`` cookies everywhere but a development server on this machine."""
        host = urlsplit(self.public_url).hostname or ""
        return self.env == "production" or host not in LOCAL_HOSTS


_PLACEHOLDERS = ("change", "placeholder", "example", "secret", "xxxx", "todo", "your")


def looks_like_placeholder(value: str, *, min_length: int = 16) -> bool:
    lowered = value.strip().lower()
    return len(lowered) < min_length or any(word in lowered for word in _PLACEHOLDERS)


def with_secrets(settings: Settings) -> Settings:
    """The settings with every secret present, or ``ConfigurationError``.

    In development a missing secret key is generated once and kept in ``var_dir``, so
    sessions survive restarts and every worker process shares it. Production never invents
    a secret: it refuses to start with one missing or left as a placeholder.
    """
    if settings.env == "production":
        if settings.fault_injection:
            raise ConfigurationError(
                "TOKENBANK_FAULT_INJECTION is for tests: production refuses it"
            )
        problems = []
        key = settings.secret_key
        if key is None or looks_like_placeholder(key.get_secret_value(), min_length=32):
            problems.append("TOKENBANK_SECRET_KEY (at least 32 random characters)")
        for name, value in (
            ("STRIPE_SECRET_KEY", settings.stripe_secret_key),
            ("STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret),
        ):
            if value is None or _stripe_placeholder(value.get_secret_value()):
                problems.append(name)
        if settings.smtp_url is None:
            problems.append("TOKENBANK_SMTP_URL (sign-up and password resets need mail)")
        if settings.stripe_api_base:
            problems.append("no STRIPE_API_BASE (another Stripe address is for the emulator)")
        if "@localhost" in settings.mail_from:
            problems.append("TOKENBANK_MAIL_FROM (an address mail servers accept)")
        if settings.stripe_publishable_key is not None and _stripe_placeholder(
            settings.stripe_publishable_key
        ):
            problems.append("STRIPE_PUBLISHABLE_KEY")
        if problems:
            raise ConfigurationError(
                "production needs real secrets; missing or placeholder: " + ", ".join(problems)
            )
        return settings
    if settings.secret_key is not None:
        return settings
    return settings.model_copy(update={"secret_key": SecretStr(_kept_secret(settings.var_dir))})


def _stripe_placeholder(value: str) -> bool:
    # Stripe's keys carry a prefix (sk_live_, whsec_...) before the random part.
    return looks_like_placeholder(value.partition("_")[2].partition("_")[2] or value, min_length=8)


def _kept_secret(var_dir: Path) -> str:
    path = var_dir / "secret_key"
    var_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written aside, then linked into place: a racing worker sees the whole key or none.
        draft = var_dir / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    value = path.read_text().strip()
    if len(value) < 32:
        raise ConfigurationError(f"{path} holds fewer than 32 characters")
    return value


def _describe(exc: ValidationError) -> str:
    """Each setting that is not valid, by the name it is set under, and why."""
    found = []
    for error in exc.errors():
        if not error["loc"]:  # about the settings together
            found.append(error["msg"])
            continue
        name = ".".join(str(part) for part in error["loc"])
        field = Settings.model_fields.get(name)
        alias = None if field is None else field.validation_alias
        shown = alias.choices[0] if isinstance(alias, AliasChoices) else f"TOKENBANK_{name}"
        found.append(f"{str(shown).upper()}: {error['msg']}")
    return "invalid settings: " + "; ".join(found)
