"""Error exposure: the student tries every training problem and its mistakes are recorded."""

import collections

import dagster as dg
import polars as pl

from orion_assets.ids import content_id
from orion_assets.io.metadata import percentiles, progress_logger
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, orion_asset
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.method import exposure
from orion_assets.method.sampling import ChunkProgress
from orion_assets.tokens import batch_token_counter
from orion_assets.vocabulary import ERROR_TYPES

STUDENT_ATTEMPTS = TableSpec(
    "student_attempts",
    {
        "attempt_id": col(pl.Utf8, "the attempt's id: a content hash of its problem and its LLM call"),
        "student": col(pl.Utf8, "the student that tried (the partition)"),
        "problem_id": col(pl.Utf8, "the training problem tried"),
        "model_id": col(pl.Utf8, "the base model that answered (student_base_model)"),
        "sample_index": col(pl.Int64, "which of the student's samples of the problem ([exposure] n)"),
        "text": col(pl.Utf8, "the student's reply"),
        "extracted_answer": col(pl.Utf8, "the final answer read from the reply (NULL: none found)"),
        "answer_method": col(pl.Utf8, "how it was read: boxed, fbox, hash (####), answer_is or last_number"),
        "correct": col(pl.Boolean, "whether the answer matches the gold answer (the strict rule)"),
        "error_type": col(pl.Utf8, "the student's error: wrong_answer, no_answer, truncated or repetition_loop; "
                                   "endpoint_error for a failed call; NULL when it solved the problem"),
        "grade_reason": col(pl.Utf8, "why the grader decided so (e.g. match:numeric, mismatch:math_verify, no_answer)"),
        "finish_reason": col(pl.Utf8, "how the reply ended: stop, length (the token limit) or error"),
        "n_tokens": col(pl.Int64, "the reply's length in the student's tokens"),
        "llm_call_id": col(pl.Utf8, "the call in orion.llm_calls"),
    },
    id="attempt_id",
    parents={"problem_id": "train_problems", "model_id": "student_base_model", "llm_call_id": "llm_calls"},
    partition_by=("student",),
)
STUDENT_ERRORS = TableSpec(
    "student_errors",
    {
        "error_id": col(pl.Utf8, "the error's id: a content hash of its attempt"),
        "attempt_id": col(pl.Utf8, "the wrong attempt (student_attempts)"),
        "student": col(pl.Utf8, "the student (the partition)"),
        "problem_id": col(pl.Utf8, "the training problem"),
        "error_type": col(pl.Utf8, "wrong_answer, no_answer, truncated or repetition_loop"),
        "extracted_answer": col(pl.Utf8, "the wrong answer the attempt gave (NULL: none found)"),
        "finish_reason": col(pl.Utf8, "how the attempt's reply ended: stop or length"),
    },
    id="error_id",
    parents={"attempt_id": "student_attempts"},
    partition_by=("student",),
)


@orion_asset(STUDENT_ATTEMPTS, group_name="exposure", partitions="student", kinds={"transformers"},
             code_version="3")
def student_attempts(
    context: dg.AssetExecutionContext, orion: OrionResource, train_problems: Table, student_base_model: Table
) -> Rows:
    """``[exposure] n`` graded samples of one base student on every training problem."""
    student = context.partition_key
    cfg = orion.config_for(student)
    model = student_base_model.first()
    endpoint = Metered(orion.endpoint("student", local_model=model["path"], tokenizer=model["path"], student=student))
    total = train_problems.count() * cfg.exposure.n
    context.log.info(f"exposure: {total} student samples through {endpoint.inner!r}")
    stats = exposure.ExposureStats()
    records = exposure.attempt_chunks(
        train_problems.chunks("problem_id", cfg.data.chunk_size), endpoint, student=student,
        model_id=model["model_id"], n=cfg.exposure.n, prompt=cfg.exposure.prompt, overrides=cfg.prompts.model_dump(),
        params=sampling_params(cfg.endpoints.student, max_tokens=cfg.exposure.max_tokens,
                               temperature=cfg.exposure.temperature),
        count_tokens=batch_token_counter(model["path"]), stats=stats, run_id=context.run.run_id,
        progress_for=ChunkProgress(progress_logger(context, "exposure"), total).chunk)

    def metadata() -> dict:
        rates = pl.Series(list(stats.wrong_share.values()), dtype=pl.Float64)
        return {
            "attempts": len(stats.correct), "accuracy": sum(stats.correct) / len(stats.correct) if stats.correct else 0.0,
            "error_types": dict(stats.error_types), "context_overflow": sum(r.overflow for r in endpoint.results),
            "per_problem_error_rate": percentiles(rates, (0.1, 0.25, 0.5, 0.75, 0.9)),
            "problems_never_wrong": int((rates == 0).sum()),
            "n_tokens_percentiles": percentiles(pl.Series(stats.tokens, dtype=pl.Int64)),
            **usage_metadata(endpoint.results, cfg.endpoints.student, "student"),
        }

    return Rows((pl.DataFrame(chunk, schema=STUDENT_ATTEMPTS.columns) for chunk in records), metadata)


@orion_asset(STUDENT_ERRORS, group_name="exposure", partitions="student", code_version="2")
def student_errors(context: dg.AssetExecutionContext, orion: OrionResource, student_attempts: Table) -> Rows:
    """The student's wrong, unanswered, truncated and looping attempts (``ERROR_TYPES``): what self-reflection will
    look at."""
    cfg = orion.active.config
    by_type: collections.Counter[str] = collections.Counter()
    problems: set[str] = set()
    columns = ["attempt_id", "student", "problem_id", "error_type", "extracted_answer", "finish_reason"]

    def chunks():
        for attempts in student_attempts.chunks("problem_id", cfg.data.chunk_size, columns=columns):
            errors = attempts.filter(pl.col("error_type").is_in(list(ERROR_TYPES))).select(
                pl.col("attempt_id")
                .map_elements(lambda a: content_id("error", a), return_dtype=pl.Utf8)
                .alias("error_id"),
                *columns,
            )
            by_type.update(errors["error_type"].to_list())
            problems.update(errors["problem_id"].to_list())
            yield errors

    return Rows(chunks(), lambda: {"errors": sum(by_type.values()), "problems_with_errors": len(problems),
                                   "by_type": dict(by_type)})
