"""The student's base weights and the teacher's verified chains of thought."""

import dagster as dg
import polars as pl

from orion_assets.ids import content_id
from orion_assets.io.metadata import percentiles, progress_logger
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, orion_asset
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.method import problems as problem_sets
from orion_assets.method.sampling import ChunkProgress, Sample, sample_and_grade
from orion_assets.tokens import batch_token_counter
from orion_assets.training import student as models

STUDENT_BASE_MODEL = TableSpec(
    "student_base_model",
    {"model_id": pl.Utf8, "path": pl.Utf8, "config_hash": pl.Utf8, "parameters": pl.Int64, "vocab_size": pl.Int64,
     "eos_token": pl.Utf8, "source": pl.Utf8},
    id="model_id",
)


@orion_asset(STUDENT_BASE_MODEL, group_name="training", kinds={"transformers"}, code_version="1")
def student_base_model(context: dg.AssetExecutionContext, orion: OrionResource) -> Rows:
    """The student before any SFT: built tiny and random (tiny profile) or resolved from the Hub/disk."""
    cfg = orion.active.config
    spec = cfg.student_model
    if spec.source == "build_tiny":
        # The tokenizer learns the whole training pool's text (problems and worked solutions).
        texts: list[str] = []
        for source in cfg.data.train_sources:
            frame, _ = problem_sets.load_train_source(source)
            texts += frame["problem"].to_list() + frame["solution"].drop_nulls().to_list()
        built = models.build_tiny_student(texts, orion.data_path / "models", **spec.tiny.model_dump())
    else:
        if spec.name_or_path is None:
            raise ValueError("student_model.source = 'pretrained' needs student_model.name_or_path")
        built = models.resolve_pretrained(spec.name_or_path, spec.revision)
    context.log.info(f"student base model {built.path} ({built.parameters:,} parameters)")
    row = pl.DataFrame([{"model_id": built.config_hash, **built.to_json()}], schema=STUDENT_BASE_MODEL.columns)
    return Rows(
        row,
        metadata={
            "path": dg.MetadataValue.path(str(built.path)),
            "parameters": built.parameters,
            "vocab_size": built.vocab_size,
            "eos_token": built.eos_token,
            "config_hash": built.config_hash,
        },
    )


TEACHER_COTS = TableSpec(
    "teacher_cots",
    {
        "teacher_cot_id": pl.Utf8, "problem_id": pl.Utf8, "sample_index": pl.Int64, "cot": pl.Utf8,
        "has_thinking": pl.Boolean, "final_answer": pl.Utf8, "answer_method": pl.Utf8, "n_tokens": pl.Int64,
        "completion_tokens": pl.Int64, "prompt_tokens": pl.Int64, "finish_reason": pl.Utf8, "llm_call_id": pl.Utf8,
    },
    id="teacher_cot_id",
    parents={"problem_id": "train_problems", "llm_call_id": "llm_calls"},
)


@orion_asset(TEACHER_COTS, group_name="teacher", kinds={"polars"}, code_version="1")
def teacher_cots(
    context: dg.AssetExecutionContext, orion: OrionResource, train_problems: Table, student_base_model: Table
) -> Rows:
    """Teacher CoTs for every training problem, kept only when their final answer verifies."""
    cfg = orion.active.config
    base_path = student_base_model.first()["path"]
    endpoint = Metered(orion.endpoint("teacher", tokenizer=base_path))
    samples = cfg.teacher.samples
    total = train_problems.count() * samples
    context.log.info(f"teacher: {total} calls through {endpoint.inner!r}")
    progress = ChunkProgress(progress_logger(context, "teacher"), total)
    rejected = {"error": 0, "truncated": 0, "no_answer": 0, "wrong_answer": 0}
    tokens: list[int] = []
    thinking = [0]

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
            tokens.extend(frame["n_tokens"].to_list())
            thinking[0] += int(frame["has_thinking"].sum())
            yield frame

    def metadata() -> dict:
        kept = len(tokens)
        context.log.info(f"teacher: {kept} of {total} CoTs verified; rejected {rejected}")
        results = endpoint.results
        return {
            "calls": total,
            "cached_calls": sum(r.cached for r in results),
            "verified_rate": kept / total if total else 0.0,
            "rejected": rejected,
            "with_thinking": thinking[0],
            "timed_out": sum("timeout" in (r.error or "") for r in results),
            "n_tokens_percentiles": percentiles(pl.Series(tokens, dtype=pl.Int64)),
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
        "cot": result.cot,
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
