"""What a caller may hand the ledger: amounts, keys, user ids, descriptions, metadata, times.

Checked once at the door, so that the statements behind it can trust their values and a
replay compares normalised values, not spellings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from tokenbank.errors import InvalidArgument
from tokenbank.ledger.models import MAX_FEATURE_LENGTH, MAX_KEY_LENGTH

#: Per-operation ceiling: far above any real purchase, far below BIGINT overflow in sums.
MAX_AMOUNT = 10**12
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 32
MAX_DESCRIPTION_LENGTH = 1000


def check_amount(amount: object, field: str = "amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidArgument(field, "must be a whole number of tokens")
    if amount <= 0:
        raise InvalidArgument(field, "must be positive")
    if amount > MAX_AMOUNT:
        raise InvalidArgument(field, f"must be at most {MAX_AMOUNT}")
    return amount


def check_text(value: object, field: str, max_length: int) -> str:
    """A name-like value (a key, a user id): leading or trailing spaces would make two
    spellings of one name."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(field, "must be a non-empty string")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if not value.isprintable() or value != value.strip():
        raise InvalidArgument(field, "must be printable, without leading or trailing spaces")
    return value


#: Keys the ledger derives itself start with this (see ``idempotency.reserved_key``).
RESERVED_KEY_PREFIX = "@"


def check_key(key: object) -> str:
    """A caller's idempotency key: never a reserved one, which the caller could otherwise
    take before the ledger's own operation does."""
    value = check_text(key, "idempotency_key", MAX_KEY_LENGTH)
    if value.startswith(RESERVED_KEY_PREFIX):
        raise InvalidArgument("idempotency_key", f"must not start with {RESERVED_KEY_PREFIX!r}")
    return value


def check_user_id(user_id: object) -> str:
    value = check_text(user_id, "user_id", MAX_KEY_LENGTH)
    if "/" in value or " " in value:  # other white space is not printable
        raise InvalidArgument("user_id", "must not contain '/' or spaces")
    return value


def check_description(description: object) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str):
        raise InvalidArgument("description", "must be a string")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument("description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters")
    if "\x00" in description:  # PostgreSQL text cannot hold NUL
        raise InvalidArgument("description", "must not contain NUL characters")
    return description


def check_metadata(metadata: object) -> dict[str, Any] | None:
    """Metadata is a small JSON object; it is normalised so replays compare equal."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgument("metadata", "must be an object with string keys")
    _check_shape(metadata)  # before encoding, which would recurse as deep as it nests
    try:
        encoded = json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("metadata", f"must be plain JSON ({exc})") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidArgument("metadata", f"must encode to at most {MAX_METADATA_BYTES} bytes")
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def _check_shape(metadata: Mapping[str, Any]) -> None:
    """No NUL (PostgreSQL's JSONB cannot hold it) and at most ``MAX_METADATA_DEPTH`` levels
    (every reader of the history must be able to write it back out), walked without
    recursion so that no depth can break the walk itself."""
    stack: list[tuple[object, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidArgument("metadata", "must not contain NUL characters")
        elif isinstance(value, Mapping | list | tuple):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidArgument(
                    "metadata", f"must not nest more than {MAX_METADATA_DEPTH} levels"
                )
            inside = [*value.keys(), *value.values()] if isinstance(value, Mapping) else value
            stack.extend((item, depth + 1) for item in inside)


def check_event_at(event_at: object) -> datetime | None:
    if event_at is None:
        return None
    if not isinstance(event_at, datetime) or event_at.tzinfo is None:
        raise InvalidArgument("event_at", "must be a timezone-aware datetime")
    return event_at


def check_feature(feature: object, quantity: object) -> tuple[str | None, int | None]:
    """What a spend or hold was for: a catalog feature's id and how many units, or neither.
    The ledger records them; what they cost is the catalog's business, decided before."""
    if feature is None and quantity is None:
        return None, None
    if feature is None:
        raise InvalidArgument("feature", "a quantity needs a feature")
    name = check_text(feature, "feature", MAX_FEATURE_LENGTH)
    return name, check_amount(quantity, "quantity")


#: The furthest a credit may expire: a typo of a year must not make tokens nearly eternal.
MAX_EXPIRY = timedelta(days=36_500)


def check_expires_at(expires_at: object, now: datetime) -> datetime | None:
    """When credited tokens expire: None (never), or an aware time after ``now``."""
    if expires_at is None:
        return None
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise InvalidArgument("expires_at", "must be a timezone-aware datetime")
    if expires_at <= now:
        raise InvalidArgument("expires_at", "must be in the future")
    if expires_at > now + MAX_EXPIRY:
        raise InvalidArgument("expires_at", "must be within 100 years")
    return expires_at
