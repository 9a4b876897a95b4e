"""``tokenbank mail``: the outbox (``tokenbank worker`` sends it: cli/worker.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tokenbank import mail
from tokenbank.cli.common import RowId, context, err, out, reported
from tokenbank.config import with_secrets
from tokenbank.mail.models import STATUSES
from tokenbank.web.letters import mail_sender

mail_app = typer.Typer(help="The mail outbox.", no_args_is_help=True)


@mail_app.command("list")
def mail_list(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help=f"Only mail in this state: {', '.join(STATUSES)}.")
    ] = None,
    to: Annotated[str | None, typer.Option(help="Only mail to this address.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """The newest mail first: to whom, what, and whether it went out."""
    if status is not None and status not in STATUSES:
        err.print(f"[bold red]error[/]: --status must be one of {', '.join(STATUSES)}")
        raise typer.Exit(2)
    with reported(), context(ctx).db.read() as conn:
        rows = mail.recent(conn, status=status, to=to, limit=limit)
    table = Table("id", "kind", "to", "status", "attempts", "created", "sent", "last error")
    for row in rows:
        table.add_row(
            str(row.id),
            row.kind,
            row.to_address,
            row.status,
            str(row.attempts),
            row.created_at.isoformat(timespec="seconds"),
            row.sent_at.isoformat(timespec="seconds") if row.sent_at else "",
            row.last_error or "",
        )
    out.print(table)


@mail_app.command("send")
def mail_send(ctx: typer.Context) -> None:
    """Send every mail that is due now, once, and say what happened."""
    with reported():
        settings = with_secrets(context(ctx).settings)
        outcome = mail_sender(settings, context(ctx).db).send_due()
    out.print(
        f"sent {outcome.sent}, to retry {outcome.retried}, failed {outcome.failed},"
        f" not needed {outcome.dropped}"
    )


@mail_app.command("retry")
def mail_retry(ctx: typer.Context, mail_id: RowId) -> None:
    """Send a failed mail again (once its cause, an address or the server, is fixed). A
    mail older than three days is tried once: at its first setback it fails again."""
    with reported():
        if not mail.retry(context(ctx).db, mail_id=mail_id):
            err.print(f"[bold red]error[/]: no failed mail {mail_id}")
            raise typer.Exit(3)
    out.print(f"mail {mail_id} will be sent again")
