"""The quality gate's stored verdicts: one row per variant and check run in ``orion.quality_gate_results``
(:func:`verdict_rows`), and the answer to "may this variant's SFT data be built?"."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from orion_assets.method.quality.results import GateResult
from orion_assets.store import SCHEMA, Store, Upstream
from orion_assets.store.columns import StoreTable, col, dtypes

GATE_TABLE = "quality_gate_results"

GATE = StoreTable(GATE_TABLE, "one row per variant each time the quality_gate check runs on a cot_quality partition", {
    "checked_materialization_id": col(pl.Utf8, "the cot_quality materialization checked (orion.materializations)"),
    "dagster_run_id": col(pl.Utf8, "the Dagster run of the check"),
    "variant": col(pl.Utf8, "the training variant judged (NULL in rows written before verdicts were per variant: "
                            "they stand for every variant)"),
    "passed": col(pl.Boolean, "whether the variant passed every expectation (its SFT data may then be built)"),
    "row_count": col(pl.Int64, "the variant's candidate rows in cot_quality"),
    "kept_count": col(pl.Int64, "of them, kept by the quality rules"),
    "dropped_count": col(pl.Int64, "of them, dropped"),
    "dropped_by_reason": col(pl.Utf8, "JSON: {drop reason: rows dropped for it}"),
    "failed_expectations": col(pl.Utf8, "JSON: the names of the expectations that failed"),
    "failing_ids": col(pl.Utf8, "JSON: the cot_quality_ids behind the failed expectations (the first 200)"),
    "message": col(pl.Utf8, "one line: passed with its counts, or what failed, with counts and a few ids"),
    "checked_at": col(pl.Datetime("us", "UTC"), "when the check ran (UTC; the same for every variant of a run)"),
})
GATE_SCHEMA = dtypes(GATE.columns)
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
