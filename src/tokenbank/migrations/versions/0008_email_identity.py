"""Email identity: canonical and skeleton forms of each address, confirmed addresses,
links sent by mail, and the mail outbox.

Existing addresses are backfilled with their forms (``tokenbank.users.emails``). Where two
accounts' addresses turn out to be the same one (``Ann@x.com`` and ``ann@x.com``) or look
alike, the older account keeps the forms and the others get none: they keep their address
and sign in through portal links, but are not found by it at sign-in, and each one is
reported on standard error for an operator to settle (give one of them another address).
Addresses already there count as confirmed: those accounts bought before confirmation
existed. The forms are those of the version that runs the migration (it calls
``users.emails.forms``), which is what that version looks addresses up by.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tokenbank.errors import InvalidArgument
from tokenbank.users.emails import forms

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
UserId = sa.String(length=255)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_canonical", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("email_skeleton", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("email_verified_at", Timestamp, nullable=True))
    backfill(op.get_bind())
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_users_email_canonical"), ["email_canonical"]
        )
        batch_op.create_unique_constraint(batch_op.f("uq_users_email_skeleton"), ["email_skeleton"])
    op.create_table(
        "email_links",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("user_id", UserId, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_stamp", sa.String(length=64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("used_at", Timestamp, nullable=True),
        sa.CheckConstraint(
            "purpose IN ('verify', 'reset', 'email')", name=op.f("ck_email_links_purpose_known")
        ),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_email_links_expires_after_creation")
        ),
        sa.CheckConstraint(
            "purpose <> 'reset' OR password_stamp IS NOT NULL",
            name=op.f("ck_email_links_reset_stamped"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_email_links_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_links")),
    )
    op.create_index("ix_email_links_user_id", "email_links", ["user_id"])
    op.create_index("ix_email_links_expires_at", "email_links", ["expires_at"])
    op.create_table(
        "mail_outbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("to_address", sa.String(length=320), nullable=False),
        sa.Column("user_id", UserId, nullable=True),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("params", Json, nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("claimed_until", Timestamp, nullable=True),
        sa.Column("sent_at", Timestamp, nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("kept", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed', 'dropped')",
            name=op.f("ck_mail_outbox_status_known"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_mail_outbox_attempts_not_negative")),
        sa.CheckConstraint(
            "(status = 'sent') = (sent_at IS NOT NULL)", name=op.f("ck_mail_outbox_sent_when_sent")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_outbox")),
    )
    op.create_index("ix_mail_outbox_due", "mail_outbox", ["status", "next_attempt_at"])
    op.create_index("ix_mail_outbox_created_at", "mail_outbox", ["created_at"])


def backfill(conn: sa.Connection) -> list[str]:
    """Give every address its forms; returns (and prints) what could not be given."""
    users = sa.table(
        "users",
        sa.column("id"),
        sa.column("email"),
        sa.column("created_at"),
        sa.column("email_canonical"),
        sa.column("email_skeleton"),
        sa.column("email_verified_at"),
    )
    # Every address already there counts as confirmed, a colliding one too: its account
    # bought before confirmation existed, and must not lose that to a collision.
    conn.execute(
        sa.update(users)
        .where(users.c.email.is_not(None))
        .values(email_verified_at=users.c.created_at)
    )
    rows = conn.execute(
        sa.select(users.c.id, users.c.email, users.c.created_at)
        .where(users.c.email.is_not(None))
        .order_by(users.c.created_at, users.c.id)
    ).all()
    canonical_owner: dict[str, str] = {}
    skeleton_owner: dict[str, str] = {}
    problems = []
    for row in rows:
        try:
            address = forms(row.email)
        except InvalidArgument:
            problems.append(f"user {row.id!r}: {row.email!r} is not an email address")
            continue
        older = canonical_owner.get(address.canonical) or skeleton_owner.get(address.skeleton)
        if older is not None:
            problems.append(
                f"user {row.id!r}: {row.email!r} is the address of older user {older!r},"
                " or looks like it"
            )
            continue
        canonical_owner[address.canonical] = skeleton_owner[address.skeleton] = row.id
        conn.execute(
            sa.update(users)
            .where(users.c.id == row.id)
            .values(email_canonical=address.canonical, email_skeleton=address.skeleton)
        )
    for problem in problems:
        print(
            f"0008: {problem}; not found by this address at sign-in until an operator gives"
            " it another one",
            file=sys.stderr,
        )
    return problems


def downgrade() -> None:
    op.drop_index("ix_mail_outbox_created_at", table_name="mail_outbox")
    op.drop_index("ix_mail_outbox_due", table_name="mail_outbox")
    op.drop_table("mail_outbox")
    op.drop_index("ix_email_links_expires_at", table_name="email_links")
    op.drop_index("ix_email_links_user_id", table_name="email_links")
    op.drop_table("email_links")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_users_email_skeleton"), type_="unique")
        batch_op.drop_constraint(batch_op.f("uq_users_email_canonical"), type_="unique")
        batch_op.drop_column("email_verified_at")
        batch_op.drop_column("email_skeleton")
        batch_op.drop_column("email_canonical")
