"""Self-reflection: CoTs rewritten in light of the student's own errors, in three modes."""

import collections

import dagster as dg
import polars as pl

from orion_assets import reflection
from orion_assets.llm import sampling_params
from orion_assets.llm.usage import Metered, usage_metadata
from orion_assets.resources import OrionResource, progress_logger
from orion_assets.store import register_lineage
from orion_assets.text_stats import load_tokenizer, percentiles, token_counter

register_lineage("refined_cots", "refined_cot_id", "problem_id", "train_problems")
register_lineage("refined_cots", "refined_cot_id", "teacher_cot_id", "teacher_cots")
register_lineage("refined_cots", "refined_cot_id", "error_attempt_ids", "student_attempts")
register_lineage("refined_cots", "refined_cot_id", "llm_call_id", "llm_calls")

REFINED_SCHEMA = {
    "refined_cot_id": pl.Utf8,
    "problem_id": pl.Utf8,
    "teacher_cot_id": pl.Utf8,
    "error_attempt_ids": pl.List(pl.Utf8),
    "mode": pl.Utf8,
    "source": pl.Utf8,
    "error_context": pl.Boolean,
    "student_ever_wrong": pl.Boolean,
    "cot": pl.Utf8,
    "reflection_notes": pl.Utf8,
    "final_answer": pl.Utf8,
    "verified": pl.Boolean,
    "tries_used": pl.Int64,
    "failure_reasons": pl.List(pl.Utf8),
    "finish_reason": pl.Utf8,
    "n_tokens": pl.Int64,
    "length_ratio": pl.Float64,
    "llm_call_id": pl.Utf8,
}


@dg.asset(
    group_name="reflection",
    deps=[
        dg.AssetDep("train_problems"),
        dg.AssetDep("teacher_cots"),
        dg.AssetDep("student_attempts"),
        dg.AssetDep("student_errors"),
        dg.AssetDep("student_base_model"),
    ],
    kinds={"duckdb", "transformers"},
    code_version="1",
)
def refined_cots(context: dg.AssetExecutionContext, orion: OrionResource) -> dg.MaterializeResult:
    """For each problem and mode (`orion`, `no_error`, `no_reflection`), a verified rewrite of the
    teacher's CoT, or the teacher's CoT itself when no rewrite verifies (``on_failure``)."""
    cfg = orion.active.config
    train, train_up = orion.read("train_problems")
    teacher, teacher_up = orion.read("teacher_cots")
    attempts, attempts_up = orion.read("student_attempts")
    errors, errors_up = orion.read("student_errors")
    base, base_up = orion.read("student_base_model")
    model_path = base["path"][0]

    problems_by_id = {row["problem_id"]: row for row in train.iter_rows(named=True)}
    # One teacher CoT per problem is refined: the first verified sample.
    first_cot = teacher.sort("sample_index").unique("problem_id", keep="first", maintain_order=True)
    texts = dict(attempts.select("attempt_id", "text").iter_rows())
    errors_by_problem: dict[str, list[dict]] = collections.defaultdict(list)
    for row in errors.join(attempts.select("attempt_id", "sample_index"), on="attempt_id").sort("sample_index").iter_rows(named=True):
        errors_by_problem[row["problem_id"]].append({**row, "text": texts[row["attempt_id"]] or ""})

    overrides = cfg.prompts.model_dump()
    # The student writes within [reflection] max_tokens; a teacher rewriting (no_reflection) gets
    # its own max_tokens, so a reasoning teacher has room to think as it did for teacher_cots.
    params_for = {
        "student": sampling_params(cfg.endpoints.student, max_tokens=cfg.reflection.max_tokens,
                                   temperature=cfg.reflection.temperature),
        "teacher": sampling_params(cfg.endpoints.teacher, temperature=cfg.reflection.temperature),
    }
    endpoints = {"student": Metered(orion.endpoint("student", local_model=model_path, tokenizer=model_path)),
                 "teacher": Metered(orion.endpoint("teacher", tokenizer=model_path))}
    tokenizer = load_tokenizer(model_path)
    count_tokens = token_counter(model_path)
    records: list[dict] = []
    yields: dict[str, dict[str, int]] = {}
    skipped = reflection.skipped_modes(cfg)
    for mode, why in skipped.items():
        context.log.warning(f"reflection[{mode}]: skipped: {why}")
    for mode in (m for m in reflection.MODES if m not in skipped):
        role = reflection.MODE_ROLE[mode]
        tasks = reflection.make_tasks(
            mode, problems_by_id, list(first_cot.iter_rows(named=True)), errors_by_problem,
            attempt_max_tokens=cfg.reflection.attempt_max_tokens, tokenizer=tokenizer,
        )
        outcomes = reflection.refine(
            tasks, endpoints[role], params_for[role], tries=cfg.reflection.tries, overrides=overrides,
            run_id=context.run.run_id, progress=progress_logger(context, f"reflection[{mode}]"),
            min_reply_tokens=cfg.reflection.min_reply_tokens,
        )
        rows = [reflection.refined_row(o, cfg.reflection.on_failure) for o in outcomes]
        kept = [r for r in rows if r is not None]
        for row, task in zip(rows, tasks, strict=True):
            if row is not None:
                row["n_tokens"] = count_tokens(row["cot"])
                teacher_tokens = task.teacher_cot["n_tokens"] or 1
                row["length_ratio"] = row["n_tokens"] / teacher_tokens
        records += kept
        yields[mode] = reflection.yield_counts(tasks, outcomes, rows)
        context.log.info(f"reflection[{mode}]: {yields[mode]}")
    frame = pl.DataFrame(records, schema=REFINED_SCHEMA)
    refined_only = frame.filter(pl.col("source") == "refined")
    return orion.publish(
        context,
        frame,
        reads=[train_up, teacher_up, attempts_up, errors_up, base_up],
        metadata={
            "yield_by_mode": {m: (y["refined"] / y["problems"] if y["problems"] else 0.0) for m, y in yields.items()},
            "fallback_rate_by_mode": {
                m: (y["teacher_fallback"] / y["problems"] if y["problems"] else 0.0) for m, y in yields.items()
            },
            "counts_by_mode": yields,
            "skipped_modes": skipped,
            "length_ratio_refined_over_teacher": percentiles(refined_only["length_ratio"]),
            "on_failure": cfg.reflection.on_failure,
            **{k: v for role, e in endpoints.items() for k, v in usage_metadata(e.results, e.cfg, role).items()},
        },
    )
