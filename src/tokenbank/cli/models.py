"""Commands about model calls: the models file, and the built-in model emulator."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.table import Table

from tokenbank.cli.common import err, out
from tokenbank.errors import CatalogError
from tokenbank.llm import prices
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


@models_app.command("prices")
def models_prices(
    tokens_per_usd: Annotated[
        Decimal,
        typer.Option(
            "--tokens-per-usd", min=0, help="What one USD of model cost is in your tokens."
        ),
    ],
    markup: Annotated[
        Decimal, typer.Option(min=0, max=100, help="Added on top: 0.2 is 20%.")
    ] = Decimal(0),
    path: Annotated[
        Path, typer.Argument(help="The models file.", envvar="TOKENBANK_MODELS")
    ] = Path("catalogs/models.toml"),
    write: Annotated[
        bool, typer.Option("--write", help="Write the proposal into the file (else: show it).")
    ] = False,
) -> None:
    """Propose each model's price from genai-prices (USD per million tokens) x
    --tokens-per-usd x (1 + --markup), rounded up; with --write, put it in the file for
    review (only the price lines change). Models genai-prices does not know keep theirs."""
    try:
        catalog = load_models(path, env=os.environ)
    except CatalogError as exc:
        err.print(f"[bold red]{path}: invalid models file[/] (tokenbank models check)")
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False)
        raise typer.Exit(9) from None
    found = prices.propose(
        catalog, tokens_per_usd=tokens_per_usd, markup=markup, at=datetime.now(UTC)
    )
    table = Table(title=f"{path}: {tokens_per_usd} tokens per USD, markup {markup}")
    for column in ("model", "genai-prices", "USD in / out per 1M", "now", "proposed"):
        table.add_column(column)
    for proposal in found:
        usd = (
            f"{proposal.usd_input} / {proposal.usd_output}"
            if proposal.usd_input is not None
            else "-"
        )
        now = f"{proposal.current[0]:,} / {proposal.current[1]:,}"
        new = (
            f"{proposal.proposed[0]:,} / {proposal.proposed[1]:,}"
            if proposal.proposed
            else f"(kept: {proposal.note})"
        )
        table.add_row(proposal.model_id, proposal.matched or "-", usd, now, new)
    out.print(table)
    changed = [p for p in found if p.proposed is not None and p.proposed != p.current]
    if not write:
        out.print(f"{len(changed)} price changes proposed; --write puts them in {path}")
        return
    text = path.read_text(encoding="utf-8")
    updated = prices.rewrite(text, found)
    draft = path.with_name(f".{path.name}.draft")
    draft.write_text(updated, encoding="utf-8")
    try:
        load_models(draft, env=os.environ)  # what is written still loads
    except CatalogError as exc:
        draft.unlink()
        err.print(f"[bold red]the rewritten file would not load: {exc}[/]")
        raise typer.Exit(9) from None
    draft.replace(path)
    out.print(f"{len(changed)} price changes written to {path}: review them (git diff)")
