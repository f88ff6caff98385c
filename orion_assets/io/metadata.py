"""What an asset shows in the Dagster UI: table previews, column schemas, percentiles, progress, tracker runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl

from orion_assets.progress import report_progress
from orion_assets.tokens import percentiles  # plain polars, so that the method layer shares it

__all__ = ["column_descriptions", "markdown_table", "percentiles", "progress_logger", "table_schema", "tracking_metadata"]

if TYPE_CHECKING:
    from orion_assets.training.tracking import TrackedRun

PREVIEW_ROWS = 10
PREVIEW_CELL_CHARS = 80


def table_schema(frame: pl.DataFrame, descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    """The columns of ``frame`` as the UI shows them, each with its description from ``descriptions``."""
    descriptions = descriptions or {}
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype), description=descriptions.get(name))
                                   for name, dtype in frame.schema.items()])


def column_descriptions(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The column descriptions in an asset's definition metadata (its spec's ``dagster/column_schema``),
    so that a materialization's column schema shows them too."""
    schema = metadata.get("dagster/column_schema")
    schema = getattr(schema, "schema", schema)  # a TableSchemaMetadataValue, or the TableSchema itself
    if not isinstance(schema, dg.TableSchema):
        return {}
    return {column.name: column.description for column in schema.columns if column.description}


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
    :func:`orion_assets.progress.report_progress` (``orion run`` draws it; no one else listens)."""
    state = {"next": 0.0}

    def report(done: int, total: int, **fields: Any) -> None:
        report_progress(label, done, total, **fields)
        if total and (done / total >= state["next"] or done == total):
            context.log.info(f"{label}: {done}/{total} calls done")
            state["next"] = done / total + 0.1

    return report


def tracking_metadata(run: TrackedRun | None) -> dict[str, dg.MetadataValue]:
    """A checkpoint's tracker run ([tracking]) in its materialization: ``tracking_backend``, ``tracking_run_id`` and
    ``tracking_link`` (the run in the tracker's UI, or the command that serves it); nothing without a run."""
    if run is None:
        return {}
    link = dg.MetadataValue.url(run.link) if run.link_is_url else dg.MetadataValue.text(run.link)
    return {"tracking_backend": dg.MetadataValue.text(run.backend), "tracking_run_id": dg.MetadataValue.text(run.run_id),
            "tracking_link": link}
