"""Commands about model calls: the built-in model emulator."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from tokenbank.cli.common import out
from tokenbank.llm.emulator import create_app


def llm_emulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 12112,
    first_token_ms: Annotated[
        float, typer.Option(min=0, max=60_000, help="Delay before the first word, in ms.")
    ] = 0.0,
    token_ms: Annotated[
        float, typer.Option(min=0, max=60_000, help="Delay between words, in ms.")
    ] = 0.0,
    api_key: Annotated[
        str | None, typer.Option(help="Answer only this bearer key (none: any key).")
    ] = None,
) -> None:
    """Run the built-in model emulator: an OpenAI-compatible API (chat completions, models)
    with deterministic replies, exact usage, a pace and failures to order."""
    out.print(f"Model emulator on http://{host}:{port}/v1 (an OpenAI-compatible base URL)")
    app = create_app(first_token_ms=first_token_ms, token_ms=token_ms, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
