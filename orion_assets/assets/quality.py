"""The quality gate: metrics for every candidate SFT CoT, and a blocking Great Expectations check."""

import json
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from orion_assets import gate, problems, prompts, quality
from orion_assets.llm import GenerationRequest, sampling_params
from orion_assets.llm.usage import usage_metadata
from orion_assets.profiles.schema import TRAINING_VARIANTS
from orion_assets.resources import OrionResource, progress_logger
from orion_assets.store import SCHEMA, content_id, register_lineage
from orion_assets.text_stats import percentiles

register_lineage("cot_quality", "cot_quality_id", "teacher_cot_id", "teacher_cots")
register_lineage("cot_quality", "cot_quality_id", "refined_cot_id", "refined_cots")
register_lineage("cot_quality", "cot_quality_id", "problem_id", "train_problems")

GATE_TABLE = "quality_gate_results"
# The SFT data of each training variant: teacher CoTs, or the refined CoTs of one mode.
VARIANT_SOURCES = {"teacher_sft": None, "orion": "orion", "orion_no_error": "no_error", "orion_no_reflection": "no_reflection"}
assert set(VARIANT_SOURCES) == set(TRAINING_VARIANTS)


def candidates(teacher: pl.DataFrame, refined: pl.DataFrame) -> pl.DataFrame:
    """One row per (variant, CoT) that could become SFT data."""
    teacher_rows = teacher.select(
        pl.lit("teacher_sft").alias("variant"),
        pl.lit("teacher_cots").alias("cot_table"),
        "problem_id",
        "teacher_cot_id",
        pl.lit(None, dtype=pl.Utf8).alias("refined_cot_id"),
        pl.lit("teacher").alias("source"),
        "cot",
        pl.lit(True).alias("verified"),
        (pl.col("finish_reason") == "length").alias("truncated"),
    )
    mode_to_variant = {mode: variant for variant, mode in VARIANT_SOURCES.items() if mode}
    refined_rows = refined.select(
        pl.col("mode").replace_strict(mode_to_variant).alias("variant"),
        pl.lit("refined_cots").alias("cot_table"),
        "problem_id",
        "teacher_cot_id",
        "refined_cot_id",
        "source",
        "cot",
        "verified",
        (pl.col("finish_reason") == "length").alias("truncated"),
    )
    frame = pl.concat([teacher_rows, refined_rows])
    return frame.with_columns(
        pl.struct("variant", "cot_table", "teacher_cot_id", "refined_cot_id")
        .map_elements(lambda r: content_id("cot_quality", *r.values()), return_dtype=pl.Utf8)
        .alias("cot_quality_id"),
        pl.col("cot").map_elements(lambda c: content_id("cot", c), return_dtype=pl.Utf8).alias("cot_hash"),
    )


@dg.asset(
    group_name="quality",
    deps=[dg.AssetDep("teacher_cots"), dg.AssetDep("refined_cots"), dg.AssetDep("train_problems"), dg.AssetDep("student_base_model")],
    kinds={"duckdb", "polars"},
    code_version="2",
)
def cot_quality(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """Metrics of every candidate SFT CoT: tokens, steps, reflection markers, repetition,
    embedding coherence, benchmark contamination, similarity to the teacher CoT (refined rows),
    an LLM-judge score when a judge is set, and the per-row verdict: ``drop_reasons`` (empty =
    kept) and ``kept``, the rows ``sft_dataset`` takes (rules in :mod:`orion_assets.gate`)."""
    cfg = orion.active.config
    teacher, teacher_up = orion.read("teacher_cots")
    refined, refined_up = orion.read("refined_cots")
    train, train_up = orion.read("train_problems")
    base, base_up = orion.read("student_base_model")
    frame = candidates(teacher, refined)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base["path"][0])
    embedder = quality.load_embedder(cfg.quality.embedding_model, device="auto")
    metrics = quality.cot_metrics(frame["cot"].to_list(), tokenizer=tokenizer, embedder=embedder)
    index = problems.ContaminationIndex.build(problems.all_benchmarks(), cfg.data.decontamination_ngram)
    hits = [index.match(cot) for cot in frame["cot"]]
    frame = pl.concat([frame, metrics], how="horizontal").with_columns(
        pl.Series("contaminated", [h is not None for h in hits], dtype=pl.Boolean),
        pl.Series("contaminated_with", [h[1] if h else None for h in hits], dtype=pl.Utf8),
    )
    frame = frame.with_columns(_judge_scores(context, orion, frame, train))
    teacher_text = dict(teacher.select("teacher_cot_id", "cot").iter_rows())
    frame = frame.with_columns(
        pl.Series(
            "teacher_similarity",
            [
                quality.teacher_similarity(cot, teacher_text.get(tid)) if table == "refined_cots" else None
                for cot, tid, table in frame.select("cot", "teacher_cot_id", "cot_table").iter_rows()
            ],
            dtype=pl.Float64,
        )
    )
    frame = gate.row_drop_reasons(frame, cfg.quality, id_column="cot_quality_id")
    by_variant = {v: _variant_summary(g) for (v,), g in sorted(frame.group_by("variant"), key=lambda item: item[0])}
    return orion.publish(
        context,
        frame,
        reads=[teacher_up, refined_up, train_up, base_up],
        metadata={
            "by_variant": by_variant,
            "n_tokens_percentiles": percentiles(frame["n_tokens"]),
            "coherence_percentiles": percentiles(frame["coherence"].drop_nulls()),
            "contaminated": int(frame["contaminated"].sum()),
            "kept": int(frame["kept"].sum()),
            "dropped": int((~frame["kept"]).sum()),
            "dropped_by_reason": gate.reason_counts(frame.filter(~pl.col("kept"))),
            "judge": cfg.endpoints.judge is not None,
        },
    )


def _variant_summary(rows: pl.DataFrame) -> dict:
    """Rows, kept, drops by reason, median coherence and the teacher-similarity percentiles of
    the variant's true rewrites (``source == 'refined'``; teacher fallbacks are copies, 1.0)."""
    rewrites = rows.filter(pl.col("source") == "refined")["teacher_similarity"].drop_nulls()
    return {
        "rows": int(rows.height),
        "kept": int(rows["kept"].sum()),
        "dropped_by_reason": gate.reason_counts(rows.filter(~pl.col("kept"))),
        "coherence_p50": percentiles(rows["coherence"].drop_nulls(), (0.5,))["p50"],
        "teacher_similarity": percentiles(rewrites, (0.1, 0.5, 0.9)) | {"n": int(rewrites.len())},
    }


def _judge_scores(context, orion: OrionResource, frame: pl.DataFrame, train: pl.DataFrame) -> list[pl.Series]:
    """LLM-judge coherence and logical consistency (1-5) per CoT; nulls without a judge."""
    cfg = orion.active.config
    if cfg.endpoints.judge is None:
        return [pl.lit(None, dtype=pl.Int64).alias("judge_coherence"), pl.lit(None, dtype=pl.Int64).alias("judge_consistency")]
    problem_text = dict(train.select("problem_id", "problem").iter_rows())
    requests = [
        GenerationRequest(
            messages=prompts.messages("judge", cfg.prompts.model_dump(), problem=problem_text[pid], cot=cot),
            params=sampling_params(cfg.endpoints.judge),
        )
        for pid, cot in frame.select("problem_id", "cot").iter_rows()
    ]
    results = orion.endpoint("judge").generate(requests, run_id=context.run.run_id, progress=progress_logger(context, "judge"))
    context.add_asset_metadata(usage_metadata(results, cfg.endpoints.judge, "judge"))
    scores = [quality.parse_judge_reply(r.text or "") if r.ok else (None, None) for r in results]
    return [
        pl.Series("judge_coherence", [s[0] for s in scores], dtype=pl.Int64),
        pl.Series("judge_consistency", [s[1] for s in scores], dtype=pl.Int64),
    ]


@dg.asset_check(asset=cot_quality, blocking=True, description="Great Expectations suite per variant on the candidate SFT CoTs")
def quality_gate(context: dg.AssetCheckExecutionContext, orion: OrionResource) -> dg.AssetCheckResult:
    """Gate each training variant of ``cot_quality`` on dataset-level expectations (GX 1.x): drop
    rate at most ``[quality] max_drop_rate``, at least ``min_rows`` kept rows, no contaminated
    kept row, coherence above ``min_coherence`` for ``coherence_mostly`` of the candidates (see
    :mod:`orion_assets.gate`). Rows that break a per-row rule were already left out (``kept``).

    Every variant with candidate rows is gated; a variant without any (e.g. a reflection mode the
    profile does not run) gets no verdict, so its ``sft_dataset`` is refused, but it does not fail
    the check for the others.

    Blocking, and a check is one verdict: it fails when ANY variant fails, which stops every
    downstream asset in this run (Dagster blocks on the check, not on a partition). The verdict
    of each variant is stored in ``orion.quality_gate_results`` (one row per variant and check
    run), and :func:`latest_gate_verdict` answers per variant: a later run of ``sft_dataset`` or
    ``student_checkpoint`` for a variant that passed proceeds, one for a variant that failed is
    refused with the failed expectations, counts and a few failing ids."""
    cfg = orion.active.config
    frame = orion.store.read("cot_quality")
    (checked,) = orion.upstream("cot_quality")
    result = gate.run_gate(frame, cfg.quality, id_column="cot_quality_id")
    metadata = result.to_metadata()
    checked_at = datetime.now(UTC)
    rows = [
        {"checked_materialization_id": checked.materialization_id, "dagster_run_id": context.run.run_id, **row,
         "checked_at": checked_at}
        for row in gate.verdict_rows(result)
    ]
    _append_verdicts(orion, pl.DataFrame(rows, schema=GATE_SCHEMA))
    for verdict in result.verdicts:
        (context.log.info if verdict.passed else context.log.warning)(f"quality gate: {verdict.message}")
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"checked_materialization_id": checked.materialization_id, **metadata},
    )


GATE_SCHEMA = {
    "checked_materialization_id": pl.Utf8, "dagster_run_id": pl.Utf8, "variant": pl.Utf8, "passed": pl.Boolean,
    "row_count": pl.Int64, "kept_count": pl.Int64, "dropped_count": pl.Int64, "dropped_by_reason": pl.Utf8,
    "failed_expectations": pl.Utf8, "failing_ids": pl.Utf8, "message": pl.Utf8,
    "checked_at": pl.Datetime("us", "UTC"),
}
# Columns a quality_gate_results table written before per-variant verdicts lacks.
_ADDED_GATE_COLUMNS = {"variant": "VARCHAR", "kept_count": "BIGINT", "dropped_count": "BIGINT",
                       "dropped_by_reason": "VARCHAR", "message": "VARCHAR"}


def _append_verdicts(orion: OrionResource, rows: pl.DataFrame) -> None:
    """Append verdict rows, first adding the per-variant columns to a table from an older version."""
    store = orion.store
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


def latest_gate_verdict(orion: OrionResource, variant: str | None = None) -> tuple[bool, str]:
    """Whether the newest ``cot_quality`` materialization passed the gate for ``variant``, and why not.

    The answer comes from the latest check run on that materialization: ``variant`` passed when
    its row there passed (a row without a variant, written before verdicts were per variant,
    stands for every variant). ``variant=None`` asks whether every gated variant passed.
    """
    (checked,) = orion.upstream("cot_quality")
    if checked.materialization_id is None:
        return False, "cot_quality has not been materialized"
    if not orion.store.table_exists(GATE_TABLE):
        return False, f"the quality gate never ran on cot_quality materialization {checked.materialization_id}"
    rows = orion.store.read(GATE_TABLE, {"checked_materialization_id": checked.materialization_id})
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
        else:  # a verdict from before per-variant rows
            reasons.append(f"expectations {row['failed_expectations']}, failing ids {row['failing_ids'][:500]}")
    scope = f"for variant {variant} " if variant is not None else ""
    return False, f"the quality gate failed {scope}on {where}: " + " | ".join(reasons)
