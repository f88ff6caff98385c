"""The quality gate's stored verdicts: one row per variant and check run in ``orion.quality_gate_results``
(:func:`verdict_rows`), and the answer to "may this variant's SFT data be built?"."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from orion_assets.method.quality.results import GateResult
from orion_assets.store import SCHEMA, Store, Upstream

GATE_TABLE = "quality_gate_results"

GATE_SCHEMA = {
    "checked_materialization_id": pl.Utf8, "dagster_run_id": pl.Utf8, "variant": pl.Utf8, "passed": pl.Boolean,
    "row_count": pl.Int64, "kept_count": pl.Int64, "dropped_count": pl.Int64, "dropped_by_reason": pl.Utf8,
    "failed_expectations": pl.Utf8, "failing_ids": pl.Utf8, "message": pl.Utf8,
    "checked_at": pl.Datetime("us", "UTC"),
}
# Per-variant columns, added to an existing quality_gate_results table that lacks them.
_ADDED_GATE_COLUMNS = {"variant": "VARCHAR", "kept_count": "BIGINT", "dropped_count": "BIGINT",
                       "dropped_by_reason": "VARCHAR", "message": "VARCHAR"}


def append_verdicts(store: Store, rows: pl.DataFrame) -> None:
    """Append verdict rows, first adding the per-variant columns to a table that lacks them."""
    if store.table_exists(GATE_TABLE):
        with store.connect() as con:
            have = {r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
                [SCHEMA, GATE_TABLE]).fetchall()}
            for name, sql_type in _ADDED_GATE_COLUMNS.items():
                if name not in have:
                    con.execute(f'ALTER TABLE {SCHEMA}.{GATE_TABLE} ADD COLUMN "{name}" {sql_type}')
    store.append(GATE_TABLE, rows)


def latest_gate_verdict(store: Store, checked: Upstream, variant: str | None = None) -> tuple[bool, str]:
    """Whether the newest ``cot_quality`` materialization passed the gate for ``variant``, and why not.

    ``checked`` is the ``cot_quality`` materialization the caller read. The answer comes from the
    latest check run on that materialization: ``variant`` passed when its row there passed (a row
    without a variant stands for every variant). ``variant=None`` asks whether every gated variant passed.
    """
    if checked.materialization_id is None:
        return False, "cot_quality has not been materialized"
    if not store.table_exists(GATE_TABLE):
        return False, f"the quality gate never ran on cot_quality materialization {checked.materialization_id}"
    rows = store.read(GATE_TABLE, {"checked_materialization_id": checked.materialization_id})
    if rows.height == 0:
        return False, f"the quality gate has not run on cot_quality materialization {checked.materialization_id}"
    if "variant" not in rows.columns:
        rows = rows.with_columns(pl.lit(None, dtype=pl.Utf8).alias("variant"))
    latest = rows.filter(pl.col("checked_at") == pl.col("checked_at").max())
    where = f"cot_quality materialization {checked.materialization_id}"
    if variant is not None:
        latest = latest.filter((pl.col("variant") == variant) | pl.col("variant").is_null())
        if latest.height == 0:
            return False, (f"the quality gate's latest run on {where} gave no verdict for variant {variant} "
                           "(cot_quality has no candidate rows for it)")
    failed = latest.filter(~pl.col("passed"))
    if failed.height == 0:
        return True, "passed"
    reasons = []
    for row in failed.iter_rows(named=True):
        if row.get("message"):
            reasons.append(row["message"])
        else:  # a row without a message
            reasons.append(f"expectations {row['failed_expectations']}, failing ids {row['failing_ids'][:500]}")
    scope = f"for variant {variant} " if variant is not None else ""
    return False, f"the quality gate failed {scope}on {where}: " + " | ".join(reasons)


def verdict_rows(result: GateResult, id_limit: int = 200) -> list[dict[str, Any]]:
    """One JSON-able row per variant for ``orion.quality_gate_results`` (ids capped at ``id_limit``)."""
    return [
        {
            "variant": v.variant,
            "passed": v.passed,
            "row_count": v.rows,
            "kept_count": v.kept,
            "dropped_count": v.dropped,
            "dropped_by_reason": json.dumps(v.dropped_by_reason),
            "failed_expectations": json.dumps(v.failed),
            "failing_ids": json.dumps(v.failing_ids[:id_limit]),
            "message": v.message,
        }
        for v in result.verdicts
    ]
