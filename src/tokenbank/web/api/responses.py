"""The error answers the API documents, shared by its routers."""

from __future__ import annotations

from typing import Any

Responses = dict[int | str, dict[str, Any]]


def _problems(*answers: tuple[int, str]) -> Responses:
    return {
        status: {"description": text, "content": {"application/problem+json": {}}}
        for status, text in answers
    }


PROBLEMS = _problems(
    (400, "Unreadable request body"),
    (401, "Missing, unknown or revoked API key"),
    (403, "The key lacks the scope"),
    (404, "No such user, transfer or hold"),
    (409, "Idempotency conflict, or the operation no longer applies"),
    (413, "Request too large"),
    (415, "The body is not JSON"),
    (422, "Invalid request"),
    (429, "Too many wrong API keys from this address"),
    (503, "The database is unavailable for now: retry after Retry-After seconds"),
)
SPEND_PROBLEMS: Responses = {
    **PROBLEMS,
    402: {"description": "Insufficient tokens (with buy_url)"},
}
BILLING_PROBLEMS = _problems(
    (502, "Stripe refused the request"),
    (503, "Payments are not configured, or Stripe or the database is unavailable: retry"),
)
WEBHOOK_PROBLEMS = _problems(
    (400, "Missing, forged or stale signature, or a body that is not an event"),
    (500, "Stored, but applying it failed: Stripe will retry"),
    (503, "No webhook secret, or the database or Stripe is unavailable: retry"),
)
