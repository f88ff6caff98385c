"""The teacher's verified chains of thought."""

import dagster as dg
import polars as pl

from orion_assets.io.metadata import percentiles, progress_logger
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, orion_asset
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.method import teacher
from orion_assets.method.sampling import ChunkProgress
from orion_assets.tokens import batch_token_counter

TEACHER_COTS = TableSpec(
    "teacher_cots",
    {
        "teacher_cot_id": col(pl.Utf8, "the CoT's id: a content hash of its problem and its LLM call"),
        "problem_id": col(pl.Utf8, "the training problem it solves"),
        "sample_index": col(pl.Int64, "which of the teacher's samples of the problem ([teacher] samples)"),
        "cot": col(pl.Utf8, "the whole chain of thought: the teacher's thinking (if any), then its solution"),
        "solution": col(pl.Utf8, "the solution alone: the reply after the thinking (short_cot's CoT)"),
        "has_thinking": col(pl.Boolean, "whether the reply had separate thinking (a reasoning model's)"),
        "final_answer": col(pl.Utf8, "the answer extracted from the solution, which verified against the gold answer"),
        "answer_method": col(pl.Utf8, "how it was extracted: boxed, fbox, hash (####), answer_is or last_number"),
        "n_tokens": col(pl.Int64, "the CoT's length in tokens of the first student's tokenizer"),
        "completion_tokens": col(pl.Int64, "the reply's tokens as the teacher's endpoint counted them"),
        "prompt_tokens": col(pl.Int64, "the prompt's tokens as the teacher's endpoint counted them"),
        "finish_reason": col(pl.Utf8, "how the reply ended: stop (a reply cut at the token limit, or failed, is not kept)"),
        "llm_call_id": col(pl.Utf8, "the call in orion.llm_calls"),
    },
    id="teacher_cot_id",
    parents={"problem_id": "train_problems", "llm_call_id": "llm_calls"},
)


# 2: solution
@orion_asset(TEACHER_COTS, group_name="teacher", kinds={"polars"}, code_version="2")
def teacher_cots(
    context: dg.AssetExecutionContext, orion: OrionResource, train_problems: Table, student_base_model: Table
) -> Rows:
    """Teacher CoTs for every training problem, kept only when their final answer verifies: generated once and
    shared by every student (their lengths are counted with the first student's tokenizer)."""
    cfg = orion.active.config
    base_path = student_base_model.filter(student=cfg.all_students[0].name).first()["path"]
    endpoint = Metered(orion.endpoint("teacher", tokenizer=base_path))
    total = train_problems.count() * cfg.teacher.samples
    context.log.info(f"teacher: {total} calls through {endpoint.inner!r}")
    stats = teacher.TeacherStats()
    records = teacher.teacher_chunks(
        train_problems.chunks("problem_id", cfg.data.chunk_size), endpoint, samples=cfg.teacher.samples,
        prompt=cfg.teacher.prompt, overrides=cfg.prompts.model_dump(), params=sampling_params(cfg.endpoints.teacher),
        count_tokens=batch_token_counter(base_path), stats=stats, run_id=context.run.run_id,
        progress_for=ChunkProgress(progress_logger(context, "teacher"), total).chunk)

    def metadata() -> dict:
        kept, results = len(stats.n_tokens), endpoint.results
        context.log.info(f"teacher: {kept} of {total} CoTs verified; rejected {stats.rejected}")
        return {
            "calls": total, "cached_calls": sum(r.cached for r in results),
            "verified_rate": kept / total if total else 0.0, "rejected": stats.rejected,
            "with_thinking": stats.with_thinking, "timed_out": sum("timeout" in (r.error or "") for r in results),
            "n_tokens_percentiles": percentiles(pl.Series(stats.n_tokens, dtype=pl.Int64)),
            "total_prompt_tokens": sum(r.prompt_tokens or 0 for r in results),
            "total_completion_tokens": sum(r.completion_tokens or 0 for r in results),
            **usage_metadata(results, cfg.endpoints.teacher, "teacher"),
        }

    return Rows((pl.DataFrame(chunk, schema=TEACHER_COTS.columns) for chunk in records), metadata)
