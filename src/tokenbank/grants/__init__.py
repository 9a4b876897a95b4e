"""Free tokens given by an operator or an app's admin key: one path, whoever asks."""

from tokenbank.grants.service import grant

__all__ = ["grant"]
