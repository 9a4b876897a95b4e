"""The ``tokenbank`` command: a thin shell that parses, calls one service function, prints."""

from __future__ import annotations

import sys
import uuid
from dataclasses import asdict
from typing import Annotated, Any

import structlog
import typer
import uvicorn
from rich.table import Table

from tokenbank import apikeys, identity, ledger, migrations, users
from tokenbank.apikeys import Scope
from tokenbank.cli import billing as billing_cli
from tokenbank.cli.common import Context, context, err, errors, out, run, to_json
from tokenbank.config import Settings, with_secrets
from tokenbank.logs import configure_logging
from tokenbank.web.app import check_schema, create_app, settle_process

app = typer.Typer(
    help="tokenbank: prepaid tokens for AI apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
users_app = typer.Typer(help="Users and their wallets.", no_args_is_help=True)
ledger_app = typer.Typer(help="Ledger maintenance.", no_args_is_help=True)
holds_app = typer.Typer(help="Holds (reserved tokens).", no_args_is_help=True)
apikeys_app = typer.Typer(help="API keys for host apps.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(ledger_app, name="ledger")
app.add_typer(holds_app, name="holds")
app.add_typer(apikeys_app, name="apikeys")
app.add_typer(billing_cli.packages_app, name="packages")
app.add_typer(billing_cli.webhooks_app, name="webhooks")
app.add_typer(billing_cli.purchases_app, name="purchases")
app.command()(billing_cli.reconcile)
app.command("stripe-emulator")(billing_cli.stripe_emulator)


@app.callback()
def _main(ctx: typer.Context) -> None:
    settings = Settings()
    # Money events a command causes are logged on stderr: stdout is the command's output.
    # (A program that configured logging itself, and calls the command line, keeps its own.)
    if not structlog.is_configured():
        configure_logging(settings.log_level, stream="stderr")
    ctx.obj = Context(settings=settings)
    ctx.call_on_close(ctx.obj.close)


# --- db ---------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    db = context(ctx).db
    with errors():
        migrations.upgrade(db, revision)
    out.print(f"database at revision {migrations.current_revision(db)}")


@db_app.command("check")
def db_check(ctx: typer.Context) -> None:
    """Fail unless the database is at the newest revision and matches the models."""
    db = context(ctx).db
    try:
        migrations.check(db)
    except Exception as exc:  # alembic raises its own CommandError family
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"database at revision {migrations.current_revision(db)}; models match migrations")


# --- users ------------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    user_id: str,
    email: Annotated[str | None, typer.Option(help="Email address (to sign in with).")] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May see every user's data.")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read a password from standard input.")
    ] = False,
    ask_password: Annotated[
        bool, typer.Option("--ask-password", help="Prompt for a password.")
    ] = False,
) -> None:
    """Create a user and their wallet; with a password they can sign in to the pages."""
    hashed = _password_hash(password_stdin, ask_password)

    def work(conn: Any) -> users.User:
        user = users.create_user(conn, user_id=user_id, email=email, name=name)
        if hashed is not None:
            identity.set_password(conn, user_id=user.id, password_hash=hashed)
        if admin:
            identity.set_admin(conn, user_id=user.id, admin=True)
        return user

    user = run(ctx, work)
    what = "admin user" if admin else "user"
    out.print(f"created {what} {user.id}" + (f" <{user.email}>" if user.email else ""))


@users_app.command("password")
def users_password(
    ctx: typer.Context,
    user_id: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Set a user's password (prompted unless --password-stdin) and sign them out everywhere."""
    hashed = _password_hash(password_stdin, ask=not password_stdin)
    assert hashed is not None

    def work(conn: Any) -> int:
        identity.set_password(conn, user_id=user_id, password_hash=hashed)
        return identity.revoke_sessions(conn, user_id=user_id)

    ended = run(ctx, work)
    out.print(f"password set for {user_id}; {ended} session(s) signed out")


@users_app.command("admin")
def users_admin(
    ctx: typer.Context,
    user_id: str,
    revoke: Annotated[bool, typer.Option("--revoke", help="Take admin rights away.")] = False,
) -> None:
    """Make a user an admin (or, with --revoke, no longer one)."""
    run(ctx, lambda conn: identity.set_admin(conn, user_id=user_id, admin=not revoke))
    out.print(f"{user_id} is {'no longer' if revoke else 'now'} an admin")


@users_app.command("sign-out")
def users_sign_out(ctx: typer.Context, user_id: str) -> None:
    """End every session of a user (their browsers must sign in again)."""
    ended = run(ctx, lambda conn: identity.revoke_sessions(conn, user_id=user_id))
    out.print(f"{ended} session(s) of {user_id} signed out")


@app.command()
def sweep(ctx: typer.Context) -> None:
    """Delete expired portal links, ended sessions and old rate-limit counters."""
    removed = run(ctx, identity.sweep)
    out.print(", ".join(f"{count} {what.replace('_', ' ')}" for what, count in removed.items()))


def _password_hash(stdin: bool, ask: bool) -> str | None:
    """Hash before any transaction opens: argon2 is deliberately slow."""
    if stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif ask:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        return None
    with errors():
        return identity.Passwords().hash(password)


# --- tokens -----------------------------------------------------------------------------


@app.command()
def grant(
    ctx: typer.Context,
    user_id: str,
    amount: int,
    reason: Annotated[str, typer.Option(help="Why the tokens are granted (kept on the transfer).")],
    key: Annotated[
        str | None, typer.Option(help="Idempotency key; rerunning with it grants once.")
    ] = None,
) -> None:
    """Grant AMOUNT free tokens to USER_ID."""
    key = key or f"grant-{uuid.uuid4()}"
    receipt = run(
        ctx,
        lambda conn: ledger.credit(
            conn,
            user_id=user_id,
            amount=amount,
            kind=ledger.TransferKind.GRANT,
            idempotency_key=key,
            description=reason,
        ),
    )
    note = " (already granted with this key; nothing changed)" if receipt.replayed else ""
    out.print(
        f"granted {receipt.amount} tokens to {user_id}: transfer {receipt.transfer_id},"
        f" balance {receipt.balance}, key {key}{note}",
        highlight=False,
    )


@app.command()
def spend(
    ctx: typer.Context,
    user_id: str,
    amount: int,
    key: Annotated[str, typer.Option(help="Idempotency key; rerunning with it spends once.")],
    description: Annotated[str | None, typer.Option(help="What the tokens paid for.")] = None,
) -> None:
    """Spend AMOUNT tokens of USER_ID; fails, changing nothing, if they are not there."""
    receipt = run(
        ctx,
        lambda conn: ledger.spend(
            conn, user_id=user_id, amount=amount, idempotency_key=key, description=description
        ),
    )
    note = " (already spent with this key; nothing changed)" if receipt.replayed else ""
    out.print(
        f"spent {receipt.amount} tokens of {user_id}: transfer {receipt.transfer_id},"
        f" balance {receipt.balance}{note}",
        highlight=False,
    )


@app.command()
def refund(
    ctx: typer.Context,
    transfer_id: int,
    key: Annotated[str, typer.Option(help="Idempotency key; rerunning with it refunds once.")],
    amount: Annotated[
        int | None, typer.Option(help="Tokens to give back (default: all not yet refunded).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why the spend is refunded.")] = None,
) -> None:
    """Give back all or part of spend TRANSFER_ID."""
    receipt = run(
        ctx,
        lambda conn: ledger.refund(
            conn, transfer_id=transfer_id, amount=amount, idempotency_key=key, description=reason
        ),
    )
    out.print(
        f"refunded {receipt.amount} tokens to {receipt.user_id}: transfer {receipt.transfer_id},"
        f" balance {receipt.balance}",
        highlight=False,
    )


@app.command()
def balance(
    ctx: typer.Context,
    user_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show USER_ID's balance."""
    with errors(), context(ctx).db.read() as conn:
        result = ledger.balance(conn, user_id=user_id)
    if as_json:
        out.print_json(to_json({**asdict(result), "balance": result.balance}))
        return
    table = Table(title=f"Balance of {user_id}", show_header=False)
    for label, value in (
        ("available", result.available),
        ("held", result.held),
        ("total purchased", result.total_purchased),
        ("total granted", result.total_granted),
        ("total spent", result.total_spent),
    ):
        table.add_row(label, f"{value:,}")
    out.print(table)


@app.command()
def history(
    ctx: typer.Context,
    user_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option(help="How many lines.")] = 50,
    kind: Annotated[
        list[ledger.TransferKind] | None, typer.Option(help="Only these kinds (repeatable).")
    ] = None,
    before: Annotated[
        int | None, typer.Option(help="Cursor from a previous page: older lines only.")
    ] = None,
) -> None:
    """Show USER_ID's transfers, newest first."""
    with errors(), context(ctx).db.read() as conn:
        page = ledger.history(conn, user_id=user_id, limit=limit, before=before, kinds=kind)
    if as_json:
        items = [asdict(item) for item in page.items]
        out.print_json(to_json({"items": items, "next_cursor": page.next_cursor}))
        return
    table = Table(title=f"History of {user_id}")
    for column in ("when", "kind", "amount", "balance", "transfer", "description"):
        table.add_column(column, justify="right" if column in ("amount", "balance") else "left")
    for item in page.items:
        table.add_row(
            item.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            item.kind.value,
            f"{item.amount:+,}",
            f"{item.balance_after:,}",
            str(item.transfer_id),
            item.description or "",
        )
    out.print(table)
    if page.next_cursor is not None:
        out.print(f"more: --before {page.next_cursor}")


# --- the service and its API keys ----------------------------------------------------------


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the HTTP service (uvicorn). Refuses to start on a database behind this version's
    migrations (run ``tokenbank db upgrade`` first)."""
    with errors():
        settings = with_secrets(context(ctx).settings)
    configure_logging(settings.log_level)
    with errors():
        check_schema(context(ctx).db)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    if workers == 1:
        with errors():
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
    with errors(), context(ctx).db.read() as conn:
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
def apikeys_revoke(ctx: typer.Context, key_id: int) -> None:
    """Revoke API key KEY_ID; requests with it fail within seconds."""
    key = run(ctx, lambda conn: apikeys.revoke_key(conn, key_id=key_id))
    out.print(f"revoked API key {key.id} ({key.name})")


# --- holds and ledger maintenance --------------------------------------------------------


@holds_app.command("expire")
def holds_expire(ctx: typer.Context) -> None:
    """Release every hold whose deadline has passed."""
    total = 0
    while expired := run(ctx, lambda conn: ledger.expire_holds(conn, limit=1000)):
        total += expired
    out.print(f"expired {total} holds")


@ledger_app.command("verify")
def ledger_verify(ctx: typer.Context) -> None:
    """Check every ledger invariant; exit 1 with a report if one fails."""
    with errors(), context(ctx).db.read() as conn:
        report = ledger.verify(conn)
    for check in report.checks:
        mark = "[green]ok[/]" if check.ok else f"[bold red]FAILED ({check.problem_count})[/]"
        out.print(f"{mark}  {check.name}: {check.description}", highlight=False)
        for problem in check.problems:
            out.print(f"      - {problem}", highlight=False)
    summary = f"{report.accounts} accounts, {report.transfers} transfers, {report.entries} entries"
    if not report.ok:
        err.print(f"[bold red]ledger verification failed[/] ({summary})")
        raise typer.Exit(1)
    out.print(f"ledger verified ({summary})")


def main() -> None:
    app(prog_name="tokenbank")
    sys.exit(0)
