"""Selling tokens from the command line: the catalog, the webhook inbox, reconciliation, and
the built-in Stripe emulator."""

from __future__ import annotations

import getpass
import re
import textwrap
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from tokenbank import billing
from tokenbank.billing import Billing, PaymentsNotConfigured
from tokenbank.billing.catalog import catalog_warnings, load_catalog
from tokenbank.billing.money import format_amount
from tokenbank.billing.plans import Interval
from tokenbank.cli.common import RowId, context, err, out, reported, to_json
from tokenbank.columns import utcnow
from tokenbank.emulator import serve

packages_app = typer.Typer(help="The token packages on sale (the catalog).", no_args_is_help=True)
webhooks_app = typer.Typer(help="The Stripe webhook inbox.", no_args_is_help=True)
purchases_app = typer.Typer(
    help="Purchases an admin must look at, and the decisions.", no_args_is_help=True
)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _selling(ctx: typer.Context) -> Billing:
    with reported():
        seller = billing.billing_from_settings(context(ctx).settings)
        if seller is None:
            raise PaymentsNotConfigured(
                "set STRIPE_SECRET_KEY (and STRIPE_API_BASE for the emulator)"
            )
    return seller


@packages_app.command("check")
def packages_check(
    ctx: typer.Context,
    path: Annotated[
        str | None, typer.Argument(help="Catalog file (default: TOKENBANK_CATALOG).")
    ] = None,
) -> None:
    """Validate the catalog and show price per token and savings; exits 9 on errors."""
    source = path or str(context(ctx).settings.catalog)
    try:
        catalog = load_catalog(Path(source))
    except billing.CatalogError as exc:
        err.print(f"[bold red]{source}: invalid catalog[/]")
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False)
        raise typer.Exit(9) from None
    base = catalog.base
    table = Table(title=f"{source} ({catalog.currency.upper()})")
    for column in (
        "id",
        "name",
        "tokens",
        "bonus",
        "price",
        "per token",
        "savings",
        "badge",
        "active",
    ):
        table.add_column(
            column,
            justify="right"
            if column in {"tokens", "bonus", "price", "per token", "savings"}
            else "left",
            overflow="fold",
        )
    for package in catalog.packages:
        savings = package.savings_against(base) if base and package.active else None
        table.add_row(
            package.id,
            package.localized_name("en"),
            f"{package.tokens:,}",
            f"{package.bonus_tokens:,}",
            format_amount(package.price, package.currency),
            f"{package.price_per_token:.4f}",
            "-" if savings is None or savings <= 0 else f"{savings:.0%}",
            package.badge or "",
            "yes" if package.active else "no",
        )
    out.print(table)
    if catalog.features:
        priced = Table(title="features: what the tokens buy")
        for column in ("id", "name", "name (zh-CN)", "tokens per unit"):
            priced.add_column(
                column, justify="right" if column == "tokens per unit" else "left", overflow="fold"
            )
        for feature in catalog.features:
            priced.add_row(
                feature.id,
                feature.localized_name("en"),
                feature.localized_name("zh-CN"),
                f"{feature.tokens:,}",
            )
        out.print(priced)
    if catalog.plans:
        out.print(_plans_table(catalog))
    for warning in catalog_warnings(catalog):
        err.print(f"[yellow]warning[/]: {warning}", highlight=False)
    plans = f", {len(catalog.plans)} plans" if catalog.plans else ""
    out.print(f"{len(catalog.packages)} packages, {len(catalog.on_sale)} on sale{plans}: OK")


def _plans_table(catalog: billing.Catalog) -> Table:
    table = Table(title="plans: subscriptions that grant tokens every month")
    columns = ("id", "name", "tokens / month", "month", "year", "saves", "unused", "unlimited")
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in {"tokens / month", "month", "year", "saves"} else "left",
            overflow="fold",
        )
    for plan in catalog.plans:
        unused = plan.unused.value
        if plan.rollover_cap is not None:
            unused += f" (cap {plan.rollover_cap:,})"
        unlimited = ", ".join(
            name if cap is None else f"{name} ({cap:,}/month)"
            for name, cap in (plan.unlimited or {}).items()
        )
        table.add_row(
            plan.id,
            plan.localized_name("en") + ("" if plan.active else " (not on sale)"),
            f"{plan.tokens_per_month:,}",
            format_amount(plan.price(Interval.MONTH), plan.currency),
            format_amount(plan.price(Interval.YEAR), plan.currency),
            f"{plan.yearly_savings:.0%}",
            unused + (f", {plan.trial_days}-day trial" if plan.trial_days else ""),
            unlimited or "-",
        )
    return table


@packages_app.command("sync")
def packages_sync(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
) -> None:
    """Create or update the Stripe products and prices of the catalog's packages and plans
    (by lookup key), and archive the prices of those no longer on sale. Safe to repeat."""
    seller = _selling(ctx)
    with reported(), Progress(console=err, transient=True) as progress:
        steps = billing.plan_sync(seller.stripe, seller.catalog)
        task = progress.add_task(
            "Syncing with Stripe" if not dry_run else "Planning", total=len(steps)
        )
        billing.sync_catalog(
            seller.stripe,
            seller.catalog,
            dry_run=dry_run,
            progress=lambda _: progress.advance(task),
        )
    changes = [s for s in steps if s.action != "ok"]
    for step in steps:
        out.print(f"  {step.item:<24} {step.action:<16} {step.detail}", highlight=False)
    verb = "would change" if dry_run else "changed"
    out.print(f"{len(changes)} {verb}, {len(steps) - len(changes)} already in sync")


@webhooks_app.command("list")
def webhooks_list(
    ctx: typer.Context,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only events whose processing failed.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The newest events in the inbox."""
    with reported(), context(ctx).db.read() as conn:
        events = billing.list_events(conn, failed=failed, limit=limit)
    if as_json:
        out.print_json(to_json([asdict(e) for e in events]))
        return
    # One line per event (received: UTC) and its outcome indented below: readable in an
    # 80-column terminal, where a table of six columns folded every id.
    for event in events:
        state = "done" if event.processed_at else ("FAILED" if event.failed else "waiting")
        out.print(
            f"{event.event_id} {event.type} {event.received_at:%m-%d %H:%M} {state}",
            highlight=False,
        )
        said = (event.outcome if event.processed_at else event.last_error) or ""
        if event.attempts > 1:
            said = f"{event.attempts} tries; {said}"
        for line in textwrap.wrap(said, width=76):
            out.print(f"    {line}", highlight=False)
    out.print(f"{len(events)} events")


@webhooks_app.command("replay")
def webhooks_replay(ctx: typer.Context, event_id: str) -> None:
    """Process a stored event again (what is already applied stays as it is)."""
    seller = _selling(ctx)
    with reported():
        processed = billing.replay(
            context(ctx).db,
            seller.stripe,
            event_id=event_id,
            policy=seller.policy,
            catalog=seller.catalog,
        )
    out.print(f"{processed.event_id}: {processed.outcome}", highlight=False)


#: The furthest back a window may reach: further has no payments, and no clock goes there.
LONGEST_WINDOW = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if match is None or not match.group(1).isascii():
        raise typer.BadParameter("use a number and a unit: 90m, 24h, 7d")
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > 9 or timedelta(**{_UNITS[match.group(2)]: int(digits)}) > LONGEST_WINDOW:
        raise typer.BadParameter(f"at most {LONGEST_WINDOW.days}d")
    return timedelta(**{_UNITS[match.group(2)]: int(digits)})


def reconcile(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(help="How far back to look: 30m, 24h, 7d.")] = "72h",
) -> None:
    """Compare recent Stripe payments, refunds and disputes with the ledger and apply what
    the webhooks missed."""
    seller = _selling(ctx)
    window = parse_duration(since)
    with reported(), Progress(console=err, transient=True) as progress:
        task = progress.add_task("Settling payments", total=None)
        result = billing.reconcile(
            context(ctx).db,
            seller.stripe,
            since=utcnow() - window,
            policy=seller.policy,
            progress=lambda n: progress.advance(task, n),
            catalog=seller.catalog,
        )
    for outcome in result.fixed:
        out.print(f"fixed {outcome}", highlight=False)
    for renewal in result.subscriptions:
        out.print(f"fixed {renewal}", highlight=False)
    for purchase_id, reason in result.expired:
        out.print(f"expired purchase {purchase_id}: {reason}", highlight=False)
    for purchase_id in result.canceled:
        out.print(f"canceled purchase {purchase_id}: nobody paid it in time", highlight=False)
    for purchase_id, reason in result.flagged:
        err.print(
            f"[bold yellow]needs review[/]: purchase {purchase_id}: {reason}", highlight=False
        )
    for error in result.errors:
        err.print(f"[bold red]error[/]: {error}", highlight=False)
    out.print(
        f"{result.checked} payments checked, {len(result.fixed)} fixed,"
        f" {len(result.expired)} expired, {len(result.canceled)} canceled,"
        f" {len(result.flagged)} flagged,"
        f" {len(result.errors)} errors; {result.awaiting_review} purchases await review"
        + (" (tokenbank purchases review, or the admin pages)" if result.awaiting_review else "")
    )
    if result.errors or result.awaiting_review:
        raise typer.Exit(1)


@purchases_app.command("review")
def purchases_review(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the purchases flagged for an admin (a payment that does not match; credited
    here but not paid at Stripe) that nobody has decided about yet."""
    with reported(), context(ctx).db.read() as conn:
        found = billing.list_purchases(conn, awaiting_review=True, limit=500)
    if as_json:
        out.print_json(to_json([asdict(p) for p in found]))
        return
    table = Table(title="Purchases awaiting review")
    for column in ("id", "user", "package", "status", "amount", "why"):
        table.add_column(column)
    for p in found:
        table.add_row(
            str(p.id),
            p.user_id,
            p.package_id,
            p.status.value,
            format_amount(p.amount, p.currency),
            p.review or "",
        )
    out.print(table)


@purchases_app.command("resolve")
def purchases_resolve(
    ctx: typer.Context,
    purchase_id: RowId,
    decision: Annotated[
        billing.ReviewDecision,
        typer.Argument(
            help="credit or refuse (a payment that did not match); reverse or dismiss"
            " (credited, but Stripe shows no payment)."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
) -> None:
    """Decide about a flagged purchase; the decision and the reason go to the audit log."""
    seller = _selling(ctx)
    with reported():
        purchase = billing.resolve_review(
            context(ctx).db,
            purchase_id=purchase_id,
            decision=decision,
            actor=f"cli:{getpass.getuser()}",
            reason=reason,
            policy=seller.policy,
        )
    out.print(
        f"purchase {purchase.id}: {decision.value}; status {purchase.status.value}",
        highlight=False,
    )


def stripe_emulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 12111,
    webhook_url: Annotated[str | None, typer.Option(help="Where to deliver signed events.")] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(envvar="STRIPE_WEBHOOK_SECRET", help="whsec_... to sign them with."),
    ] = None,
    public_url: Annotated[str | None, typer.Option(help="Base URL browsers reach it on.")] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="Keep the account in this file across restarts (none: in memory)."),
    ] = None,
) -> None:
    """Run the built-in Stripe emulator: the part of Stripe's API tokenbank uses, a hosted
    checkout page that takes Stripe's test cards, and signed webhook deliveries."""
    out.print(f"Stripe emulator on http://{host}:{port} (set STRIPE_API_BASE to this)")
    serve(
        host=host,
        port=port,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        public_url=public_url,
        state=state,
    )
