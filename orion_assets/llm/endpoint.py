"""The endpoint base class: the cache in front of every backend.

The backends (openai_backend, hf_backend, replay_backend) subclass :class:`BaseEndpoint`; this module
imports none of them (:func:`orion_assets.llm.factory.make_endpoint` picks one).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from orion_assets.llm.cache import (
    FLUSH_EVERY,
    FLUSH_INTERVAL_S,
    CacheWriter,
    CallIdentity,
    cache_key,
    lookup,
    make_row,
)
from orion_assets.llm.types import (
    GenerationRequest,
    GenerationResult,
    ProgressFn,
)
from orion_assets.store import Store
from orion_assets.vocabulary import ROLES

if TYPE_CHECKING:
    from orion_assets.llm.context import ContextBudget
    from orion_assets.profiles.schema import EndpointConfig

log = logging.getLogger(__name__)

Emit = Callable[[str, GenerationResult], None]


class EndpointError(ValueError):
    """An endpoint that cannot be built or used as configured; the message names the setting."""


class ServerDiedError(RuntimeError):
    """The managed server died mid-step more often than it may be restarted; the message ends with its log's
    last lines. Its watchdog (:mod:`orion_assets.serving.managed_server`) raises it, an endpoint fails its step
    with it."""


# How an endpoint finds the server the pipeline manages at its base URL (a ManagedServer of
# orion_assets.serving.managed_server: ``plan.kind``, ``failure``, ``wait_serving()``), or None for a server of
# the user's own. That layer sits above this one and registers its lookup when it starts its first server;
# before that, no server is managed.
_MANAGED_SERVERS: list[Callable[[str], Any]] = []


def register_managed_servers(lookup: Callable[[str], Any]) -> None:
    """Where :func:`managed_server_at` looks from now on (the serving layer's ``managed_at``)."""
    _MANAGED_SERVERS[:] = [lookup]


def managed_server_at(base_url: str) -> Any | None:
    """The process's managed server that answers at ``base_url`` (None: a server of the user's own)."""
    return _MANAGED_SERVERS[0](base_url) if _MANAGED_SERVERS else None


class BaseEndpoint(abc.ABC):
    """Looks every call up in ``orion.llm_calls``, sends the misses to the backend, writes as it goes.

    ``model_revision`` names which weights answer (an evaluated checkpoint's id): it enters every
    cache key and row, so a model retrained and served again under the same name (a vLLM LoRA
    module, a local directory rewritten in place) is asked again instead of answering from the
    cache. ``None`` keeps the keys of a cache written before revisions existed.
    """

    backend: str = ""

    def __init__(
        self,
        cfg: EndpointConfig,
        store: Store,
        *,
        role: str,
        model_revision: str | None = None,
        flush_every: int = FLUSH_EVERY,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ):
        if role not in ROLES:
            raise EndpointError(f"unknown endpoint role {role!r}; expected one of {', '.join(ROLES)}")
        self.cfg = cfg
        self.store = store
        self.role = role
        self.model_revision = None if model_revision is None else str(model_revision)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.last_stats: dict[str, int] = {}
        # Set by the caller that knows the tokenizer (OrionResource.endpoint): see llm/context.py.
        self.budget: ContextBudget | None = None

    # -- what a backend provides -----------------------------------------------------------------

    @property
    @abc.abstractmethod
    def identity(self) -> CallIdentity:
        """Backend, base URL and model as they enter the cache key and the row."""

    def key_extra(self, request: GenerationRequest) -> object:
        """What else determines this request's answer (besides messages, params and index)."""
        return None

    @abc.abstractmethod
    def _run(self, todo: Sequence[tuple[str, GenerationRequest]], emit: Emit) -> None:
        """Produce a result for every (call_id, request), calling ``emit`` as each arrives."""

    # -- the public call -------------------------------------------------------------------------

    def key_for(self, request: GenerationRequest) -> str:
        ident = self.identity
        return cache_key(
            ident.backend,
            ident.base_url,
            ident.model,
            request.messages,
            request.params,
            request.sample_index,
            extra=self.key_extra(request),
            model_revision=self.model_revision,
        )

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        run_id: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[GenerationResult]:
        """Results in request order. Cached 'ok' calls are returned as they are; the rest (new calls
        and earlier 'error' rows) are sent, and written to the cache as they arrive. With a
        context budget, ``max_tokens`` is cut to fit beside each prompt and a prompt that leaves
        too little room is not sent: its result is a ``context_overflow`` error (not cached)."""
        if self.budget is None:
            return self._generate(requests, run_id=run_id, progress=progress)
        fitted = [self.budget.fit(r) for r in requests]
        sendable = [f for f in fitted if not isinstance(f, str)]
        if len(sendable) < len(fitted):
            log.warning("%s endpoint: %d of %d prompts do not fit %r; not sent",
                        self.role, len(fitted) - len(sendable), len(fitted), self.budget)
        self.last_stats = {}
        sent = iter(self._generate(sendable, run_id=run_id, progress=progress) if sendable else [])
        self.last_stats["context_overflow"] = len(fitted) - len(sendable)
        return [
            next(sent) if not isinstance(f, str) else GenerationResult(
                call_id=self.key_for(r), text=None, reasoning=None, finish_reason="error", prompt_tokens=None,
                completion_tokens=None, latency_s=None, retries=0, error=f, cached=False,
            )
            for r, f in zip(requests, fitted, strict=True)
        ]  # fmt: skip

    def _generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        run_id: str | None = None,
        progress: ProgressFn | None = None,
    ) -> list[GenerationResult]:
        keys = [self.key_for(r) for r in requests]
        unique: dict[str, GenerationRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            unique.setdefault(key, request)
        results: dict[str, GenerationResult] = lookup(self.store, unique) if unique else {}
        todo = [(k, r) for k, r in unique.items() if k not in results]
        total = len(unique)
        self.last_stats = {"requests": len(requests), "unique": total, "cached": total - len(todo), "sent": len(todo)}
        log.info(
            "%s endpoint (%s): %d calls, %d cached, %d to send",
            self.role, self.backend, total, total - len(todo), len(todo),
        )  # fmt: skip
        if todo:
            self._generate_missing(todo, results, run_id, progress, total)
        elif progress is not None:
            progress(total, total)
        return [results[k] for k in keys]

    def _generate_missing(
        self,
        todo: list[tuple[str, GenerationRequest]],
        results: dict[str, GenerationResult],
        run_id: str | None,
        progress: ProgressFn | None,
        total: int,
    ) -> None:
        ident = dataclasses.replace(self.identity, model_revision=self.model_revision)
        by_key = dict(todo)
        writer = CacheWriter(self.store, flush_every=self.flush_every, flush_interval_s=self.flush_interval_s)
        lock = threading.Lock()
        last_progress = [0.0]
        if progress is not None:
            progress(len(results), total)

        def emit(key: str, result: GenerationResult) -> None:
            request = by_key[key]
            with lock:
                if key in results:
                    return  # a backend must not report a call twice; keep the first
                results[key] = result
                done = len(results)
            writer.put(make_row(ident, request.messages, request.params, request.sample_index, result, run_id))
            if progress is not None:
                now = time.monotonic()
                if done == total or now - last_progress[0] >= 0.5:
                    last_progress[0] = now
                    progress(done, total)

        try:
            self._run(todo, emit)
        finally:
            writer.close()
        missing = [k for k, _ in todo if k not in results]
        if missing:  # a backend bug, not a bad call: say so rather than return short
            raise RuntimeError(f"{self.backend} backend returned no result for {len(missing)} calls")
        errors = sum(1 for k, _ in todo if results[k].finish_reason == "error")
        self.last_stats["errors"] = errors
        if errors:
            log.warning("%s endpoint (%s): %d of %d calls failed", self.role, self.backend, errors, len(todo))

    def __repr__(self) -> str:
        ident = self.identity
        revision = f", model_revision={self.model_revision!r}" if self.model_revision is not None else ""
        return (
            f"{type(self).__name__}(role={self.role!r}, model={ident.model!r}, base_url={ident.base_url!r}"
            f"{revision})"
        )

