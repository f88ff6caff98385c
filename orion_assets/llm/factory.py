""":func:`make_endpoint`: the backend a profile's endpoint names, built.

It sits above :mod:`orion_assets.llm.endpoint` (the base class) and the backends that subclass it,
so no module of the layer imports one that imports it back. Each backend is imported only when a
profile asks for it (the openai client, torch and transformers are not loaded for the others).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orion_assets.llm.endpoint import BaseEndpoint, EndpointError
from orion_assets.llm.replay_backend import ReplayEndpoint
from orion_assets.store import Store

if TYPE_CHECKING:
    from orion_assets.profiles.schema import EndpointConfig


def make_endpoint(
    cfg: EndpointConfig,
    store: Store,
    *,
    role: str,
    model_path: str | None = None,
    model_revision: str | None = None,
) -> BaseEndpoint:
    """The endpoint for one role of a profile. ``model_path``: the local model directory for the hf
    backend, or a model name that overrides ``cfg.model`` for the openai backend.
    ``model_revision``: which weights answer (e.g. a checkpoint id); part of every cache key."""
    if cfg.backend == "openai":
        from orion_assets.llm.openai_backend import OpenAIEndpoint  # deferred: the openai client, for openai profiles only

        return OpenAIEndpoint(cfg, store, role=role, model=model_path, model_revision=model_revision)
    if cfg.backend == "hf":
        from orion_assets.llm.hf_backend import HFEndpoint  # deferred: torch and transformers, for hf profiles only

        return HFEndpoint(cfg, store, role=role, model_path=model_path, model_revision=model_revision)
    if cfg.backend == "replay":
        return ReplayEndpoint(cfg, store, role=role, model_revision=model_revision)
    raise EndpointError(f"unknown endpoint backend {cfg.backend!r} for role {role!r}")
