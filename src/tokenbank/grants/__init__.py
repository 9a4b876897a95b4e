"""Free tokens given by an operator or an app's admin key: one path, whoever asks; and the
free trial, given once per person."""

from tokenbank.grants.service import MAX_DAYS, SOURCES, Grant, check_source, expiry, grant
from tokenbank.grants.trials import Trial, grant_trial

__all__ = [
    "MAX_DAYS",
    "SOURCES",
    "Grant",
    "Trial",
    "check_source",
    "expiry",
    "grant",
    "grant_trial",
]
