"""Reading the store for the report: the tables it shows, without their long texts, read-only.

:func:`usage_frame` is ``sql/usage_cost.sql`` with the tables that do not exist yet left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

from orion_assets.store import SCHEMA, BaseStore, Store
from orion_assets.vocabulary import MODE_TABLE

# The one reflection mode whose rewrites the teacher makes: its refined_cots calls carry role teacher.
(TEACHER_REWRITE_MODE,) = (m.name for m in MODE_TABLE if m.rewriter == "teacher")


@contextmanager
def _connection(source: BaseStore | duckdb.DuckDBPyConnection | str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    if isinstance(source, duckdb.DuckDBPyConnection):
        yield source
        return
    store = source if isinstance(source, BaseStore) else Store(source)
    if not store.exists():
        what = "DuckDB file" if isinstance(store, Store) else "store"
        raise FileNotFoundError(f"no {what} at {store.location}: materialize some assets first")
    with store.connect(read_only=True) as con:
        yield con


# Long texts the report never shows: left in the file, so a 50k-problem run's report stays small.
_TEXT_COLUMNS = ("cot", "rewrite_thinking", "reflection_notes", "text")


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The column names of ``orion.<table>`` in order (empty when the table does not exist)."""
    return [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [SCHEMA, table],
    ).fetchall()]


def _read(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame | None:
    """``orion.<table>`` without its long text columns, or None when the table does not exist."""
    columns = _columns(con, table)
    if not columns:
        return None
    kept = ", ".join(f'"{c}"' for c in columns if c not in _TEXT_COLUMNS)
    return con.execute(f"SELECT {kept} FROM {SCHEMA}.{table}").pl()


def _profiles(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    """Distinct (profile_name, profile_hash) of the recorded materializations, newest first.

    The scores' own materializations take precedence; other assets are the fallback.
    """
    frame = _read(con, "materializations")
    if frame is None or frame.is_empty() or "profile_hash" not in frame.columns:
        return None
    frame = frame.filter(pl.col("profile_name").is_not_null() | pl.col("profile_hash").is_not_null())
    scored = frame.filter(pl.col("asset_key") == "benchmark_scores")
    if not scored.is_empty():
        frame = scored
    if frame.is_empty():
        return None
    return (
        frame.sort("materialized_at", descending=True, nulls_last=True)
        .unique(["profile_name", "profile_hash"], keep="first", maintain_order=True)
        .select("profile_name", "profile_hash")
    )


QUALITY_COLUMNS: tuple[str, ...] = ("student", "variant", "problem_id", "source", "kept", "drop_reasons",
                                     "teacher_similarity", "n_tokens", "coherence", "reflection_markers",
                                     "reflection_density", "judge_coherence", "judge_consistency")


def _read_quality(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    """The few columns of ``orion.cot_quality`` the quality sections need (not the CoT texts), or None
    when the table does not exist or has no per-row drops (no ``kept`` column)."""
    present = set(_columns(con, "cot_quality"))
    columns = [c for c in QUALITY_COLUMNS if c in present]
    if "variant" not in columns or "kept" not in columns:
        return None
    return con.execute(f"SELECT {', '.join(columns)} FROM {SCHEMA}.cot_quality").pl()


def _read_sft_problems(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    """The distinct (student, variant, problem_id) of ``orion.sft_dataset`` (what each variant trains on, not
    its texts), or None when the table does not exist or lacks those columns."""
    present = set(_columns(con, "sft_dataset"))
    if not {"variant", "problem_id"} <= present:
        return None
    columns = [c for c in ("student", "variant", "problem_id") if c in present]
    return con.execute(f"SELECT DISTINCT {', '.join(columns)} FROM {SCHEMA}.sft_dataset").pl()


def _table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() AND table_schema = ?",
        [SCHEMA]).fetchall()}


def usage_frame(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    """Calls and tokens per stage, detail (mode or variant), role and model: ``sql/usage_cost.sql``,
    with the tables that do not exist yet left out. None without ``orion.llm_calls``."""
    tables = _table_names(con)
    if "llm_calls" not in tables:
        return None
    refs = [f"SELECT llm_call_id AS call_id, '{t}' AS asset_key, {detail} AS detail FROM {SCHEMA}.{t}"
            for t, detail in (("teacher_cots", "NULL"), ("student_attempts", "NULL"), ("refined_cots", "mode"),
                              ("benchmark_predictions", "variant")) if t in tables]
    referenced = " UNION ALL ".join(refs) or "SELECT NULL::VARCHAR AS call_id, NULL AS asset_key, NULL AS detail"
    by_run = (f"""SELECT m.dagster_run_id, a.role, min(m.asset_key) AS asset_key, min(m.partition_key) AS partition_key
                  FROM {SCHEMA}.materializations m JOIN llm_assets a ON a.asset_key = m.asset_key
                  GROUP BY m.dagster_run_id, a.role HAVING count(DISTINCT m.asset_key) = 1"""
              if "materializations" in tables else
              "SELECT NULL::VARCHAR AS dagster_run_id, NULL AS role, NULL AS asset_key, NULL AS partition_key")
    # llm_calls without prompt_hash (messages not yet moved to llm_prompts; the report only reads, so
    # it does not migrate): the hash of the messages text, as the migration computes it.
    columns = {d[0] for d in con.execute(f"SELECT * FROM {SCHEMA}.llm_calls LIMIT 0").description}
    calls = (f"{SCHEMA}.llm_calls" if "prompt_hash" in columns
             else f"(SELECT *, left(sha256(messages::VARCHAR), 32) AS prompt_hash FROM {SCHEMA}.llm_calls)")
    modes = (f"""SELECT c.prompt_hash, min(r.mode) AS mode FROM {SCHEMA}.refined_cots r
                 JOIN {calls} c ON c.call_id = r.llm_call_id GROUP BY 1"""
             if "refined_cots" in tables else "SELECT NULL::VARCHAR AS prompt_hash, NULL AS mode")
    return con.execute(f"""
        WITH llm_assets(role, asset_key) AS (
            VALUES ('teacher', 'teacher_cots'), ('teacher', 'refined_cots'), ('student', 'student_attempts'),
                   ('student', 'refined_cots'), ('student', 'benchmark_predictions'), ('judge', 'cot_quality')),
        by_run AS ({by_run}),
        referenced AS (SELECT call_id, min(asset_key) AS asset_key, min(detail) AS detail
                       FROM ({referenced}) WHERE call_id IS NOT NULL GROUP BY call_id),
        reflect_modes AS ({modes}),
        attributed AS (
            SELECT c.*, coalesce(CASE WHEN c.role = 'judge' THEN 'cot_quality' END, ref.asset_key, run.asset_key,
                                 'unattributed') AS stage,
                   ref.detail AS ref_detail, run.partition_key
            FROM {calls} c
            LEFT JOIN referenced ref ON ref.call_id = c.call_id
            LEFT JOIN by_run run ON run.dagster_run_id = c.dagster_run_id AND run.role = c.role)
        SELECT a.stage,
               CASE WHEN a.stage = 'refined_cots' AND a.role = 'teacher' THEN '{TEACHER_REWRITE_MODE}'
                    WHEN a.stage = 'refined_cots' THEN coalesce(a.ref_detail, m.mode)
                    WHEN a.stage = 'benchmark_predictions'
                         THEN coalesce(a.ref_detail, split_part(a.partition_key, '|', 2)) END AS detail,
               a.role, a.model, count(*) AS calls, count(*) FILTER (WHERE a.status = 'error') AS errors,
               CAST(coalesce(sum(a.retries), 0) AS BIGINT) AS retries,
               CAST(coalesce(sum(a.prompt_tokens), 0) AS BIGINT) AS prompt_tokens,
               CAST(coalesce(sum(a.completion_tokens), 0) AS BIGINT) AS completion_tokens,
               CAST(sum(a.reasoning_tokens) AS BIGINT) AS reasoning_tokens
        FROM attributed a LEFT JOIN reflect_modes m ON m.prompt_hash = a.prompt_hash
        GROUP BY ALL""").pl()
