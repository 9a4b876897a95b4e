"""The upper bound of a call's cost, held before the call is forwarded.

No tokenizer is known for an arbitrary upstream, so the input is bounded, not counted:

- every text in the messages counts its UTF-8 bytes (a byte-level BPE tokenizer, as
  OpenAI's and Mistral's Tekken are, never makes more tokens than bytes), plus
  ``PER_MESSAGE`` tokens of chat formatting per message (OpenAI's cookbook counts 3, and
  1 more for a ``name``) and ``REPLY_PRIMING`` for the reply;
- an image part counts ``IMAGE_TOKENS``, above OpenAI's largest documented cost of one
  image (1,445 tokens in 512-px tiles; 1,536 patches x 2.46 = 3,779 for the newest);
- tools, ``tool_choice``, ``response_format`` and ``prediction`` are rendered into the
  prompt: their JSON's bytes count.

The output is bounded by the request's ``max_completion_tokens`` (or ``max_tokens``), else
by the model's ``max_output_tokens``, which the gateway then sets on the upstream
request; times ``n``, as every choice is billed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenbank.errors import InvalidArgument

PER_MESSAGE = 4
REPLY_PRIMING = 3
IMAGE_TOKENS = 4_000
MAX_N = 128
MAX_CAP = 10_000_000
#: Request fields rendered into the prompt besides the messages.
PROMPT_FIELDS = ("tools", "tool_choice", "functions", "response_format", "prediction")


@dataclass(frozen=True, slots=True)
class Bound:
    input_tokens: int
    #: The output cap per choice; ``cap_field`` names it when the request had none.
    output_cap: int
    choices: int
    #: Whether the gateway chose the cap (then it sets it upstream).
    default_cap: bool

    @property
    def output_tokens(self) -> int:
        return self.output_cap * self.choices


def _whole(body: dict[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(field, f"must be a whole number, {low} to {high}")
    return value


def _bytes(value: object) -> int:
    """The UTF-8 bytes of every text in ``value``; an image part counts ``IMAGE_TOKENS``."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        if value.get("type") == "image_url" or "image_url" in value:
            return IMAGE_TOKENS
        return sum(_bytes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_bytes(v) for v in value)
    if value is None or isinstance(value, bool):
        return 0
    return len(str(value))


def check_request(body: object) -> tuple[str, list[dict[str, Any]]]:
    """The model and messages of a chat completion request, checked as far as the gateway
    relies on them; every other field goes to the upstream untouched."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 128:
        raise InvalidArgument("model", "must name a model (GET /v1/models lists them)")
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise InvalidArgument("messages", "must be a non-empty list of message objects")
    if not isinstance(body.get("stream", False), bool):
        raise InvalidArgument("stream", "must be true or false")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not body.get("stream")):
        raise InvalidArgument("stream_options", "an object, only with stream: true")
    return model, messages


def bound(body: dict[str, Any], *, max_output_tokens: int) -> Bound:
    """The most a request may use: input tokens and output tokens (see the module)."""
    _, messages = check_request(body)
    input_tokens = REPLY_PRIMING + sum(PER_MESSAGE + _bytes(m) for m in messages)
    for field in PROMPT_FIELDS:
        if body.get(field) is not None:
            text = json.dumps(body[field], ensure_ascii=False, separators=(",", ":"))
            input_tokens += len(text.encode("utf-8", "surrogatepass"))
    cap = _whole(body, "max_completion_tokens", 1, MAX_CAP)
    if cap is None:
        cap = _whole(body, "max_tokens", 1, MAX_CAP)
    choices = _whole(body, "n", 1, MAX_N) or 1
    return Bound(
        input_tokens=input_tokens,
        output_cap=max_output_tokens if cap is None else cap,
        choices=choices,
        default_cap=cap is None,
    )
