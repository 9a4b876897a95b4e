"""``StrictRoute``: every route's body is read strictly, before any validator sees it.

- A route that takes JSON answers 415 to a body of another media type (FastAPI would try to
  validate the raw bytes and answer 422), and a form route answers 415 to anything but a
  form.
- JSON with a repeated key (``{"amount": 1, "amount": 1000}``) is refused: a validator, a
  proxy and the business code must never be able to read different values. So is text that
  no database can store (NUL, unpaired surrogates), arrays and objects nested more than
  ``MAX_DEPTH`` levels, and numbers too long to read; each is a 422 with a clear message,
  never a 500.
- Form fields get the same text rule.

``PageRoute`` adds CSRF, checked for every unsafe method of every page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.params import Form
from fastapi.routing import APIRoute

from tokenbank.web.problems import problem
from tokenbank.web.render import form_expired
from tokenbank.web.runtime import runtime

#: Characters PostgreSQL cannot store in text (NUL) or that are not Unicode text at all.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
#: How deep a body's arrays and objects may nest. Python's parser stops near 1,000 levels,
#: but code that walks a document (a validator, an encoder writing it back out) gives up far
#: sooner, and a body accepted must stay readable wherever it goes. No request of tokenbank's
#: API, nor of the model gateway (tool schemas included), comes near this.
MAX_DEPTH = 64


def _body_media_type(request: Request) -> str | None:
    """The media type of the body the request announces, "" when it names none, None when
    it announces no body. Read from the raw headers: building Starlette's ``Headers`` for
    this costs more than the check (this runs on every spend)."""
    kind, body = "", False
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            kind = value.decode("latin-1").partition(";")[0].strip().lower()
        elif name == b"content-length":
            body = body or value not in (b"0", b"")
        elif name == b"transfer-encoding":
            body = True
    return kind if body else None


def _invalid(message: str, text: str) -> json.JSONDecodeError:
    # FastAPI turns a JSONDecodeError into its 422 ``json_invalid`` answer.
    return json.JSONDecodeError(message, text, 0)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        keys = [key for key, _ in pairs]
        repeated = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise ValueError(f"the key {repeated!r} appears more than once")
    return found


def _check_document(value: Any) -> None:
    """Walk a parsed document; ``ValueError`` on text no database can store, or on nesting
    deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                raise ValueError("text must not contain NUL or unpaired surrogate characters")
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(f"the JSON is nested too deeply (at most {MAX_DEPTH} levels)")
            inside = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in inside)


def loads(body: bytes) -> Any:
    """JSON as tokenbank accepts it (see the module docstring)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid("the body is not UTF-8", "") from exc
    try:
        value = json.loads(text, object_pairs_hook=_pairs)
        _check_document(value)
    except json.JSONDecodeError:
        raise
    except RecursionError as exc:
        raise _invalid("the JSON is nested too deeply", text) from exc
    except ValueError as exc:  # repeated keys, unstorable text, a number too long to read
        raise _invalid(str(exc), text) from exc
    return value


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictRoute(APIRoute):
    """An ``APIRoute`` that reads bodies as the module docstring says."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        form = isinstance(self.body_field.field_info, Form)
        accepted = FORM_TYPES if form else JSON_TYPES

        async def strict(request: Request) -> Response:
            kind = _body_media_type(request)
            if kind is not None:
                json_kind = kind.startswith("application/") and kind.endswith("+json")
                if kind not in accepted and not (json_kind and not form):
                    return problem(
                        415,
                        "unsupported_media_type",
                        f"send the body as {' or '.join(accepted)}",
                    )
            if form:
                fields = await request.form()
                for name, value in fields.multi_items():
                    if isinstance(value, str) and UNSTORABLE.search(name + value):
                        await request.close()  # files of the form, never handed on
                        return problem(
                            422,
                            "validation_error",
                            "form fields must not contain NUL or unpaired surrogate characters",
                        )
                return await handler(request)
            return await handler(StrictRequest(request.scope, request.receive))

        return strict


#: Methods that change something: a page route taking one of these needs a CSRF token.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class PageRoute(StrictRoute):
    """The route class of every page router: CSRF is checked before the handler runs, for
    every unsafe method, so a new form cannot forget it. The token comes in the form's
    ``csrf_token`` field (``Browsers.csrf_valid``). Routes with other credentials (the API's
    keys, Stripe's signatures) are on routers of their own, with ``StrictRoute``."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if not (self.methods or set()) & UNSAFE_METHODS:
            return handler

        async def guarded(request: Request) -> Response:
            parts = runtime(request)
            token = None
            kind = _body_media_type(request)
            if kind is not None and kind not in FORM_TYPES:
                return problem(
                    415, "unsupported_media_type", f"send the body as {' or '.join(FORM_TYPES)}"
                )
            if kind is not None:
                value = (await request.form()).get("csrf_token")
                token = value if isinstance(value, str) else None
            if parts.browsers.csrf_valid(request, token):
                try:
                    return await handler(request)
                finally:
                    # The form was read here: its files are closed here (FastAPI closes only
                    # the forms of routes with form fields of their own).
                    await request.close()
            await request.close()
            lang = await parts.pages.language(request)
            detail = lang.gettext("This form has expired. Reload the page and try again.")
            if "application/json" in request.headers.get("accept", ""):
                return problem(403, "csrf", detail)
            return await form_expired(parts.pages, request)

        return guarded
