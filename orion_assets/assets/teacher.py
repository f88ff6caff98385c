"""The teacher's verified chains of thought."""

import dagster as dg
import polars as pl

from orion_assets.ids import content_id
from orion_assets.io.metadata import percentiles, progress_logger
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, orion_asset
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.method.sampling import ChunkProgress, Sample, sample_and_grade
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
    samples = cfg.teacher.samples
    total = train_problems.count() * samples
    context.log.info(f"teacher: {total} calls through {endpoint.inner!r}")
    progress = ChunkProgress(progress_logger(context, "teacher"), total)
    rejected = {"error": 0, "truncated": 0, "no_answer": 0, "wrong_answer": 0}
    kept: list[pl.DataFrame] = []  # each chunk's n_tokens and has_thinking, for the metadata

    def chunks():
        for problems_chunk in train_problems.chunks("problem_id", cfg.data.chunk_size):
            drawn = sample_and_grade(
                endpoint, problems_chunk.to_dicts(), n=samples, prompt=cfg.teacher.prompt,
                overrides=cfg.prompts.model_dump(), params=sampling_params(cfg.endpoints.teacher),
                count_tokens=batch_token_counter(base_path), tokens_of=lambda r: r.cot, replay=True,
                run_id=context.run.run_id, progress=progress.chunk(),
            )
            records = []
            for sample in drawn:
                # The final answer is the one after the thinking: a boxed guess while thinking never counts.
                reason = _rejection(sample.result.finish_reason, sample.verdict)
                if reason is not None:
                    rejected[reason] += 1
                    continue
                records.append(_cot_row(sample))
            frame = pl.DataFrame(records, schema=TEACHER_COTS.columns)
            kept.append(frame.select("n_tokens", "has_thinking"))
            yield frame

    def metadata() -> dict:
        verified = pl.concat(kept) if kept else TEACHER_COTS.empty().select("n_tokens", "has_thinking")
        context.log.info(f"teacher: {verified.height} of {total} CoTs verified; rejected {rejected}")
        results = endpoint.results
        return {
            "calls": total,
            "cached_calls": sum(r.cached for r in results),
            "verified_rate": verified.height / total if total else 0.0,
            "rejected": rejected,
            "with_thinking": int(verified["has_thinking"].sum()),
            "timed_out": sum("timeout" in (r.error or "") for r in results),
            "n_tokens_percentiles": percentiles(verified["n_tokens"]),
            "total_prompt_tokens": sum(r.prompt_tokens or 0 for r in results),
            "total_completion_tokens": sum(r.completion_tokens or 0 for r in results),
            **usage_metadata(results, cfg.endpoints.teacher, "teacher"),
        }

    return Rows(chunks(), metadata)


def _cot_row(sample: Sample) -> dict:
    result = sample.result
    return {
        "teacher_cot_id": _cot_id(sample.row["problem_id"], result.call_id),
        "problem_id": sample.row["problem_id"],
        "sample_index": sample.sample_index,
        "cot": result.cot,  # the thinking, then the solution
        "solution": result.answer,  # the solution alone: the reply after the thinking (short_cot's CoT)
        "has_thinking": result.thinking is not None,
        "final_answer": sample.verdict.extracted,
        "answer_method": sample.verdict.method,
        "n_tokens": sample.n_tokens,
        "completion_tokens": result.completion_tokens,
        "prompt_tokens": result.prompt_tokens,
        "finish_reason": result.finish_reason,
        "llm_call_id": result.call_id,
    }


def _cot_id(problem_id: str, call_id: str) -> str:
    return content_id("teacher_cot", problem_id, call_id)


def _rejection(finish_reason: str, verdict) -> str | None:
    """Why a generated CoT cannot be used (None: it can)."""
    if finish_reason == "error":
        return "error"
    if finish_reason == "length":
        return "truncated"
    if verdict.extracted is None:
        return "no_answer"
    if not verdict.correct:
        return "wrong_answer"
    return None
