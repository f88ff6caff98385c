"""The one resource every asset uses: the active profile and the DuckDB store.

Assets compute plain polars frames; :meth:`OrionResource.publish` is the single place where rows
get their run id, land in DuckDB (replacing only their partition), are logged in
``orion.materializations`` with the upstream materializations they read, and become Dagster
metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from orion_assets.profiles import Profile, load_profile
from orion_assets.store import Store, Upstream

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
    def store(self) -> Store:
        return Store(self.data_path / "orion.duckdb")

    def upstream(self, asset_key: str, partition_key: str | None = None) -> list[Upstream]:
        """The materialization(s) a read of ``asset_key`` (one partition, or all) depends on."""
        return self.store.latest_materializations(asset_key, partition_key)

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

    def read(
        self, asset_key: str, where: Mapping[str, object] | None = None, partition_key: str | None = None
    ) -> tuple[pl.DataFrame, list[Upstream]]:
        """A parent asset's rows and the materialization they came from (for lineage)."""
        return self.store.read(asset_key, dict(where) if where else None), self.upstream(asset_key, partition_key)

    def publish(
        self,
        context: dg.AssetExecutionContext,
        frame: pl.DataFrame,
        *,
        replace_where: Mapping[str, object] | None = None,
        reads: Sequence[Upstream | Sequence[Upstream]] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> dg.MaterializeResult:
        """Write ``frame`` as this asset's rows (or partition) and describe it to Dagster."""
        table = context.asset_key.path[-1]
        # A run launched for one partition also tags its unpartitioned assets with that key.
        partitioned = context.assets_def.partitions_def is not None
        partition_key = str(context.partition_key) if partitioned and context.has_partition_key else None
        frame = frame.with_columns(pl.lit(context.run.run_id).alias("dagster_run_id"))
        materialization_id = self.store.replace_rows(
            table,
            frame,
            replace_where=dict(replace_where) if replace_where is not None else None,
            materialization={
                "asset_key": table,
                "partition_key": partition_key,
                "dagster_run_id": context.run.run_id,
                "profile_name": self.active.name,
                "profile_hash": self.active.hash,
                "code_version": context.assets_def.code_versions_by_key.get(context.asset_key),
                "upstream": list(reads),
            },
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": frame.height,
                "dagster/column_schema": table_schema(frame),
                "duckdb_table": f"orion.{table}",
                "materialization_id": materialization_id,
                "profile": self.active.name,
                "profile_hash": self.active.hash,
                "preview": dg.MetadataValue.md(markdown_table(frame.drop("dagster_run_id"))),
                **(metadata or {}),
            }
        )


def table_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()])


def markdown_table(frame: pl.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    """A short Markdown preview with long cells cut, for the Dagster UI."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = text.replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.head(rows).iter_rows()]
    more = [f"\n_{frame.height - rows} more rows_"] if frame.height > rows else []
    return "\n".join([header, rule, *body, *more])


def progress_logger(context: dg.AssetExecutionContext, label: str):
    """Log generation progress about every tenth of the way to Dagster, and every report to
    :func:`orion_assets.console.report_progress` (``orion run`` draws it; no one else listens)."""
    from orion_assets.console import report_progress

    state = {"next": 0.0}

    def report(done: int, total: int) -> None:
        report_progress(label, done, total)
        if total and (done / total >= state["next"] or done == total):
            context.log.info(f"{label}: {done}/{total} calls done")
            state["next"] = done / total + 0.1

    return report
