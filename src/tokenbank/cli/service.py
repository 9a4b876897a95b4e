"""``tokenbank serve`` and ``tokenbank apikeys``: the HTTP service and the keys host apps
call it with."""

from __future__ import annotations

from typing import Annotated, Any

import typer
import uvicorn
from rich.table import Table

from tokenbank import apikeys
from tokenbank.apikeys import Scope
from tokenbank.cli.common import RowId, context, err, out, reported, run
from tokenbank.config import with_secrets
from tokenbank.logs import configure_logging
from tokenbank.web.app import check_schema, create_app, settle_process

apikeys_app = typer.Typer(help="API keys for host apps.", no_args_is_help=True)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the HTTP service (uvicorn). Refuses to start on a database behind this version's
    migrations (run ``tokenbank db upgrade`` first)."""
    with reported():
        settings = with_secrets(context(ctx).settings)
    configure_logging(settings.log_level)
    with reported():
        check_schema(context(ctx).db)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        # Streams may last minutes: past the grace they are cancelled (and settled).
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
    if workers == 1:
        with reported():
            application = create_app(settings)
        settle_process()
        uvicorn.run(application, **options)
        return
    # Each worker process builds its own app from the environment (and the same ./var key).
    uvicorn.run("tokenbank.web.app:app_from_environment", factory=True, workers=workers, **options)


@apikeys_app.command("create")
def apikeys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scope: Annotated[
        list[Scope] | None, typer.Option(help="read, spend or admin (repeatable; default spend).")
    ] = None,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    scopes = scope or [Scope.SPEND]
    key, secret = run(ctx, lambda conn: apikeys.create_key(conn, name=name, scopes=scopes))
    out.print(
        f"API key {key.id} ({key.name}, scopes: {' '.join(sorted(key.scopes))}):", highlight=False
    )
    out.print(secret, highlight=False)
    err.print("Store it now: it is not shown again.")


@apikeys_app.command("list")
def apikeys_list(ctx: typer.Context) -> None:
    """List API keys (never their secrets)."""
    with reported(), context(ctx).db.read() as conn:
        keys = apikeys.list_keys(conn)
    table = Table(title="API keys")
    for column in ("id", "name", "prefix", "scopes", "created", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            str(key.id),
            key.name,
            key.prefix + "...",
            " ".join(sorted(key.scopes)),
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    out.print(table)


@apikeys_app.command("revoke")
def apikeys_revoke(ctx: typer.Context, key_id: RowId) -> None:
    """Revoke API key KEY_ID; requests with it fail within seconds."""
    key = run(ctx, lambda conn: apikeys.revoke_key(conn, key_id=key_id))
    out.print(f"revoked API key {key.id} ({key.name})")
