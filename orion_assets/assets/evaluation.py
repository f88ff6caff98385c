"""Evaluation: every model variant answers every benchmark; scores and the leaderboard report."""

import base64

import dagster as dg
import polars as pl

from orion_assets import prompts, report, scoring
from orion_assets.grading import Verdict, grade_batch
from orion_assets.llm import GenerationRequest, sampling_params
from orion_assets.llm.usage import usage_metadata
from orion_assets.partitions import benchmark_variant_partitions
from orion_assets.resources import OrionResource, markdown_table, progress_logger
from orion_assets.store import content_id, register_lineage
from orion_assets.text_stats import token_counter

register_lineage("benchmark_predictions", "prediction_id", "problem_id", "benchmark_problems")
register_lineage("benchmark_predictions", "prediction_id", "checkpoint_id", "student_checkpoint")
register_lineage("benchmark_predictions", "prediction_id", "llm_call_id", "llm_calls")
register_lineage("benchmark_scores", "score_id", "prediction_ids", "benchmark_predictions")
register_lineage("leaderboard", "leaderboard_id", "score_ids", "benchmark_scores")

PREDICTION_SCHEMA = {
    "prediction_id": pl.Utf8, "benchmark": pl.Utf8, "variant": pl.Utf8, "problem_id": pl.Utf8,
    "checkpoint_id": pl.Utf8, "sample_index": pl.Int64, "text": pl.Utf8, "extracted_answer": pl.Utf8,
    "correct": pl.Boolean, "grade_reason": pl.Utf8, "finish_reason": pl.Utf8, "n_tokens": pl.Int64,
    "llm_call_id": pl.Utf8, "error": pl.Utf8, "grading_rule": pl.Utf8,
}
DEFAULT_GRADING_RULE = "default"


def grading_rule(benchmark: str, gsm_hard_rule: str) -> str:
    """The rule that grades ``benchmark``: ``[eval] gsm_hard_rule`` for GSM-Hard, else "default"."""
    return gsm_hard_rule if benchmark == "gsm_hard" else DEFAULT_GRADING_RULE


def error_share(n_errors: int, n_calls: int) -> float:
    return n_errors / n_calls if n_calls else 0.0


@dg.asset(
    group_name="evaluation",
    partitions_def=benchmark_variant_partitions,
    deps=[
        dg.AssetDep("benchmark_problems", partition_mapping=dg.MultiToSingleDimensionPartitionMapping("benchmark")),
        dg.AssetDep("student_checkpoint", partition_mapping=dg.MultiToSingleDimensionPartitionMapping("variant")),
    ],
    kinds={"transformers", "duckdb"},
    code_version="2",
)
def benchmark_predictions(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """``[eval] k`` graded answers of one variant's checkpoint to every problem of one benchmark.

    With the ``hf`` backend the checkpoint (base weights plus LoRA adapter) is loaded locally;
    with ``openai`` the request names the variant, for a vLLM server started with
    ``--enable-lora --lora-modules <variant>=<checkpoint path> ...``. Either way the checkpoint's
    id is the calls' ``model_revision``: a retrained variant served under the same name is asked
    again, never answered from the cache of the weights before.

    A call that failed at the endpoint is not a wrong answer: its row is kept with
    ``finish_reason`` "error", ``correct`` null and the error text in ``error``, and scores leave it
    out. When the share of failed calls exceeds ``[eval] max_error_rate`` the partition fails,
    *after* its rows are written (nothing computed is lost, and the failed rows say what went
    wrong); re-materializing it sends only the failed calls again, since the call cache keeps
    every answer and retries errors.
    """
    keys = context.partition_key.keys_by_dimension
    benchmark, variant = keys["benchmark"], keys["variant"]
    cfg = orion.active.config
    problems, problems_up = orion.read("benchmark_problems", {"benchmark": benchmark}, partition_key=benchmark)
    checkpoints, checkpoint_up = orion.read("student_checkpoint", {"variant": variant}, partition_key=variant)
    if checkpoints.height == 0:
        raise dg.Failure(f"no student_checkpoint for variant {variant}: materialize it first")
    checkpoint = checkpoints.row(0, named=True)
    k = cfg.eval.k_overrides.get(benchmark, cfg.eval.k)
    params = sampling_params(
        cfg.endpoints.student, max_tokens=cfg.eval.max_tokens, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p
    )
    rows = problems.sort("problem_id").to_dicts()
    owners = [row for row in rows for _ in range(k)]
    overrides = cfg.prompts.model_dump()
    requests = [
        GenerationRequest(messages=prompts.messages("solve", overrides, problem=row["problem"]), params=params, sample_index=i)
        for row in rows
        for i in range(k)
    ]
    served_name = None if variant == "base" else variant
    endpoint = orion.endpoint(
        "student", local_model=checkpoint["path"], served_model=served_name, model_revision=checkpoint["checkpoint_id"],
        tokenizer=checkpoint["path"],
    )
    context.log.info(
        f"{benchmark} x {variant}: {len(requests)} samples (k={k}) of checkpoint {checkpoint['checkpoint_id']} "
        f"through {endpoint!r}"
    )
    results = endpoint.generate(requests, run_id=context.run.run_id, progress=progress_logger(context, "eval"))
    rule = grading_rule(benchmark, cfg.eval.gsm_hard_rule)
    answered = [i for i, result in enumerate(results) if result.ok]
    graded = grade_batch(
        [(results[i].answer, owners[i]["gold_answer"]) for i in answered],
        benchmark=benchmark,
        gsm_hard_rule=cfg.eval.gsm_hard_rule,
        truncated=[results[i].finish_reason == "length" for i in answered],
    )
    verdicts: list[Verdict | None] = [None] * len(results)
    for i, verdict in zip(answered, graded, strict=True):
        verdicts[i] = verdict
    count_tokens = token_counter(checkpoint["path"])
    frame = pl.DataFrame(
        [
            {
                "prediction_id": content_id("prediction", benchmark, variant, row["problem_id"], result.call_id),
                "benchmark": benchmark, "variant": variant, "problem_id": row["problem_id"],
                "checkpoint_id": checkpoint["checkpoint_id"], "sample_index": request.sample_index,
                "text": result.text,
                "extracted_answer": verdict.extracted if verdict else None,
                "correct": verdict.correct if verdict else None,
                "grade_reason": verdict.reason if verdict else None,
                "finish_reason": result.finish_reason,
                "n_tokens": count_tokens(result.text or "") if verdict else None,
                "llm_call_id": result.call_id, "error": None if verdict else result.error or "failed call",
                "grading_rule": rule,
            }
            for request, result, verdict, row in zip(requests, results, verdicts, owners, strict=True)
        ],
        schema=PREDICTION_SCHEMA,
    )
    n_errors = len(results) - len(answered)
    share = error_share(n_errors, len(results))
    graded_correct = frame["correct"].drop_nulls()
    published = orion.publish(
        context,
        frame,
        replace_where={"benchmark": benchmark, "variant": variant},
        reads=[problems_up, checkpoint_up],
        metadata={"benchmark": benchmark, "variant": variant, "k": k, "samples": frame.height,
                  "checkpoint_id": checkpoint["checkpoint_id"], "grading_rule": rule,
                  "n_errors": n_errors, "error_rate": share, **usage_metadata(results, cfg.endpoints.student, "student"),
                  "accuracy": float(graded_correct.mean()) if graded_correct.len() else 0.0},  # fmt: skip
    )
    if share > cfg.eval.max_error_rate:
        first = next(r.error for r in results if not r.ok)
        raise dg.Failure(
            description=(
                f"{benchmark} x {variant}: {n_errors} of {len(results)} calls failed ({share:.1%}, more than "
                f"[eval] max_error_rate = {cfg.eval.max_error_rate:.1%}); first error: {first}. The predictions are "
                f"written (failed calls with finish_reason 'error'), but not scored. Re-materializing this partition "
                f"sends only the {n_errors} failed calls again: the call cache keeps every answer and retries errors."
            ),
            metadata={"n_errors": n_errors, "n_calls": len(results), "error_rate": share, "first_error": str(first)},
        )
    if n_errors:
        context.log.warning(
            f"{benchmark} x {variant}: {n_errors} of {len(results)} calls failed ({share:.1%}); they are left out "
            f"of the scores (at most [eval] max_error_rate = {cfg.eval.max_error_rate:.1%} may fail)"
        )
    return published


@dg.asset(
    group_name="evaluation",
    partitions_def=benchmark_variant_partitions,
    deps=[dg.AssetDep("benchmark_predictions")],
    kinds={"duckdb", "polars"},
    code_version="2",
)
def benchmark_scores(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """pass@1 (mean over k, with standard error), maj@k, unbiased pass@k, mean tokens and
    truncation rate of one variant on one benchmark, over the answered samples; the failed calls
    (``n_errors``) and the grading rule that made the numbers are stored beside them. Refuses
    predictions whose share of failed calls exceeds ``[eval] max_error_rate``."""
    keys = context.partition_key.keys_by_dimension
    benchmark, variant = keys["benchmark"], keys["variant"]
    cfg = orion.active.config
    predictions, up = orion.read("benchmark_predictions", {"benchmark": benchmark, "variant": variant},
                                 partition_key=str(context.partition_key))
    k = cfg.eval.k_overrides.get(benchmark, cfg.eval.k)
    if predictions.height == 0:
        raise dg.Failure(f"no benchmark_predictions for {benchmark} x {variant}: materialize them first")
    scores = scoring.score_predictions(predictions, k, benchmark=benchmark)
    share = error_share(scores.n_errors, predictions.height)
    if share > cfg.eval.max_error_rate:
        raise dg.Failure(
            f"{benchmark} x {variant}: {scores.n_errors} of {predictions.height} predictions are failed calls "
            f"({share:.1%}, more than [eval] max_error_rate = {cfg.eval.max_error_rate:.1%}); re-materialize "
            "benchmark_predictions for this partition (it sends only the failed calls again)"
        )
    # Written by benchmark_predictions from the profile it graded with (absent in older tables).
    rules = predictions["grading_rule"].drop_nulls().unique().to_list() if "grading_rule" in predictions.columns else []
    rule = rules[0] if len(rules) == 1 else None
    row = pl.DataFrame([{
        "score_id": content_id("score", benchmark, variant, [u.materialization_id for u in up]),
        "benchmark": benchmark, "variant": variant, **scores.to_row(),
        "grading_rule": rule,
        "checkpoint_id": predictions["checkpoint_id"][0],
        "prediction_ids": sorted(predictions["prediction_id"].to_list()),
    }], schema_overrides={"grading_rule": pl.Utf8})
    return orion.publish(
        context, row, replace_where={"benchmark": benchmark, "variant": variant}, reads=[up],
        metadata={**{k: v for k, v in scores.to_row().items() if v is not None},
                  **({"grading_rule": rule} if rule else {})},  # fmt: skip
    )


@dg.asset(group_name="evaluation", deps=[dg.AssetDep("benchmark_scores")], kinds={"duckdb", "markdown"}, code_version="2")
def leaderboard(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """Variants x benchmarks with each variant's delta over ``teacher_sft``, as a table here and a
    Markdown report with plots under ``$ORION_DATA_DIR/reports/``."""
    out_dir = orion.data_path / "reports"
    built = report.build_report(orion.store, out_dir, prices=report.prices_of(orion.active.config))
    scores, up = orion.read("benchmark_scores")
    score_ids = scores.group_by("variant").agg(pl.col("score_id").sort().alias("score_ids"))
    table = built.leaderboard.join(score_ids, on="variant", how="left").with_columns(
        pl.struct("variant", "score_ids")
        .map_elements(lambda r: content_id("leaderboard", r["variant"], r["score_ids"]), return_dtype=pl.Utf8)
        .alias("leaderboard_id")
    )
    plots = {
        f"plot_{path.stem}": dg.MetadataValue.md(
            f"![{path.stem}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
        )
        for path in (built.accuracy_png, built.cot_lengths_png, built.error_types_png)
        if path is not None
    }
    return orion.publish(
        context, table, reads=[up],
        metadata={"report": dg.MetadataValue.path(str(built.markdown_path)),
                  "leaderboard": dg.MetadataValue.md(markdown_table(built.leaderboard, rows=10)), **plots},
    )
