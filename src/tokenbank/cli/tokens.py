"""``tokenbank grant``, ``spend``, ``refund``, ``balance`` and ``history``: a wallet from
the command line, through the same service functions as the API."""

from __future__ import annotations

import enum
import getpass
import uuid
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.engine import Connection

from tokenbank import grants, ledger
from tokenbank.cli.common import MAX_ROW_ID, context, out, reported, run, to_json
from tokenbank.columns import utcnow
from tokenbank.errors import InvalidArgument


class GrantSource(enum.StrEnum):
    """``--source``: what granted tokens are (``trial`` is given only by the trial)."""

    ADMIN = "admin"
    PROMO = "promo"


def grant(
    ctx: typer.Context,
    user_id: str,
    amount: int,
    reason: Annotated[str, typer.Option(help="Why the tokens are granted (kept on the transfer).")],
    key: Annotated[
        str | None, typer.Option(help="Idempotency key; rerunning with it grants once.")
    ] = None,
    expires_in: Annotated[
        int | None,
        typer.Option(
            "--expires-in",
            metavar="DAYS",
            help=f"Days the tokens stay usable (1-{grants.MAX_DAYS}); without, they never expire.",
        ),
    ] = None,
    source: Annotated[
        GrantSource, typer.Option(help="What the tokens are: an operator's grant, or a promotion.")
    ] = GrantSource.ADMIN,
) -> None:
    """Grant AMOUNT free tokens to USER_ID (a known user), with a reason; audited as the
    operating system's user running the command."""
    key = key or f"grant-{uuid.uuid4()}"
    with reported():
        now = utcnow()
        expires_at = None if expires_in is None else grants.expiry(days=expires_in, now=now)
        given = grants.grant(
            context(ctx).db,
            user_id=user_id,
            amount=amount,
            reason=reason,
            idempotency_key=key,
            actor=f"cli:{_login()}",
            expires_at=expires_at,
            source=ledger.Source(source.value),
            now=now,
        )
    terms = [] if given.source == ledger.Source.ADMIN else [given.source.value]
    if given.expires_at is not None:
        terms.append(f"expiring {given.expires_at:%Y-%m-%d %H:%M} UTC")
    out.print(
        f"granted {given.amount} tokens to {user_id}"
        + (f" ({', '.join(terms)})" if terms else "")
        + f": transfer {given.transfer_id}, {_balance(ctx, given, 'granted')}, key {key}",
        highlight=False,
    )


def spend(
    ctx: typer.Context,
    user_id: str,
    amount: int,
    key: Annotated[str, typer.Option(help="Idempotency key; rerunning with it spends once.")],
    description: Annotated[str | None, typer.Option(help="What the tokens paid for.")] = None,
) -> None:
    """Spend AMOUNT tokens of USER_ID; fails, changing nothing, if they are not there."""
    log_from = context(ctx).settings.log_spends_from
    receipt = run(
        ctx,
        lambda conn: ledger.spend(
            conn,
            user_id=user_id,
            amount=amount,
            idempotency_key=key,
            description=description,
            log_from=log_from,
        ),
    )
    out.print(
        f"spent {receipt.amount} tokens of {user_id}: transfer {receipt.transfer_id},"
        f" {_balance(ctx, receipt, 'spent')}",
        highlight=False,
    )


def refund(
    ctx: typer.Context,
    key: Annotated[str, typer.Option(help="Idempotency key; rerunning with it refunds once.")],
    transfer_id: Annotated[
        int | None,
        typer.Argument(help="The spend's transfer id (or --of its key).", min=1, max=MAX_ROW_ID),
    ] = None,
    of: Annotated[
        str | None, typer.Option("--of", help="The idempotency key the spend was made with.")
    ] = None,
    amount: Annotated[
        int | None, typer.Option(help="Tokens to give back (default: all not yet refunded).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why the spend is refunded.")] = None,
) -> None:
    """Give back all or part of spend TRANSFER_ID (or of the spend made with key --of)."""
    if (transfer_id is None) == (of is None):
        with reported():
            raise InvalidArgument("transfer_id", "give the spend's transfer id, or --of its key")

    def give_back(conn: Connection) -> ledger.Receipt:
        spent = transfer_id
        if spent is None:
            spent = ledger.get_transfer(conn, idempotency_key=of).id
        return ledger.refund(
            conn, transfer_id=spent, amount=amount, idempotency_key=key, description=reason
        )

    receipt = run(ctx, give_back)
    out.print(
        f"refunded {receipt.amount} tokens to {receipt.user_id}: transfer {receipt.transfer_id},"
        f" {_balance(ctx, receipt, 'refunded')}",
        highlight=False,
    )


def _balance(ctx: typer.Context, receipt: ledger.Receipt, done: str) -> str:
    """The balance after the transfer; for one replayed (the key was used before), that it
    changed nothing, and the balance now rather than the one it left then."""
    if not receipt.replayed:
        return f"balance {receipt.balance}"
    with reported(), context(ctx).db.read() as conn:
        now = ledger.balance(conn, user_id=receipt.user_id).balance
    return f"already {done} with this key, nothing changed; balance now {now}"


def balance(
    ctx: typer.Context,
    user_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show USER_ID's balance."""
    with reported(), context(ctx).db.read() as conn:
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
    for expiring in result.expiring:
        table.add_row(
            f"expires {expiring.expires_at:%Y-%m-%d %H:%M} UTC",
            f"{expiring.amount:,} ({expiring.source})",
        )
    out.print(table)


def history(
    ctx: typer.Context,
    user_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option(help="How many lines.")] = 50,
    kind: Annotated[
        list[ledger.TransferKind] | None, typer.Option(help="Only these kinds (repeatable).")
    ] = None,
    before: Annotated[
        int | None,
        typer.Option(help="Cursor from a previous page: older lines only.", min=1, max=MAX_ROW_ID),
    ] = None,
) -> None:
    """Show USER_ID's transfers, newest first."""
    with reported(), context(ctx).db.read() as conn:
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


def _login() -> str:
    """Who runs the command, for the audit log."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return "unknown"
