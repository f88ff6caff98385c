"""The quality gate: metrics for every candidate SFT CoT, and a blocking Great Expectations check."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from orion_assets.io.blueprint import blueprint
from orion_assets.io.metadata import progress_logger
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, described, orion_asset
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.method import problems
from orion_assets.method.quality import candidates, embedding, gate, metrics, verdicts

COT_QUALITY = TableSpec(
    "cot_quality",
    {
        "student": col(pl.Utf8, "the student the SFT data is for (the partition)"),
        "variant": col(pl.Utf8, "the training variant the CoT is a candidate for (teacher_sft, orion, ..., a baseline)"),
        "cot_table": col(pl.Utf8, "the table that holds the CoT's text: teacher_cots, refined_cots or baseline_cots"),
        "problem_id": col(pl.Utf8, "the training problem"),
        "teacher_cot_id": col(pl.Utf8, "the teacher CoT (teacher_sft's own, the one a rewrite or a baseline came "
                                       "from; NULL for rft)"),
        "refined_cot_id": col(pl.Utf8, "the refined_cots row (refined variants only)"),
        "baseline_cot_id": col(pl.Utf8, "the baseline_cots row (baselines only)"),
        "source": col(pl.Utf8, "where the text comes from: teacher, refined, teacher_fallback, or a baseline's "
                               "teacher_solution, teacher_cot or student_solution"),
        "verified": col(pl.Boolean, "whether the CoT's answer verified against the gold answer"),
        "truncated": col(pl.Boolean, "whether its generation stopped at the token limit (finish_reason length)"),
        "cot_quality_id": col(pl.Utf8, "the row's id: a content hash of student, variant, cot_table and the CoT's ids"),
        "cot_hash": col(pl.Utf8, "a content hash of the CoT's text (duplicates share it)"),
        **described(metrics.COT_METRICS_SCHEMA, {
            "n_tokens": "the CoT's length in the student's tokens (no special tokens)",
            "n_words": "its words (runs of word characters, lowercased)",
            "n_steps": "its reasoning steps: lines, then sentences within a line (docs/quality.md)",
            "reflection_markers": "reflection markers in it (\"wait\", \"let me check\", ...)",
            "reflection_density": "reflection markers per 100 words",
            "repeated_4gram_ratio": "(total - distinct) / total over its word 4-grams: near 1.0 for a loop",
            "coherence": "the mean cosine similarity of adjacent steps' sentence embeddings (NULL: fewer than 2 steps)",
        }, table="cot_quality"),
        "contaminated": col(pl.Boolean, "whether the CoT shares an n-gram with a benchmark problem ([data] "
                                        "decontamination_ngram words)"),
        "contaminated_with": col(pl.Utf8, "the benchmark problem it overlaps (its problem_id; NULL: none)"),
        "judge_coherence": col(pl.Int64, "the LLM judge's coherence score, 1-5 (NULL: no judge, or no score read)"),
        "judge_consistency": col(pl.Int64, "the LLM judge's logical-consistency score, 1-5 (NULL likewise)"),
        "teacher_similarity": col(pl.Float64, "the share of a refined CoT's word 4-grams found in the teacher CoT it "
                                              "rewrites: 1.0 for a copy (NULL: not a refined_cots row, or under 4 words)"),
        "drop_reasons": col(pl.List(pl.Utf8), "every rule the row breaks (unverified, too_short, truncated, "
                                              "contaminated, incoherent, duplicate, ...; docs/quality.md)"),
        "kept": col(pl.Boolean, "no drop reason: sft_dataset takes the row"),
    },
    id="cot_quality_id",
    parents={"teacher_cot_id": "teacher_cots", "refined_cot_id": "refined_cots", "baseline_cot_id": "baseline_cots",
             "problem_id": "train_problems"},
    partition_by=("student",),
)


# 7: baselines; teacher_sft draws on the teacher CoTs of every problem exposure reached (refined or not)
@orion_asset(COT_QUALITY, group_name="quality", partitions="student", kinds={"polars"}, code_version="7")
def cot_quality(
    context: dg.AssetExecutionContext,
    orion: OrionResource,
    teacher_cots: Table,
    refined_cots: Table,
    baseline_cots: Table,
    student_attempts: Table,
    train_problems: Table,
    student_base_model: Table,
) -> Rows:
    """Metrics of every candidate SFT CoT: tokens, steps, reflection markers, repetition,
    embedding coherence, benchmark contamination, similarity to the teacher CoT (refined rows),
    an LLM-judge score when a judge is set, and the per-row verdict: ``drop_reasons`` (empty =
    kept) and ``kept``, the rows ``sft_dataset`` takes (rules in :mod:`orion_assets.method.quality.rules`).

    Works in chunks of ``[data] chunk_size`` problems. A CoT repeated within a variant keeps its
    first copy: the cleanest in its chunk, and across chunks the one in the earlier chunk. The CoT
    text is not copied here: ``cot_table`` and its id name the row that holds it, and ``cot_hash``
    identifies it."""
    student = context.partition_key
    cfg = orion.config_for(student)
    from transformers import AutoTokenizer  # deferred: heavy

    tokenizer = AutoTokenizer.from_pretrained(student_base_model.first()["path"])
    embedder = embedding.load_embedder(cfg.quality.embedding_model, device="auto", backend=cfg.quality.embedding_backend)
    index = problems.ContaminationIndex.build(problems.all_benchmarks(), cfg.data.decontamination_ngram)
    judge = Metered(orion.endpoint("judge")) if cfg.endpoints.judge is not None else None
    read = candidates.QualityInputs(
        refined=lambda ids: refined_cots.rows_for("problem_id", ids),
        baseline=lambda ids: baseline_cots.rows_for("problem_id", ids),
        attempts=lambda ids: student_attempts.rows_for("problem_id", ids, ["problem_id", "finish_reason"]),
        problems=lambda ids: train_problems.column_map("problem_id", "problem", ids))
    quality = candidates.QualityChunks(
        read, student=student, cfg=cfg, columns=COT_QUALITY.columns, tokenizer=tokenizer, embedder=embedder,
        index=index, judge=judge, report=progress_logger(context, "judge"), run_id=context.run.run_id)
    return Rows(quality.chunks(teacher_cots.chunks("problem_id", cfg.data.chunk_size)), lambda: {
        **quality.summary(), "judge": judge is not None,
        **(usage_metadata(judge.results, cfg.endpoints.judge, "judge") if judge else {})})


@blueprint(dg.asset_check, asset=COT_QUALITY.name, partitions="student",
           description="Great Expectations suite per variant on the candidate SFT CoTs")
def quality_gate(context: dg.AssetCheckExecutionContext, orion: OrionResource, cot_quality: Table) -> dg.AssetCheckResult:
    """Gate each training variant of one student's ``cot_quality`` on dataset-level expectations (GX 1.x); the
    rules are in the README ("The quality gate"). The check fails when any variant fails, but does not block:
    each variant's verdict is stored in ``orion.quality_gate_results``, and ``sft_dataset`` and
    ``student_checkpoint`` of a variant that passed proceed while one that failed is refused with its reasons."""
    cfg = orion.config_for(context.partition_key) if context.has_partition_key else orion.active.config
    frame = cot_quality.frame()
    (checked,) = cot_quality.upstream
    result = gate.run_gate(frame, cfg.quality, id_column="cot_quality_id")
    metadata = result.to_metadata()
    checked_at = datetime.now(UTC)
    rows = [
        {"checked_materialization_id": checked.materialization_id, "dagster_run_id": context.run.run_id, **row,
         "checked_at": checked_at}
        for row in verdicts.verdict_rows(result)
    ]
    verdicts.append_verdicts(orion.store, pl.DataFrame(rows, schema=verdicts.GATE_SCHEMA))
    for verdict in result.verdicts:
        (context.log.info if verdict.passed else context.log.warning)(f"quality gate: {verdict.message}")
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"checked_materialization_id": checked.materialization_id, **metadata},
    )


