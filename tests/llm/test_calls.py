"""A model call's admission and settlement on the ledger, both databases: the cost beyond
a hold (an estimate that fell short, a hold that outlived its time to live) is spent from
what is left and the rest recorded as debt, never a negative balance; and the bound."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tokenbank import ledger
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import InsufficientTokens, InvalidArgument
from tokenbank.llm import calls
from tokenbank.llm.calls import Caller, Usage
from tokenbank.llm.estimate import IMAGE_TOKENS, PER_MESSAGE, REPLY_PRIMING, bound
from tokenbank.llm.models import Model, Upstream
from tokenbank.llm.tables import CallStatus
from tokenbank.users import create_user

#: One token per model token, in and out.
MODEL = Model(
    id="m",
    upstream=Upstream(id="u", base_url="http://127.0.0.1:9/v1", api_key_env=None, api_key=None),
    upstream_model="m",
    name={"en": "m"},
    input_per_million=1_000_000,
    output_per_million=1_000_000,
    max_output_tokens=40,
)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}


def _wallet(db: Database, tokens: int) -> None:
    with db.transaction() as conn:
        create_user(conn, user_id="ann")
        ledger.credit(
            conn,
            user_id="ann",
            amount=tokens,
            kind=ledger.TransferKind.GRANT,
            idempotency_key="g",
        )


def _balance(db: Database) -> ledger.Balance:
    with db.read() as conn:
        return ledger.balance(conn, user_id="ann")


def _admit(db: Database, **options: object) -> calls.Admission:
    return calls.admit(
        db,
        caller=Caller(user_id="ann"),
        model=MODEL,
        bound=bound(BODY, max_output_tokens=40),
        request_id="r",
        stream=False,
        ttl_seconds=60,
        **options,  # type: ignore[arg-type]
    )


def test_a_cost_beyond_the_hold_takes_what_is_left_and_records_the_rest_as_debt(
    db: Database,
) -> None:
    _wallet(db, 100)
    admission = _admit(db)
    held = REPLY_PRIMING + PER_MESSAGE + len("user") + len("hi") + 40
    assert admission.held == held == _balance(db).held
    settled = calls.settle(
        db,
        admission=admission,
        model=MODEL,
        status=CallStatus.OK,
        usage=Usage(200, 100, "upstream"),
        latency_ms=5,
    )
    assert (settled.charged, settled.shortfall) == (100, 200)
    after = _balance(db)
    assert (after.balance, after.held) == (0, 0)
    with db.read() as conn:
        debt = conn.exec_driver_sql("SELECT debt FROM accounts WHERE user_id = 'ann'").scalar()
    assert debt == 200
    # Settling again changes nothing.
    again = calls.settle(
        db,
        admission=admission,
        model=MODEL,
        status=CallStatus.OK,
        usage=Usage(200, 100, "upstream"),
        latency_ms=5,
    )
    assert again.replayed and (again.charged, again.shortfall) == (100, 200)


def test_a_call_that_outlived_its_hold_is_still_charged(db: Database) -> None:
    _wallet(db, 100)
    admission = _admit(db, now=utcnow() - timedelta(minutes=5))
    settled = calls.settle(
        db,
        admission=admission,
        model=MODEL,
        status=CallStatus.OK,
        usage=Usage(10, 20, "upstream"),
        latency_ms=5,
    )
    assert (settled.charged, settled.shortfall) == (30, 0)
    assert _balance(db).balance == 70


def test_a_failure_before_output_charges_nothing_and_a_refusal_is_recorded(
    db: Database,
) -> None:
    _wallet(db, 60)
    admission = _admit(db)
    calls.settle(
        db, admission=admission, model=MODEL, status=CallStatus.FAILED, usage=None, latency_ms=1
    )
    assert (_balance(db).balance, _balance(db).held) == (60, 0)
    with db.transaction() as conn:
        ledger.spend(conn, user_id="ann", amount=45, idempotency_key="s")
    with pytest.raises(InsufficientTokens):
        _admit(db)


def test_the_bound_counts_bytes_images_tools_and_choices() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "é"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "n": 3,
    }
    found = bound(body, max_output_tokens=100)
    messages = (len("system") + 2) + (len("user") + len("text") + len("look") + IMAGE_TOKENS)
    tools = len('[{"type":"function","function":{"name":"f"}}]')
    assert found.input_tokens == REPLY_PRIMING + 2 * PER_MESSAGE + messages + tools
    assert (found.output_cap, found.choices, found.output_tokens) == (100, 3, 300)
    assert found.default_cap
    capped = bound({**body, "max_tokens": 7, "max_completion_tokens": 5}, max_output_tokens=100)
    assert (capped.output_cap, capped.default_cap) == (5, False)
    for wrong in ({"n": 0}, {"max_tokens": True}, {"stream": 1}, {"messages": [1]}):
        with pytest.raises(InvalidArgument):
            bound({**body, **wrong}, max_output_tokens=100)


def test_a_call_whose_process_stopped_is_ended_once_its_hold_expired(db: Database) -> None:
    """The process serving a call died before settling it: its hold expires (the worker),
    the tokens are back, and the call is recorded as failed, charged nothing."""
    _wallet(db, 100)
    admission = _admit(db, now=utcnow() - timedelta(minutes=5))
    with db.autocommit() as conn:
        assert calls.end_abandoned(conn) == 0  # its hold is still pending
        ledger.expire_holds(conn)
        assert calls.end_abandoned(conn) == 1
        assert calls.end_abandoned(conn) == 0
    assert (_balance(db).balance, _balance(db).held) == (100, 0)
    late = calls.settle(
        db,
        admission=admission,
        model=MODEL,
        status=CallStatus.OK,
        usage=Usage(1, 1, "upstream"),
        latency_ms=1,
    )
    assert late.replayed and (late.status, late.charged) == (CallStatus.FAILED, 0)
