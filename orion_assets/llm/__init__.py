"""LLM endpoints: one interface, three backends (openai, hf, replay), one call cache in DuckDB.

    endpoint = make_endpoint(profile.endpoints.teacher, store, role="teacher")
    results = endpoint.generate([GenerationRequest(messages, params, sample_index=i) ...], run_id=...)

Every call is looked up in ``orion.llm_calls`` first (key: :func:`cache_key`); only the missing
ones and earlier failures are sent, and results are written while the batch runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orion_assets.llm.cache import cache_key
from orion_assets.llm.endpoint import BaseEndpoint, EndpointError
from orion_assets.llm.factory import make_endpoint
from orion_assets.llm.types import (
    Endpoint,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)

if TYPE_CHECKING:
    from orion_assets.profiles.schema import EndpointConfig


def sampling_params(
    cfg: EndpointConfig,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    json_mode: bool = False,
) -> SamplingParams:
    """The profile endpoint's sampling settings, with per-step overrides (e.g. ``[exposure]``).
    ``json_mode``: ask for a JSON object reply (the judge; see :class:`SamplingParams`)."""
    return SamplingParams(
        max_tokens=cfg.max_tokens if max_tokens is None else max_tokens,
        temperature=cfg.temperature if temperature is None else temperature,
        top_p=cfg.top_p if top_p is None else top_p,
        seed=cfg.seed,
        json_mode=json_mode,
    )


def chat(*turns: tuple[str, str]) -> tuple[dict[str, str], ...]:
    """``chat(("system", s), ("user", u))`` -> the messages tuple of a request."""
    return tuple({"role": role, "content": content} for role, content in turns)


__all__ = [
    "BaseEndpoint",
    "Endpoint",
    "EndpointError",
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    "cache_key",
    "chat",
    "make_endpoint",
    "sampling_params",
]
