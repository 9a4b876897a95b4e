"""``create_app(settings)``: the FastAPI application."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tokenbank import __version__, identity, migrations
from tokenbank.billing import Billing, billing_from_settings
from tokenbank.billing.catalog import features_catalog
from tokenbank.config import LOCAL_HOSTS, Settings, with_secrets
from tokenbank.db import Database, database_from_settings, unavailable
from tokenbank.errors import ConfigurationError, SchemaOutOfDate
from tokenbank.faults import from_settings as faults_from_settings
from tokenbank.grants import Trial
from tokenbank.identity import Passwords, Throttle
from tokenbank.llm.gateway import Gateway, Upstreams
from tokenbank.llm.models import ModelCatalog, load_models
from tokenbank.logs import configure_logging
from tokenbank.web import api, operations, problems
from tokenbank.web import pages as page_routes
from tokenbank.web.auth import KeyCache
from tokenbank.web.browser import Browsers
from tokenbank.web.letters import mail_sender
from tokenbank.web.observe import AccessLog, Metrics, Observe
from tokenbank.web.render import Pages, install_page_errors, unavailable_page
from tokenbank.web.runtime import Runtime, SettlingSlots
from tokenbank.web.security import buying_headers

MAX_BODY_BYTES = 64 * 1024

log = structlog.get_logger("tokenbank.web")


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    passwords: Passwords | None = None,
    seller: Billing | None = None,
) -> FastAPI:
    """The service, on ``db`` or on the database the settings name.

    ``settings`` must hold the secret key (``with_secrets`` at the entrypoint sees to it).
    ``seller``: how tokens are sold; by default built from the settings (none without a
    Stripe key: the service then runs without selling).
    """
    if settings.secret_key is None:
        raise ConfigurationError("no secret key: pass the settings through with_secrets()")
    database = db or database_from_settings(settings)
    seller = seller or billing_from_settings(settings)
    # Features are priced from the catalog whether or not anything is sold.
    catalog = seller.catalog if seller else features_catalog(settings.catalog)
    metrics = Metrics()
    models = _models(settings)
    access_log = AccessLog() if settings.log_level in {"debug", "info"} else None
    warnings = _warnings(seller) + _mail_warnings(settings) + _model_warnings(settings, models)
    for warning in warnings:
        log.warning("configuration", detail=warning)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await database.open_async()
        flusher = None if access_log is None else asyncio.create_task(access_log.run())
        mailing = None if sender is None else sender.start()
        try:
            yield
        finally:
            if gateway is not None:  # first: streams cancelled at shutdown settle now
                await gateway.finish(timeout=10)
            if sender is not None and mailing is not None:
                sender.stop()
                await asyncio.to_thread(mailing.join, 35)
            if flusher is not None:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
            if gateway is not None:
                await gateway.client.close()
            await database.close_async()
            if db is None:  # we opened it, we close it
                database.dispose()

    app = FastAPI(
        title="tokenbank",
        version=__version__,
        description="Prepaid tokens for AI apps: balances, spends, holds and history.",
        lifespan=lifespan,
        docs_url=None,  # served by web/operations.py, with a Content-Security-Policy of its own
        redoc_url=None,
    )
    throttle = Throttle(
        identity.storage_for(settings.rate_limit_storage, database),
        {
            "login_ip": settings.login_limit_per_ip,
            "login_email": settings.login_limit_per_email,
            "register_ip": settings.register_limit_per_ip,
            "register_email": settings.register_limit_per_email,
            "reset_ip": settings.reset_limit_per_ip,
            "reset_email": settings.reset_limit_per_email,
            "mail_user": settings.mail_limit_per_user,
            "api_key_ip": settings.api_key_failure_limit_per_ip,
            "llm_key": settings.llm_limit_per_key,
        },
    )
    browsers = Browsers(
        db=database,
        secret=settings.secret_key.get_secret_value().encode(),
        secure=settings.secure_cookies,
        session_ttl=timedelta(days=settings.session_days),
        prefix=settings.cookie_prefix,
    )
    pages = Pages(
        db=database,
        browsers=browsers,
        low_balance=settings.low_balance_threshold,
        catalog=catalog,
        verify_email=settings.verify_email,
    )
    sender = mail_sender(settings, database) if settings.mail_sender == "app" else None
    gateway = None if models is None else _gateway(settings, database, models, throttle, metrics)
    parts = Runtime(
        db=database,
        metrics=metrics,
        keys=KeyCache(database, ttl_seconds=settings.api_key_cache_seconds, throttle=throttle),
        browsers=browsers,
        pages=pages,
        passwords=passwords or Passwords(),
        throttle=throttle,
        billing=seller,
        catalog=catalog,
        faults=faults_from_settings(settings),
        public_url=settings.public_url.rstrip("/"),
        default_hold_ttl=settings.default_hold_ttl_seconds,
        portal_link_ttl=timedelta(seconds=settings.portal_link_seconds),
        return_hosts=settings.return_hosts,
        large_spend=settings.log_spends_from,
        schema_head=migrations.head_revision(database),
        buying_headers=buying_headers(seller),
        verify_email=settings.verify_email,
        trial=Trial(tokens=settings.trial_tokens, days=settings.trial_days),
        mail=sender,
        # Development on this machine, with no SMTP server: the mailbox shows every link,
        # so it is never served where anyone else could reach it.
        dev_mail=settings.env == "development"
        and settings.smtp_url is None
        and not settings.secure_cookies,
        warnings=tuple(warnings),
        gateway=gateway,
        webhook_slots=SettlingSlots(settings.webhook_settle_slots),
    )
    app.state.runtime = parts
    metrics.watch_reviews(database)
    metrics.watch_mail(database)
    metrics.watch_jobs(database)
    metrics.watch_inbox(database)
    app.add_middleware(
        Observe,
        metrics=metrics,
        max_body=MAX_BODY_BYTES,
        access_log=access_log,
        hsts=settings.env == "production",
        gateway_body=settings.llm_max_body_bytes,
    )
    # Routes are matched in order: the API's are the busy ones, so they come first.
    for router in (*api.ROUTERS, operations.router, *page_routes.ROUTERS):
        app.include_router(router)
    install_page_errors(app, pages)
    problems.install(
        app,
        buy_url=parts.buy_url,
        on_refusal=lambda code: metrics.refusals.labels(code).inc(),
        page=partial(unavailable_page, pages),
        db=database,
        head=parts.schema_head,
    )
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app


def _gateway(
    settings: Settings,
    database: Database,
    models: ModelCatalog,
    throttle: Throttle,
    metrics: Metrics,
) -> Gateway:
    return Gateway(
        db=database,
        catalog=models,
        client=Upstreams(settings.llm_timeout_seconds),
        # A call outlasting its hold is still charged in full (``calls.settle``).
        hold_ttl=max(settings.default_hold_ttl_seconds, int(settings.llm_timeout_seconds) + 60),
        limit=partial(throttle.hit, "llm_key"),
        counter=partial(throttle.counter, "llm_key"),
        threads=settings.database_pool_size,
        observe=lambda model, status, usage, charged, first: metrics.observe_call(
            model,
            status.value,
            None if usage is None else (usage.input_tokens, usage.output_tokens),
            charged,
            first,
        ),
    )


def _warnings(seller: Billing | None) -> list[str]:
    """What is configured to work only in part, said at start-up and by /readyz."""
    if seller is None:
        return ["payments are not configured (STRIPE_SECRET_KEY): nothing can be bought"]
    if not seller.stripe.webhook_secret:
        return [
            "no webhook secret (STRIPE_WEBHOOK_SECRET): every Stripe event is refused (503);"
            " purchases are credited only when the buyer returns or by tokenbank reconcile"
        ]
    return []


def _models(settings: Settings) -> ModelCatalog | None:
    """The gateway's models, or None when the file is missing (the gateway then answers
    503). A file with mistakes stops the start: ``tokenbank models check`` lists them."""
    if not settings.models.is_file():
        return None
    return load_models(settings.models, env=os.environ)


def _model_warnings(settings: Settings, models: ModelCatalog | None) -> list[str]:
    if models is None:
        return [f"no models file at {settings.models} (TOKENBANK_MODELS): the gateway is off"]
    return [
        f"models of upstream {u.id!r} need its key in {u.api_key_env}"
        for u in models.upstreams
        if not u.configured
    ]


def _mail_warnings(settings: Settings) -> list[str]:
    if settings.smtp_url is None:
        where = "shown at /_dev/mail" if not settings.secure_cookies else "unsent"
        return [f"no SMTP server (TOKENBANK_SMTP_URL): mail is kept in the outbox, {where}"]
    smtp = urlsplit(settings.smtp_url.get_secret_value())
    if smtp.scheme == "smtp" and smtp.password and smtp.hostname not in LOCAL_HOSTS:
        return [
            "TOKENBANK_SMTP_URL sends its password and every mail's links in the clear to"
            f" {smtp.hostname}: use smtp+starttls:// or smtps://"
        ]
    return []


def settle_process() -> None:
    """Tune the garbage collector for a serving process, once its app is built.

    Everything built so far lives as long as the process: ``gc.freeze()`` keeps it out of
    the collector's full passes, which otherwise paused requests for tens of milliseconds.
    A request allocates a few thousand short-lived objects; collecting the youngest
    generation every 700 allocations ran the collector several times per request.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def app_from_environment() -> FastAPI:
    """For ``uvicorn --factory`` with several workers: each reads the settings itself."""
    settings = with_secrets(Settings.load())
    configure_logging(settings.log_level)
    database = database_from_settings(settings)
    check_schema(database)
    app = create_app(settings, db=database)
    settle_process()
    return app


def check_schema(db: Database) -> None:
    """Refuse to serve a database behind this version's migrations (``SchemaOutOfDate``).
    One that cannot be reached now is served anyway: its routes answer 503 until it is back,
    and one found behind then answers 503 ``schema_out_of_date``."""
    try:
        migrations.require_current(db)
    except SchemaOutOfDate:
        raise
    except Exception as exc:
        if unavailable(exc) is None:
            raise
        log.warning("database_unreachable_at_start", error=type(exc).__name__)
