"""The field's baselines: SFT CoTs for rft, short_cot and mix_long, made from the teacher's CoTs and the
student's exposure attempts (docs/baselines.md)."""

import collections

import dagster as dg
import polars as pl

from orion_assets.io.metadata import percentiles
from orion_assets.io.partitions import student_partitions
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, col, orion_asset
from orion_assets.method import baselines, reflection, variants
from orion_assets.tokens import batch_token_counter
from orion_assets.vocabulary import BASELINES

BASELINE_COTS = TableSpec(
    "baseline_cots",
    {**baselines.DESCRIBED_COLUMNS, "n_tokens": col(pl.Int64, "the text's length in the student's tokens")},
    id="baseline_cot_id",
    parents={"problem_id": "train_problems", "teacher_cot_id": "teacher_cots", "attempt_id": "student_attempts"},
    partition_by=("student",),
)


@orion_asset(BASELINE_COTS, group_name="baselines", partitions_def=student_partitions, kinds={"polars"},
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
    made = [v for v in BASELINES if v not in skipped]
    count_tokens = batch_token_counter(student_base_model.first()["path"])
    tally = baselines.MixTally(cfg.baselines.long_share)
    rows_by: collections.Counter[str] = collections.Counter()
    problems_by: dict[str, set[str]] = collections.defaultdict(set)
    tokens: list[int] = []
    attempt_columns = ["attempt_id", "problem_id", "sample_index", "text", "correct", "finish_reason"]

    def chunks():
        for teacher in teacher_cots.chunks("problem_id", cfg.data.chunk_size):
            ids = teacher["problem_id"].unique(maintain_order=True).to_list()
            attempts = student_attempts.rows_for("problem_id", ids, attempt_columns)
            drawn = reflection.drawn_teacher_cots(teacher, attempts, cfg.reflection.teacher_samples)
            made_here = {
                "rft": lambda: baselines.rft_rows(attempts, drawn["problem_id"].unique().to_list(), student,
                                                  cfg.baselines.rft_solutions),
                "short_cot": lambda: baselines.short_cot_rows(drawn, student),
                "mix_long": lambda: baselines.mix_long_rows(drawn, student, tally),
            }
            frame = pl.concat([made_here[v]() for v in made]) if made else BASELINE_COTS.empty().drop("n_tokens")
            frame = frame.with_columns(pl.Series("n_tokens", count_tokens(frame["cot"].to_list()), dtype=pl.Int64))
            for (variant,), group in frame.group_by("variant"):
                rows_by[variant] += group.height
                problems_by[variant].update(group["problem_id"].to_list())
            tokens.extend(frame["n_tokens"].to_list())
            yield frame

    def metadata() -> dict:
        return {
            "rows_by_variant": dict(rows_by),
            "problems_by_variant": {v: len(p) for v, p in problems_by.items()},
            "mix_long": {"long": tally.long, "of": tally.seen, "long_share": cfg.baselines.long_share},
            "rft_solutions": cfg.baselines.rft_solutions,
            "skipped": skipped,
            "n_tokens_percentiles": percentiles(pl.Series(tokens, dtype=pl.Int64)),
        }

    return Rows(chunks(), metadata)
