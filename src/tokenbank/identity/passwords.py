"""Passwords: how long, how hard to guess, and hashed with argon2id (pwdlib).

A password is 8 to 128 characters long and must not be easy to guess: zxcvbn estimates the
guesses an attacker who knows the common passwords, words, names, keyboard patterns, dates
and the user's own email and name would need, and a password under 10^8 guesses (where
zxcvbn's score 3, "safely unguessable" for an online attacker, begins; a slow hash stands
behind it) is refused with the pattern that gave it away, as is one made of the user's own
email and name. The upper bound keeps the estimate and the hash quick
(zxcvbn's work grows with the length); 128 characters leave room for any passphrase and
password manager.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from zxcvbn import zxcvbn

from tokenbank.errors import InvalidArgument, WeakPassword

MIN_LENGTH = 8
MAX_LENGTH = 128
#: The guesses zxcvbn must estimate a password needs: its score 3 begins there, and a
#: random 8-character password reaches it.
MIN_GUESSES = 10**8


class Passwords:
    """Hashes and verifies passwords; the cost is a parameter so tests can run cheaply.

    The default is OWASP's argon2id setting (19 MiB, 2 passes): about 30 ms per hash on
    this kind of machine, slow for a guesser and unnoticeable at sign-in.
    """

    def __init__(self, *, memory_kib: int = 19456, passes: int = 2) -> None:
        self._hash = PasswordHash((Argon2Hasher(memory_cost=memory_kib, time_cost=passes),))
        self._decoy: str | None = None

    def hash(self, password: str) -> str:
        return self._hash.hash(check_length(password))

    def verify(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        """Whether ``password`` matches, and a new hash when the stored one is outdated."""
        if stored is None:
            # Verify against a decoy, so an unknown email takes as long as a wrong password.
            if self._decoy is None:
                self._decoy = self._hash.hash("not a password anyone has")
            self._hash.verify(password, self._decoy)
            return False, None
        return self._hash.verify_and_update(password, stored)


def check_length(password: object, field: str = "password") -> str:
    if not isinstance(password, str) or not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidArgument(field, f"must be {MIN_LENGTH} to {MAX_LENGTH} characters long")
    return password


def check_password(
    password: object, *, personal: Iterable[str | None] = (), field: str = "password"
) -> str:
    """``password`` if it may be chosen, else ``InvalidArgument`` (its length) or
    ``WeakPassword`` (why it is easy to guess). ``personal``: the user's email, name...
    which an attacker would try first."""
    password = check_length(password, field)
    inputs = [part for value in personal if value for part in _pieces(value)]
    if _made_of(password, inputs):
        raise WeakPassword("personal", field)
    estimate = zxcvbn(password, user_inputs=inputs, max_length=MAX_LENGTH)
    if estimate["guesses"] < MIN_GUESSES:
        raise WeakPassword(_reason(estimate["sequence"]), field)
    return password


def _made_of(password: str, pieces: list[str]) -> bool:
    """Whether the password is the user's own words in some order, give or take a few
    characters (``Kowalski-Annelise``, ``ann@example.com1``): zxcvbn prices the separator
    between two of them as a random character, 10^8 guesses on its own."""
    rest = "".join(c for c in password.casefold() if c.isalnum())
    for piece in sorted(pieces, key=len, reverse=True):
        word = "".join(c for c in piece if c.isalnum())
        if len(word) >= 3:
            rest = rest.replace(word, "")
    return len(rest) < 4


def _pieces(value: str) -> list[str]:
    """An email counts whole, by its name before the @ and by its parts:
    ``ann.lee@example.com`` gives ``ann.lee``, ``ann``, ... (the name whole, or the
    password ``ann.lee`` would be three guesses apart, and pass)."""
    lowered = value.lower()
    parts = [lowered]
    if "@" in lowered:
        parts.append(lowered.rpartition("@")[0])
    for separator in "@.+-_ ":
        lowered = lowered.replace(separator, " ")
    parts.extend(word for word in lowered.split() if len(word) >= 3)
    return parts


#: zxcvbn's patterns -> the reason the pages give, the first found in this order.
_PATTERNS = (
    ("user_inputs", "personal"),
    ("passwords", "common"),
    ("spatial", "keyboard"),
    ("repeat", "repeat"),
    ("sequence", "sequence"),
    ("date", "date"),
    ("regex", "date"),  # zxcvbn's one regex pattern is a recent year
)


def _reason(sequence: list[dict[str, Any]]) -> str:
    found = {m.get("dictionary_name") or m.get("pattern") for m in sequence}
    for pattern, reason in _PATTERNS:
        if pattern in found:
            return reason
    if "dictionary" in {m.get("pattern") for m in sequence}:
        return "common"  # an English word, a name, a word from television or Wikipedia
    return "guessable"
