"""Evaluation: every model variant answers every benchmark; scores and the leaderboard report."""

import dataclasses

import dagster as dg
import polars as pl

from orion_assets.ids import content_id
from orion_assets.io.metadata import markdown_table, progress_logger
from orion_assets.io.partitions import benchmark_model_partitions, benchmark_of_pair, model_of_pair, parse_model_key
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, orion_asset
from orion_assets.io.tracking import checkpoint_identity, tracker_of, tracking_metadata
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import usage_metadata
from orion_assets.method.evaluation import report, scoring
from orion_assets.method.sampling import sample_and_grade
from orion_assets.tokens import batch_token_counter
from orion_assets.training.tracking import log_scores
from orion_assets.vocabulary import BENCHMARKS, GRADING_RULES

BENCHMARK_PREDICTIONS = TableSpec(
    "benchmark_predictions",
    {
        "prediction_id": pl.Utf8, "benchmark": pl.Utf8, "student": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64,
        "problem_id": pl.Utf8,
        "checkpoint_id": pl.Utf8, "sample_index": pl.Int64, "text": pl.Utf8, "extracted_answer": pl.Utf8,
        "correct": pl.Boolean, "grade_reason": pl.Utf8, "finish_reason": pl.Utf8, "n_tokens": pl.Int64,
        "llm_call_id": pl.Utf8, "error": pl.Utf8, "grading_rule": pl.Utf8,
        **{f"correct_{rule}": pl.Boolean for rule in GRADING_RULES},  # null: the rule was not asked for
    },
    id="prediction_id",
    parents={"problem_id": "benchmark_problems", "checkpoint_id": "student_checkpoint", "llm_call_id": "llm_calls"},
    partition_by=("benchmark", "student", "variant", "seed"),
)
BENCHMARK_SCORES = TableSpec(
    "benchmark_scores",
    {"score_id": pl.Utf8, "benchmark": pl.Utf8, "student": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64,
     **{f.name: pl.Int64 if f.type in (int, "int") else pl.Float64 for f in dataclasses.fields(scoring.Scores)},
     "grading_rule": pl.Utf8, "primary": pl.Boolean, "checkpoint_id": pl.Utf8, "prediction_ids": pl.List(pl.Utf8)},
    id="score_id",
    parents={"prediction_ids": "benchmark_predictions"},
    partition_by=("benchmark", "student", "variant", "seed"),
)

LEADERBOARD = TableSpec(
    "leaderboard",
    {
        "student": pl.Utf8,
        "variant": pl.Utf8,
        **report.LEADERBOARD_BUDGET,
        **{column: dtype for b in BENCHMARKS for column, dtype in report.benchmark_columns(b).items()},
        "score_ids": pl.List(pl.Utf8),
        "leaderboard_id": pl.Utf8,
    },
    id="leaderboard_id",
    parents={"score_ids": "benchmark_scores"},
)


def graded_rules(predictions: pl.DataFrame) -> list[tuple[str | None, str]]:
    """``(rule, correctness column)`` of each rule the predictions were graded by, the primary one first
    (``correct``, named by the ``grading_rule`` column; None in tables older than that column)."""
    rules = predictions["grading_rule"].drop_nulls().unique().to_list() if "grading_rule" in predictions.columns else []
    primary = rules[0] if len(rules) == 1 else None
    answered = predictions.filter(pl.col("correct").is_not_null())
    others = [(rule, f"correct_{rule}") for rule in GRADING_RULES if rule != primary
              and f"correct_{rule}" in answered.columns and answered[f"correct_{rule}"].null_count() < answered.height]
    return [(primary, "correct"), *others]


def error_share(n_errors: int, n_calls: int) -> float:
    return n_errors / n_calls if n_calls else 0.0


@orion_asset(
    BENCHMARK_PREDICTIONS,
    group_name="evaluation",
    partitions_def=benchmark_model_partitions,
    ins={
        "benchmark_problems": dg.AssetIn(partition_mapping=benchmark_of_pair),
        "student_checkpoint": dg.AssetIn(partition_mapping=model_of_pair),
    },
    kinds={"transformers"},
    code_version="3",
)
def benchmark_predictions(
    context: dg.AssetExecutionContext, orion: OrionResource, benchmark_problems: Table, student_checkpoint: Table
) -> Rows:
    """``[eval] k`` graded answers of one variant's checkpoint to every problem of one benchmark.

    With the ``hf`` backend the checkpoint (base weights plus LoRA adapter) is loaded locally;
    with ``openai`` the request names the checkpoint (``<variant>-<checkpoint id[:12]>``), on a server the
    pipeline starts and loads it into (``[endpoints.student] serve``) or one that must list it
    (``--lora-modules <name>=<checkpoint path>``; refused otherwise, with that command). The checkpoint's
    id is also the calls' ``model_revision``: a retrained variant is asked again, never answered from the
    cache of the weights before.

    ``correct`` is the verdict of the ``[eval] compat`` rule (``grading_rule``); ``correct_<rule>``
    that of each rule graded (the primary one and ``[eval] also_grade``), null for the others.

    A call that failed at the endpoint is not a wrong answer: its row is kept with
    ``finish_reason`` "error", ``correct`` null and the error text in ``error``, and scores leave it
    out. A reply that ran past the endpoint's ``timeout_s`` is the model's (too long) answer: its
    row has ``finish_reason`` "timeout" and ``correct`` false, and it counts as wrong. When
    the share of failed calls exceeds ``[eval] max_error_rate`` (default 0) the partition fails,
    *after* its rows are written (nothing computed is lost, and the failed rows say what went
    wrong); re-materializing it sends only the failed calls again, since the call cache keeps
    every answer and retries errors.
    """
    keys = context.partition_key.keys_by_dimension
    benchmark, model = keys["benchmark"], keys["model"]
    student, variant, seed = parse_model_key(model)
    cfg = orion.config_for(student)
    checkpoints = student_checkpoint.frame()
    if checkpoints.height == 0:
        raise dg.Failure(f"no student_checkpoint for {model}: materialize it first")
    checkpoint = checkpoints.row(0, named=True)
    k = cfg.eval.k_overrides.get(benchmark, cfg.eval.k)
    params = sampling_params(
        cfg.endpoints.student, max_tokens=cfg.eval.max_tokens, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p
    )
    endpoint = orion.endpoint(
        "student", local_model=checkpoint["path"], model_revision=checkpoint["checkpoint_id"],
        tokenizer=checkpoint["path"], student=student, checkpoint=checkpoint,
    )
    rows = benchmark_problems.frame().sort("problem_id").to_dicts()
    context.log.info(
        f"{benchmark} x {model}: {len(rows) * k} samples (k={k}) of checkpoint {checkpoint['checkpoint_id']} "
        f"through {endpoint!r}"
    )
    samples = sample_and_grade(
        endpoint, rows, n=k, prompt="solve", overrides=cfg.prompts.model_dump(), params=params,
        count_tokens=batch_token_counter(checkpoint["path"]), benchmark=benchmark,
        rule=cfg.eval.compat, also_grade=cfg.eval.also_grade, grade_failed=False, run_id=context.run.run_id,
        progress=progress_logger(context, "eval"),
    )
    rule = cfg.eval.compat
    graded_rules_asked = {rule, *cfg.eval.also_grade}
    results = [s.result for s in samples]
    frame = pl.DataFrame(
        [
            {
                "prediction_id": content_id("prediction", benchmark, model, s.row["problem_id"], s.result.call_id),
                "benchmark": benchmark, "student": student, "variant": variant, "seed": seed,
                "problem_id": s.row["problem_id"],
                "checkpoint_id": checkpoint["checkpoint_id"], "sample_index": s.sample_index,
                "text": s.result.text, "n_tokens": s.n_tokens, "llm_call_id": s.result.call_id, "grading_rule": rule,
                **scoring.prediction_outcome(s.result, s.verdict),
                # a timed-out reply is wrong under every rule graded (docs/scoring.md)
                **{f"correct_{r}": s.by_rule[r].correct if r in s.by_rule
                   else False if s.result.timed_out and r in graded_rules_asked else None for r in GRADING_RULES},
            }
            for s in samples
        ],
        schema=BENCHMARK_PREDICTIONS.columns,
    )
    n_errors = int((frame["finish_reason"] == scoring.ERROR_FINISH_REASON).sum())
    n_timeouts = int((frame["finish_reason"] == scoring.TIMEOUT_FINISH_REASON).sum())
    share = error_share(n_errors, len(results))
    graded_correct = frame["correct"].drop_nulls()
    published = Rows(
        frame,
        metadata={"benchmark": benchmark, "student": student, "variant": variant, "seed": seed, "k": k,
                  "samples": frame.height,
                  "checkpoint_id": checkpoint["checkpoint_id"], "grading_rule": rule,
                  "also_grade": list(cfg.eval.also_grade),
                  "n_errors": n_errors, "error_rate": share, "n_timeouts": n_timeouts,
                  **usage_metadata(results, cfg.endpoints.student, "student"),
                  "accuracy": float(graded_correct.mean()) if graded_correct.len() else 0.0},  # fmt: skip
    )
    if share > cfg.eval.max_error_rate:
        first = next(r.error for r in results if not r.ok and not r.timed_out)
        published.fail_after_write = dg.Failure(
            description=(
                f"{benchmark} x {model}: {n_errors} of {len(results)} calls failed ({share:.1%}, more than "
                f"[eval] max_error_rate = {cfg.eval.max_error_rate:.1%}); first error: {first}. The predictions are "
                f"written (failed calls with finish_reason 'error'), but not scored. Re-materializing this partition "
                f"sends only the {n_errors} failed calls again: the call cache keeps every answer and retries errors."
            ),
            metadata={"n_errors": n_errors, "n_calls": len(results), "error_rate": share, "first_error": str(first)},
        )
    if n_errors:
        context.log.warning(
            f"{benchmark} x {model}: {n_errors} of {len(results)} calls failed ({share:.1%}); they are left out "
            f"of the scores (at most [eval] max_error_rate = {cfg.eval.max_error_rate:.1%} may fail)"
        )
    return published


@orion_asset(BENCHMARK_SCORES, group_name="evaluation", partitions_def=benchmark_model_partitions,
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
    predictions = benchmark_predictions.frame()
    up = benchmark_predictions.upstream
    k = cfg.eval.k_overrides.get(benchmark, cfg.eval.k)
    if predictions.height == 0:
        raise dg.Failure(f"no benchmark_predictions for {benchmark} x {model}: materialize them first")
    scores = scoring.score_predictions(predictions, k, benchmark=benchmark)
    share = error_share(scores.n_errors, predictions.height)
    if share > cfg.eval.max_error_rate:
        raise dg.Failure(
            f"{benchmark} x {model}: {scores.n_errors} of {predictions.height} predictions are failed calls "
            f"({share:.1%}, more than [eval] max_error_rate = {cfg.eval.max_error_rate:.1%}); re-materialize "
            "benchmark_predictions for this partition (it sends only the failed calls again)"
        )
    # Written by benchmark_predictions from the profile it graded with (absent in older tables).
    (rule, _), *others = graded_rules(predictions)
    by_rule = [(rule, scores), *((r, scoring.score_predictions(predictions.with_columns(pl.col(column).alias("correct")),
                                                               k, benchmark=benchmark)) for r, column in others)]
    rows = pl.DataFrame([{
        "score_id": content_id("score", benchmark, model, [u.materialization_id for u in up], graded_by),
        "benchmark": benchmark, "student": student, "variant": variant, "seed": seed, **graded.to_row(),
        "grading_rule": graded_by, "primary": graded_by == rule,
        "checkpoint_id": predictions["checkpoint_id"][0],
        "prediction_ids": sorted(predictions["prediction_id"].to_list()),
    } for graded_by, graded in by_rule], schema=BENCHMARK_SCORES.columns)
    # Into the checkpoint's tracker run ([tracking]), beside its SFT curves.
    identity = checkpoint_identity(orion, student, variant, seed, rows["checkpoint_id"][0])
    tracked = log_scores(tracker_of(orion), identity, benchmark,
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
