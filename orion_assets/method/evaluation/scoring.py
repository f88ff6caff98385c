"""Benchmark scores from graded samples: pass@1 (with standard error), maj@k, pass@k, length.

Plain functions (no Dagster, no DuckDB), so the estimators can be checked by hand; their
definitions are in ``docs/scoring.md``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import polars as pl

from orion_assets.llm import GenerationResult
from orion_assets.method.grading import Verdict, answer_key
from orion_assets.method.grading.extract import extract_answer
from orion_assets.vocabulary import GRADING_RULES

ERROR_FINISH_REASON = "error"
# A reply that ran past the endpoint's timeout_s: the model's answer (too long), graded as wrong.
TIMEOUT_FINISH_REASON = "timeout"

PREDICTION_COLUMNS: tuple[str, ...] = (
    "problem_id",
    "sample_index",
    "correct",
    "extracted_answer",
    "n_tokens",
    "finish_reason",
)


def prediction_outcome(result: GenerationResult, verdict: Verdict | None) -> dict[str, object]:
    """The grade columns of one sample's prediction row: its verdict's, a timed-out call's (finish
    reason "timeout", wrong, its error kept), or a failed call's (finish reason "error", ungraded)."""
    if verdict is not None:
        return {"finish_reason": result.finish_reason, "correct": verdict.correct, "grade_reason": verdict.reason,
                "extracted_answer": verdict.extracted, "error": None}  # fmt: skip
    if result.timed_out:
        return {"finish_reason": TIMEOUT_FINISH_REASON, "correct": False, "grade_reason": TIMEOUT_FINISH_REASON,
                "extracted_answer": None, "error": result.error}  # fmt: skip
    return {"finish_reason": result.finish_reason, "correct": None, "grade_reason": None,
            "extracted_answer": None, "error": result.error or "failed call"}  # fmt: skip


def is_boxed_answer(text: str | None) -> bool:
    """Whether a reply's final answer is a non-empty ``\\boxed{}`` (``\\fbox{}``), as the grader reads it."""
    return extract_answer(text or "")[1] in {"boxed", "fbox"}


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


def majority_correct(
    answers: Sequence[str | None], correct: Sequence[bool], benchmark: str | None = None
) -> float:
    """maj@k for one problem: is the most frequent extracted answer correct?

    ``answers[i]`` is sample i's extracted answer, ``None`` when it gave none; ``correct[i]`` its
    grade. Answers are equal when they are equivalent to the grader: they vote under
    :func:`~orion_assets.method.grading.answer_key` (``benchmark`` is passed on), so ``\\frac{1}{2}``,
    ``0.5`` and ``1/2`` are one answer with three votes. ``None`` (and an answer that normalizes
    to nothing) never takes part in the vote; when no answer votes the result is 0.0.

    Ties: when several answers share the highest count, the result is the expected accuracy under
    uniform random tie-breaking, i.e. (number of tied answers that are correct) / (number of tied
    answers): two tied answers of which one is correct give 0.5. An answer counts as correct by the
    share of its samples graded correct (the grader gives equivalent answers equal grades, so this
    is 0 or 1 in practice).
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_correct: {len(answers)} answers but {len(correct)} grades")
    votes: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for answer, is_correct in zip(answers, correct, strict=True):
        key = answer_key(answer, benchmark)
        if key is None:
            continue
        votes[key] += 1
        right[key] += bool(is_correct)
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [answer for answer, count in votes.items() if count == top]
    return sum(right[answer] / votes[answer] for answer in tied) / len(tied)


@dataclass(frozen=True)
class Scores:
    """The scores of one model variant on one benchmark (fractions in [0, 1], not percent).

    ``n_problems`` counts the problems scored (at least one answered sample); ``n_answered`` the
    answered samples (a timed-out one among them, as a wrong answer), ``n_errors`` the samples whose
    call failed (left out of every score), and ``n_unanswered_problems`` the problems left out
    because every one of their calls failed. With no answered sample at all, the rates are NaN.
    ``boxed_rate`` is the share of answered samples whose final answer is a non-empty ``\\boxed{}``
    (the format SFT teaches; NaN without texts); ``timeout_rate`` the share that timed out.
    """

    n_problems: int
    k: int
    pass_at_1: float
    pass_at_1_se: float
    maj_at_k: float
    pass_at_k: float
    mean_tokens: float
    truncation_rate: float
    boxed_rate: float = float("nan")
    n_answered: int = 0
    n_errors: int = 0
    n_unanswered_problems: int = 0
    timeout_rate: float = float("nan")

    def to_row(self) -> dict[str, int | float]:
        """The columns of ``orion.benchmark_scores`` that the scores fill, in table order."""
        return asdict(self)


def score_predictions(predictions: pl.DataFrame, k: int, benchmark: str | None = None) -> Scores:
    """Score graded samples (columns :data:`PREDICTION_COLUMNS`, one row per sample).

    ``k`` is the nominal number of samples per problem: pass@k and maj@k use it, capped at each
    problem's own number of answered samples. Rows with ``finish_reason == "error"`` (failed calls)
    are counted in ``n_errors`` and scored nowhere; a ``"timeout"`` row is answered and wrong; an
    answered sample with a null ``correct`` counts as wrong. ``benchmark`` goes to the maj@k vote (:func:`majority_correct`). An optional
    ``text`` column (the replies) gives ``boxed_rate``.
    """
    if k < 1:
        raise ValueError(f"score_predictions needs k >= 1, got k={k}")
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"score_predictions: the predictions lack column(s) {', '.join(missing)}")
    if predictions.height == 0:
        raise ValueError("score_predictions: no predictions to score (empty frame)")

    timed_out = pl.col("finish_reason").cast(pl.Utf8) == TIMEOUT_FINISH_REASON
    frame = predictions.select(
        pl.col("problem_id"),
        pl.col("sample_index"),
        (pl.col("correct").cast(pl.Boolean).fill_null(False) & ~timed_out.fill_null(False)).alias("correct"),
        pl.col("extracted_answer").cast(pl.Utf8),
        pl.col("n_tokens"),
        pl.col("finish_reason").cast(pl.Utf8),
        (pl.col("text") if "text" in predictions.columns else pl.lit(None)).cast(pl.Utf8).alias("text"),
    ).sort("problem_id", "sample_index")
    failed = frame["finish_reason"].fill_null("") == ERROR_FINISH_REASON
    n_errors = int(failed.sum())
    all_problems = frame["problem_id"].n_unique()
    frame = frame.filter(~failed)

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
        majority.append(majority_correct(row["extracted_answer"][:k], row["grades"][:k], benchmark))

    n_problems = len(shares)
    if n_problems == 0:  # every call failed: nothing to score
        nan = float("nan")
        return Scores(
            n_problems=0, k=k, pass_at_1=nan, pass_at_1_se=nan, maj_at_k=nan, pass_at_k=nan, mean_tokens=nan,
            truncation_rate=nan, n_answered=0, n_errors=n_errors, n_unanswered_problems=all_problems, timeout_rate=nan,
        )  # fmt: skip
    mean_share = math.fsum(shares) / n_problems
    if n_problems > 1:
        variance = math.fsum((s - mean_share) ** 2 for s in shares) / (n_problems - 1)
        se = math.sqrt(variance) / math.sqrt(n_problems)
    else:
        se = 0.0
    tokens = frame["n_tokens"].cast(pl.Float64)
    mean_tokens = float(tokens.mean()) if tokens.null_count() < frame.height else float("nan")
    truncated = int((frame["finish_reason"] == "length").sum())
    texts = frame["text"]
    boxed_rate = (
        sum(is_boxed_answer(t) for t in texts) / frame.height if texts.null_count() < frame.height else float("nan")
    )
    return Scores(
        n_problems=n_problems,
        k=k,
        pass_at_1=mean_share,
        pass_at_1_se=se,
        maj_at_k=math.fsum(majority) / n_problems,
        pass_at_k=math.fsum(pass_k) / n_problems,
        mean_tokens=mean_tokens,
        truncation_rate=truncated / frame.height,
        boxed_rate=boxed_rate,
        n_answered=frame.height,
        n_errors=n_errors,
        n_unanswered_problems=all_problems - n_problems,
        timeout_rate=int((frame["finish_reason"] == TIMEOUT_FINISH_REASON).sum()) / frame.height,
    )


def graded_rules(predictions: pl.DataFrame) -> list[tuple[str | None, str]]:
    """``(rule, correctness column)`` of each rule the predictions were graded by, the primary one first
    (``correct``, named by the ``grading_rule`` column; None in tables older than that column)."""
    rules = predictions["grading_rule"].drop_nulls().unique().to_list() if "grading_rule" in predictions.columns else []
    primary = rules[0] if len(rules) == 1 else None
    answered = predictions.filter(pl.col("correct").is_not_null())
    others = [(rule, f"correct_{rule}") for rule in GRADING_RULES if rule != primary
              and f"correct_{rule}" in answered.columns and answered[f"correct_{rule}"].null_count() < answered.height]
    return [(primary, "correct"), *others]


def scores_by_rule(predictions: pl.DataFrame, k: int, benchmark: str | None = None) -> list[tuple[str | None, Scores]]:
    """The scores of ``predictions`` under each rule they were graded by (:func:`graded_rules`), the primary first."""
    return [(rule, score_predictions(predictions.with_columns(pl.col(column).alias("correct")), k, benchmark=benchmark))
            for rule, column in graded_rules(predictions)]
