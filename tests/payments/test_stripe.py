"""The webhook parsers on any input: they accept Stripe's shapes and refuse the rest with
their own error, never another exception (which would be a 500)."""

from __future__ import annotations

import json

import pytest
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbank.errors import (
    InvalidEvent,
    InvalidSignature,
    PaymentProviderError,
    PaymentProviderUnavailable,
    StripeObjectMissing,
)
from tokenbank.payments.stripe import parse_event, parse_signature, provider_error

V1 = "a" * 64


@given(st.text(max_size=300) | st.none())
@settings(max_examples=400, deadline=None)
def test_any_signature_header_is_read_or_refused(header: str | None) -> None:
    try:
        timestamp, signatures = parse_signature(header)
    except InvalidSignature:
        return
    assert timestamp >= 0 and signatures


@pytest.mark.parametrize("digits", ["\u00b2", "\uff11\uff12", "\u0663", "\u00b9\u00b2\u00b3"])
def test_a_timestamp_of_other_digits_than_ascii_is_refused(digits: str) -> None:
    """Digits ``str.isdigit`` takes and ``int`` may not (a superscript two arrives as
    Latin-1 byte 0xB2): refused as malformed, never a ValueError."""
    with pytest.raises(InvalidSignature):
        parse_signature(f"t={digits},v1={V1}")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"t=12,v1={V1}", (12, [V1])),
        (f"t=12, v1={V1}, v0=whatever, v1={'b' * 64}", (12, [V1, "b" * 64])),
        (f"v1={V1},t=12", (12, [V1])),
    ],
)
def test_stripe_headers_are_read(header: str, expected: tuple[int, list[str]]) -> None:
    assert parse_signature(header) == expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=400, deadline=None)
def test_any_body_is_an_event_or_refused(body: bytes) -> None:
    try:
        event = parse_event(body)
    except InvalidEvent:
        return
    assert event.id and event.type and isinstance(event.object, dict)


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (stripe.IdempotencyError("other parameters", http_status=400), PaymentProviderError),
        (stripe.IdempotencyError("still running", http_status=409), PaymentProviderUnavailable),
        (stripe.APIConnectionError("unreachable"), PaymentProviderUnavailable),  # type: ignore[no-untyped-call]
        (
            stripe.InvalidRequestError("No such session", param=None, http_status=404),  # type: ignore[no-untyped-call]
            StripeObjectMissing,
        ),
    ],
)
def test_stripe_failures_say_whether_a_retry_can_help(
    failure: stripe.StripeError, kind: type[Exception]
) -> None:
    """A key reused with other parameters (a purchase started by an older version, say)
    will never be accepted: an error, not "unavailable, try again" for a day."""
    found = provider_error("create a Checkout Session", failure)
    assert type(found) is kind
