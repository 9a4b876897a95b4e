"""The models file: what it maps each model to, what a call costs (rounded up once per
call), and every mistake reported at once, by the loader and by ``tokenbank models check``."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import data_snapshot
from typer.testing import CliRunner

from tokenbank.cli import app
from tokenbank.errors import CatalogError
from tokenbank.llm.models import load_models, parse_models

DEFAULT = Path("catalogs/models.toml")
runner = CliRunner()


def _problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_models(raw, source="test", env=env or {})
    return caught.value.problems


def _valid() -> dict[str, Any]:
    return {
        "upstreams": {"up": {"base_url": "https://models.example/v1/", "api_key_env": "UP_KEY"}},
        "models": {
            "m": {
                "upstream": "up",
                "input_per_million": 50_000,
                "output_per_million": 200_000,
                "max_output_tokens": 1024,
            }
        },
    }


def test_the_shipped_file_points_at_the_emulator_unless_told_otherwise() -> None:
    catalog = load_models(DEFAULT, env={})
    small = catalog.find("emulator-small")
    assert small is not None
    assert small.upstream.base_url == "http://127.0.0.1:12112/v1"
    assert (small.upstream_model, small.name["zh-CN"]) == ("emulator-small", "模拟器（小）")
    moved = load_models(DEFAULT, env={"TOKENBANK_LLM_EMULATOR_URL": "http://10.0.0.5:9000/v1"})
    assert moved.models[0].upstream.base_url == "http://10.0.0.5:9000/v1"
    assert catalog.find("nope") is None


def test_a_call_costs_its_usage_at_the_prices_rounded_up_once() -> None:
    model = parse_models(_valid(), source="t", env={}).models[0]
    assert model.cost(input_tokens=0, output_tokens=0) == 0
    assert model.cost(input_tokens=1, output_tokens=0) == 1  # 0.05 of a token: one
    assert model.cost(input_tokens=1000, output_tokens=500) == 50 + 100
    assert model.cost(input_tokens=10, output_tokens=10) == 3  # 0.5 + 2 = 2.5: three


def test_keys_come_from_the_environment_and_are_never_in_the_file() -> None:
    upstream = parse_models(_valid(), source="t", env={"UP_KEY": "sk-secret"}).upstreams[0]
    assert (upstream.api_key, upstream.configured, upstream.base_url) == (
        "sk-secret",
        True,
        "https://models.example/v1",
    )
    assert not parse_models(_valid(), source="t", env={}).upstreams[0].configured


def test_every_mistake_is_reported_at_once() -> None:
    raw = _valid()
    raw["extra"] = {}
    raw["upstreams"]["bad"] = {"base_url": "ftp://x", "token": "x"}
    raw["models"]["m"] |= {"input_per_million": -1, "max_output_tokens": 0, "colour": 1}
    raw["models"]["orphan"] = {
        "upstream": "missing",
        "input_per_million": 0,
        "output_per_million": 0,
        "max_output_tokens": 10,
        "name": 7,
    }
    problems = _problems(raw)
    expected = [
        "unknown table 'extra'",
        "upstream 'bad': unknown key 'token'",
        "upstream 'bad': base_url must be an http(s) URL",
        "model 'm': unknown key 'colour'",
        "model 'm': input_per_million must be a whole number",
        "model 'm': max_output_tokens must be a whole number",
        "model 'orphan': upstream must name an [upstreams.<id>] table",
        "model 'orphan': a model that costs nothing",
        "model 'orphan': name must be text",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert _problems({}) == ["no models: add at least one [models.<id>]"]
    assert _problems({"models": []}) == ["models must be tables: [models.<id>]"]


def test_a_missing_or_broken_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such file"):
        load_models(tmp_path / "none.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[models\n")
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_models(broken, env={})


def test_models_check_lists_the_models_or_every_problem(tmp_path: Path) -> None:
    ran = runner.invoke(app, ["models", "check", str(DEFAULT)])
    assert ran.exit_code == 0, ran.output
    assert "2 models, 1 upstreams: OK" in ran.output
    bad = tmp_path / "models.toml"
    bad.write_text('[models.m]\nupstream = "none"\n')
    ran = runner.invoke(app, ["models", "check", str(bad)])
    assert ran.exit_code == 9
    assert "upstream must name" in ran.output and "max_output_tokens" in ran.output


PRICED = """# Prices are reviewed before each release.
[upstreams.openai]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[upstreams.local]
base_url = "http://127.0.0.1:11434/v1"
cap_field = "max_tokens"

[models."gpt-4o-mini"]
upstream = "openai"
input_per_million = 1   # ours
output_per_million = 2
max_output_tokens = 4096

[models.sonnet]
upstream = "openai"
upstream_model = "claude-sonnet-4-5"
input_per_million = 1
output_per_million = 2
max_output_tokens = 4096

[models.llama]
upstream = "local"
upstream_model = "my-own-llama"
input_per_million = 10
output_per_million = 20
max_output_tokens = 512
"""


def test_models_prices_proposes_then_writes_from_genai_prices(tmp_path: Path) -> None:
    """USD per million x tokens per USD x (1 + markup), rounded up; the highest tier of a
    tiered price; a model genai-prices does not know keeps its price; only the price lines
    change, and only with --write."""
    path = tmp_path / "models.toml"
    path.write_text(PRICED)
    args = ["models", "prices", str(path), "--tokens-per-usd", "1000", "--markup", "0.2"]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "2 price changes proposed" in shown.output
    assert path.read_text() == PRICED
    written = runner.invoke(app, [*args, "--write"])
    assert written.exit_code == 0, written.output
    models = {m.id: m for m in load_models(path, env={}).models}
    # From the package's own snapshot (it changes with its releases): gpt-4o-mini as
    # OpenAI's; Claude Sonnet 4.5 found without its provider, at its highest tier.
    snapshot = data_snapshot.get_snapshot()
    now = datetime.now(UTC)
    mini = snapshot.find_provider_model("gpt-4o-mini", None, "openai", None)[1].get_prices(now)
    sonnet = snapshot.find_provider_model("claude-sonnet-4-5", None, None, None)[1]
    tiers = sonnet.get_prices(now)

    def top(price: Any) -> Decimal:
        return max([Decimal(price.base), *(Decimal(t.price) for t in price.tiers)])

    def tokens(usd: Any) -> int:
        return math.ceil(Decimal(usd) * 1000 * Decimal("1.2"))

    expected = {
        "gpt-4o-mini": (tokens(mini.input_mtok), tokens(mini.output_mtok)),
        "sonnet": (tokens(top(tiers.input_mtok)), tokens(top(tiers.output_mtok))),
        "llama": (10, 20),  # unknown to genai-prices: kept
    }
    assert {m.id: (m.input_per_million, m.output_per_million) for m in models.values()} == expected
    changed = [
        (old, new)
        for old, new in zip(PRICED.splitlines(), path.read_text().splitlines(), strict=True)
        if old != new
    ]
    mini_in, mini_out = expected["gpt-4o-mini"]
    sonnet_in, sonnet_out = expected["sonnet"]
    assert changed == [
        ("input_per_million = 1   # ours", f"input_per_million = {mini_in}   # ours"),
        ("output_per_million = 2", f"output_per_million = {mini_out}"),
        ("input_per_million = 1", f"input_per_million = {sonnet_in}"),
        ("output_per_million = 2", f"output_per_million = {sonnet_out}"),
    ]
