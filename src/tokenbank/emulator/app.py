"""The emulator as one ASGI app, and a way to run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette

from tokenbank.emulator import api, control, events, pages
from tokenbank.emulator.state import DEFAULT_API_VERSION, DEFAULT_RETRY_DELAYS, Emulator


def create_app(
    *,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    public_url: str | None = None,
    api_key: str | None = None,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    api_version: str = DEFAULT_API_VERSION,
) -> Starlette:
    """A fresh, empty emulated Stripe account; its state is ``app.state.emulator``."""
    emulator = Emulator(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        public_url=public_url.rstrip("/") if public_url else None,
        api_key=api_key,
        retry_delays=tuple(retry_delays),
        api_version=api_version,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await events.close(emulator)

    app = Starlette(
        routes=[*api.routes(), *pages.routes(), *control.routes()],
        lifespan=lifespan,
    )
    app.state.emulator = emulator
    return app


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 12111,
    webhook_url: str | None,
    webhook_secret: str | None,
    public_url: str | None = None,
    api_key: str | None = None,
) -> None:
    """Run the emulator in the foreground until interrupted (``tokenbank stripe-emulator``)."""
    app = create_app(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        public_url=public_url,
        api_key=api_key,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", ws="none")
