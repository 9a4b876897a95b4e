"""The ``tokenbank`` command: a thin shell that parses, calls one service function, prints.
Each group lives in a module of its own; this one puts them together."""

from __future__ import annotations

import sys

import structlog
import typer

from tokenbank.cli import billing as billing_cli
from tokenbank.cli import database, demo, mail, maintenance, models, service, tokens, users
from tokenbank.cli import worker as worker_cli
from tokenbank.cli.common import Context, exit_code, reported, show_error
from tokenbank.config import Settings
from tokenbank.errors import InvalidArgument
from tokenbank.logs import configure_logging

app = typer.Typer(
    help="tokenbank: prepaid tokens for AI apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
)
app.add_typer(database.db_app, name="db")
app.add_typer(users.users_app, name="users")
app.add_typer(maintenance.ledger_app, name="ledger")
app.add_typer(maintenance.holds_app, name="holds")
app.add_typer(service.apikeys_app, name="apikeys")
app.add_typer(billing_cli.packages_app, name="packages")
app.add_typer(billing_cli.webhooks_app, name="webhooks")
app.add_typer(billing_cli.purchases_app, name="purchases")
app.add_typer(mail.mail_app, name="mail")
app.add_typer(models.models_app, name="models")
for command in (
    users.sweep,
    tokens.grant,
    tokens.spend,
    tokens.refund,
    tokens.balance,
    tokens.history,
    service.serve,
    billing_cli.reconcile,
):
    app.command()(command)
app.command("stripe-emulator")(billing_cli.stripe_emulator)
app.command("llm-emulator")(models.llm_emulator)
app.command("demo")(demo.demo_command)
app.command("worker")(worker_cli.worker_command)


@app.callback()
def _main(ctx: typer.Context) -> None:
    with reported():
        settings = Settings.load()
    # Money events a command causes are logged on stderr: stdout is the command's output.
    # (A program that configured logging itself, and calls the command line, keeps its own.)
    if not structlog.is_configured():
        configure_logging(settings.log_level, stream="stderr")
    ctx.obj = Context(settings=settings)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    if not all(_text(arg) for arg in sys.argv[1:]):
        # Bytes that are not UTF-8 reach Python as lone surrogates, which no database takes.
        unreadable = InvalidArgument("arguments", "must be UTF-8 text")
        show_error(unreadable)
        sys.exit(exit_code(unreadable))
    app(prog_name="tokenbank")
    sys.exit(0)


def _text(arg: str) -> bool:
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
