"""What an export reads from the store, read-only: SFT examples with their problem, gold answer and quality
metrics, checkpoints, scores, and the materializations (``orion.materializations``) each of them came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from orion_assets.method.quality.rules import reason_counts
from orion_assets.method.quality.verdicts import latest_gate_verdict
from orion_assets.store import SCHEMA, BaseStore
from orion_assets.store.base import has_table
from orion_assets.vocabulary import VARIANT_MODE

# cot_quality columns carried into every exported row (those the store has: older stores lack some).
QUALITY_METRICS: tuple[str, ...] = (
    "n_words", "n_steps", "reflection_markers", "reflection_density", "repeated_4gram_ratio", "coherence",
    "judge_coherence", "judge_consistency", "teacher_similarity",
)
_MATERIALIZATION_COLUMNS = ("materialization_id", "asset_key", "partition_key", "dagster_run_id", "profile_name",
                            "profile_hash", "code_version", "row_count", "materialized_at")


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says what is missing and where."""


class ExportUsageError(ExportError):
    """The request itself is wrong (its options, ``--out``, a student the store lacks): ``orion export`` exits 2."""


@dataclass(frozen=True)
class Gate:
    """The quality gate's latest verdict on one student's variant, and the ``cot_quality`` it judged."""

    passed: bool
    reason: str
    cot_quality: dict[str, Any] | None


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [SCHEMA, table]).fetchall()]


def require_tables(store: BaseStore, tables: tuple[str, ...]) -> None:
    """Refuse a store that lacks one of ``tables``, naming it and the asset to materialize."""
    if not store.exists():
        raise ExportError(f"no store at {store.location}: run `orion run` first")
    with store.connect(read_only=True) as con:
        missing = [t for t in tables if not has_table(con, t)]
    if missing:
        raise ExportError(f"{store.location} has no table {', '.join(f'{SCHEMA}.{t}' for t in missing)}: "
                          f"materialize {', '.join(missing)} first (orion run)")


def sft_partitions(store: BaseStore) -> list[tuple[str, str]]:
    """The (student, variant) pairs with SFT examples, sorted."""
    with store.connect(read_only=True) as con:
        return [tuple(r) for r in con.execute(
            f"SELECT DISTINCT student, variant FROM {SCHEMA}.sft_dataset ORDER BY 1, 2").fetchall()]


def sft_rows(store: BaseStore, student: str, variant: str) -> pl.DataFrame:
    """One row per SFT example of ``student``'s ``variant``: the chat ``messages`` (prompt then completion) and
    its ``prompt`` and ``completion`` apart, the problem, its gold ``answer`` and train ``source``, the
    reflection ``mode``, the CoT's source and its quality metrics."""
    with store.connect(read_only=True) as con:
        quality = set(_columns(con, "cot_quality"))
        metrics = ", ".join(f'q."{c}"' for c in QUALITY_METRICS if c in quality)
        frame = con.execute(f"""
            SELECT s.sft_example_id, s.student, s.variant, s.problem_id, s.cot_quality_id,
                   list_concat(s.prompt, s.completion) AS messages, s.prompt, s.completion,
                   p.problem, p.gold_answer AS answer, p.source, s.source AS cot_source, s.n_tokens
                   {", " + metrics if metrics else ""}
            FROM {SCHEMA}.sft_dataset s
            LEFT JOIN {SCHEMA}.train_problems p ON p.problem_id = s.problem_id
            LEFT JOIN {SCHEMA}.cot_quality q ON q.cot_quality_id = s.cot_quality_id
            WHERE s.student = ? AND s.variant = ?
            ORDER BY s.sft_example_id""", [student, variant]).pl()
    # the reflection mode whose refinements the variant trains on (none: teacher_sft, the teacher's own CoTs)
    frame = frame.with_columns(pl.lit(VARIANT_MODE.get(variant), dtype=pl.Utf8).alias("mode"))
    orphans = frame.filter(pl.col("problem").is_null())
    if orphans.height:
        row = orphans.row(0, named=True)
        raise ExportError(f"{SCHEMA}.sft_dataset row {row['sft_example_id']} ({student}/{variant}): problem_id "
                          f"{row['problem_id']} is not in {SCHEMA}.train_problems ({orphans.height} such rows); "
                          "re-materialize train_problems and sft_dataset")
    return frame


def quality_summary(store: BaseStore, student: str, variant: str) -> dict[str, Any]:
    """Candidates, kept rows and drops per reason of one variant in ``cot_quality``."""
    with store.connect(read_only=True) as con:
        if "kept" not in _columns(con, "cot_quality"):
            return {}
        frame = con.execute(f"SELECT kept, drop_reasons FROM {SCHEMA}.cot_quality WHERE student = ? AND variant = ?",
                            [student, variant]).pl()
    return {"candidates": frame.height, "kept": int(frame["kept"].sum() or 0),
            "dropped_by_reason": reason_counts(frame.filter(~pl.col("kept")))}


def latest_materialization(store: BaseStore, asset_key: str, partition_key: str | None) -> dict[str, Any] | None:
    """The newest ``orion.materializations`` row of one asset partition (``partition_key`` None: unpartitioned)."""
    with store.connect(read_only=True) as con:
        if not has_table(con, "materializations"):
            return None
        rows = con.execute(
            f"SELECT {', '.join(_MATERIALIZATION_COLUMNS)} FROM {SCHEMA}.materializations "
            "WHERE asset_key = ? AND partition_key IS NOT DISTINCT FROM ? ORDER BY materialized_at DESC LIMIT 1",
            [asset_key, partition_key]).pl()
    return _json_row(rows.row(0, named=True)) if rows.height else None


def score_materializations(store: BaseStore, model_key: str) -> list[dict[str, Any]]:
    """The newest ``benchmark_scores`` materialization of each benchmark for one checkpoint (``benchmark|model``)."""
    with store.connect(read_only=True) as con:
        if not has_table(con, "materializations"):
            return []
        rows = con.execute(
            f"""SELECT {', '.join(_MATERIALIZATION_COLUMNS)} FROM {SCHEMA}.materializations
                WHERE asset_key = 'benchmark_scores' AND split_part(partition_key, '|', 2) = ?
                QUALIFY row_number() OVER (PARTITION BY partition_key ORDER BY materialized_at DESC) = 1
                ORDER BY partition_key""", [model_key]).pl()
    return [_json_row(r) for r in rows.iter_rows(named=True)]


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    at = row.get("materialized_at")
    return {**row, "materialized_at": at.isoformat() if at is not None else None}


def gate_of(store: BaseStore, student: str, variant: str) -> Gate:
    """The latest gate verdict on ``student``'s newest ``cot_quality`` materialization for ``variant``: the
    same question ``sft_dataset`` and ``student_checkpoint`` ask before they build on a variant."""
    (checked,) = store.latest_materializations("cot_quality", student)
    passed, reason = latest_gate_verdict(store, checked, variant)
    return Gate(passed, reason, latest_materialization(store, "cot_quality", student))


def checkpoints(store: BaseStore, student: str, variant: str) -> pl.DataFrame:
    """``student_checkpoint`` rows of one variant (every seed) with their base model's path."""
    with store.connect(read_only=True) as con:
        if not has_table(con, "student_checkpoint"):
            return pl.DataFrame()
        base = (f"LEFT JOIN {SCHEMA}.student_base_model b ON b.model_id = c.base_model_id"
                if has_table(con, "student_base_model") else "")
        base_path = "b.path" if base else "NULL"
        return con.execute(f"""
            SELECT c.checkpoint_id, c.student, c.variant, c.seed, c.kind, c.path, c.steps, c.final_loss,
                   c.sft_examples, {base_path} AS base_path
            FROM {SCHEMA}.student_checkpoint c {base}
            WHERE c.student = ? AND c.variant = ? ORDER BY c.seed""", [student, variant]).pl()


def scores(store: BaseStore, student: str, variant: str, seed: int) -> pl.DataFrame:
    """One checkpoint's ``benchmark_scores``: the primary grading rule's row per benchmark."""
    with store.connect(read_only=True) as con:
        if not has_table(con, "benchmark_scores"):
            return pl.DataFrame()
        present = _columns(con, "benchmark_scores")
        primary = 'AND coalesce("primary", true)' if "primary" in present else ""
        shown = "* EXCLUDE (prediction_ids)" if "prediction_ids" in present else "*"
        return con.execute(f"""
            SELECT {shown} FROM {SCHEMA}.benchmark_scores
            WHERE student = ? AND variant = ? AND seed = ? {primary} ORDER BY benchmark""",
                           [student, variant, seed]).pl()
