"""The trial: given once per person, whatever account or spelling of an address they use."""

from __future__ import annotations

import sqlalchemy as sa

from tokenbank.columns import Id, UtcDateTime
from tokenbank.db import metadata
from tokenbank.ledger.models import MAX_KEY_LENGTH

trials = sa.Table(
    "trials",
    metadata,
    # The address reduced to its person (``users.emails.person``): the primary key is what
    # makes a second trial for the same person impossible, however many ask at once.
    sa.Column("person", sa.String(320), primary_key=True),
    sa.Column(
        "user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), nullable=False, unique=True
    ),
    sa.Column("transfer_id", Id, sa.ForeignKey("transfers.id"), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
