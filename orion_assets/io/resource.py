"""The one resource every asset uses: the active profile, the store, and the profile's endpoints.

Rows reach the store through the I/O manager (:mod:`orion_assets.io.io_manager`), never from here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import dagster as dg

from orion_assets.llm import make_endpoint
from orion_assets.llm.context import ContextBudget, model_context_window
from orion_assets.profiles import Profile, load_profile
from orion_assets.serving.handover import served_endpoint
from orion_assets.serving.served_weights import AskedWeights
from orion_assets.store import BaseStore, store_for
from orion_assets.training.tracking import Tracker

PREVIEW_ROWS = 10
PREVIEW_CELL_CHARS = 80


@lru_cache(maxsize=8)
def _load(ref: str, mtime: float) -> Profile:
    return load_profile(ref)


def _mtime(ref: str) -> float:
    path = Path(ref)
    return path.stat().st_mtime if path.is_file() else 0.0


class OrionResource(dg.ConfigurableResource):
    """Which profile is active and where its data lives (``data_dir``, default ``data/``)."""

    profile: str  # the profile's file: a step in another process loads it again from there
    data_dir: str = "data"

    @classmethod
    def of(cls, profile: Profile, data_dir: str | Path = "data") -> OrionResource:
        return cls(profile=str(profile.path), data_dir=str(data_dir))

    @property
    def active(self) -> Profile:
        return _load(self.profile, _mtime(self.profile))

    def config_for(self, student: str | None):
        """The active configuration as one student sees it (``OrionConfig.for_student``); None: as it is."""
        config = self.active.config
        return config if student is None else config.for_student(student)

    def _base_model_path(self, student: str) -> str:
        rows = self.store.read("student_base_model", {"student": student})
        if rows.height == 0:
            raise LookupError(f"no student_base_model for student {student}: materialize it first")
        return rows["path"][0]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def store(self) -> BaseStore:
        """The store the active profile's ``[store]`` names (default: the DuckDB file in ``data_dir``)."""
        return store_for(self.active.config.store, self.data_path)

    @property
    def tracker(self) -> Tracker:
        """Where the active profile's ``[tracking]`` sends each checkpoint's run (``orion_assets.training.tracking``)."""
        return Tracker.of(self.active.config.tracking, self.data_path, self.active.name)

    def endpoint(
        self,
        role: str,
        local_model: str | None = None,
        served_model: str | None = None,
        model_revision: str | None = None,
        tokenizer: str | None = None,
        student: str | None = None,
        checkpoint: dict | None = None,
    ):
        """The profile's endpoint for ``role``: ``local_model`` is the weights the hf backend loads,
        ``served_model`` the model name an openai server knows them by (default: the profile's),
        ``model_revision`` which weights these are (a checkpoint's id), for every backend's cache
        key, so a variant retrained and served under the same name is not answered from the cache.
        ``tokenizer`` (the student's) counts prompt tokens against the endpoint's ``context_window``; ``student``
        picks that student's [endpoints.student] overrides. ``checkpoint`` (a ``student_checkpoint`` row) is the
        model evaluation asks an openai student server for: by a name that carries its id, from a server the
        pipeline manages (``serve``) or one that must list it (:mod:`orion_assets.serving.handover`)."""
        config = self.config_for(student)
        cfg = getattr(config.endpoints, role)
        if cfg is None:
            raise ValueError(f"profile {self.active.name} has no [endpoints.{role}]")
        if role == "student" and cfg.backend == "openai" and (cfg.serve != "none" or checkpoint is not None):
            name = student or config.all_students[0].name
            base = local_model if checkpoint is None else self._base_model_path(name)
            cfg, served_model = served_endpoint(config, name, AskedWeights.of(checkpoint, base), self.data_path)
        model = local_model if cfg.backend == "hf" else served_model if cfg.backend == "openai" else None
        endpoint = make_endpoint(cfg, self.store, role=role, model_path=model, model_revision=model_revision)
        window = cfg.context_window
        if window is None and cfg.backend == "hf" and model is not None:
            window = model_context_window(model)  # a local model's own window: generation never runs past it
        if window is not None and tokenizer is not None:
            endpoint.budget = ContextBudget(window, tokenizer)
        return endpoint
