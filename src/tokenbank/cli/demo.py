"""``tokenbank demo``: demo data for a development database, through the emulator."""

from __future__ import annotations

import getpass
from collections import Counter

import typer

from tokenbank import billing, demo, identity
from tokenbank.cli.common import context, out, reported
from tokenbank.errors import PaymentsNotConfigured


def demo_command(ctx: typer.Context) -> None:
    """Fill this development database with demo users (one an admin), purchases paid,
    declined, pending, refunded and disputed at the built-in Stripe emulator, spends and
    holds. Safe to run again: what is there already is not made twice. Refuses
    TOKENBANK_ENV=production and real Stripe."""
    settings = context(ctx).settings
    # Every refusal comes before the database is opened or Stripe is called.
    with reported(), demo.open_emulator(settings) as emulator:
        seller = billing.billing_from_settings(settings)
        if seller is None:  # open_emulator refuses a missing key first
            raise PaymentsNotConfigured("set STRIPE_SECRET_KEY")
        filled = demo.fill(
            context(ctx).db,
            seller=seller,
            emulator=emulator,
            passwords=identity.Passwords(),
            public_url=settings.public_url,
            actor=f"cli:{_login()}",
        )
    site = settings.public_url.rstrip("/")
    if filled.already_there:
        out.print("The demo data is already there: nothing was added.", highlight=False)
    else:
        counts = Counter(filled.made)
        added = ", ".join(
            f"{counts[made]} {_plural(str(made), counts[made])}"
            for made in demo.Made
            if made in counts
        )
        out.print(f"Demo data added: {added}.", highlight=False)
    out.print(f"\nSign in at {site}/login as:", highlight=False)
    for user in filled.users:
        notes = [
            "admin" if user.admin else "",
            "pages in 简体中文" if user.language != "en" else "",
        ]
        note = "; ".join(n for n in notes if n)
        password = user.password or "(shown when it was made)"
        out.print(
            f"  {user.email:<24} {password:<26} {user.user_id}" + (f" ({note})" if note else ""),
            highlight=False,
        )
    if any(user.password for user in filled.users):
        out.print("These passwords are shown this once.", highlight=False)
    out.print(
        "A lost password: `tokenbank users password USER_ID` sets a new one.\n"
        "\nWhere to look:\n"
        f"  {site}/dashboard and {site}/history, as any of them\n"
        f"  {site}/admin and {site}/admin/purchases, as the admin\n"
        f"  {site}/_dev/mail, their welcome letters",
        highlight=False,
    )


def _plural(noun: str, count: int) -> str:
    return noun if count == 1 else f"{noun}s"


def _login() -> str:
    """Who runs the command, for the audit log of the welcome grants."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return "unknown"
