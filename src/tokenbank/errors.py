"""The root of every error tokenbank raises on purpose.

    TokenbankError
    ├── ConfigurationError          settings that cannot work (bad URL, missing secret)
    ├── Unavailable                 a dependency is down for now: retry after a while
    │   ├── DatabaseUnavailable     the database cannot be reached or written
    │   └── SchemaOutOfDate         the database is behind this version's migrations
    └── LedgerError                 tokenbank.ledger.errors
        ├── NotFound
        │   ├── UnknownUser
        │   ├── UnknownTransfer
        │   └── UnknownHold
        ├── InvalidAmount
        ├── InsufficientTokens
        ├── IdempotencyConflict
        ├── RefundExceedsSpend
        ├── NotRefundable
        └── HoldNotPending

Each error carries a stable ``code`` so the HTTP layer and the CLI can map it without
string matching.
"""


class TokenbankError(Exception):
    code = "tokenbank_error"


class ConfigurationError(TokenbankError):
    code = "configuration_error"


class Unavailable(TokenbankError):
    """Nothing was changed, and the same request is expected to work a little later: the
    HTTP layer answers 503 with ``Retry-After``."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


class SchemaOutOfDate(Unavailable):
    code = "schema_out_of_date"
