"""The emulator as one ASGI app, and a way to run it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware

from tokenbank.emulator import api, control, events, pages, payments
from tokenbank.emulator.disk import Keeper, SaveAfterWrites
from tokenbank.emulator.state import DEFAULT_API_VERSION, DEFAULT_RETRY_DELAYS, Emulator


def create_app(
    *,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    public_url: str | None = None,
    api_key: str | None = None,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    api_version: str = DEFAULT_API_VERSION,
    state: Path | None = None,
) -> Starlette:
    """An emulated Stripe account, empty unless ``state`` names the file it is kept in
    (``emulator.disk``); its state is ``app.state.emulator``."""
    emulator = Emulator(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        public_url=public_url.rstrip("/") if public_url else None,
        api_key=api_key,
        retry_delays=tuple(retry_delays),
        api_version=api_version,
    )

    keeper = Keeper(emulator, state) if state is not None else None
    if keeper is not None:
        keeper.load()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if keeper is not None:
                await stack.enter_async_context(keeper.running())
            sweeper = asyncio.get_running_loop().create_task(_expire_sessions(emulator))
            try:
                yield
            finally:
                sweeper.cancel()
                with suppress(asyncio.CancelledError):
                    await sweeper
                await events.close(emulator)

    app = Starlette(
        routes=[*api.routes(), *pages.routes(), *control.routes()],
        lifespan=lifespan,
        middleware=[Middleware(SaveAfterWrites, keeper=keeper)] if keeper is not None else [],
    )
    app.state.emulator = emulator
    return app


async def _expire_sessions(emulator: Emulator) -> None:
    """Stripe's background expiry of Checkout Sessions, looked for every second."""
    while True:
        await asyncio.sleep(1)
        payments.expire_due(emulator)


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 12111,
    webhook_url: str | None,
    webhook_secret: str | None,
    public_url: str | None = None,
    api_key: str | None = None,
    state: Path | None = None,
) -> None:
    """Run the emulator in the foreground until interrupted (``tokenbank stripe-emulator``)."""
    app = create_app(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        public_url=public_url,
        api_key=api_key,
        state=state,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", ws="none")
