"""Self-reflection: CoTs rewritten in light of the student's own errors, in three modes."""

import dagster as dg
import polars as pl

from orion_assets.io.metadata import percentiles, progress_logger
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, orion_asset
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.method import refinement, variants
from orion_assets.method.sampling import ChunkProgress
from orion_assets.tokens import batch_token_counter, load_tokenizer
from orion_assets.vocabulary import MODES

REFINED_COTS = TableSpec(
    "refined_cots",
    {
        "refined_cot_id": col(pl.Utf8, "the row's id: a content hash of student, mode, problem, teacher CoT, source and text"),
        "student": col(pl.Utf8, "the student whose errors were shown (the partition)"),
        "problem_id": col(pl.Utf8, "the training problem"),
        "teacher_cot_id": col(pl.Utf8, "the teacher CoT rewritten"),
        "error_attempt_ids": col(pl.List(pl.Utf8), "the student's wrong attempt the prompt showed (empty: none shown)"),
        "mode": col(pl.Utf8, "orion (the student reflects on its error), no_error (the student rewrites, no error "
                             "shown) or no_reflection (the teacher rewrites, shown the error)"),
        "source": col(pl.Utf8, "refined (a rewrite that verified) or teacher_fallback (the teacher's CoT, kept when "
                               "no try verified: [reflection] on_failure = \"teacher\")"),
        "error_context": col(pl.Boolean, "whether the prompt showed a wrong attempt"),
        "student_ever_wrong": col(pl.Boolean, "whether the student made an error on the problem during exposure"),
        "cot": col(pl.Utf8, "the CoT trained on: the rewrite's solution (a reasoning student's thinking first, with "
                            "[reflection] keep_student_thinking), or the teacher's CoT"),
        "rewrite_thinking": col(pl.Utf8, "the rewrite's thinking, whatever cot keeps (NULL: none, or a fallback)"),
        "reflection_notes": col(pl.Utf8, "the reply's reflection part, before its solution (NULL: none, or a fallback)"),
        "final_answer": col(pl.Utf8, "the answer of the cot, which verified against the gold answer"),
        "verified": col(pl.Boolean, "whether the cot's answer verified (always true: a rewrite is kept only then, and "
                                    "teacher CoTs verified)"),
        "tries_used": col(pl.Int64, "how many tries were sent ([reflection] tries at most)"),
        "failure_reasons": col(pl.List(pl.Utf8), "why each failed try failed (e.g. mismatch:numeric, truncated, "
                                                 "unsplittable, context_overflow)"),
        "finish_reason": col(pl.Utf8, "how the verified rewrite's reply ended, or the teacher CoT's (a fallback)"),
        "n_tokens": col(pl.Int64, "the cot's length in the student's tokens"),
        "length_ratio": col(pl.Float64, "n_tokens over the teacher CoT's n_tokens"),
        "llm_call_id": col(pl.Utf8, "the verified try's call in orion.llm_calls (a fallback: its last failed try's)"),
    },
    id="refined_cot_id",
    parents={"problem_id": "train_problems", "teacher_cot_id": "teacher_cots",
             "error_attempt_ids": "student_attempts", "llm_call_id": "llm_calls"},
    partition_by=("student",),
)


# 3: per student; rewrite_thinking; a teacher rewrite trains on its solution; teacher_samples; exposure-failed
# problems left out
@orion_asset(REFINED_COTS, group_name="reflection", partitions="student", kinds={"transformers"},
             code_version="3")
def refined_cots(
    context: dg.AssetExecutionContext,
    orion: OrionResource,
    train_problems: Table,
    teacher_cots: Table,
    student_attempts: Table,
    student_errors: Table,
    student_base_model: Table,
) -> Rows:
    """For each drawn teacher CoT and mode, a verified rewrite, or the teacher's CoT itself when none verifies
    (``on_failure``), chunk by chunk (:func:`refinement.refine_chunks`; docs/reflection.md)."""
    student = context.partition_key
    cfg = orion.config_for(student)
    model_path = student_base_model.first()["path"]
    # The student writes within [reflection] max_tokens; a teacher rewriting (no_reflection) gets
    # its own max_tokens, so a reasoning teacher has room to think as it did for teacher_cots.
    params_for = {
        "student": sampling_params(cfg.endpoints.student, max_tokens=cfg.reflection.max_tokens,
                                   temperature=cfg.reflection.temperature),
        "teacher": sampling_params(cfg.endpoints.teacher, temperature=cfg.reflection.temperature),
    }
    endpoints = {"student": Metered(orion.endpoint("student", local_model=model_path, tokenizer=model_path,
                                                   student=student)),
                 "teacher": Metered(orion.endpoint("teacher", tokenizer=model_path))}
    skipped = variants.skipped_modes(cfg)
    for mode, why in skipped.items():
        context.log.warning(f"reflection[{mode}]: skipped: {why}")
    modes = [m for m in MODES if m not in skipped]
    problems = len(teacher_cots.keys("problem_id"))
    progress = {m: ChunkProgress(progress_logger(context, f"reflection[{m}]"), problems).chunk for m in modes}
    read = refinement.ChunkInputs(
        attempts=lambda ids: student_attempts.rows_for("problem_id", ids, ["problem_id", "finish_reason"]),
        problems=lambda ids: train_problems.rows_for("problem_id", ids),
        errors=lambda ids: student_errors.rows_for("problem_id", ids),
        texts=lambda ids: student_attempts.rows_for("attempt_id", ids, ["attempt_id", "sample_index", "text"]))
    stats = refinement.RefineStats()
    chunks = refinement.refine_chunks(
        teacher_cots.chunks("problem_id", cfg.data.chunk_size), read, modes=modes, student=student, cfg=cfg.reflection,
        overrides=cfg.prompts.model_dump(), endpoints=endpoints, params_for=params_for,
        tokenizer=load_tokenizer(model_path), count_tokens=batch_token_counter(model_path), progress_for=progress,
        stats=stats, run_id=context.run.run_id)
    return Rows((pl.DataFrame(records, schema=REFINED_COTS.columns) for records in chunks),
                lambda: _metadata(context, cfg, stats, skipped, endpoints))


def _metadata(context: dg.AssetExecutionContext, cfg, stats: refinement.RefineStats, skipped: dict[str, str],
              endpoints: dict) -> dict:
    counts = {m: dict(y) for m, y in stats.yields.items()}
    for mode, counted in counts.items():
        context.log.info(f"reflection[{mode}]: {counted}")
    return {
        "yield_by_mode": {m: (y["refined"] / y["problems"] if y.get("problems") else 0.0) for m, y in counts.items()},
        "fallback_rate_by_mode": {
            m: (y["teacher_fallback"] / y["problems"] if y.get("problems") else 0.0) for m, y in counts.items()
        },
        "counts_by_mode": counts,
        "skipped_modes": skipped,
        "length_ratio_refined_over_teacher": percentiles(pl.Series(stats.length_ratios, dtype=pl.Float64)),
        "on_failure": cfg.reflection.on_failure,
        "teacher_samples": cfg.reflection.teacher_samples,
        "keep_student_thinking": cfg.reflection.keep_student_thinking,
        # problems whose every exposure call failed: left out of every refined mode and teacher_sft
        "exposure_failed": len(stats.exposure_failed),
        **{k: v for role, e in endpoints.items() for k, v in usage_metadata(e.results, e.cfg, role).items()},
    }
