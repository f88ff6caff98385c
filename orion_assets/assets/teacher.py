"""The student's base weights and the teacher's verified chains of thought."""

import dagster as dg
import polars as pl

from orion_assets import models, problems, prompts
from orion_assets.grading import grade_batch
from orion_assets.llm import GenerationRequest, sampling_params
from orion_assets.llm.usage import usage_metadata
from orion_assets.resources import OrionResource, progress_logger
from orion_assets.store import content_id, register_lineage
from orion_assets.text_stats import percentiles, token_counter

register_lineage("teacher_cots", "teacher_cot_id", "problem_id", "train_problems")
register_lineage("teacher_cots", "teacher_cot_id", "llm_call_id", "llm_calls")


@dg.asset(group_name="training", kinds={"transformers", "duckdb"}, code_version="1")
def student_base_model(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """The student before any SFT: built tiny and random (tiny profile) or resolved from the Hub/disk."""
    cfg = orion.active.config
    spec = cfg.student_model
    if spec.source == "build_tiny":
        # The tokenizer learns the whole training pool's text (problems and worked solutions).
        texts: list[str] = []
        for source in cfg.data.train_sources:
            frame, _ = problems.load_train_source(source)
            texts += frame["problem"].to_list() + frame["solution"].drop_nulls().to_list()
        built = models.build_tiny_student(texts, orion.data_path / "models", **spec.tiny.model_dump())
    else:
        if spec.name_or_path is None:
            raise ValueError("student_model.source = 'pretrained' needs student_model.name_or_path")
        built = models.resolve_pretrained(spec.name_or_path, spec.revision)
    context.log.info(f"student base model {built.path} ({built.parameters:,} parameters)")
    row = pl.DataFrame([{"model_id": built.config_hash, **built.to_json()}])
    return orion.publish(
        context,
        row,
        metadata={
            "path": dg.MetadataValue.path(str(built.path)),
            "parameters": built.parameters,
            "vocab_size": built.vocab_size,
            "eos_token": built.eos_token,
            "config_hash": built.config_hash,
        },
    )


@dg.asset(
    group_name="teacher",
    deps=[dg.AssetDep("train_problems"), dg.AssetDep("student_base_model")],
    kinds={"duckdb", "polars"},
    code_version="1",
)
def teacher_cots(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """Teacher CoTs for every training problem, kept only when their final answer verifies."""
    cfg = orion.active.config
    train, train_upstream = orion.read("train_problems")
    base, base_upstream = orion.read("student_base_model")
    endpoint_cfg = cfg.endpoints.teacher
    params = sampling_params(endpoint_cfg)
    rows = train.to_dicts()
    requests = [
        GenerationRequest(
            messages=prompts.messages(cfg.teacher.prompt, cfg.prompts.model_dump(), problem=row["problem"]),
            params=params,
            sample_index=index,
            replay_row=row,
        )
        for row in rows
        for index in range(cfg.teacher.samples)
    ]
    owners = [row for row in rows for _ in range(cfg.teacher.samples)]
    endpoint = orion.endpoint("teacher", tokenizer=base["path"][0])
    context.log.info(f"teacher: {len(requests)} calls through {endpoint!r}")
    results = endpoint.generate(requests, run_id=context.run.run_id, progress=progress_logger(context, "teacher"))

    # The final answer is the one after the thinking: a boxed guess while thinking never counts.
    verdicts = grade_batch([(r.answer, row["gold_answer"]) for r, row in zip(results, owners, strict=True)],
                           benchmark=[row["source"] for row in owners],
                           truncated=[r.finish_reason == "length" for r in results])
    count_tokens = token_counter(base["path"][0])
    records, rejected = [], {"error": 0, "truncated": 0, "no_answer": 0, "wrong_answer": 0}
    for request, result, verdict, row in zip(requests, results, verdicts, owners, strict=True):
        reason = _rejection(result.finish_reason, verdict)
        if reason is not None:
            rejected[reason] += 1
            continue
        records.append(
            {
                "teacher_cot_id": _cot_id(row["problem_id"], result.call_id),
                "problem_id": row["problem_id"],
                "sample_index": request.sample_index,
                "cot": result.cot,
                "has_thinking": result.thinking is not None,
                "final_answer": verdict.extracted,
                "answer_method": verdict.method,
                "n_tokens": count_tokens(result.cot),
                "completion_tokens": result.completion_tokens,
                "prompt_tokens": result.prompt_tokens,
                "finish_reason": result.finish_reason,
                "llm_call_id": result.call_id,
            }
        )
    frame = pl.DataFrame(records, schema=TEACHER_COT_SCHEMA)
    total = len(requests)
    context.log.info(f"teacher: {frame.height} of {total} CoTs verified; rejected {rejected}")
    return orion.publish(
        context,
        frame,
        reads=[train_upstream, base_upstream],
        metadata={
            "calls": total,
            "cached_calls": sum(r.cached for r in results),
            "verified_rate": frame.height / total if total else 0.0,
            "rejected": rejected,
            "with_thinking": int(frame["has_thinking"].sum()) if frame.height else 0,
            "timed_out": sum("timeout" in (r.error or "") for r in results),
            "n_tokens_percentiles": percentiles(frame["n_tokens"]),
            "total_prompt_tokens": sum(r.prompt_tokens or 0 for r in results),
            "total_completion_tokens": sum(r.completion_tokens or 0 for r in results),
            **usage_metadata(results, endpoint_cfg, "teacher"),
        },
    )


TEACHER_COT_SCHEMA = {
    "teacher_cot_id": pl.Utf8,
    "problem_id": pl.Utf8,
    "sample_index": pl.Int64,
    "cot": pl.Utf8,
    "has_thinking": pl.Boolean,
    "final_answer": pl.Utf8,
    "answer_method": pl.Utf8,
    "n_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "prompt_tokens": pl.Int64,
    "finish_reason": pl.Utf8,
    "llm_call_id": pl.Utf8,
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
