"""The free trial: tokens a new person gets once, whatever account or spelling of their
address they come back with, and that expire if unused.

Once per person is the database's to enforce, not a look before a write: ``trials`` is
keyed by the person (``users.emails.person``) and by the user, so two registrations of
``Ann.Smith@gmail.com`` and ``annsmith+2@gmail.com`` racing each other cannot both get one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank import audit, ledger
from tokenbank.columns import utcnow
from tokenbank.db import after_commit, atomic
from tokenbank.grants.models import trials
from tokenbank.users import emails

log = structlog.get_logger("tokenbank.grants")

#: Who decided, in the audit log: the operator's settings, applied by tokenbank itself.
ACTOR = "system:trial"
#: The transfer's description, as the user's history shows it.
DESCRIPTION = "Free trial"
#: PostgreSQL's advisory locks of trials: a namespace of their own (the seed of the hash
#: of the person).
TRIALS = 0x7472_6961_6C73  # "trials"


@dataclass(frozen=True, slots=True)
class Trial:
    """What a new person is given (``TOKENBANK_TRIAL_TOKENS``, ``TOKENBANK_TRIAL_DAYS``):
    ``tokens`` usable for ``days`` after they are given; no trial when ``tokens`` is 0."""

    tokens: int = 0
    days: int = 14

    @property
    def offered(self) -> bool:
        return self.tokens > 0


def grant_trial(
    conn: Connection,
    *,
    user_id: str,
    address: emails.Address,
    trial: Trial,
    now: datetime | None = None,
) -> bool:
    """Give ``user_id`` the trial, in the caller's unit of work (the one that creates the
    user or confirms their address, so that neither stands without the other), unless the
    person behind ``address`` or this user had one already; whether it was given.

    The caller vouches that ``address`` is the user's: a trial for an address nobody
    confirmed would let anyone take, with a variant of it, the trial of its owner.
    """
    if not trial.offered:
        return False
    person = emails.person(address)
    now = now or utcnow()
    expires_at = now + timedelta(days=trial.days)
    with atomic(conn):
        if conn.dialect.name == "postgresql":
            # Trials of one person, or of one user, wait for each other here, so the second
            # sees the first one's trial and credits nothing; on SQLite every writer already
            # waits for the one before. The user's lock first, then the person's: each unit
            # takes one of each, in that order, so no two can wait for each other in a
            # circle. The keys of ``trials`` stay the last word.
            for name in (f"user:{user_id}", f"person:{person}"):
                conn.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(name, TRIALS)))
                )
        given = conn.execute(
            sa.select(trials.c.person).where(
                sa.or_(trials.c.person == person, trials.c.user_id == user_id)
            )
        ).first()
        if given is not None:
            return False
        receipt = ledger.credit(
            conn,
            user_id=user_id,
            amount=trial.tokens,
            kind=ledger.TransferKind.GRANT,
            # The trials row, not the key, makes this once: a key of the caller's choosing
            # ("trial:ann", say) must not be able to meet it.
            idempotency_key=f"trial:{secrets.token_hex(16)}",
            description=DESCRIPTION,
            source=ledger.Source.TRIAL,
            expires_at=expires_at,
            now=now,
        )
        conn.execute(
            sa.insert(trials).values(
                person=person, user_id=user_id, transfer_id=receipt.transfer_id, created_at=now
            )
        )
        audit.record(
            conn,
            actor=ACTOR,
            action="trial",
            subject=f"user:{user_id}",
            reason="free trial, once per person",
            details={
                "amount": trial.tokens,
                "transfer_id": receipt.transfer_id,
                "expires_at": expires_at.isoformat(),
            },
            now=now,
        )
        after_commit(
            conn,
            partial(
                log.info,
                "trial_granted",
                user_id=user_id,
                tokens=trial.tokens,
                transfer_id=receipt.transfer_id,
                expires_at=expires_at.isoformat(),
            ),
        )
    return True
