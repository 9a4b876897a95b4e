"""``create_app(settings)``: the FastAPI application."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path

import sqlalchemy as sa
import structlog
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenbank import __version__, identity, migrations
from tokenbank.billing import Billing, billing_from_settings
from tokenbank.config import Settings, with_secrets
from tokenbank.db import Database, connect, unavailable
from tokenbank.errors import ConfigurationError, SchemaOutOfDate
from tokenbank.faults import from_settings as faults_from_settings
from tokenbank.identity import Passwords, Throttle
from tokenbank.logs import configure_logging
from tokenbank.web import admin_pages, api, billing_api, problems, shop_pages, wallet_pages
from tokenbank.web import pages as account_pages
from tokenbank.web.auth import KeyCache
from tokenbank.web.browser import Browsers
from tokenbank.web.observe import AccessLog, Metrics, Observe
from tokenbank.web.render import Pages, install_page_errors, unavailable_page
from tokenbank.web.schemas import Health

MAX_BODY_BYTES = 64 * 1024

log = structlog.get_logger("tokenbank.web")


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    passwords: Passwords | None = None,
    shop: Billing | None = None,
) -> FastAPI:
    """The service, on ``db`` or on the database the settings name.

    ``settings`` must hold the secret key (``with_secrets`` at the entrypoint sees to it).
    ``shop``: how tokens are sold; by default built from the settings (none without a
    Stripe key: the service then runs without selling).
    """
    if settings.secret_key is None:
        raise ConfigurationError("no secret key: pass the settings through with_secrets()")
    database = db or connect(settings.database_url, pool_size=settings.database_pool_size)
    shop = shop or billing_from_settings(settings)
    public_url = settings.public_url.rstrip("/")
    metrics = Metrics()
    access_log = AccessLog() if settings.log_level in {"debug", "info"} else None
    head = migrations.head_revision(database)  # read once: the shipped migrations do not change
    faults = faults_from_settings(settings)
    warnings = _warnings(shop)
    for warning in warnings:
        log.warning("configuration", detail=warning)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await database.open_async()
        flusher = None if access_log is None else asyncio.create_task(access_log.run())
        try:
            yield
        finally:
            if flusher is not None:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
            await database.close_async()
            if db is None:  # we opened it, we close it
                database.dispose()

    app = FastAPI(
        title="tokenbank",
        version=__version__,
        description="Prepaid tokens for AI apps: balances, spends, holds and history.",
        lifespan=lifespan,
        docs_url=None,  # served below, with a Content-Security-Policy of its own
        redoc_url=None,
    )
    app.state.db = database
    app.state.metrics = metrics
    throttle = Throttle(
        identity.storage_for(settings.rate_limit_storage, database),
        {
            "login_ip": settings.login_limit_per_ip,
            "login_account": settings.login_limit_per_account,
            "register_ip": settings.register_limit_per_ip,
            "api_key_ip": settings.api_key_failure_limit_per_ip,
        },
    )
    app.state.keys = KeyCache(
        database, ttl_seconds=settings.api_key_cache_seconds, throttle=throttle
    )
    browsers = Browsers(
        db=database,
        secret=settings.secret_key.get_secret_value().encode(),
        secure=settings.secure_cookies,
        session_ttl=timedelta(days=settings.session_days),
        prefix=settings.cookie_prefix,
    )
    app.state.browsers = browsers
    metrics.watch_reviews(database)
    app.add_middleware(
        Observe,
        metrics=metrics,
        max_body=MAX_BODY_BYTES,
        access_log=access_log,
        hsts=settings.env == "production",
    )

    # The API first: routes are matched in order, and its routes are the busy ones.
    app.include_router(
        api.build_router(
            db=database,
            metrics=metrics,
            default_hold_ttl=settings.default_hold_ttl_seconds,
            public_url=public_url,
            portal_link_ttl=timedelta(seconds=settings.portal_link_seconds),
            faults=faults,
        )
    )
    app.include_router(
        billing_api.build_router(
            db=database,
            shop=shop,
            metrics=metrics,
            public_url=public_url,
            return_hosts=settings.return_hosts,
            faults=faults,
        )
    )

    _include_operations(app, db=database, head=head, metrics=metrics, warnings=warnings)
    pages = _include_pages(
        app,
        settings=settings,
        db=database,
        browsers=browsers,
        passwords=passwords or Passwords(),
        throttle=throttle,
        shop=shop,
    )
    problems.install(
        app,
        buy_url=f"{public_url}/pricing",
        on_refusal=lambda code: metrics.refusals.labels(code).inc(),
        page=partial(unavailable_page, pages),
        db=database,
        head=head,
    )
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app


def _include_operations(
    app: FastAPI, *, db: Database, head: str | None, metrics: Metrics, warnings: list[str]
) -> None:
    """Health, readiness, metrics and the API docs."""

    @app.get("/healthz", tags=["operations"])
    def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready"}})
    def readyz() -> Response:
        """The database answers and its schema is the one this version expects;
        ``warnings`` names what works only in part (no webhook secret: Stripe's events are
        refused, and purchases are credited only by the success page and reconcile)."""
        try:
            with db.read() as conn:
                conn.execute(sa.text("SELECT 1"))
            current = migrations.is_current(db, head)
        except Exception as exc:  # any failure to answer is "not ready", never a 500
            return problems.problem(
                503,
                "not_ready",
                f"database unreachable: {type(exc).__name__}",
                headers={"Retry-After": "5"},
                warnings=warnings,
            )
        if not current:
            return problems.problem(
                503,
                "not_ready",
                "migrations pending: run tokenbank db upgrade",
                headers={"Retry-After": "30"},
                warnings=warnings,
            )
        return JSONResponse({"status": "ready", "warnings": warnings})

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return Response(
            DOCS_PAGE, media_type="text/html", headers={"Content-Security-Policy": DOCS_POLICY}
        )

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _warnings(shop: Billing | None) -> list[str]:
    """What is configured to work only in part, said at start-up and by /readyz."""
    if shop is None:
        return ["payments are not configured (STRIPE_SECRET_KEY): nothing can be bought"]
    if not shop.stripe.webhook_secret:
        return [
            "no webhook secret (STRIPE_WEBHOOK_SECRET): every Stripe event is refused (503);"
            " purchases are credited only when the buyer returns or by tokenbank reconcile"
        ]
    return []


def _docs_page() -> tuple[str, str]:
    """The interactive API docs (Swagger UI from its CDN), and a policy that lets exactly
    that page's one inline script and the CDN's files run, nothing else."""
    page = bytes(
        get_swagger_ui_html(openapi_url="/openapi.json", title="tokenbank API").body
    ).decode()
    inline = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline
    )
    policy = (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self';"
        f" script-src https://cdn.jsdelivr.net {hashes}; style-src https://cdn.jsdelivr.net;"
        " img-src 'self' data: https://fastapi.tiangolo.com"
    )
    return page, policy


DOCS_PAGE, DOCS_POLICY = _docs_page()


def _include_pages(
    app: FastAPI,
    *,
    settings: Settings,
    db: Database,
    browsers: Browsers,
    passwords: Passwords,
    throttle: Throttle,
    shop: Billing | None,
) -> Pages:
    """The pages people use in a browser (after the API: its routes are the busy ones)."""
    public_url = settings.public_url.rstrip("/")
    pages = Pages(
        db=db,
        browsers=browsers,
        low_balance=settings.low_balance_threshold,
        catalog=shop.catalog if shop else None,
    )
    app.include_router(
        account_pages.build_router(
            db=db, pages=pages, browsers=browsers, passwords=passwords, throttle=throttle
        )
    )
    app.include_router(wallet_pages.build_router(db=db, pages=pages))
    app.include_router(
        shop_pages.build_router(
            db=db,
            pages=pages,
            shop=shop,
            public_url=public_url,
            faults=faults_from_settings(settings),
        )
    )
    app.include_router(admin_pages.build_router(db=db, pages=pages, shop=shop))
    install_page_errors(app, pages)
    return pages


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
    settings = with_secrets(Settings())
    configure_logging(settings.log_level)
    database = connect(settings.database_url, pool_size=settings.database_pool_size)
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
