"""Commands about model calls: the models file, and the built-in model emulator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.table import Table

from tokenbank.cli.common import err, out
from tokenbank.errors import CatalogError
from tokenbank.llm.emulator import create_app
from tokenbank.llm.models import load_models


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


models_app = typer.Typer(no_args_is_help=True, help="The models the gateway serves.")


@models_app.command("check")
def models_check(
    path: Annotated[
        Path, typer.Argument(help="The models file.", envvar="TOKENBANK_MODELS")
    ] = Path("catalogs/models.toml"),
) -> None:
    """Validate the models file and list each model, its upstream and its price; exits 9
    on errors. Keys are reported as set or missing, never shown."""
    try:
        catalog = load_models(path, env=os.environ)
    except CatalogError as exc:
        err.print(f"[bold red]{path}: invalid models file[/]")
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False)
        raise typer.Exit(9) from None
    table = Table(title=str(path))
    for column in ("model", "upstream", "base URL", "key", "in / 1M", "out / 1M", "max out"):
        table.add_column(column)
    for model in catalog.models:
        upstream = model.upstream
        key = (
            "-"
            if upstream.api_key_env is None
            else (
                f"{upstream.api_key_env} set"
                if upstream.api_key
                else f"{upstream.api_key_env} MISSING"
            )
        )
        table.add_row(
            model.id,
            f"{upstream.id} ({model.upstream_model})",
            upstream.base_url,
            key,
            f"{model.input_per_million:,}",
            f"{model.output_per_million:,}",
            f"{model.max_output_tokens:,}",
        )
    out.print(table)
    missing = [u.id for u in catalog.upstreams if not u.configured]
    out.print(
        f"{len(catalog.models)} models, {len(catalog.upstreams)} upstreams: OK", highlight=False
    )
    for upstream_id in missing:
        err.print(f"[yellow]upstream {upstream_id}: its key's variable is not set[/]")
