"""API keys: how host apps authenticate to the HTTP API. Stored hashed; shown once."""

from tokenbank.apikeys.service import ApiKey, Scope, authenticate, create_key, list_keys, revoke_key
from tokenbank.errors import InvalidApiKey

__all__ = [
    "ApiKey",
    "InvalidApiKey",
    "Scope",
    "authenticate",
    "create_key",
    "list_keys",
    "revoke_key",
]
