"""The one resource every asset uses: the active profile, the store, and the profile's endpoints.

Rows reach the store through the I/O manager (:mod:`orion_assets.io_manager`), never from here.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from orion_assets.profiles import Profile, load_profile
from orion_assets.store import BaseStore, store_for

PREVIEW_ROWS = 10
PREVIEW_CELL_CHARS = 80


@lru_cache(maxsize=8)
def _load(ref: str, mtime: float) -> Profile:
    return load_profile(ref)


def _mtime(ref: str) -> float:
    path = Path(ref)
    return path.stat().st_mtime if path.is_file() else 0.0


class OrionResource(dg.ConfigurableResource):
    """Which profile is active and where its data lives (``$ORION_DATA_DIR``, default ``data/``)."""

    profile: str = "tiny"
    data_dir: str = "data"

    @classmethod
    def from_env(cls) -> OrionResource:
        return cls(
            profile=os.environ.get("ORION_PROFILE", "tiny"),
            data_dir=os.environ.get("ORION_DATA_DIR", "data"),
        )

    @property
    def active(self) -> Profile:
        return _load(self.profile, _mtime(self.profile))

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def store(self) -> BaseStore:
        """The store the active profile's ``[store]`` names (default: the DuckDB file in ``data_dir``)."""
        return store_for(self.active.config.store, self.data_path)

    def endpoint(
        self,
        role: str,
        local_model: str | None = None,
        served_model: str | None = None,
        model_revision: str | None = None,
        tokenizer: str | None = None,
    ):
        """The profile's endpoint for ``role``: ``local_model`` is the weights the hf backend loads,
        ``served_model`` the model name an openai server knows them by (default: the profile's),
        ``model_revision`` which weights these are (a checkpoint's id), for every backend's cache
        key, so a variant retrained and served under the same name is not answered from the cache.
        ``tokenizer`` (the student's) counts prompt tokens against the endpoint's ``context_window``."""
        from orion_assets.llm import make_endpoint

        cfg = getattr(self.active.config.endpoints, role)
        if cfg is None:
            raise ValueError(f"profile {self.active.name} has no [endpoints.{role}]")
        model = local_model if cfg.backend == "hf" else served_model if cfg.backend == "openai" else None
        endpoint = make_endpoint(cfg, self.store, role=role, model_path=model, model_revision=model_revision)
        if cfg.context_window is not None and tokenizer is not None:
            from orion_assets.llm.context import ContextBudget

            endpoint.budget = ContextBudget(cfg.context_window, tokenizer)
        return endpoint

    def resources(self) -> dict[str, object]:
        """This resource and the I/O manager over its store: what the assets need to run."""
        from orion_assets.io_manager import OrionIOManager
        from orion_assets.tables import IO_MANAGER_KEY

        return {"orion": self, IO_MANAGER_KEY: OrionIOManager(orion=self),
                "pipes_subprocess_client": dg.PipesSubprocessClient()}


def table_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()])


def markdown_table(frame: pl.DataFrame, rows: int = PREVIEW_ROWS, total: int | None = None) -> str:
    """A short Markdown preview with long cells cut, for the Dagster UI."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = text.replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.head(rows).iter_rows()]
    total = frame.height if total is None else total
    more = [f"\n_{total - min(rows, frame.height)} more rows_"] if total > min(rows, frame.height) else []
    return "\n".join([header, rule, *body, *more])


def progress_logger(context: dg.AssetExecutionContext, label: str):
    """Log generation progress about every tenth of the way to Dagster, and every report to
    :func:`orion_assets.console.report_progress` (``orion run`` draws it; no one else listens)."""
    from orion_assets.console import report_progress

    state = {"next": 0.0}

    def report(done: int, total: int, **fields: Any) -> None:
        report_progress(label, done, total, **fields)
        if total and (done / total >= state["next"] or done == total):
            context.log.info(f"{label}: {done}/{total} calls done")
            state["next"] = done / total + 0.1

    return report
