"""The field's baselines as SFT data, made from what the graph already has (docs/baselines.md):

- ``rft``: the student's own verified exposure solutions (rejection-sampling fine-tuning, Yuan et al. 2023);
- ``short_cot``: the teacher's solution without its thinking;
- ``mix_long``: teacher CoTs kept long (thinking and solution) for ``long_share`` of them, short for the rest
  (Mix-Long, Li et al. 2025).

Each draws on the teacher CoTs every other variant draws on
(:func:`orion_assets.method.reflection.drawn_teacher_cots`). Plain polars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import polars as pl

from orion_assets.ids import content_id
from orion_assets.method.reflection import drawn_teacher_cots
from orion_assets.store.columns import Column, col, dtypes

__all__ = ["COLUMNS", "DESCRIBED_COLUMNS", "SOURCES", "BaselineStats", "MixTally", "baseline_chunks", "mix_long_rows",
           "rft_rows", "short_cot_rows"]

DESCRIBED_COLUMNS: dict[str, Column] = {
    "baseline_cot_id": col(pl.Utf8, "the row's id: a content hash of student, variant, problem, teacher CoT, attempt and text"),
    "student": col(pl.Utf8, "the student the SFT data is for"),
    "variant": col(pl.Utf8, "the baseline: rft, short_cot or mix_long"),
    "problem_id": col(pl.Utf8, "the training problem"),
    "teacher_cot_id": col(pl.Utf8, "the teacher CoT the text comes from (NULL for rft)"),
    "attempt_id": col(pl.Utf8, "the student's exposure attempt the text comes from (rft only)"),
    "source": col(pl.Utf8, "what the text is: teacher_solution (the teacher's reply after its thinking), teacher_cot "
                           "(its whole CoT) or student_solution"),
    "cot": col(pl.Utf8, "the text the student is trained on"),
    "verified": col(pl.Boolean, "the text's final answer verified (always true: only verified CoTs and correct "
                                "attempts are drawn on)"),
    "finish_reason": col(pl.Utf8, "how the teacher's or the student's reply ended (rft leaves out replies cut off at "
                                     "the token limit)"),
}
COLUMNS: dict[str, type[pl.DataType]] = dtypes(DESCRIBED_COLUMNS)
# What a row's text is: the teacher's solution alone, its whole CoT, or one of the student's own solutions.
SOURCES: tuple[str, ...] = ("teacher_solution", "teacher_cot", "student_solution")


def _teacher_rows(drawn: pl.DataFrame, student: str, variant: str, long: pl.Expr) -> pl.DataFrame:
    """One row per drawn teacher CoT: its whole CoT where ``long``, else its solution."""
    missing = drawn.filter(pl.col("solution").is_null() & ~long)
    if missing.height:
        raise ValueError(f"teacher_cots rows {', '.join(missing['teacher_cot_id'].head(3).to_list())}: no `solution` "
                         "(the table predates it): materialize teacher_cots again (its calls are cached)")
    frame = drawn.select(
        pl.lit(student).alias("student"),
        pl.lit(variant).alias("variant"),
        "problem_id",
        "teacher_cot_id",
        pl.lit(None, dtype=pl.Utf8).alias("attempt_id"),
        pl.when(long).then(pl.lit("teacher_cot")).otherwise(pl.lit("teacher_solution")).alias("source"),
        pl.when(long).then(pl.col("cot")).otherwise(pl.col("solution")).alias("cot"),
        pl.lit(True).alias("verified"),  # a teacher CoT is kept only when its answer verifies
        "finish_reason",
    )
    return _with_ids(frame)


def short_cot_rows(drawn: pl.DataFrame, student: str) -> pl.DataFrame:
    """``short_cot``: each drawn teacher CoT's solution, the reply after its thinking (the whole reply of a
    teacher that did not think)."""
    return _teacher_rows(drawn, student, "short_cot", pl.lit(False))


@dataclass
class MixTally:
    """How many teacher CoTs ``mix_long`` has seen and kept long so far, across chunks."""

    share: float
    seen: int = 0
    long: int = 0


def mix_long_rows(drawn: pl.DataFrame, student: str, tally: MixTally) -> pl.DataFrame:
    """``mix_long``: each drawn teacher CoT long or short, so that ``round(share x seen)`` of all seen so far are
    long (exact over the whole pool, chunk by chunk). Which ones: the first in the order of a hash of their id,
    a fixed draw independent of the CoTs' content and length."""
    target = int(tally.share * (tally.seen + drawn.height) + 0.5) - tally.long
    order = drawn["teacher_cot_id"].map_elements(lambda i: content_id("mix_long", i), return_dtype=pl.Utf8)
    long_ids = set(drawn.with_columns(order.alias("_draw")).sort("_draw").head(target)["teacher_cot_id"].to_list())
    tally.seen += drawn.height
    tally.long += len(long_ids)
    return _teacher_rows(drawn, student, "mix_long", pl.col("teacher_cot_id").is_in(sorted(long_ids)))


def rft_rows(attempts: pl.DataFrame, problem_ids: list[str], student: str, solutions: str) -> pl.DataFrame:
    """``rft``: the student's verified exposure solutions of ``problem_ids`` (``correct`` and not cut off), each
    problem's distinct texts (``solutions = "all"``) or its first (lowest ``sample_index``, ``"first"``)."""
    if solutions not in ("first", "all"):
        raise ValueError(f"[baselines] rft_solutions must be 'first' or 'all', got {solutions!r}")
    right = (attempts.filter(pl.col("problem_id").is_in(problem_ids) & pl.col("correct").fill_null(False)
                             & (pl.col("finish_reason") != "length") & pl.col("text").is_not_null())
             .with_columns(pl.col("text").str.strip_chars().alias("_text"))
             .sort("problem_id", "sample_index")
             .unique(["problem_id", "_text"], keep="first", maintain_order=True))
    if solutions == "first":
        right = right.unique("problem_id", keep="first", maintain_order=True)
    frame = right.select(
        pl.lit(student).alias("student"),
        pl.lit("rft").alias("variant"),
        "problem_id",
        pl.lit(None, dtype=pl.Utf8).alias("teacher_cot_id"),
        "attempt_id",
        pl.lit("student_solution").alias("source"),
        pl.col("_text").alias("cot"),
        pl.lit(True).alias("verified"),
        "finish_reason",
    )
    return _with_ids(frame)


def _with_ids(frame: pl.DataFrame) -> pl.DataFrame:
    ids = [content_id("baseline_cot", *row) for row in
           frame.select("student", "variant", "problem_id", "teacher_cot_id", "attempt_id", "cot").iter_rows()]
    return frame.with_columns(pl.Series("baseline_cot_id", ids, dtype=pl.Utf8)).select(
        [pl.col(c).cast(t) for c, t in COLUMNS.items()])


@dataclass
class BaselineStats:
    """What :func:`baseline_chunks` made so far: rows and problems per baseline, text lengths, the Mix-Long draw."""

    tally: MixTally
    rows: dict[str, int] = field(default_factory=dict)
    problems: dict[str, set[str]] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)

    def add(self, frame: pl.DataFrame) -> None:
        for (variant,), group in frame.group_by("variant"):
            self.rows[variant] = self.rows.get(variant, 0) + group.height
            self.problems.setdefault(variant, set()).update(group["problem_id"].to_list())
        self.tokens.extend(frame["n_tokens"].to_list())


def baseline_chunks(
    teacher_chunks: Iterable[pl.DataFrame], attempts_of: Callable[[list[str]], pl.DataFrame], *, student: str,
    made: Sequence[str], teacher_samples: str, rft_solutions: str, count_tokens: Callable[[list[str]], list[int]],
    stats: BaselineStats,
) -> Iterator[pl.DataFrame]:
    """Per chunk of teacher CoTs, the rows of the baselines ``made`` (with ``n_tokens``), over the CoTs every variant
    draws on; ``attempts_of(problem_ids)`` gives those problems' exposure attempts. ``stats`` follows along."""
    for teacher in teacher_chunks:
        attempts = attempts_of(teacher["problem_id"].unique(maintain_order=True).to_list())
        drawn = drawn_teacher_cots(teacher, attempts, teacher_samples)
        makers = {
            "rft": lambda: rft_rows(attempts, drawn["problem_id"].unique().to_list(), student, rft_solutions),
            "short_cot": lambda: short_cot_rows(drawn, student),
            "mix_long": lambda: mix_long_rows(drawn, student, stats.tally),
        }
        frame = pl.concat([makers[v]() for v in made]) if made else pl.DataFrame(schema=COLUMNS)
        frame = frame.with_columns(pl.Series("n_tokens", count_tokens(frame["cot"].to_list()), dtype=pl.Int64))
        stats.add(frame)
        yield frame
