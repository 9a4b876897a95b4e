"""Stripe's nested form encoding (``metadata[k]=v``, ``items[0][price]=p``, ``expand[]=x``).

Stripe's SDKs send every v1 parameter this way, in POST bodies and GET query strings alike,
so the emulator has to turn the flat pairs back into the nested structure the API sees.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """The pairs cannot be nested consistently (``a=1`` and ``a[b]=2`` together)."""


def decode_form(text: str) -> dict[str, Any]:
    """Decode a form-encoded string into nested dicts and lists."""
    return decode_pairs(parse_qsl(text, keep_blank_values=True))


def decode_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Nest ``key[sub][0]`` pairs; all-digit keys become lists ordered by index."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        parts = [match.group(1), *_PART.findall(match.group(2))] if match else [key]
        _insert(root, parts, value, key)
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _insert(container: Any, parts: list[str], value: str, key: str) -> None:
    head, rest = parts[0], parts[1:]
    if head == "":
        if not isinstance(container, list):
            raise FormError(f"Invalid array parameter: {key}")
        if not rest:
            container.append(value)
            return
        if not container or not isinstance(container[-1], dict) or rest[0] in container[-1]:
            container.append({} if rest[0] != "" else [])
        _insert(container[-1], rest, value, key)
        return
    if not isinstance(container, dict):
        raise FormError(f"Invalid hash parameter: {key}")
    if not rest:
        if isinstance(container.get(head), dict | list):
            raise FormError(f"Invalid parameter: {key} was given both a value and sub-keys")
        container[head] = value
        return
    child = container.get(head)
    if child is None:
        child = [] if rest[0] == "" else {}
        container[head] = child
    elif isinstance(child, str):
        raise FormError(f"Invalid parameter: {key} was given both a value and sub-keys")
    _insert(child, rest, value, key)


def _listify(node: Any) -> Any:
    if isinstance(node, list):
        return [_listify(item) for item in node]
    if isinstance(node, dict):
        if node and all(k.isascii() and k.isdigit() for k in node):
            return [_listify(node[k]) for k in sorted(node, key=int)]
        return {k: _listify(v) for k, v in node.items()}
    return node
