"""Password hashing with argon2id (pwdlib)."""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from tokenbank.errors import InvalidArgument

MIN_LENGTH = 10
MAX_LENGTH = 256


class Passwords:
    """Hashes and verifies passwords; the cost is a parameter so tests can run cheaply.

    The default is OWASP's argon2id setting (19 MiB, 2 passes): about 30 ms per hash on
    this kind of machine, slow for a guesser and unnoticeable at sign-in.
    """

    def __init__(self, *, memory_kib: int = 19456, passes: int = 2) -> None:
        self._hash = PasswordHash((Argon2Hasher(memory_cost=memory_kib, time_cost=passes),))
        self._decoy: str | None = None

    def hash(self, password: str) -> str:
        return self._hash.hash(check_password(password))

    def verify(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        """Whether ``password`` matches, and a new hash when the stored one is outdated."""
        if stored is None:
            # Verify against a decoy, so an unknown email takes as long as a wrong password.
            if self._decoy is None:
                self._decoy = self._hash.hash("not a password anyone has")
            self._hash.verify(password, self._decoy)
            return False, None
        return self._hash.verify_and_update(password, stored)


def check_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidArgument("password", f"must be {MIN_LENGTH} to {MAX_LENGTH} characters long")
    return password
