"""The quality gate: metrics for every candidate SFT CoT, and a blocking Great Expectations check."""

import json
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from orion_assets import gate, problems, prompts, quality
from orion_assets.llm import GenerationRequest, sampling_params
from orion_assets.profiles.schema import TRAINING_VARIANTS
from orion_assets.resources import OrionResource, progress_logger
from orion_assets.store import content_id, register_lineage
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
    code_version="1",
)
def cot_quality(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """Metrics of every candidate SFT CoT: tokens, steps, reflection markers, repetition,
    embedding coherence, benchmark contamination, and an LLM-judge score when a judge is set."""
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
    by_variant = {
        v: {"rows": int(g.height), "coherence_p50": percentiles(g["coherence"].drop_nulls(), (0.5,))["p50"]}
        for (v,), g in frame.group_by("variant")
    }
    return orion.publish(
        context,
        frame,
        reads=[teacher_up, refined_up, train_up, base_up],
        metadata={
            "by_variant": by_variant,
            "n_tokens_percentiles": percentiles(frame["n_tokens"]),
            "coherence_percentiles": percentiles(frame["coherence"].drop_nulls()),
            "contaminated": int(frame["contaminated"].sum()),
            "judge": cfg.endpoints.judge is not None,
        },
    )


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
    scores = [quality.parse_judge_reply(r.text or "") if r.ok else (None, None) for r in results]
    return [
        pl.Series("judge_coherence", [s[0] for s in scores], dtype=pl.Int64),
        pl.Series("judge_consistency", [s[1] for s in scores], dtype=pl.Int64),
    ]


@dg.asset_check(asset=cot_quality, blocking=True, description="Great Expectations suite on the candidate SFT CoTs")
def quality_gate(context: dg.AssetCheckExecutionContext, orion: OrionResource) -> dg.AssetCheckResult:
    """Answer verified, length in bounds and not truncated, coherent (mostly), no duplicate CoT
    within a variant, no benchmark contamination. Blocking: a failure stops SFT in this run, and
    the verdict is stored so that a later run of ``sft_dataset`` alone refuses the data too."""
    cfg = orion.active.config
    frame = orion.store.read("cot_quality")
    (checked,) = orion.upstream("cot_quality")
    result = gate.run_gate(frame, cfg.quality, id_column="cot_quality_id")
    metadata = result.to_metadata()
    orion.store.append(
        GATE_TABLE,
        pl.DataFrame(
            [
                {
                    "checked_materialization_id": checked.materialization_id,
                    "dagster_run_id": context.run.run_id,
                    "passed": result.passed,
                    "row_count": result.row_count,
                    "failed_expectations": json.dumps(result.failed),
                    "failing_ids": json.dumps(result.failing_ids),
                    "checked_at": datetime.now(UTC),
                }
            ]
        ),
    )
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"checked_materialization_id": checked.materialization_id, **metadata},
    )


def latest_gate_verdict(orion: OrionResource) -> tuple[bool, str]:
    """Whether the newest ``cot_quality`` materialization passed the gate, and why not."""
    (checked,) = orion.upstream("cot_quality")
    if checked.materialization_id is None:
        return False, "cot_quality has not been materialized"
    if not orion.store.table_exists(GATE_TABLE):
        return False, f"the quality gate never ran on cot_quality materialization {checked.materialization_id}"
    rows = orion.store.read(GATE_TABLE, {"checked_materialization_id": checked.materialization_id})
    if rows.height == 0:
        return False, f"the quality gate has not run on cot_quality materialization {checked.materialization_id}"
    latest = rows.sort("checked_at").row(-1, named=True)
    if not latest["passed"]:
        return False, (
            f"the quality gate failed on cot_quality materialization {checked.materialization_id} "
            f"(expectations {latest['failed_expectations']}, failing ids {latest['failing_ids'][:500]})"
        )
    return True, "passed"
