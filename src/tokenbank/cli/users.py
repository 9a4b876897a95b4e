"""``tokenbank users`` and ``tokenbank sweep``: users, their passwords and sessions."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from tokenbank import identity, users
from tokenbank.cli.common import out, reported, run
from tokenbank.identity.passwords import check_password
from tokenbank.mail import retention

users_app = typer.Typer(help="Users and their wallets.", no_args_is_help=True)


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
    hashed = password_hash(password_stdin, ask_password)

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
    hashed = password_hash(password_stdin, ask=not password_stdin)
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


def sweep(ctx: typer.Context) -> None:
    """Delete expired portal and mailed links, ended sessions, old rate-limit counters and
    mail sent (or no longer needed) more than 30 days ago."""
    removed = run(ctx, identity.sweep) | run(ctx, retention.sweep)
    out.print(", ".join(f"{count} {what.replace('_', ' ')}" for what, count in removed.items()))


def password_hash(stdin: bool, ask: bool) -> str | None:
    """Hash before any transaction opens: argon2 is deliberately slow."""
    if stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif ask:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        return None
    with reported():
        # The pages' rules: long enough and not easy to guess.
        return identity.Passwords().hash(check_password(password))
