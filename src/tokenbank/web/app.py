"""``create_app(settings)``: the FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenbank import __version__, migrations
from tokenbank.config import Settings
from tokenbank.db import Database, connect
from tokenbank.logs import configure_logging
from tokenbank.web import problems
from tokenbank.web.api import build_router
from tokenbank.web.auth import KeyCache
from tokenbank.web.observe import Metrics, Observe
from tokenbank.web.schemas import Health

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings, *, db: Database | None = None) -> FastAPI:
    """The service, on ``db`` or on the database the settings name."""
    database = db or connect(settings.database_url, pool_size=settings.database_pool_size)
    metrics = Metrics()
    head = migrations.head_revision(database)  # read once: the shipped migrations do not change

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if db is None:  # we opened it, we close it
            database.dispose()

    app = FastAPI(
        title="tokenbank",
        version=__version__,
        description="Prepaid tokens for AI apps: balances, spends, holds and history.",
        lifespan=lifespan,
    )
    app.state.db = database
    app.state.metrics = metrics
    app.state.keys = KeyCache(database, ttl_seconds=settings.api_key_cache_seconds)
    problems.install(
        app,
        buy_url=f"{settings.public_url.rstrip('/')}/pricing",
        on_refusal=lambda code: metrics.refusals.labels(code).inc(),
    )
    app.add_middleware(Observe, metrics=metrics, max_body=MAX_BODY_BYTES)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready"}})
    def readyz() -> Response:
        """The database answers and its schema is the one this version expects."""
        try:
            with database.read() as conn:
                conn.execute(sa.text("SELECT 1"))
            current = migrations.is_current(database, head)
        except sa.exc.SQLAlchemyError as exc:
            return problems.problem(503, "not_ready", f"database unreachable: {type(exc).__name__}")
        if not current:
            return problems.problem(
                503, "not_ready", "migrations pending: run tokenbank db upgrade"
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(
        build_router(
            db=database, metrics=metrics, default_hold_ttl=settings.default_hold_ttl_seconds
        )
    )
    return app


def app_from_environment() -> FastAPI:
    """For ``uvicorn --factory`` with several workers: each reads the settings itself."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
