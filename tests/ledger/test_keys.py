"""Reserved idempotency keys: one format, built in one place, out of callers' reach."""

from __future__ import annotations

import pytest

from tokenbank import ledger
from tokenbank.ledger.idempotency import KeyPurpose, reserved_key
from tokenbank.ledger.inputs import check_key


def test_every_reserved_key_has_the_one_format() -> None:
    assert reserved_key(KeyPurpose.FREEZE, "dispute:7") == "@freeze:dispute:7"
    assert reserved_key(KeyPurpose.POST, "hold:42") == "@post:hold:42"
    for purpose in KeyPurpose:
        key = reserved_key(purpose, "ref")
        assert key == f"@{purpose.value}:ref"
        with pytest.raises(ledger.InvalidArgument):  # no caller can take it first
            check_key(key)


@pytest.mark.parametrize("reference", ["", "x" * 201, "line\nbreak"])
def test_a_reference_is_short_printable_text(reference: str) -> None:
    with pytest.raises(ledger.InvalidArgument) as bad:
        reserved_key(KeyPurpose.CLAWBACK, reference)
    assert bad.value.field == "reference"


def test_only_the_ledgers_purposes_make_keys() -> None:
    with pytest.raises(ValueError, match="'spend'"):
        reserved_key("spend", "x")  # type: ignore[arg-type]
