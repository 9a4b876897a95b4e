"""Schemathesis against ``/openapi.json``: generated requests, valid and not, never get a
5xx, and every answer matches the schema (status, content type, body)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.case import Case
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.stripe_emulator import EmulatorServer, make_billing
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tokenbank import ledger, users
from tokenbank.apikeys import Scope
from tokenbank.db import Database
from tokenbank.ledger import TransferKind
from tokenbank.web.app import create_app


@pytest.fixture
def api_schema(db: Database, emulator_server: EmulatorServer) -> Any:
    with db.transaction() as conn:
        users.create_user(conn, user_id="alice", email="alice@example.com")
        ledger.credit(
            conn, user_id="alice", amount=10_000, kind=TransferKind.GRANT, idempotency_key="seed"
        )
    emulator_server.reset()
    # Selling goes to the Stripe emulator, so the purchase routes answer for real.
    seller = make_billing(emulator_server.url)
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS, seller=seller)
    app.state.test_headers = make_key(db, Scope.ADMIN)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_api_conforms_to_its_schema(api_schema: Any) -> None:
    headers = api_schema.app.state.test_headers
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 37  # every route of the API and operations (aliases too)

    for operation in operations:
        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        ]
        if "{user_id}" in operation.path:  # also aim at a user who exists and has tokens
            strategies.append(
                operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"user_id": "alice"})
            )

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def conforms(case: Case[Any]) -> None:
            # A schema-valid request may still break a rule JSON Schema cannot state
            # (printable text, metadata size): its clear 422 is the right answer.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        conforms()
