"""The root of every error tokenbank raises on purpose.

    TokenbankError
    ├── ConfigurationError          settings that cannot work (bad URL, missing secret)
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
