"""Error exposure: the student tries every training problem and its mistakes are recorded."""

import collections

import dagster as dg
import polars as pl

from orion_assets import prompts, reflection
from orion_assets.grading import grade_batch
from orion_assets.llm import GenerationRequest, sampling_params
from orion_assets.llm.usage import usage_metadata
from orion_assets.resources import OrionResource, progress_logger
from orion_assets.store import register_lineage
from orion_assets.text_stats import percentiles, token_counter

register_lineage("student_attempts", "attempt_id", "problem_id", "train_problems")
register_lineage("student_attempts", "attempt_id", "model_id", "student_base_model")
register_lineage("student_attempts", "attempt_id", "llm_call_id", "llm_calls")
register_lineage("student_errors", "error_id", "attempt_id", "student_attempts")

ATTEMPT_SCHEMA = {
    "attempt_id": pl.Utf8,
    "problem_id": pl.Utf8,
    "model_id": pl.Utf8,
    "sample_index": pl.Int64,
    "text": pl.Utf8,
    "extracted_answer": pl.Utf8,
    "answer_method": pl.Utf8,
    "correct": pl.Boolean,
    "error_type": pl.Utf8,
    "grade_reason": pl.Utf8,
    "finish_reason": pl.Utf8,
    "n_tokens": pl.Int64,
    "llm_call_id": pl.Utf8,
}


@dg.asset(
    group_name="exposure",
    deps=[dg.AssetDep("train_problems"), dg.AssetDep("student_base_model")],
    kinds={"duckdb", "transformers"},
    code_version="1",
)
def student_attempts(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """``[exposure] n`` graded samples of the base student on every training problem."""
    cfg = orion.active.config
    train, train_upstream = orion.read("train_problems")
    base, base_upstream = orion.read("student_base_model")
    model = base.row(0, named=True)
    params = sampling_params(
        cfg.endpoints.student, max_tokens=cfg.exposure.max_tokens, temperature=cfg.exposure.temperature
    )
    rows = train.to_dicts()
    owners = [row for row in rows for _ in range(cfg.exposure.n)]
    requests = [
        GenerationRequest(
            messages=prompts.messages(cfg.exposure.prompt, cfg.prompts.model_dump(), problem=row["problem"]),
            params=params,
            sample_index=index,
        )
        for row in rows
        for index in range(cfg.exposure.n)
    ]
    endpoint = orion.endpoint("student", local_model=model["path"], tokenizer=model["path"])
    context.log.info(f"exposure: {len(requests)} student samples through {endpoint!r}")
    results = endpoint.generate(requests, run_id=context.run.run_id, progress=progress_logger(context, "exposure"))
    verdicts = grade_batch([(r.answer, row["gold_answer"]) for r, row in zip(results, owners, strict=True)],
                           benchmark=[row["source"] for row in owners],
                           truncated=[r.finish_reason == "length" for r in results])
    count_tokens = token_counter(model["path"])
    records = [
        {
            "attempt_id": reflection.attempt_id(row["problem_id"], result.call_id),
            "problem_id": row["problem_id"],
            "model_id": model["model_id"],
            "sample_index": request.sample_index,
            "text": result.text,
            "extracted_answer": verdict.extracted,
            "answer_method": verdict.method,
            "correct": verdict.correct,
            "error_type": reflection.error_type(result, verdict),
            "grade_reason": verdict.reason,
            "finish_reason": result.finish_reason,
            "n_tokens": count_tokens(result.text or ""),
            "llm_call_id": result.call_id,
        }
        for request, result, verdict, row in zip(requests, results, verdicts, owners, strict=True)
    ]
    frame = pl.DataFrame(records, schema=ATTEMPT_SCHEMA)
    per_problem = frame.group_by("problem_id").agg((~pl.col("correct")).mean().alias("error_rate"))
    return orion.publish(
        context,
        frame,
        reads=[train_upstream, base_upstream],
        metadata={
            "attempts": frame.height,
            "accuracy": float(frame["correct"].mean()) if frame.height else 0.0,
            "error_types": dict(collections.Counter(t for t in frame["error_type"].to_list() if t)),
            "context_overflow": sum(r.overflow for r in results),
            "per_problem_error_rate": percentiles(per_problem["error_rate"], (0.1, 0.25, 0.5, 0.75, 0.9)),
            "problems_never_wrong": int((per_problem["error_rate"] == 0).sum()),
            "n_tokens_percentiles": percentiles(frame["n_tokens"]),
            **usage_metadata(results, cfg.endpoints.student, "student"),
        },
    )


@dg.asset(group_name="exposure", deps=[dg.AssetDep("student_attempts")], kinds={"duckdb"}, code_version="1")
def student_errors(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """The student's wrong, unanswered and truncated attempts: what self-reflection will look at."""
    attempts, upstream = orion.read("student_attempts")
    errors = attempts.filter(pl.col("error_type").is_in(list(reflection.ERROR_TYPES))).select(
        pl.col("attempt_id")
        .map_elements(lambda a: reflection.content_id("error", a), return_dtype=pl.Utf8)
        .alias("error_id"),
        "attempt_id",
        "problem_id",
        "error_type",
        "extracted_answer",
        "finish_reason",
    )
    return orion.publish(
        context,
        errors,
        reads=[upstream],
        metadata={
            "errors": errors.height,
            "problems_with_errors": errors["problem_id"].n_unique(),
            "by_type": dict(errors.group_by("error_type").len().iter_rows()),
        },
    )
