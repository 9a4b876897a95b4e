"""API keys: how host apps authenticate to the HTTP API. Stored hashed; shown once."""

from tokenbank.apikeys.service import (
    ApiKey,
    InvalidApiKey,
    Scope,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
)

__all__ = [
    "ApiKey",
    "InvalidApiKey",
    "Scope",
    "authenticate",
    "create_key",
    "list_keys",
    "revoke_key",
]
