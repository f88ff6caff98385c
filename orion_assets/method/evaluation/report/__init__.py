"""The leaderboard report: a Markdown page with tables and plots, built from the DuckDB file.

:func:`build_report` reads ``orion.benchmark_scores`` (one row per benchmark and variant), and for
the plots ``orion.teacher_cots``, ``orion.refined_cots`` and ``orion.student_errors``, then writes
into a folder:

- ``leaderboard.md``: pass@1 (± standard error) per variant and benchmark with each variant's
  difference to ``teacher_sft`` in percentage points (and the number of failed endpoint calls where
  there were any), which grading rule made the GSM-Hard numbers, maj@k, pass@k, mean CoT length and
  truncation, the profile the scores come from, and the plots;
- ``accuracy.png``, ``cot_lengths.png``, ``error_types.png``: each skipped, with a note in the page,
  when the table behind it is missing or empty.

The report only reads: a :class:`~orion_assets.store.Store` is opened read-only, once, and the plots
are drawn after the connection is closed. Plots use matplotlib's Agg canvas directly (no pyplot), so
building a report changes no global matplotlib state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import duckdb
import polars as pl

from orion_assets.method.evaluation.scoring import Scores
from orion_assets.store import SCHEMA, BaseStore, Store
from orion_assets.vocabulary import BENCHMARKS, VARIANTS

REFERENCE_VARIANT = "teacher_sft"
MISSING = "—"
MARKDOWN_NAME = "leaderboard.md"
ACCURACY_PNG = "accuracy.png"
COT_LENGTHS_PNG = "cot_lengths.png"
ERROR_TYPES_PNG = "error_types.png"
# The columns of orion.benchmark_scores that the report reads: its keys, the Scores fields and the
# grading rule. Scores fields with a default (failed-call counts) and the grading rule came later:
# a table written before them lacks those columns, and the report reads them as unknown (null).
SCORE_COLUMNS: tuple[str, ...] = ("benchmark", "variant", *(f.name for f in fields(Scores)), "grading_rule")
LATER_SCORE_COLUMNS: dict[str, type[pl.DataType]] = {
    **{f.name: pl.Int64 for f in fields(Scores) if f.default is not NO_DEFAULT},
    "grading_rule": pl.Utf8,
}
GSM_HARD = "gsm_hard"
GRADING_RULES: dict[str, str] = {
    "precision": "integer golds exactly, other golds at the precision the answer shows",
    "math_equal": "relative tolerance 1e-4, as most published GSM-Hard numbers",
}
REFINED_MODE_ORDER: tuple[str, ...] = ("orion", "no_error", "no_reflection")


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote.

    ``leaderboard`` has one row per variant (canonical order) with, per benchmark ``b``, the columns
    ``b`` (pass@1, a fraction), ``b_se`` (its standard error) and ``b_delta`` (pass@1 minus
    ``teacher_sft``'s, in percentage points); null where a score is missing. A plot path is ``None``
    when the plot was skipped; ``notes`` says why.
    """

    out_dir: Path
    markdown_path: Path
    markdown: str
    leaderboard: pl.DataFrame
    accuracy_png: Path | None
    cot_lengths_png: Path | None
    error_types_png: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def pngs(self) -> list[Path]:
        return [p for p in (self.accuracy_png, self.cot_lengths_png, self.error_types_png) if p is not None]


# -- reading -------------------------------------------------------------------------------------


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
_TEXT_COLUMNS = ("cot", "reflection_notes", "text")


def _read(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame | None:
    """``orion.<table>`` without its long text columns, or None when the table does not exist."""
    columns = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [SCHEMA, table],
    ).fetchall()]
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


# -- tables --------------------------------------------------------------------------------------


def _ordered(values: list[str], canonical: tuple[str, ...]) -> list[str]:
    present = set(values)
    return [v for v in canonical if v in present] + sorted(present - set(canonical))


def _clean_scores(scores: pl.DataFrame | None, notes: list[str]) -> pl.DataFrame:
    if scores is None:
        notes.append(f"Table `{SCHEMA}.benchmark_scores` does not exist yet: materialize `benchmark_scores` first.")
        return pl.DataFrame(
            schema={c: pl.Float64 for c in SCORE_COLUMNS}
            | LATER_SCORE_COLUMNS
            | {"benchmark": pl.Utf8, "variant": pl.Utf8}
        )
    scores = scores.with_columns(
        pl.lit(None, dtype=dtype).alias(column)
        for column, dtype in LATER_SCORE_COLUMNS.items()
        if column not in scores.columns
    )
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"{SCHEMA}.benchmark_scores lacks column(s) {', '.join(missing)}")
    if scores.is_empty():
        notes.append(f"Table `{SCHEMA}.benchmark_scores` is empty: no variant has been scored yet.")
    scores = scores.select(SCORE_COLUMNS)
    duplicated = scores.height - scores.unique(["benchmark", "variant"]).height
    if duplicated:
        notes.append(
            f"`{SCHEMA}.benchmark_scores` holds {duplicated} duplicate (benchmark, variant) row(s); the last of each is shown."
        )
        scores = scores.unique(["benchmark", "variant"], keep="last", maintain_order=True)
    return scores


def leaderboard_frame(scores: pl.DataFrame) -> pl.DataFrame:
    """One row per variant: per benchmark pass@1, its SE, the delta over teacher_sft (points) and
    the number of failed endpoint calls left out of the score (null where not recorded)."""
    variants = _ordered(scores["variant"].to_list(), VARIANTS)
    benchmarks = _ordered(scores["benchmark"].to_list(), BENCHMARKS)
    lookup = {(r["variant"], r["benchmark"]): r for r in scores.iter_rows(named=True)}
    rows: list[dict[str, object]] = []
    for variant in variants:
        row: dict[str, object] = {"variant": variant}
        for benchmark in benchmarks:
            cell = lookup.get((variant, benchmark))
            ref = lookup.get((REFERENCE_VARIANT, benchmark))
            value = _number(cell["pass_at_1"]) if cell else None
            ref_value = _number(ref["pass_at_1"]) if ref else None
            row[benchmark] = value
            row[f"{benchmark}_se"] = _number(cell["pass_at_1_se"]) if cell else None
            row[f"{benchmark}_delta"] = (
                100.0 * (value - ref_value) if value is not None and ref_value is not None else None
            )
            row[f"{benchmark}_n_errors"] = _count(cell.get("n_errors")) if cell else None
        rows.append(row)
    schema: dict[str, type[pl.DataType]] = {"variant": pl.Utf8}
    for benchmark in benchmarks:
        schema |= {benchmark: pl.Float64, f"{benchmark}_se": pl.Float64, f"{benchmark}_delta": pl.Float64,
                   f"{benchmark}_n_errors": pl.Int64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def _number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _round(value: float, digits: int = 1) -> Decimal:
    """Round half away from zero, after dropping float noise (100 * (0.4375 - 0.4) is 3.7499...)."""
    exact = Decimal(repr(round(value, 9)))
    return exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP) + 0  # + 0: no "-0.0"


def _pct(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{_round(100.0 * value, digits)}"


def _delta(points: float | None) -> str:
    return MISSING if points is None else f"{_round(points):+}"


def _md_table(header: list[str], rows: list[list[str]], align_first_left: bool = True) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---" if align_first_left else "---:"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _score_tables(scores: pl.DataFrame, board: pl.DataFrame) -> list[str]:
    variants = board["variant"].to_list()
    benchmarks = _ordered(scores["benchmark"].to_list(), BENCHMARKS)
    lookup = {(r["variant"], r["benchmark"]): r for r in scores.iter_rows(named=True)}
    parts: list[str] = []

    # pass@1 ± SE with the delta over teacher_sft
    header = ["variant"]
    for benchmark in benchmarks:
        header += [benchmark, f"Δ {benchmark}"]
    rows = []
    for record in board.iter_rows(named=True):
        row = [f"`{record['variant']}`"]
        for benchmark in benchmarks:
            value, se = record[benchmark], record[f"{benchmark}_se"]
            n_errors = record[f"{benchmark}_n_errors"]
            failed = f" ({n_errors} failed call{'s' if n_errors != 1 else ''})" if n_errors else ""
            row.append((MISSING if value is None else f"{_pct(value)} ± {_pct(se)}") + failed)
            if record["variant"] == REFERENCE_VARIANT and value is not None:
                row.append("ref")
            else:
                row.append(_delta(record[f"{benchmark}_delta"]))
        rows.append(row)
    parts.append("## pass@1 (%, ± standard error)\n")
    parts.append(
        f"Δ is the difference to `{REFERENCE_VARIANT}` (standard long-CoT distillation) in percentage points."
        + ("" if REFERENCE_VARIANT in variants else f" `{REFERENCE_VARIANT}` has no scores yet, so every Δ is {MISSING}.")
        + "\n"
    )
    parts.append(_md_table(header, rows) + "\n")
    failed = [r for r in scores.iter_rows(named=True) if _count(r["n_errors"])]
    if failed:
        unanswered = sum(_count(r["n_unanswered_problems"]) or 0 for r in failed)
        parts.append(
            "(N failed calls): samples whose endpoint call failed; they are not wrong answers, so every score "
            "here is over the answered samples only"
            + (f", and {unanswered} problem(s) without any answered sample are left out" if unanswered else "")
            + ". Re-materializing the partition sends only the failed calls again.\n"
        )
    rule = _grading_rule_sentence(scores)
    if rule:
        parts.append(rule + "\n")

    # maj@k and pass@k
    for column, title in (("maj_at_k", "maj@k"), ("pass_at_k", "pass@k")):
        ks = {int(r["k"]) for r in scores.iter_rows(named=True) if r["k"] is not None}
        uniform_k = next(iter(ks)) if len(ks) == 1 else None
        heading = title.replace("k", str(uniform_k)) if uniform_k is not None else title
        rows = []
        for variant in variants:
            row = [f"`{variant}`"]
            for benchmark in benchmarks:
                cell = lookup.get((variant, benchmark))
                if cell is None or _number(cell[column]) is None:
                    row.append(MISSING)
                else:
                    text = _pct(_number(cell[column]))
                    row.append(text if uniform_k is not None else f"{text} (k={cell['k']})")
            rows.append(row)
        parts.append(f"## {heading} (%)\n")
        parts.append(_md_table(["variant", *benchmarks], rows) + "\n")

    # length and truncation
    rows = []
    for variant in variants:
        row = [f"`{variant}`"]
        for benchmark in benchmarks:
            cell = lookup.get((variant, benchmark))
            tokens = _number(cell["mean_tokens"]) if cell else None
            truncation = _number(cell["truncation_rate"]) if cell else None
            if tokens is None and truncation is None:
                row.append(MISSING)
            else:
                tokens_text = MISSING if tokens is None else f"{tokens:.0f}"
                row.append(f"{tokens_text} / {_pct(truncation)}%")
        rows.append(row)
    parts.append("## Mean CoT length (tokens) / truncated samples (%)\n")
    parts.append(_md_table(["variant", *benchmarks], rows) + "\n")

    # problems per benchmark
    counts = []
    for benchmark in benchmarks:
        ns = sorted({int(n) for n in scores.filter(pl.col("benchmark") == benchmark)["n_problems"].drop_nulls()})
        if ns:
            counts.append(f"{benchmark} {ns[0]}" if len(ns) == 1 else f"{benchmark} {ns[0]}–{ns[-1]}")
    if counts:
        parts.append("Problems per benchmark: " + ", ".join(counts) + ".\n")
    return parts


def _grading_rule_sentence(scores: pl.DataFrame) -> str | None:
    """Which rule graded the GSM-Hard numbers (``[eval] gsm_hard_rule``), from the stored column."""
    rows = scores.filter(pl.col("benchmark") == GSM_HARD)
    if rows.is_empty():
        return None
    by_rule: dict[str | None, list[str]] = {}
    for record in rows.iter_rows(named=True):
        by_rule.setdefault(record["grading_rule"], []).append(record["variant"])
    if len(by_rule) == 1:
        (rule,) = by_rule
        if rule is None:
            return (
                "GSM-Hard: these scores do not record which grading rule made them (scored before "
                "`grading_rule` was stored); re-materialize `benchmark_scores` to record it."
            )
        detail = f" ({GRADING_RULES[rule]})" if rule in GRADING_RULES else ""
        return f"GSM-Hard numbers were graded with the `{rule}` rule{detail} (`[eval] gsm_hard_rule`)."
    described = "; ".join(
        f"{'not recorded' if rule is None else f'`{rule}`'} for {', '.join(f'`{v}`' for v in variants)}"
        for rule, variants in sorted(by_rule.items(), key=lambda item: (item[0] is None, item[0] or ""))
    )
    return (
        f"GSM-Hard numbers were graded with different rules ({described}): they are not comparable "
        "across those variants until all are re-graded with one `[eval] gsm_hard_rule`."
    )


# -- SFT data quality ----------------------------------------------------------------------------

QUALITY_COLUMNS: tuple[str, ...] = ("variant", "source", "kept", "drop_reasons", "teacher_similarity")


def _read_quality(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    """The few columns of ``orion.cot_quality`` the quality table needs (not the CoT texts), or None
    when the table does not exist or predates per-row drops (no ``kept`` column)."""
    present = con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
        [SCHEMA, "cot_quality"],
    ).fetchall()
    columns = [c for c in QUALITY_COLUMNS if c in {row[0] for row in present}]
    if "variant" not in columns or "kept" not in columns:
        return None
    return con.execute(f"SELECT {', '.join(columns)} FROM {SCHEMA}.cot_quality").pl()


def quality_frame(cot_quality: pl.DataFrame) -> pl.DataFrame:
    """Per variant (canonical order): candidate rows, kept, dropped, drops per reason (a row with two
    reasons counts under both) and the median similarity to the teacher of the true rewrites
    (``source == 'refined'``: teacher fallbacks are copies by construction; null for teacher_sft)."""
    from orion_assets.method.quality.rules import reason_counts

    rows: list[dict[str, object]] = []
    for variant in _ordered(cot_quality["variant"].drop_nulls().unique().to_list(), VARIANTS):
        group = cot_quality.filter(pl.col("variant") == variant)
        kept = group["kept"].fill_null(False)
        dropped = group.filter(~kept) if "drop_reasons" in group.columns else None
        similarity = None
        if "teacher_similarity" in group.columns and "source" in group.columns:
            rewrites = group.filter(pl.col("source") == "refined")["teacher_similarity"].drop_nulls()
            similarity = float(rewrites.median()) if rewrites.len() else None
        rows.append({
            "variant": variant,
            "rows": group.height,
            "kept": int(kept.sum()),
            "dropped": group.height - int(kept.sum()),
            "dropped_by_reason": reason_counts(dropped) if dropped is not None else {},
            "teacher_similarity_p50": similarity,
        })
    return pl.DataFrame(rows, schema={
        "variant": pl.Utf8, "rows": pl.Int64, "kept": pl.Int64, "dropped": pl.Int64,
        "dropped_by_reason": pl.Object, "teacher_similarity_p50": pl.Float64,
    })


def _quality_section(cot_quality: pl.DataFrame | None) -> list[str]:
    if cot_quality is None or cot_quality.is_empty():
        return []
    frame = quality_frame(cot_quality)
    rows = []
    for r in frame.iter_rows(named=True):
        reasons = ", ".join(f"{name} {count}" for name, count in r["dropped_by_reason"].items()) or MISSING
        similarity = MISSING if r["teacher_similarity_p50"] is None else f"{r['teacher_similarity_p50']:.2f}"
        rows.append([f"`{r['variant']}`", str(r["rows"]), str(r["kept"]), str(r["dropped"]), reasons, similarity])
    return [
        "## SFT data quality per variant\n",
        "Candidate CoTs per variant, those the quality gate kept for SFT and those it dropped, by reason (a "
        "row can have several). Similarity to teacher: the median share of a refined CoT's word 4-grams "
        "found in the teacher CoT it rewrites (1.0 = a copy), over true rewrites only.\n",
        _md_table(["variant", "candidates", "kept", "dropped", "dropped by reason", "similarity to teacher (median)"],
                  rows),
        "",
    ]


# -- LLM usage and cost --------------------------------------------------------------------------

USAGE_STAGES: tuple[str, ...] = ("teacher_cots", "student_attempts", "refined_cots", "cot_quality",
                                 "benchmark_predictions", "unattributed")
# The LLM stages behind each variant's SFT data (refined_cots: its mode's calls only).
SFT_DATA_STAGES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "teacher_sft": (("teacher_cots", None),),
    "orion": (("teacher_cots", None), ("student_attempts", None), ("refined_cots", "orion")),
    "orion_no_error": (("teacher_cots", None), ("refined_cots", "no_error")),
    "orion_no_reflection": (("teacher_cots", None), ("student_attempts", None), ("refined_cots", "no_reflection")),
}
Prices = dict[str, tuple[float | None, float | None]]


def prices_of(config) -> Prices:
    """Per role, (USD per million prompt tokens, per million completion tokens) of an ``OrionConfig``."""
    return {role: (cfg.price_per_mtok_in, cfg.price_per_mtok_out)
            for role in ("teacher", "student", "judge") if (cfg := getattr(config.endpoints, role)) is not None}


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
    # A file no run has opened since llm_calls.messages moved to llm_prompts (the report reads only):
    # the hash of the messages text, as the migration computes it.
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
               CASE WHEN a.stage = 'refined_cots' AND a.role = 'teacher' THEN 'no_reflection'
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


def _usd(prices: Prices | None, role: str, prompt: int, completion: int) -> float | None:
    price_in, price_out = (prices or {}).get(role, (None, None))
    if price_in is None and price_out is None:
        return None
    return (prompt * (price_in or 0.0) + completion * (price_out or 0.0)) / 1e6


def _money(value: float | None) -> str:
    return MISSING if value is None else f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


def _usage_section(usage: pl.DataFrame | None, prices: Prices | None) -> list[str]:
    if usage is None or usage.is_empty():
        return []
    usage = usage.with_columns(
        pl.struct("role", "prompt_tokens", "completion_tokens")
        .map_elements(lambda r: _usd(prices, r["role"], r["prompt_tokens"], r["completion_tokens"]),
                      return_dtype=pl.Float64).alias("cost_usd"))
    order = {s: i for i, s in enumerate(USAGE_STAGES)}
    usage = usage.sort(pl.col("stage").replace_strict(order, default=len(order), return_dtype=pl.Int64),
                       pl.col("detail"), "role", "model", nulls_last=True)

    def tokens(value: object) -> str:
        return MISSING if value is None else f"{int(value):,}"

    rows = [[f"`{r['stage']}`" + (f" `{r['detail']}`" if r["detail"] else ""), r["role"], f"`{r['model']}`",
             f"{r['calls']:,}", f"{r['errors']:,}", tokens(r["prompt_tokens"]), tokens(r["completion_tokens"]),
             tokens(r["reasoning_tokens"]), _money(r["cost_usd"])] for r in usage.iter_rows(named=True)]
    total_cost = usage["cost_usd"].drop_nulls()
    rows.append(["**total**", "", "", f"{int(usage['calls'].sum()):,}", f"{int(usage['errors'].sum()):,}",
                 tokens(usage["prompt_tokens"].sum()), tokens(usage["completion_tokens"].sum()),
                 tokens(usage["reasoning_tokens"].sum()) if usage["reasoning_tokens"].is_not_null().any() else MISSING,
                 _money(float(total_cost.sum())) if total_cost.len() else MISSING])
    variant_rows = []
    for variant, stages in SFT_DATA_STAGES.items():
        mine = usage.filter(pl.any_horizontal([
            (pl.col("stage") == stage) & (pl.col("detail") == detail if detail else pl.lit(True)) for stage, detail in stages
        ]))
        own_stage, own_detail = stages[-1]
        if mine.filter((pl.col("stage") == own_stage) & (pl.col("detail") == own_detail if own_detail else pl.lit(True))).is_empty():
            continue  # the variant's own stage did not run (a mode the profile skips)
        cost = mine["cost_usd"].drop_nulls()
        variant_rows.append([f"`{variant}`", f"{int(mine['calls'].sum()):,}", tokens(mine["prompt_tokens"].sum()),
                             tokens(mine["completion_tokens"].sum()), _money(float(cost.sum())) if cost.len() else MISSING])
    parts = [
        "## LLM calls, tokens and cost\n",
        "Every call in `orion.llm_calls` (each was sent once; re-runs answer from the cache), by the stage that "
        "made it and, for reflection and evaluation, the mode or variant. Reasoning tokens are part of the "
        "completion tokens. Cost: tokens times `[endpoints.<role>] price_per_mtok_in` / `price_per_mtok_out` of the "
        "profile the report was built with (— where none is set). Query: `orion sql sql/usage_cost.sql`.\n",
        _md_table(["stage", "role", "model", "calls", "errors", "prompt tokens", "completion tokens",
                   "reasoning tokens", "cost"], rows),
        "",
    ]
    if variant_rows:
        parts += [
            "What each variant's SFT data cost to generate: the teacher CoTs, the error exposure where the variant "
            "uses the student's errors, and its own reflection mode (a prompt `orion` and `no_error` share is counted "
            "under `no_error`; judge calls are left out).\n",
            _md_table(["SFT data of", "calls", "prompt tokens", "completion tokens", "cost"], variant_rows),
            "",
        ]
    return parts


# -- plots ---------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def _plot_accuracy(board: pl.DataFrame, path: Path) -> Path:
    benchmarks = [c for c in board.columns if c != "variant" and not c.endswith(("_se", "_delta", "_n_errors"))]
    variants = board["variant"].to_list()
    figure = _figure(max(6.0, 1.6 * len(benchmarks) + 2.5), 4.2)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(variants), 1)
    for i, record in enumerate(board.iter_rows(named=True)):
        xs, heights, errors = [], [], []
        for j, benchmark in enumerate(benchmarks):
            if record[benchmark] is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(100.0 * record[benchmark])
            errors.append(100.0 * (record[f"{benchmark}_se"] or 0.0))
        axes.bar(xs, heights, width=width, yerr=errors, capsize=3, label=record["variant"], color=f"C{i}")
    axes.set_xticks(range(len(benchmarks)), benchmarks)
    axes.set_ylabel("pass@1 (%)")
    axes.set_title("pass@1 per benchmark and variant (error bars: ± 1 SE)")
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", ncols=min(len(variants), 3))
    return _save(figure, path)


def _plot_cot_lengths(series: list[tuple[str, list[float]]], path: Path) -> Path:
    import numpy as np

    values = np.concatenate([np.asarray(v, dtype=float) for _, v in series])
    low, high = float(values.min()), float(values.max())
    largest = max(len(v) for _, v in series)
    n_bins = int(min(40, max(10, 2 * math.sqrt(largest))))
    bins = np.linspace(low, high if high > low else low + 1.0, n_bins + 1)
    figure = _figure(7.0, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    for i, (label, lengths) in enumerate(series):
        data = np.asarray(lengths, dtype=float)
        axes.hist(
            data,
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.8,
            color=f"C{i}",
            label=f"{label} (n={data.size}, median {np.median(data):.0f})",
        )
    axes.set_xlabel("CoT length (tokens)")
    axes.set_ylabel("density")
    axes.set_title("CoT lengths: teacher vs refined, by mode")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _plot_error_types(counts: pl.DataFrame, path: Path) -> Path:
    labels = counts["error_type"].to_list()
    heights = counts["count"].to_list()
    figure = _figure(max(5.0, 1.2 * len(labels) + 2.0), 3.8)
    axes = figure.add_subplot(1, 1, 1)
    bars = axes.bar(range(len(labels)), heights, color=[f"C{i}" for i in range(len(labels))])
    axes.bar_label(bars, labels=[str(h) for h in heights])
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel("student errors")
    axes.set_title("Student errors on the training problems, by type")
    axes.set_ylim(0, max(heights) * 1.15 + 0.5)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def _cot_length_series(
    teacher: pl.DataFrame | None, refined: pl.DataFrame | None, notes: list[str]
) -> list[tuple[str, list[float]]]:
    series: list[tuple[str, list[float]]] = []
    if teacher is None:
        notes.append(f"`{SCHEMA}.teacher_cots` does not exist: no teacher lengths in `{COT_LENGTHS_PNG}`.")
    elif "n_tokens" not in teacher.columns or teacher["n_tokens"].drop_nulls().is_empty():
        notes.append(f"`{SCHEMA}.teacher_cots` is empty: no teacher lengths in `{COT_LENGTHS_PNG}`.")
    else:
        series.append(("teacher", teacher["n_tokens"].drop_nulls().cast(pl.Float64).to_list()))
    if refined is None:
        notes.append(f"`{SCHEMA}.refined_cots` does not exist: no refined lengths in `{COT_LENGTHS_PNG}`.")
        return series
    if "n_tokens" not in refined.columns or "mode" not in refined.columns or refined.is_empty():
        notes.append(f"`{SCHEMA}.refined_cots` is empty: no refined lengths in `{COT_LENGTHS_PNG}`.")
        return series
    if "source" in refined.columns:
        fallbacks = refined.filter(pl.col("source") != "refined").height
        if fallbacks:
            notes.append(
                f"`{COT_LENGTHS_PNG}` leaves out {fallbacks} refined_cots row(s) that are not refinements "
                "(e.g. `teacher_fallback`: copies of teacher CoTs)."
            )
        refined = refined.filter(pl.col("source") == "refined")
    refined = refined.filter(pl.col("n_tokens").is_not_null())
    for mode in _ordered(refined["mode"].drop_nulls().unique().to_list(), REFINED_MODE_ORDER):
        lengths = refined.filter(pl.col("mode") == mode)["n_tokens"].cast(pl.Float64).to_list()
        if lengths:
            series.append((f"refined ({mode})", lengths))
    return series


# -- the report ----------------------------------------------------------------------------------


REFLECTION_MODES = ("orion", "no_error", "no_reflection")
# Above this share of teacher fallbacks, a mode's SFT data is mostly the teacher's: say so loudly.
FALLBACK_WARNING_SHARE = 0.5


def reflection_frame(teacher: pl.DataFrame | None, refined: pl.DataFrame | None) -> pl.DataFrame:
    """Per reflection mode: problems tried, refined, teacher fallbacks, dropped, and why tries failed
    (context overflows, unsplittable and truncated replies), from ``refined_cots``' rows and their
    ``failure_reasons``. A mode with no row did not run (e.g. no_reflection with a replay teacher)."""
    columns = ["mode", "problems", "refined", "teacher_fallback", "dropped", "fallback_share",
               "context_overflow", "unsplittable", "truncated"]
    if refined is None or refined.is_empty() or "mode" not in refined.columns:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.Int64) | {"mode": pl.Utf8, "fallback_share": pl.Float64})
    problems = teacher["problem_id"].n_unique() if teacher is not None and "problem_id" in teacher.columns else None
    if "failure_reasons" not in refined.columns:  # a file written before failures were kept
        refined = refined.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("failure_reasons"))
    reasons = pl.col("failure_reasons").fill_null([])
    frame = refined.group_by("mode").agg(
        (pl.col("source") == "refined").sum().alias("refined"),
        (pl.col("source") == "teacher_fallback").sum().alias("teacher_fallback"),
        pl.len().alias("rows"),
        reasons.list.contains("context_overflow").sum().alias("context_overflow"),
        reasons.list.eval(pl.element() == "unsplittable").list.sum().sum().alias("unsplittable"),
        reasons.list.eval(pl.element() == "truncated").list.sum().sum().alias("truncated"),
    )
    frame = frame.with_columns(pl.lit(problems if problems is not None else None).cast(pl.Int64).alias("problems"))
    frame = frame.with_columns(
        pl.coalesce("problems", "rows").alias("problems"),
    ).with_columns(
        (pl.col("problems") - pl.col("rows")).clip(lower_bound=0).alias("dropped"),
        (pl.col("teacher_fallback") / pl.col("problems")).alias("fallback_share"),
    )
    order = {m: i for i, m in enumerate(REFLECTION_MODES)}
    return frame.sort(pl.col("mode").replace_strict(order, default=len(order), return_dtype=pl.Int64), "mode").select(columns)


def _reflection_section(frame: pl.DataFrame) -> list[str]:
    if frame.is_empty():
        return []
    rows = [
        [f"`{r['mode']}`", str(r["problems"]), str(r["refined"]), str(r["teacher_fallback"]), str(r["dropped"]),
         _pct(r["fallback_share"]), str(r["context_overflow"]), str(r["unsplittable"]), str(r["truncated"])]
        for r in frame.iter_rows(named=True)
    ]
    parts = [
        "## Self-reflection per mode\n",
        _md_table(["mode", "problems", "refined", "teacher fallback", "dropped", "fallback %",
                   "prompt over context", "unsplittable replies", "truncated replies"], rows),
        "",
    ]
    ran = set(frame["mode"])
    missing = [m for m in REFLECTION_MODES if m not in ran]
    if missing:
        parts.append("Not run: " + ", ".join(f"`{m}`" for m in missing) + " (see the run's output for why).\n")
    for r in frame.iter_rows(named=True):
        if r["fallback_share"] is not None and r["fallback_share"] > FALLBACK_WARNING_SHARE:
            parts.append(
                f"**Warning:** {_pct(r['fallback_share'])}% of `{r['mode']}`'s SFT data is the teacher's own CoT "
                f"(no refinement verified): that variant is close to `teacher_sft`.\n"
            )
    return parts


def build_report(
    source: BaseStore | duckdb.DuckDBPyConnection | str | Path,
    out_dir: Path,
    *,
    now: datetime | None = None,
    prices: Prices | None = None,
) -> Report:
    """Write ``leaderboard.md`` and its plots into ``out_dir`` and return what was written.

    ``source`` is a :class:`Store`, the path of a DuckDB file, or an open connection whose current
    database holds schema ``orion``. Raises FileNotFoundError when the DuckDB file does not exist.
    ``prices`` (:func:`prices_of` a profile) turn the LLM usage table's tokens into dollars.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with _connection(source) as con:
        raw_scores = _read(con, "benchmark_scores")
        teacher = _read(con, "teacher_cots")
        refined = _read(con, "refined_cots")
        errors = _read(con, "student_errors")
        profiles = _profiles(con)
        cot_quality = _read_quality(con)
        usage = usage_frame(con)
    location = source.location if isinstance(source, BaseStore) else (Path(source) if isinstance(source, str | Path) else None)

    scores = _clean_scores(raw_scores, notes)
    board = leaderboard_frame(scores)

    # plots, each skipped with a note when its data is missing
    for stale in (ACCURACY_PNG, COT_LENGTHS_PNG, ERROR_TYPES_PNG):
        (out_dir / stale).unlink(missing_ok=True)  # a skipped plot must not leave an old file behind
    accuracy_png = cot_png = errors_png = None
    if board.height and any(board[c].is_not_null().any() for c in board.columns if c != "variant" and not c.endswith("_n_errors")):
        accuracy_png = _plot_accuracy(board, out_dir / ACCURACY_PNG)
    else:
        notes.append(f"`{ACCURACY_PNG}` skipped: no benchmark scores.")
    series = _cot_length_series(teacher, refined, notes)
    if series:
        cot_png = _plot_cot_lengths(series, out_dir / COT_LENGTHS_PNG)
    else:
        notes.append(f"`{COT_LENGTHS_PNG}` skipped: neither teacher nor refined CoTs have lengths.")
    if errors is None:
        notes.append(f"`{ERROR_TYPES_PNG}` skipped: `{SCHEMA}.student_errors` does not exist.")
    elif "error_type" not in errors.columns or errors.is_empty():
        notes.append(f"`{ERROR_TYPES_PNG}` skipped: `{SCHEMA}.student_errors` is empty.")
    else:
        counts = (
            errors.select(pl.col("error_type").fill_null("unknown"))
            .group_by("error_type")
            .len("count")
            .sort(["count", "error_type"], descending=[True, False])
        )
        errors_png = _plot_error_types(counts, out_dir / ERROR_TYPES_PNG)

    # markdown
    generated = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    lines = ["# ORION leaderboard", "", f"Generated {generated}" + (f" from `{location}`." if location else ".")]
    if profiles is not None and profiles.height:
        described = [
            f"`{r['profile_name'] or '?'}` (hash `{r['profile_hash'] or '?'}`)" for r in profiles.iter_rows(named=True)
        ]
        if len(described) == 1:
            lines.append(f"Profile: {described[0]}.")
        else:
            lines.append(f"Profiles (the scores mix {len(described)}, newest first): " + ", ".join(described) + ".")
    lines.append("")
    if scores.height:
        lines += _score_tables(scores, board)
    lines += _reflection_section(reflection_frame(teacher, refined))
    lines += _quality_section(cot_quality)
    lines += _usage_section(usage, prices)
    plots = [
        ("pass@1 per benchmark and variant", accuracy_png),
        ("CoT lengths: teacher vs refined", cot_png),
        ("Student error types", errors_png),
    ]
    if any(path for _, path in plots):
        lines.append("## Plots\n")
        for title, path in plots:
            if path is not None:
                lines.append(f"![{title}]({path.name})\n")
    if notes:
        lines.append("## Notes\n")
        lines += [f"- {note}" for note in notes]
        lines.append("")
    lines += [
        "## How this was made\n",
        "Each model variant (`base`: the student as it is; `teacher_sft`: fine-tuned on verified teacher CoTs; "
        "`orion`: on CoTs the student refined after seeing its own errors; `orion_no_error` and "
        "`orion_no_reflection`: the two ablations) answered every problem of each benchmark with k samples, "
        "and math-verify graded each sample against the gold answer (GSM-Hard by the rule named under the "
        "pass@1 table, integers for AIME); a sample whose endpoint call failed is not graded and counts in no "
        "score. pass@1 is the mean over problems of each problem's share of correct samples, with the "
        "standard error over problems; maj@k scores the most frequent answer, equivalent answers (`1/2`, "
        "`0.5`, `\\frac{1}{2}`) voting together (ties count as the expected "
        "accuracy of a random pick among the tied answers); pass@k is the unbiased estimator of Chen et al. "
        "(2021). Δ is a variant's pass@1 minus `teacher_sft`'s, in percentage points. The numbers come from "
        f"`{SCHEMA}.benchmark_scores`; walk them back to predictions, checkpoints and CoTs with "
        f"`orion sql \"SELECT * FROM {SCHEMA}.lineage_edges\"`, and rebuild this page with `orion report`.",
        "",
    ]
    markdown = "\n".join(lines)
    markdown_path = out_dir / MARKDOWN_NAME
    markdown_path.write_text(markdown, encoding="utf-8")
    return Report(
        out_dir=out_dir,
        markdown_path=markdown_path,
        markdown=markdown,
        leaderboard=board,
        accuracy_png=accuracy_png,
        cot_lengths_png=cot_png,
        error_types_png=errors_png,
        notes=notes,
    )
