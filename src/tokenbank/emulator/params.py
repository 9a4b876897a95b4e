"""Reading Stripe-style parameters, and the errors Stripe answers bad ones with.

Every value arrives as a string (forms have no types), so each reader converts and names the
parameter in its error the way Stripe does; the SDK turns these bodies into its exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Params = dict[str, Any]


@dataclass(kw_only=True)
class StripeError(Exception):
    """An error response: ``{"error": {...}}`` with Stripe's HTTP status."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    decline_code: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        if self.decline_code:
            error["decline_code"] = self.decline_code
        error.update(self.extra)
        return {"error": error}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(status=400, message=message, param=param, code=code)


def missing(kind: str, id: str, *, param: str | None = None) -> StripeError:
    return StripeError(
        status=404 if param is None else 400,
        message=f"No such {kind}: '{id}'",
        code="resource_missing",
        param=param or "id",
    )


def text(params: Params, name: str, *, required: bool = False) -> str | None:
    """A string parameter; Stripe treats an empty string as "unset"."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {name}", param=name, code="parameter_invalid_string")
    return value


def required_text(params: Params, name: str) -> str:
    value = text(params, name, required=True)
    assert value is not None
    return value


def integer(params: Params, name: str, *, required: bool = False, minimum: int = 0) -> int | None:
    raw = text(params, name, required=required)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            f"Invalid integer: {raw}", param=name, code="parameter_invalid_integer"
        ) from None
    if value < minimum:
        raise invalid(
            f"This value must be greater than or equal to {minimum}.",
            param=name,
            code="parameter_invalid_integer",
        )
    return value


def required_integer(params: Params, name: str, *, minimum: int = 0) -> int:
    value = integer(params, name, required=True, minimum=minimum)
    assert value is not None
    return value


def boolean(params: Params, name: str) -> bool | None:
    raw = text(params, name)
    if raw is None:
        return None
    if raw.lower() not in {"true", "false"}:
        raise invalid(f"Invalid boolean: {raw}", param=name, code="parameter_invalid_boolean")
    return raw.lower() == "true"


def mapping(params: Params, name: str) -> Params:
    value = params.get(name)
    if value is None or value == "":
        return {}
    if isinstance(value, list):  # all-digit keys decode as a list
        return {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise invalid(f"Invalid object: {name}", param=name)
    return value


def strings(params: Params, name: str) -> list[str]:
    value = params.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if not all(isinstance(item, str) for item in value):
        raise invalid(f"Invalid array: {name}", param=name)
    return list(value)


def metadata(params: Params, *, current: Params | None = None, name: str = "metadata") -> Params:
    """Merge ``metadata[k]=v`` into the current metadata; an empty value deletes the key."""
    result = dict(current or {})
    if params.get(name) == "":
        return {}
    for key, value in mapping(params, name).items():
        if not isinstance(value, str):
            raise invalid(f"Invalid metadata value for {key}", param=f"{name}[{key}]")
        if len(key) > 40:
            raise invalid("Metadata keys must be at most 40 characters.", param=f"{name}[{key}]")
        if len(value) > 500:
            raise invalid("Metadata values must be at most 500 characters.", param=f"{name}[{key}]")
        if value == "":
            result.pop(key, None)
        else:
            result[key] = value
    if len(result) > 50:
        raise invalid("Metadata can have at most 50 keys.", param=name)
    return result


def currency(params: Params, name: str = "currency") -> str:
    value = required_text(params, name).lower()
    if len(value) != 3 or not value.isalpha():
        raise invalid(f"Invalid currency: {value}.", param=name)
    return value
