"""What an asset's LLM calls used: tokens, calls, cache hits, errors, retries and cost.

One function, :func:`usage_metadata`, turns the results an asset got back into its Dagster
metadata, so every LLM-calling asset reports the same keys. :class:`Metered` wraps an endpoint to
keep every result when the asset calls it several times (reflection's tries) and only sees the last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from orion_assets.llm.types import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from orion_assets.profiles.schema import EndpointConfig


def cost_usd(cfg: EndpointConfig | None, prompt_tokens: float, completion_tokens: float) -> float | None:
    """Dollars at ``cfg``'s prices per million tokens (reasoning bills as completion); None without prices."""
    if cfg is None or (cfg.price_per_mtok_in is None and cfg.price_per_mtok_out is None):
        return None
    return (prompt_tokens * (cfg.price_per_mtok_in or 0.0) + completion_tokens * (cfg.price_per_mtok_out or 0.0)) / 1e6


def usage_metadata(results: Iterable[GenerationResult], cfg: EndpointConfig | None, role: str) -> dict[str, Any]:
    """``llm_<role>_*`` metadata over ``results`` (each call id once): calls, cache hits, sent,
    errors (and context overflows, never sent), retries, prompt/completion/reasoning tokens of the
    calls sent now and of all (cached included), and cost of both when ``cfg`` has prices."""
    unique = list({r.call_id: r for r in results}.values())
    sent = [r for r in unique if not r.cached and not r.overflow]

    def tokens(rows: Sequence[GenerationResult], field: str) -> int:
        return sum(getattr(r, field) or 0 for r in rows)

    prefix = f"llm_{role}_"
    out: dict[str, Any] = {
        "calls": len(unique),
        "cache_hits": sum(r.cached for r in unique),
        "sent": len(sent),
        "errors": sum(not r.ok for r in unique),
        "context_overflow": sum(r.overflow for r in unique),
        "retries": sum(r.retries for r in sent),
        "prompt_tokens": tokens(unique, "prompt_tokens"),
        "completion_tokens": tokens(unique, "completion_tokens"),
        "reasoning_tokens": tokens(unique, "reasoning_tokens"),
        "sent_prompt_tokens": tokens(sent, "prompt_tokens"),
        "sent_completion_tokens": tokens(sent, "completion_tokens"),
    }
    total = cost_usd(cfg, out["prompt_tokens"], out["completion_tokens"])
    if total is not None:
        out["cost_usd"] = round(total, 6)
        out["sent_cost_usd"] = round(cost_usd(cfg, out["sent_prompt_tokens"], out["sent_completion_tokens"]) or 0.0, 6)
    return {prefix + key: value for key, value in out.items()}


class Metered:
    """An endpoint that remembers every result it returned (``results``, without their text, so
    an asset that streams thousands of chunks keeps only numbers); all else is the endpoint's."""

    def __init__(self, endpoint: Any):
        self._endpoint = endpoint
        self.results: list[GenerationResult] = []

    def generate(self, requests: Sequence[GenerationRequest], **kwargs: Any) -> list[GenerationResult]:
        results = self._endpoint.generate(requests, **kwargs)
        self.results += [dataclasses.replace(r, text=None, reasoning=None) for r in results]
        return results

    @property
    def inner(self) -> Any:
        return self._endpoint

    def __getattr__(self, name: str) -> Any:
        return getattr(self._endpoint, name)

    def __repr__(self) -> str:
        return repr(self._endpoint)
