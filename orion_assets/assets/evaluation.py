"""Evaluation: every model variant answers every benchmark; scores and the leaderboard report."""

import dataclasses

import dagster as dg
import polars as pl

from orion_assets.ids import content_id
from orion_assets.io.metadata import markdown_table, progress_logger, tracking_metadata
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, described, orion_asset
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import usage_metadata
from orion_assets.method.evaluation import report, scoring
from orion_assets.method.evaluation.predictions import error_share, predict
from orion_assets.method.partition_keys import parse_model_key
from orion_assets.tokens import batch_token_counter
from orion_assets.training.tracking import CheckpointIdentity, log_scores
from orion_assets.vocabulary import BENCHMARKS, GRADING_RULES

BENCHMARK_PREDICTIONS = TableSpec(
    "benchmark_predictions",
    {
        "prediction_id": col(pl.Utf8, "the prediction's id: a content hash of benchmark, model, problem and LLM call"),
        "benchmark": col(pl.Utf8, "the benchmark (the partition's first dimension)"),
        "student": col(pl.Utf8, "the student (with variant and seed: the model, the partition's second dimension)"),
        "variant": col(pl.Utf8, "the variant the checkpoint was trained on (base: untrained)"),
        "seed": col(pl.Int64, "the checkpoint's SFT seed"),
        "problem_id": col(pl.Utf8, "the benchmark problem"),
        "checkpoint_id": col(pl.Utf8, "the student_checkpoint that answered"),
        "sample_index": col(pl.Int64, "which of the k samples of the problem ([eval] k)"),
        "text": col(pl.Utf8, "the model's reply"),
        "extracted_answer": col(pl.Utf8, "the final answer the grader read from it (NULL: none, or the call failed)"),
        "correct": col(pl.Boolean, "the verdict of the primary rule (grading_rule); NULL: the call failed"),
        "grade_reason": col(pl.Utf8, "why the grader decided so (e.g. match:numeric, no_answer, timeout)"),
        "finish_reason": col(pl.Utf8, "how the reply ended: stop, length (the token limit), timeout (wrong) or error "
                                      "(a failed call, left out of the scores)"),
        "n_tokens": col(pl.Int64, "the reply's length in the checkpoint's tokens"),
        "llm_call_id": col(pl.Utf8, "the call in orion.llm_calls"),
        "error": col(pl.Utf8, "a failed or timed-out call's error (NULL otherwise)"),
        "grading_rule": col(pl.Utf8, "the primary grading rule ([eval] compat) that made correct"),
        **{f"correct_{rule}": col(pl.Boolean, f"the verdict of the {rule} rule (NULL: not asked for in [eval] compat "
                                              "or also_grade, or the call failed)")
           for rule in GRADING_RULES},
    },
    id="prediction_id",
    parents={"problem_id": "benchmark_problems", "checkpoint_id": "student_checkpoint", "llm_call_id": "llm_calls"},
    partition_by=("benchmark", "student", "variant", "seed"),
)
BENCHMARK_SCORES = TableSpec(
    "benchmark_scores",
    {
        "score_id": col(pl.Utf8, "the row's id: a content hash of benchmark, model, the predictions' materialization "
                                 "and the grading rule"),
        "benchmark": col(pl.Utf8, "the benchmark"),
        "student": col(pl.Utf8, "the student"),
        "variant": col(pl.Utf8, "the variant its checkpoint was trained on"),
        "seed": col(pl.Int64, "the checkpoint's SFT seed"),
        # scoring.Scores' fields, described (fractions in [0, 1]; a field added there without a description fails here)
        **described({f.name: pl.Int64 if f.type in (int, "int") else pl.Float64 for f in dataclasses.fields(scoring.Scores)}, {
            "n_problems": "problems scored (with at least one answered sample)",
            "k": "samples per problem ([eval] k)",
            "pass_at_1": "the mean over problems of the share of correct samples",
            "pass_at_1_se": "pass@1's standard error over problems",
            "maj_at_k": "the share of problems whose most frequent answer among k is correct",
            "pass_at_k": "unbiased pass@k (Chen et al. 2021), the mean over problems",
            "mean_tokens": "the answered samples' mean length in tokens",
            "truncation_rate": "the share of answered samples cut at the token limit",
            "boxed_rate": "the share of answered samples whose final answer is a non-empty \\boxed{}",
            "n_answered": "answered samples (a timed-out one among them, as wrong)",
            "n_errors": "samples whose call failed, left out of every score",
            "n_unanswered_problems": "problems left out because every call of theirs failed",
            "timeout_rate": "the share of answered samples that timed out",
        }, table="benchmark_scores"),
        "grading_rule": col(pl.Utf8, "the grading rule the numbers were made with"),
        "primary": col(pl.Boolean, "whether that is the primary rule ([eval] compat), the one the leaderboard shows"),
        "checkpoint_id": col(pl.Utf8, "the checkpoint scored"),
        "prediction_ids": col(pl.List(pl.Utf8), "the benchmark_predictions rows scored"),
    },
    id="score_id",
    parents={"prediction_ids": "benchmark_predictions"},
    partition_by=("benchmark", "student", "variant", "seed"),
)

def _benchmark_descriptions(b: str) -> dict[str, str]:
    """What the leaderboard's columns of benchmark ``b`` hold (report.benchmark_columns)."""
    against = {"delta": "teacher_sft", "delta_base": "base"}
    return {
        b: f"pass@1 on {b} under the primary rule, the mean over seeds (a fraction)",
        f"{b}_sd": "its standard deviation over seeds (NULL: one seed)",
        f"{b}_se": "the mean over seeds of pass@1's standard error over problems",
        f"{b}_seeds": "seeds scored",
        **{column: text for suffix, other in against.items() for column, text in {
            f"{b}_{suffix}": f"pass@1 minus {other}'s, paired by problem, in points",
            f"{b}_{suffix}_low": f"the low end of the 95% bootstrap interval of the difference with {other}, in points",
            f"{b}_{suffix}_high": f"the high end of that interval with {other}, in points",
            f"{b}_{suffix}_p": f"the sign test's p-value of the difference with {other}",
        }.items()},
        f"{b}_significant": "whether the interval of the difference with teacher_sft leaves out 0",
        f"{b}_n_common": "the problems the difference with teacher_sft was taken on",
        f"{b}_n_errors": "failed calls, summed over seeds",
        f"{b}_boxed": "the share of answered samples with a \\boxed{} final answer, the mean over seeds",
    }


LEADERBOARD = TableSpec(
    "leaderboard",
    {
        "student": col(pl.Utf8, "the student"),
        "variant": col(pl.Utf8, "the variant"),
        # report.LEADERBOARD_BUDGET and report.benchmark_columns, described
        **described(report.LEADERBOARD_BUDGET, {
            "examples": "SFT examples trained on, the mean over seeds",
            "train_tokens": "completion tokens trained on (tokens_seen where not recorded), the mean over seeds",
            "steps": "optimizer steps, the mean over seeds",
            "dropped": "the variant's cot_quality rows the quality rules dropped",
        }, table="leaderboard"),
        **described({column: dtype for b in BENCHMARKS for column, dtype in report.benchmark_columns(b).items()},
                    {c: d for b in BENCHMARKS for c, d in _benchmark_descriptions(b).items()}, table="leaderboard"),
        "score_ids": col(pl.List(pl.Utf8), "the benchmark_scores rows it summarizes"),
        "leaderboard_id": col(pl.Utf8, "the row's id: a content hash of student, variant and score_ids"),
    },
    id="leaderboard_id",
    parents={"score_ids": "benchmark_scores"},
)


@orion_asset(
    BENCHMARK_PREDICTIONS,
    group_name="evaluation",
    partitions="benchmark_model",
    ins={"benchmark_problems": "benchmark_of_pair", "student_checkpoint": "model_of_pair"},
    kinds={"transformers"},
    code_version="3",
)
def benchmark_predictions(
    context: dg.AssetExecutionContext, orion: OrionResource, benchmark_problems: Table, student_checkpoint: Table
) -> Rows:
    """``[eval] k`` graded answers of one variant's checkpoint to every problem of one benchmark, asked by a name
    that carries the checkpoint's id (docs/serving.md), graded by ``[eval] compat`` and ``also_grade``. A failed
    call is no answer, a timed-out reply a wrong one; past ``[eval] max_error_rate`` failed calls the partition
    fails after its rows are written, and a re-run sends only those calls (docs/scoring.md)."""
    keys = context.partition_key.keys_by_dimension
    benchmark, model = keys["benchmark"], keys["model"]
    student, variant, seed = parse_model_key(model)
    cfg = orion.config_for(student)
    checkpoints = student_checkpoint.frame()
    if checkpoints.height == 0:
        raise dg.Failure(f"no student_checkpoint for {model}: materialize it first")
    checkpoint = checkpoints.row(0, named=True)
    k = cfg.eval.k_overrides.get(benchmark, cfg.eval.k)
    endpoint = orion.endpoint(
        "student", local_model=checkpoint["path"], model_revision=checkpoint["checkpoint_id"],
        tokenizer=checkpoint["path"], student=student, checkpoint=checkpoint,
    )
    rows = benchmark_problems.frame().sort("problem_id").to_dicts()
    context.log.info(f"{benchmark} x {model}: {len(rows) * k} samples (k={k}) of checkpoint "
                     f"{checkpoint['checkpoint_id']} through {endpoint!r}")
    made = predict(
        endpoint, rows, benchmark=benchmark, model_key=model, identity={"student": student, "variant": variant,
        "seed": seed}, checkpoint_id=checkpoint["checkpoint_id"], k=k, params=sampling_params(
            cfg.endpoints.student, max_tokens=cfg.eval.max_tokens, temperature=cfg.eval.temperature,
            top_p=cfg.eval.top_p),
        overrides=cfg.prompts.model_dump(), rule=cfg.eval.compat, also_grade=cfg.eval.also_grade,
        count_tokens=batch_token_counter(checkpoint["path"]), run_id=context.run.run_id,
        progress=progress_logger(context, "eval"),
    )  # fmt: skip
    published = Rows(pl.DataFrame(made.records, schema=BENCHMARK_PREDICTIONS.columns), metadata={
        "benchmark": benchmark, "student": student, "variant": variant, "seed": seed, "k": k, **made.metadata(),
        "checkpoint_id": checkpoint["checkpoint_id"], "grading_rule": cfg.eval.compat,
        "also_grade": list(cfg.eval.also_grade), **usage_metadata(made.results, cfg.endpoints.student, "student")})
    if (why := made.too_many_errors(f"{benchmark} x {model}", cfg.eval.max_error_rate)) is not None:
        published.fail_after_write = dg.Failure(description=why, metadata={
            "n_errors": made.n_errors, "n_calls": len(made.results), "error_rate": made.error_share,
            "first_error": str(made.first_error())})
    if made.n_errors:
        context.log.warning(
            f"{benchmark} x {model}: {made.n_errors} of {len(made.results)} calls failed ({made.error_share:.1%}); they "
            f"are left out of the scores (at most [eval] max_error_rate = {cfg.eval.max_error_rate:.1%} may fail)")
    return published


@orion_asset(BENCHMARK_SCORES, group_name="evaluation", partitions="benchmark_model",
             kinds={"polars"}, code_version="4")
def benchmark_scores(context: dg.AssetExecutionContext, orion: OrionResource, benchmark_predictions: Table) -> Rows:
    """pass@1 (mean over k, with standard error), maj@k, unbiased pass@k, mean tokens and
    truncation rate of one variant on one benchmark, over the answered samples; the failed calls
    (``n_errors``) and the grading rule that made the numbers are stored beside them, one row per rule
    the predictions were graded by (``primary``: the ``[eval] compat`` one). Refuses predictions whose
    share of failed calls exceeds ``[eval] max_error_rate``."""
    keys = context.partition_key.keys_by_dimension
    benchmark, model = keys["benchmark"], keys["model"]
    student, variant, seed = parse_model_key(model)
    cfg = orion.config_for(student)
    predictions, up = benchmark_predictions.frame(), benchmark_predictions.upstream
    k = cfg.eval.k_overrides.get(benchmark, cfg.eval.k)
    if predictions.height == 0:
        raise dg.Failure(f"no benchmark_predictions for {benchmark} x {model}: materialize them first")
    by_rule = scoring.scores_by_rule(predictions, k, benchmark=benchmark)
    (rule, scores) = by_rule[0]
    share = error_share(scores.n_errors, predictions.height)
    if share > cfg.eval.max_error_rate:
        raise dg.Failure(
            f"{benchmark} x {model}: {scores.n_errors} of {predictions.height} predictions are failed calls "
            f"({share:.1%}, more than [eval] max_error_rate = {cfg.eval.max_error_rate:.1%}); re-materialize "
            "benchmark_predictions for this partition (it sends only the failed calls again)")
    rows = pl.DataFrame([{
        "score_id": content_id("score", benchmark, model, [u.materialization_id for u in up], graded_by),
        "benchmark": benchmark, "student": student, "variant": variant, "seed": seed, **graded.to_row(),
        "grading_rule": graded_by, "primary": graded_by == rule,
        "checkpoint_id": predictions["checkpoint_id"][0],
        "prediction_ids": sorted(predictions["prediction_id"].to_list()),
    } for graded_by, graded in by_rule], schema=BENCHMARK_SCORES.columns)
    # Into the checkpoint's tracker run ([tracking]), beside its SFT curves.
    identity = CheckpointIdentity.of(orion.active, student, variant, seed, rows["checkpoint_id"][0])
    tracked = log_scores(orion.tracker, identity, benchmark,
                         {graded_by or cfg.eval.compat: graded.to_row() for graded_by, graded in by_rule},
                         context.run.run_id)
    return Rows(
        rows,
        metadata={**tracking_metadata(tracked), **{k: v for k, v in scores.to_row().items() if v is not None},
                  **({"grading_rule": rule} if rule else {}),
                  **{f"{name}_{r}": value for r, graded in by_rule[1:]
                     for name, value in (("pass_at_1", graded.pass_at_1), ("pass_at_1_se", graded.pass_at_1_se))}},  # fmt: skip
    )


# The report also describes these tables; it reads them from the store itself, so they are dependencies, not inputs.
REPORTED_TABLES = ("teacher_cots", "refined_cots", "student_errors", "cot_quality")


# The report reads the predictions (paired deltas) and the checkpoints (budgets) from the store too.
REPORTED_TABLES = (*REPORTED_TABLES, "benchmark_predictions", "student_checkpoint")


@orion_asset(LEADERBOARD, group_name="evaluation", kinds={"markdown"}, code_version="5", deps=REPORTED_TABLES)
def leaderboard(context: dg.AssetExecutionContext, orion: OrionResource, benchmark_scores: Table) -> Rows:
    """Each student's variants x benchmarks: pass@1 as mean ± sd over seeds, paired deltas over ``teacher_sft``
    and ``base`` with their bootstrap intervals, and each variant's training budget, as a table here and a
    Markdown report with plots under ``$ORION_DATA_DIR/reports/``."""
    out_dir = orion.data_path / "reports"
    built = report.build_report(orion.store, out_dir, prices=report.prices_of(orion.active.config))
    scores = benchmark_scores.frame(["student", "variant", "score_id"])
    score_ids = scores.group_by("student", "variant").agg(pl.col("score_id").sort().alias("score_ids"))
    table = built.leaderboard.join(score_ids, on=["student", "variant"], how="left").with_columns(
        pl.struct("student", "variant", "score_ids")
        .map_elements(lambda r: content_id("leaderboard", r["student"], r["variant"], r["score_ids"]),
                      return_dtype=pl.Utf8)
        .alias("leaderboard_id")
    )
    plots = {f"plot_{path.stem}": dg.MetadataValue.md(report.png_markdown(path.read_bytes(), path.stem)) for path in built.pngs}
    # A benchmark no variant was scored on yet is a column of nulls.
    table = table.with_columns(
        [pl.lit(None, dtype=t).alias(c) for c, t in LEADERBOARD.columns.items() if c not in table.columns]
    )
    return Rows(
        LEADERBOARD.conform(table),
        metadata={"report": dg.MetadataValue.path(str(built.markdown_path)),
                  "leaderboard": dg.MetadataValue.md(markdown_table(built.leaderboard, rows=10)), **plots},
    )
