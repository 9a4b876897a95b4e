"""``tokenbank holds expire`` and ``tokenbank ledger verify``: the ledger's upkeep."""

from __future__ import annotations

import typer

from tokenbank import ledger
from tokenbank.cli.common import context, err, out, reported, run

holds_app = typer.Typer(help="Holds (reserved tokens).", no_args_is_help=True)
ledger_app = typer.Typer(help="Ledger maintenance.", no_args_is_help=True)


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
    with reported(), context(ctx).db.read() as conn:
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
