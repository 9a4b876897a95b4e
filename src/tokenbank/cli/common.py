"""What every ``tokenbank`` command shares: the context, error handling and output."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from tokenbank import errors
from tokenbank.config import Settings
from tokenbank.db import Database, database_from_settings, unavailable
from tokenbank.errors import TokenbankError

T = TypeVar("T")

#: The largest row id a database holds (a 64-bit integer): a larger one names nothing, and
#: is refused as an argument rather than sent to the database.
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, typer.Argument(min=1, max=MAX_ROW_ID)]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: Each error of ``tokenbank.errors`` -> the command's exit status. Every class is listed
#: (tests/test_errors.py checks it). 1 is also a failed check (``ledger verify``,
#: ``reconcile``); 10 means "run it again later".
EXIT_CODES: dict[type[TokenbankError], int] = {
    errors.TokenbankError: 1,
    errors.InvalidArgument: 2,
    errors.MixedScriptEmail: 2,
    errors.WeakPassword: 2,
    errors.UnknownPackage: 2,
    errors.UnknownPlan: 2,
    errors.UnknownFeature: 2,
    errors.InvalidSignature: 2,
    errors.InvalidEvent: 2,
    errors.NotFound: 3,
    errors.UnknownUser: 3,
    errors.UnknownTransfer: 3,
    errors.UnknownHold: 3,
    errors.UnknownApiKey: 3,
    errors.UnknownPurchase: 3,
    errors.UnknownEvent: 3,
    errors.NoSubscription: 3,
    errors.UnknownModel: 3,
    errors.UnknownLlmKey: 3,
    errors.InsufficientTokens: 4,
    errors.KeyCapReached: 4,
    errors.Conflict: 5,
    errors.IdempotencyConflict: 5,
    errors.PaymentMismatch: 5,
    errors.PurchaseClosed: 5,
    errors.SubscriptionExists: 5,
    errors.SubscriptionEnded: 5,
    errors.NothingToReview: 5,
    errors.CallInProgress: 5,
    errors.UserExists: 6,
    errors.EmailTaken: 6,
    errors.RefundExceedsSpend: 7,
    errors.NotRefundable: 7,
    errors.HoldNotPending: 8,
    errors.HoldFrozen: 8,
    errors.ConfigurationError: 9,
    errors.CatalogError: 9,
    errors.NotConfigured: 9,
    errors.PaymentsNotConfigured: 9,
    errors.WebhooksNotConfigured: 9,
    errors.Unavailable: 10,
    errors.DatabaseUnavailable: 10,
    errors.SchemaOutOfDate: 10,
    errors.PaymentProviderUnavailable: 10,
    errors.PaymentProviderError: 11,
    errors.StripeObjectMissing: 11,
    errors.UpstreamError: 11,
    errors.UpstreamTimeout: 11,
    errors.ProcessingFailed: 12,
    errors.Unauthenticated: 13,
    errors.InvalidApiKey: 13,
    errors.InvalidCredentials: 13,
    errors.Forbidden: 13,
    errors.EmailNotVerified: 13,
    errors.InvalidPortalLink: 13,
    errors.InvalidEmailLink: 13,
    errors.RateLimited: 14,
}


def exit_code(exc: TokenbankError) -> int:
    """The exit status of the nearest class of ``exc`` in ``EXIT_CODES``."""
    return errors.nearest(EXIT_CODES, exc)


@dataclass
class Context:
    settings: Settings
    _db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = database_from_settings(self.settings, pool_size=4)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


def context(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    assert isinstance(obj, Context)
    return obj


@contextmanager
def reported() -> Iterator[None]:
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
    show_error(exc)
    raise typer.Exit(exit_code(exc))


def show_error(exc: TokenbankError) -> None:
    message = str(exc)
    if isinstance(exc, errors.InsufficientTokens):
        message = (
            f"Insufficient tokens: user {exc.user_id!r} has {exc.available} available,"
            f" {exc.requested} needed. Nothing was spent."
        )
    err.print(f"[bold red]error[/] ({exc.code}): {message}", highlight=False)


def to_json(value: Any) -> str:
    def default(obj: object) -> object:
        if isinstance(obj, datetime):
            return obj.isoformat()
        raise TypeError(type(obj).__name__)

    return json.dumps(value, default=default, indent=2, ensure_ascii=False)


def run(ctx: typer.Context, work: Callable[[Any], T]) -> T:
    with reported(), context(ctx).db.transaction() as conn:
        return work(conn)
