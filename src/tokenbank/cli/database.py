"""``tokenbank db``: migrations."""

from __future__ import annotations

import typer
from alembic.util import CommandError

from tokenbank import migrations
from tokenbank.cli.common import context, err, out, reported

db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    db = context(ctx).db
    with reported():
        migrations.upgrade(db, revision)
    out.print(f"database at revision {migrations.current_revision(db)}")


@db_app.command("check")
def db_check(ctx: typer.Context) -> None:
    """Fail unless the database is at the newest revision and matches the models."""
    db = context(ctx).db
    with reported():  # a database that is down is database_unavailable, as everywhere
        try:
            migrations.check(db)
        except CommandError as exc:  # behind, or the tables and the migrations differ
            err.print(f"[bold red]error[/]: {exc}", highlight=False)
            raise typer.Exit(1) from None
    out.print(f"database at revision {migrations.current_revision(db)}; models match migrations")
