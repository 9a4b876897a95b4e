"""What every ``tokenbank`` command shares: the context, error handling and output."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from tokenbank import ledger
from tokenbank.config import Settings
from tokenbank.db import Database, connect, unavailable
from tokenbank.errors import TokenbankError

T = TypeVar("T")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: Exit status for each error code; anything unlisted exits 1.
EXIT_CODES = {
    "validation_error": 2,
    "not_found": 3,
    "insufficient_tokens": 4,
    "idempotency_conflict": 5,
    "user_exists": 6,
    "email_taken": 6,
    "refund_exceeds_spend": 7,
    "not_refundable": 7,
    "hold_not_pending": 8,
    "configuration_error": 9,
    "database_unavailable": 10,
    "schema_out_of_date": 10,
    "payment_provider_unavailable": 10,
}


@dataclass
class Context:
    settings: Settings
    _db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = connect(self.settings.database_url, pool_size=4)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


def context(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    assert isinstance(obj, Context)
    return obj


@contextmanager
def errors() -> Iterator[None]:
    """Turn domain errors, and a database that is down or full, into a readable message
    and a stable exit status."""
    try:
        yield
    except TokenbankError as exc:
        fail(exc)
    except Exception as exc:
        found = unavailable(exc)
        if found is None:
            raise
        fail(found)


def fail(exc: TokenbankError) -> NoReturn:
    message = str(exc)
    if isinstance(exc, ledger.InsufficientTokens):
        message = (
            f"Insufficient tokens: user {exc.user_id!r} has {exc.available} available,"
            f" {exc.requested} needed. Nothing was spent."
        )
    err.print(f"[bold red]error[/] ({exc.code}): {message}", highlight=False)
    raise typer.Exit(EXIT_CODES.get(exc.code, 1))


def to_json(value: Any) -> str:
    def default(obj: object) -> object:
        if isinstance(obj, datetime):
            return obj.isoformat()
        raise TypeError(type(obj).__name__)

    return json.dumps(value, default=default, indent=2, ensure_ascii=False)


def run(ctx: typer.Context, work: Callable[[Any], T]) -> T:
    with errors(), context(ctx).db.transaction() as conn:
        return work(conn)
