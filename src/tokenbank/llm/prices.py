"""Prices for the models file from ``genai-prices`` (USD per million tokens): each model's
USD price, times a rate of tokens per USD and a markup, rounded up to whole tokens.

The proposal is written back into the file for review (``git diff``), never applied
without the operator: ``tokenbank models prices`` shows it, ``--write`` writes it. Only
the two price lines of each model found change; comments and every other line stay.

A model is looked up by its ``upstream_model`` with its upstream's id as the provider
(``openai``, ``anthropic``, ``mistral``...), or by the model alone when no provider has
that id. Tiered prices (a higher price above some input size) take the highest tier: the
gateway prices every token of a model alike, so the lower tier would undercharge long
prompts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from genai_prices import data_snapshot

from tokenbank.llm.models import ModelCatalog


@dataclass(frozen=True, slots=True)
class Proposal:
    model_id: str
    #: What genai-prices matched (``provider/model``), or None.
    matched: str | None
    usd_input: Decimal | None
    usd_output: Decimal | None
    current: tuple[int, int]
    #: The new prices in tokens per million, or None when the model was not found.
    proposed: tuple[int, int] | None
    note: str | None = None


def _usd(price: Any) -> Decimal | None:
    """A per-million USD price, the highest tier of a tiered one."""
    if price is None:
        return None
    if isinstance(price, Decimal | int | float):
        return Decimal(price)
    tiers = [getattr(price, "base", None), *(t.price for t in getattr(price, "tiers", []))]
    found = [Decimal(t) for t in tiers if t is not None]
    return max(found) if found else None


def tokens_for(usd: Decimal, *, tokens_per_usd: Decimal, markup: Decimal) -> int:
    """Tokens per million model tokens: USD per million x rate x (1 + markup), rounded up."""
    return math.ceil(usd * tokens_per_usd * (1 + markup))


def propose(
    catalog: ModelCatalog, *, tokens_per_usd: Decimal, markup: Decimal, at: datetime
) -> list[Proposal]:
    snapshot = data_snapshot.get_snapshot()
    proposals = []
    for model in catalog.models:
        current = (model.input_per_million, model.output_per_million)
        found = None
        for provider_id in (model.upstream.id, None):
            try:
                found = snapshot.find_provider_model(model.upstream_model, None, provider_id, None)
                break
            except LookupError:
                continue
        if found is None:
            proposals.append(
                Proposal(model.id, None, None, None, current, None, "not in genai-prices")
            )
            continue
        provider, priced = found
        prices = priced.get_prices(at)
        usd_in, usd_out = _usd(prices.input_mtok), _usd(prices.output_mtok)
        if usd_in is None or usd_out is None:
            proposals.append(
                Proposal(
                    model.id,
                    f"{provider.id}/{priced.id}",
                    usd_in,
                    usd_out,
                    current,
                    None,
                    "no input or output price",
                )
            )
            continue
        proposed = (
            tokens_for(usd_in, tokens_per_usd=tokens_per_usd, markup=markup),
            tokens_for(usd_out, tokens_per_usd=tokens_per_usd, markup=markup),
        )
        if proposed == (0, 0):
            proposals.append(
                Proposal(
                    model.id,
                    f"{provider.id}/{priced.id}",
                    usd_in,
                    usd_out,
                    current,
                    None,
                    "free at genai-prices: price it yourself",
                )
            )
            continue
        proposals.append(
            Proposal(model.id, f"{provider.id}/{priced.id}", usd_in, usd_out, current, proposed)
        )
    return proposals


_TABLE = re.compile(r"^\s*\[\s*models\s*\.\s*(?:\"([^\"]+)\"|'([^']+)'|([A-Za-z0-9_-]+))\s*\]")
_OTHER_TABLE = re.compile(r"^\s*\[")
_PRICE = re.compile(r"^(\s*(input|output)_per_million\s*=\s*)([0-9_]+)(.*)$")


def rewrite(text: str, proposals: list[Proposal]) -> str:
    """``text`` (a models file) with the proposed prices in place of the current ones."""
    wanted = {p.model_id: p.proposed for p in proposals if p.proposed is not None}
    lines = text.splitlines(keepends=True)
    model: str | None = None
    for index, line in enumerate(lines):
        if (table := _TABLE.match(line)) is not None:
            model = next(g for g in table.groups() if g is not None)
            continue
        if _OTHER_TABLE.match(line):
            model = None
            continue
        price = _PRICE.match(line.rstrip("\n"))
        if model in wanted and price is not None:
            new = wanted[model][0 if price.group(2) == "input" else 1]
            ending = "\n" if line.endswith("\n") else ""
            lines[index] = f"{price.group(1)}{new}{price.group(4)}{ending}"
    return "".join(lines)
