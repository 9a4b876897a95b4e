"""The models the gateway serves, read from ``catalogs/models.toml`` (``TOKENBANK_MODELS``).

Each public model id maps to an upstream (any OpenAI-compatible base URL: OpenAI, a local
vLLM or Ollama, another provider's compatible endpoint, or the built-in emulator) and to
its price in tokenbank tokens per million input and output tokens, with the output cap the
gateway sets when a request names none. Keys are never in the file: an upstream names the
environment variable that holds its key, read once at start-up.

```toml
[upstreams.openai]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[models."gpt-4o-mini"]
upstream = "openai"
input_per_million = 15000     # tokens per million input tokens
output_per_million = 60000
max_output_tokens = 4096      # set upstream when a request names no cap
```
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokenbank.errors import CatalogError

UPSTREAM_KEYS = frozenset({"base_url", "base_url_env", "api_key_env", "cap_field"})
#: How an upstream takes an output cap: OpenAI's current field, or the older one (Ollama).
CAP_FIELDS = ("max_completion_tokens", "max_tokens")
MODEL_KEYS = frozenset(
    {
        "upstream",
        "upstream_model",
        "name",
        "input_per_million",
        "output_per_million",
        "max_output_tokens",
    }
)
#: The most tokens one million model tokens may cost (far above any real price).
MAX_PER_MILLION = 10**12
MAX_OUTPUT_TOKENS = 10_000_000
MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Upstream:
    id: str
    base_url: str
    #: The environment variable holding its API key (None: it needs none).
    api_key_env: str | None
    #: Read from the environment when the file was loaded (never written anywhere).
    api_key: str | None
    #: The field the gateway sets when a request names no output cap.
    cap_field: str = "max_completion_tokens"

    @property
    def configured(self) -> bool:
        return self.api_key_env is None or bool(self.api_key)


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    upstream: Upstream
    #: The model's name at the upstream (default: its id here).
    upstream_model: str
    name: dict[str, str]
    input_per_million: int
    output_per_million: int
    max_output_tokens: int

    def cost(self, *, input_tokens: int, output_tokens: int) -> int:
        """What a call costs, in whole tokens, rounded up once per call: the one rounding
        rule everywhere (a call that used anything costs at least one token)."""
        exact = input_tokens * self.input_per_million + output_tokens * self.output_per_million
        return math.ceil(exact / MILLION)


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    source: str
    upstreams: tuple[Upstream, ...]
    models: tuple[Model, ...]

    def find(self, model_id: str) -> Model | None:
        return next((m for m in self.models if m.id == model_id), None)


def load_models(path: Path, *, env: Mapping[str, str]) -> ModelCatalog:
    """The catalog in ``path``; ``env`` gives the upstreams' keys and base URLs that come
    from the environment. Raises ``CatalogError`` listing every problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(str(path), ["no such file"]) from None
    except OSError as exc:  # a directory, no permission...
        raise CatalogError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_models(raw, source=str(path), env=env)


def parse_models(raw: dict[str, Any], *, source: str, env: Mapping[str, str]) -> ModelCatalog:
    problems: list[str] = []
    for key in sorted(set(raw) - {"upstreams", "models"}):
        problems.append(f"unknown table {key!r}: only [upstreams.<id>] and [models.<id>]")
    upstreams = {
        upstream_id: found
        for upstream_id, entry in _tables(raw.get("upstreams"), "upstreams", problems)
        if (found := _upstream(upstream_id, entry, env, problems)) is not None
    }
    models = [
        model
        for model_id, entry in _tables(raw.get("models"), "models", problems)
        if (model := _model(model_id, entry, upstreams, problems)) is not None
    ]
    if not models and not problems:
        problems.append("no models: add at least one [models.<id>]")
    if problems:
        raise CatalogError(source, problems)
    return ModelCatalog(source=source, upstreams=tuple(upstreams.values()), models=tuple(models))


def _tables(raw: object, what: str, problems: list[str]) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        problems.append(f"{what} must be tables: [{what}.<id>]")
        return []
    found = []
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            problems.append(f"{what}.{key}: not a table")
        elif not key or len(key) > 128 or not key.isprintable() or key.strip() != key:
            problems.append(f"{what}: id {key!r} must be 1-128 printable characters")
        else:
            found.append((key, entry))
    return found


def _url(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value.rstrip("/")


def _upstream(
    upstream_id: str, entry: dict[str, Any], env: Mapping[str, str], problems: list[str]
) -> Upstream | None:
    where = f"upstream {upstream_id!r}"
    for key in sorted(set(entry) - UPSTREAM_KEYS):
        problems.append(f"{where}: unknown key {key!r}")
    base_env = entry.get("base_url_env")
    if base_env is not None and not isinstance(base_env, str):
        problems.append(f"{where}: base_url_env must be the name of an environment variable")
        base_env = None
    chosen = env.get(base_env) if base_env else None
    base_url = _url(chosen or entry.get("base_url"))
    if base_url is None:
        origin = f"{base_env} ({chosen!r})" if chosen else "base_url"
        problems.append(f"{where}: {origin} must be an http(s) URL such as https://host/v1")
    key_env = entry.get("api_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not key_env):
        problems.append(f"{where}: api_key_env must be the name of an environment variable")
        key_env = None
    cap_field = entry.get("cap_field", CAP_FIELDS[0])
    if cap_field not in CAP_FIELDS:
        problems.append(f"{where}: cap_field must be one of {', '.join(CAP_FIELDS)}")
        cap_field = CAP_FIELDS[0]
    if base_url is None:
        return None
    return Upstream(
        id=upstream_id,
        base_url=base_url,
        api_key_env=key_env,
        api_key=env.get(key_env) if key_env else None,
        cap_field=cap_field,
    )


def _whole(value: object, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def _names(raw: object, model_id: str) -> dict[str, str] | None:
    """A name, or names by language tag; English defaults to the model's id."""
    if isinstance(raw, str):
        return {"en": raw}
    if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        return {"en": model_id, **{str(k): str(v) for k, v in raw.items()}}
    return None


def _model(
    model_id: str,
    entry: dict[str, Any],
    upstreams: dict[str, Upstream],
    problems: list[str],
) -> Model | None:
    where = f"model {model_id!r}"
    for key in sorted(set(entry) - MODEL_KEYS):
        problems.append(f"{where}: unknown key {key!r}")
    upstream = upstreams.get(str(entry.get("upstream")))
    if upstream is None:
        problems.append(f"{where}: upstream must name an [upstreams.<id>] table")
    prices = {
        name: _whole(entry.get(name), 0, MAX_PER_MILLION)
        for name in ("input_per_million", "output_per_million")
    }
    for price, value in prices.items():
        if value is None:
            problems.append(
                f"{where}: {price} must be a whole number of tokens, 0-{MAX_PER_MILLION}"
            )
    if prices["input_per_million"] == 0 and prices["output_per_million"] == 0:
        problems.append(f"{where}: a model that costs nothing needs no gateway; give it a price")
    cap = _whole(entry.get("max_output_tokens"), 1, MAX_OUTPUT_TOKENS)
    if cap is None:
        problems.append(f"{where}: max_output_tokens must be a whole number, 1-{MAX_OUTPUT_TOKENS}")
    upstream_model = entry.get("upstream_model", model_id)
    if not isinstance(upstream_model, str) or not upstream_model:
        problems.append(f"{where}: upstream_model must be a model name")
    name = _names(entry.get("name", model_id), model_id)
    if name is None:
        problems.append(f"{where}: name must be text, or text by language")
        name = {"en": model_id}
    input_price, output_price = prices["input_per_million"], prices["output_per_million"]
    if upstream is None or input_price is None or output_price is None or cap is None:
        return None
    if not isinstance(upstream_model, str) or not upstream_model:
        return None
    return Model(
        id=model_id,
        upstream=upstream,
        upstream_model=upstream_model,
        name=name,
        input_per_million=input_price,
        output_per_million=output_price,
        max_output_tokens=cap,
    )
