"""The field's baselines: SFT CoTs for rft, short_cot and mix_long, made from the teacher's CoTs and the
student's exposure attempts (docs/baselines.md)."""

import dagster as dg
import polars as pl

from orion_assets.io.metadata import percentiles
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, orion_asset
from orion_assets.method import baselines, variants
from orion_assets.tokens import batch_token_counter
from orion_assets.vocabulary import BASELINES

BASELINE_COTS = TableSpec(
    "baseline_cots",
    {**baselines.DESCRIBED_COLUMNS, "n_tokens": col(pl.Int64, "the text's length in the student's tokens")},
    id="baseline_cot_id",
    parents={"problem_id": "train_problems", "teacher_cot_id": "teacher_cots", "attempt_id": "student_attempts"},
    partition_by=("student",),
)


@orion_asset(BASELINE_COTS, group_name="baselines", partitions="student", kinds={"polars"},
             code_version="1")
def baseline_cots(
    context: dg.AssetExecutionContext,
    orion: OrionResource,
    teacher_cots: Table,
    student_attempts: Table,
    student_base_model: Table,
) -> Rows:
    """One student's baseline CoTs: ``rft`` (its own verified exposure solutions), ``short_cot`` (the teacher's
    solutions without their thinking) and ``mix_long`` (long and short teacher CoTs at ``[baselines]
    long_share``), over the teacher CoTs and problems the other variants are made from. No LLM call."""
    student = context.partition_key
    cfg = orion.config_for(student)
    skipped = variants.skipped_baselines(cfg)
    for variant, why in skipped.items():
        context.log.info(f"baselines[{variant}]: skipped: {why}")
    stats = baselines.BaselineStats(baselines.MixTally(cfg.baselines.long_share))
    columns = ["attempt_id", "problem_id", "sample_index", "text", "correct", "finish_reason"]
    chunks = baselines.baseline_chunks(
        teacher_cots.chunks("problem_id", cfg.data.chunk_size),
        lambda ids: student_attempts.rows_for("problem_id", ids, columns), student=student,
        made=[v for v in BASELINES if v not in skipped], teacher_samples=cfg.reflection.teacher_samples,
        rft_solutions=cfg.baselines.rft_solutions, count_tokens=batch_token_counter(student_base_model.first()["path"]),
        stats=stats,
    )
    return Rows(chunks, lambda: {
        "rows_by_variant": stats.rows, "problems_by_variant": {v: len(p) for v, p in stats.problems.items()},
        "mix_long": {"long": stats.tally.long, "of": stats.tally.seen, "long_share": cfg.baselines.long_share},
        "rft_solutions": cfg.baselines.rft_solutions, "skipped": skipped,
        "n_tokens_percentiles": percentiles(pl.Series(stats.tokens, dtype=pl.Int64)),
    })
