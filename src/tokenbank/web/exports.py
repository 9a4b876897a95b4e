"""The one CSV writer behind both exports of a wallet's history, the API's and the pages':
text a spreadsheet would run as a formula defused, streamed in batches so a long history is
never held in memory whole. The API's columns are for programs (English names, UTC, kinds
as codes: ``COLUMNS``, ``machine_row``); the pages' are for the person reading them (their
language, their time zone, a status column), and given by the pages."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import quote

from tokenbank import ledger
from tokenbank.db import Database

#: Programs read these by position too: a new column only ever goes at the end.
COLUMNS = (
    "date_utc",
    "kind",
    "description",
    "tokens",
    "balance_after",
    "transfer_id",
    "feature",
    "quantity",
)
BATCH = 500
#: What a plain quoted filename may hold: printable ASCII but the quote and the backslash.
_PLAIN = re.compile(r'[^\x20-\x7e]|["\\]')
#: The first characters with which a spreadsheet program reads a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(text: str | None) -> str:
    """Text as a cell no spreadsheet runs (CSV injection): a leading quote makes it text."""
    if text and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text or ""


def history_page(
    db: Database,
    *,
    user_id: str,
    kinds: list[ledger.TransferKind] | None,
    before: int | None = None,
    limit: int = BATCH,
) -> ledger.HistoryPage:
    with db.read() as conn:
        return ledger.history(conn, user_id=user_id, kinds=kinds, before=before, limit=limit)


Row = Callable[[ledger.HistoryItem], Sequence[object]]


def machine_row(item: ledger.HistoryItem) -> tuple[object, ...]:
    """A line under ``COLUMNS``: UTC, the kind's code, the description as written."""
    return (
        item.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        item.kind.value,
        cell(plain_description(item)),
        item.amount,
        item.balance_after,
        item.transfer_id,
        cell(item.feature),
        "" if item.quantity is None else item.quantity,
    )


def history_csv_lines(
    db: Database,
    *,
    user_id: str,
    kinds: list[ledger.TransferKind] | None,
    headings: Sequence[str] = COLUMNS,
    row: Row = machine_row,
) -> Iterator[str]:
    """The wallet's history, newest first, under ``headings``, a line per transfer from
    ``row`` (which defuses its own text cells with ``cell``). The first page is read before
    anything is sent, so an unknown user is still an error answer, not a cut-off file. It
    starts with a byte-order mark, so spreadsheet programs read UTF-8 (Chinese
    descriptions) as UTF-8."""
    page = history_page(db, user_id=user_id, kinds=kinds)
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def rows(items: list[ledger.HistoryItem]) -> str:
        writer.writerows(row(item) for item in items)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    def lines() -> Iterator[str]:
        writer.writerow(headings)
        yield "\ufeff" + rows(page.items)
        cursor = page.next_cursor
        while cursor is not None:
            following = history_page(db, user_id=user_id, kinds=kinds, before=cursor)
            yield rows(following.items)
            cursor = following.next_cursor

    return lines()


def plain_description(item: ledger.HistoryItem) -> str:
    """A line's description as it was written (the API's export)."""
    return item.description or ""


def attachment(filename: str) -> str:
    """A ``Content-Disposition`` naming the download ``filename``, whatever it holds (a
    user id may be any text): a plain name with every other character as ``_``, for old
    clients, and the exact name encoded (RFC 6266, ``filename*``). A header must be
    Latin-1, so the raw name in it would be a 500 for a name in Chinese."""
    plain = _PLAIN.sub("_", filename)
    if plain == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"
