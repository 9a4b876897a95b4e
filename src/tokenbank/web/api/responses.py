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


def _openai_errors(*answers: tuple[int, str]) -> Responses:
    schema = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    }
    return {
        status: {"description": text, "content": {"application/json": {"schema": schema}}}
        for status, text in answers
    }


#: The model gateway's errors, in OpenAI's shape (``web/problems.py``'s ``openai_error``).
GATEWAY_ERRORS = _openai_errors(
    (400, "A request the gateway or the model's upstream cannot take (param names the field)"),
    (401, "Missing, unknown or revoked key"),
    (402, "Insufficient tokens (insufficient_quota, with buy_url), or the key's cap for the day"),
    (403, "The host app's key lacks the spend scope"),
    (404, "No such model or user"),
    (409, "A call with this Idempotency-Key is still running, or named another model"),
    (413, "Request too large"),
    (429, "Too many calls for this key, or too many wrong keys from this address"),
    (502, "The model's upstream failed before any output: nothing was charged"),
    (503, "The gateway or the database is unavailable: retry after Retry-After seconds"),
    (504, "The model's upstream did not answer in time: nothing was charged"),
)
