"""Benchmark scores from graded samples: pass@1 (with standard error), maj@k, pass@k, length.

Every function here is plain (no Dagster, no DuckDB), so the estimators can be checked by hand.

Definitions (one benchmark, one model variant; ``k`` samples per problem):

- **pass@1**: the mean over problems of the share of a problem's samples that are correct. Its
  standard error is the sample standard deviation (ddof=1) of those per-problem shares divided by
  the square root of the number of problems (0 for a single problem): the uncertainty from the
  choice of problems, with the per-problem sampling noise included.
- **pass@k**: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)`` per problem
  (``n`` samples, ``c`` correct), averaged over problems. A problem with fewer than ``k`` samples uses
  its own ``n`` in place of ``k``.
- **maj@k**: per problem, the most frequent extracted answer among its first ``k`` samples (by
  ``sample_index``) counts; ``None`` (no answer) never wins. See :func:`majority_correct` for ties.
- **mean_tokens**: mean ``n_tokens`` over all samples; **truncation_rate**: share of samples that
  stopped on the length limit (``finish_reason == "length"``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import polars as pl

PREDICTION_COLUMNS: tuple[str, ...] = (
    "problem_id",
    "sample_index",
    "correct",
    "extracted_answer",
    "n_tokens",
    "finish_reason",
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct.

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that large ``n``
    neither overflows nor loses precision (Chen et al. 2021, "Evaluating Large Language Models
    Trained on Code", figure 3).
    """
    if n < 1:
        raise ValueError(f"pass_at_k needs at least one sample, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """maj@k for one problem: is the most frequent extracted answer correct?

    ``answers[i]`` is sample i's extracted (already normalized) answer, ``None`` when it gave none;
    ``correct[i]`` its grade. Answers are equal when their strings are equal. ``None`` never takes
    part in the vote; when every answer is ``None`` the result is 0.0.

    Ties: when several answers share the highest count, the result is the expected accuracy under
    uniform random tie-breaking, i.e. (number of tied answers that are correct) / (number of tied
    answers): two tied answers of which one is correct give 0.5. An answer counts as correct by the
    share of its samples graded correct (the grader gives equal strings equal grades, so this is 0
    or 1 in practice).
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_correct: {len(answers)} answers but {len(correct)} grades")
    votes: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for answer, is_correct in zip(answers, correct, strict=True):
        if answer is None:
            continue
        votes[answer] += 1
        right[answer] += bool(is_correct)
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [answer for answer, count in votes.items() if count == top]
    return sum(right[answer] / votes[answer] for answer in tied) / len(tied)


@dataclass(frozen=True)
class Scores:
    """The scores of one model variant on one benchmark (fractions in [0, 1], not percent)."""

    n_problems: int
    k: int
    pass_at_1: float
    pass_at_1_se: float
    maj_at_k: float
    pass_at_k: float
    mean_tokens: float
    truncation_rate: float

    def to_row(self) -> dict[str, int | float]:
        """The columns of ``orion.benchmark_scores`` that the scores fill, in table order."""
        return asdict(self)


def score_predictions(predictions: pl.DataFrame, k: int) -> Scores:
    """Score graded samples (columns :data:`PREDICTION_COLUMNS`, one row per sample).

    ``k`` is the nominal number of samples per problem: pass@k and maj@k use it, capped at each
    problem's own number of samples. A null ``correct`` counts as wrong.
    """
    if k < 1:
        raise ValueError(f"score_predictions needs k >= 1, got k={k}")
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"score_predictions: the predictions lack column(s) {', '.join(missing)}")
    if predictions.height == 0:
        raise ValueError("score_predictions: no predictions to score (empty frame)")

    frame = predictions.select(
        pl.col("problem_id"),
        pl.col("sample_index"),
        pl.col("correct").cast(pl.Boolean).fill_null(False),
        pl.col("extracted_answer").cast(pl.Utf8),
        pl.col("n_tokens"),
        pl.col("finish_reason").cast(pl.Utf8),
    ).sort("problem_id", "sample_index")

    per_problem = frame.group_by("problem_id", maintain_order=True).agg(
        pl.len().alias("n"),
        pl.col("correct").sum().alias("c"),
        pl.col("extracted_answer"),
        pl.col("correct").alias("grades"),
    )
    shares: list[float] = []
    pass_k: list[float] = []
    majority: list[float] = []
    for row in per_problem.iter_rows(named=True):
        n, c = int(row["n"]), int(row["c"])
        shares.append(c / n)
        pass_k.append(pass_at_k(n, c, min(k, n)))
        majority.append(majority_correct(row["extracted_answer"][:k], row["grades"][:k]))

    n_problems = len(shares)
    mean_share = math.fsum(shares) / n_problems
    if n_problems > 1:
        variance = math.fsum((s - mean_share) ** 2 for s in shares) / (n_problems - 1)
        se = math.sqrt(variance) / math.sqrt(n_problems)
    else:
        se = 0.0
    tokens = frame["n_tokens"].cast(pl.Float64)
    mean_tokens = float(tokens.mean()) if tokens.null_count() < frame.height else float("nan")
    truncated = int((frame["finish_reason"] == "length").sum())
    return Scores(
        n_problems=n_problems,
        k=k,
        pass_at_1=mean_share,
        pass_at_1_se=se,
        maj_at_k=math.fsum(majority) / n_problems,
        pass_at_k=math.fsum(pass_k) / n_problems,
        mean_tokens=mean_tokens,
        truncation_rate=truncated / frame.height,
    )
