"""Scores from hand-built prediction tables, checked against arithmetic done by hand."""

from __future__ import annotations

import itertools
import math

import polars as pl
import pytest

from orion_assets.llm import GenerationResult
from orion_assets.method.evaluation.scoring import (
    Scores,
    majority_correct,
    pass_at_k,
    prediction_outcome,
    score_predictions,
)
from orion_assets.method.grading import Verdict


def predictions(rows: list[tuple[str, int, bool, str | None, int, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "problem_id": pl.Utf8,
            "sample_index": pl.Int64,
            "correct": pl.Boolean,
            "extracted_answer": pl.Utf8,
            "n_tokens": pl.Int64,
            "finish_reason": pl.Utf8,
        },
        orient="row",
    )


# Three problems, k = 4 samples each.
#   p1: answers 5,5,5,7   correct T,T,T,F  -> share 3/4 = 0.75, majority "5" (correct) -> 1
#   p2: answers 2,3,2,3   correct T,F,T,F  -> share 2/4 = 0.50, tie "2"/"3", one correct -> 0.5
#   p3: answers None,9,None + a failed call -> share 0/3 (the failed call is not a sample),
#       majority "9" (wrong; None never wins) -> 0
PREDICTIONS = predictions(
    [
        ("p1", 0, True, "5", 100, "stop"),
        ("p1", 1, True, "5", 120, "stop"),
        ("p1", 2, True, "5", 80, "stop"),
        ("p1", 3, False, "7", 200, "length"),
        ("p2", 0, True, "2", 50, "stop"),
        ("p2", 1, False, "3", 60, "stop"),
        ("p2", 2, True, "2", 70, "stop"),
        ("p2", 3, False, "3", 80, "stop"),
        ("p3", 0, False, None, 300, "length"),
        ("p3", 1, False, "9", 40, "stop"),
        ("p3", 2, False, None, 300, "length"),
        ("p3", 3, False, None, 0, "error"),
    ]
)


def test_pass_at_1_and_standard_error() -> None:
    scores = score_predictions(PREDICTIONS, k=4)
    # per-problem shares 0.75, 0.5, 0.0 -> mean 1.25 / 3
    assert scores.n_problems == 3
    assert scores.k == 4
    assert scores.pass_at_1 == pytest.approx(1.25 / 3)
    # deviations from 5/12: 0.75-5/12 = 4/12, 0.5-5/12 = 1/12, 0-5/12 = -5/12
    # sum of squares = (16 + 1 + 25) / 144 = 42/144; / (3-1) = 21/144; sd = sqrt(21)/12
    # SE = sd / sqrt(3) = sqrt(21) / (12 sqrt(3)) = sqrt(7) / 12 ~ 0.22048
    assert scores.pass_at_1_se == pytest.approx(math.sqrt(7) / 12)


def test_majority_over_problems_with_tie_and_none() -> None:
    scores = score_predictions(PREDICTIONS, k=4)
    # p1 -> 1, p2 (tie of "2" correct and "3" wrong) -> 0.5, p3 ("9" beats three Nones, wrong) -> 0
    assert scores.maj_at_k == pytest.approx((1 + 0.5 + 0) / 3)


def test_pass_at_k_mean_tokens_truncation() -> None:
    scores = score_predictions(PREDICTIONS, k=2)
    # n=4 per problem, k=2. p1: c=3 -> n-c=1 < k -> 1. p2: c=2 -> 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6.
    # p3: c=0 -> 0. mean = (1 + 5/6 + 0) / 3 = 11/18
    assert scores.pass_at_k == pytest.approx(11 / 18)
    # tokens over the 11 answered samples: p1 100+120+80+200 = 500, p2 50+60+70+80 = 260,
    # p3 300+40+300 = 640 (its failed call is left out); 1400 / 11
    assert scores.mean_tokens == pytest.approx(1400 / 11)
    # "length": p1 s3, p3 s0, p3 s2 -> 3 of 11 answered samples ("error" is not truncation)
    assert scores.truncation_rate == pytest.approx(3 / 11)
    assert (scores.n_answered, scores.n_errors, scores.n_unanswered_problems) == (11, 1, 0)
    # pass@1 does not depend on k
    assert scores.pass_at_1 == pytest.approx(score_predictions(PREDICTIONS, k=4).pass_at_1)


def test_maj_at_k_uses_first_k_samples_in_sample_order() -> None:
    # Shuffled rows; by sample_index p1's first two samples are "5","5" (correct) -> 1;
    # p2's first two are "2" (correct) and "3" (wrong): a tie -> 0.5; p3: "9" vs None -> "9" wrong -> 0.
    shuffled = PREDICTIONS.sample(fraction=1.0, shuffle=True, seed=7)
    scores = score_predictions(shuffled, k=2)
    assert scores.maj_at_k == pytest.approx((1 + 0.5 + 0) / 3)


def test_problem_with_fewer_samples_than_k_uses_its_n() -> None:
    # q1: 2 samples, 1 correct, k=4 -> uses k=n=2: 1 - C(1,2)/C(2,2) = 1 - 0 = 1.
    # q2: 4 samples, 1 correct, k=4 -> 1 - C(3,4)/C(4,4) = 1. mean 1.
    frame = predictions(
        [
            ("q1", 0, True, "1", 10, "stop"),
            ("q1", 1, False, "2", 10, "stop"),
            ("q2", 0, False, "3", 10, "stop"),
            ("q2", 1, False, "3", 10, "stop"),
            ("q2", 2, False, "3", 10, "stop"),
            ("q2", 3, True, "4", 10, "stop"),
        ]
    )
    scores = score_predictions(frame, k=4)
    assert scores.pass_at_k == pytest.approx(1.0)
    # pass@1: (1/2 + 1/4) / 2 = 3/8
    assert scores.pass_at_1 == pytest.approx(3 / 8)


def test_single_problem_has_zero_standard_error() -> None:
    frame = predictions([("p", 0, True, "1", 7, "stop"), ("p", 1, False, "2", 9, "stop")])
    scores = score_predictions(frame, k=2)
    assert scores.pass_at_1 == pytest.approx(0.5)
    assert scores.pass_at_1_se == 0.0
    # tie of "1" (correct) and "2" (wrong) -> 0.5
    assert scores.maj_at_k == pytest.approx(0.5)
    row = scores.to_row()
    assert math.isnan(row.pop("boxed_rate"))  # no reply texts given
    assert row == {
        "n_problems": 1,
        "k": 2,
        "pass_at_1": 0.5,
        "pass_at_1_se": 0.0,
        "maj_at_k": 0.5,
        "pass_at_k": 1.0,
        "mean_tokens": 8.0,
        "truncation_rate": 0.0,
        "n_answered": 2,
        "n_errors": 0,
        "n_unanswered_problems": 0,
        "timeout_rate": 0.0,
    }
    assert isinstance(scores, Scores)


def test_majority_correct_cases() -> None:
    assert majority_correct(["a", "a", "b"], [True, True, False]) == 1.0
    assert majority_correct(["a", "b", "b"], [True, False, False]) == 0.0
    # two tied answers, one correct -> 1/2
    assert majority_correct(["a", "b"], [True, False]) == 0.5
    # three tied answers, one correct -> 1/3
    assert majority_correct(["a", "b", "c", None, None], [False, True, False, False, False]) == pytest.approx(1 / 3)
    # None never wins: two Nones vs one "x" (correct) -> "x" -> 1
    assert majority_correct([None, None, "x"], [False, False, True]) == 1.0
    # all None -> 0
    assert majority_correct([None, None], [False, False]) == 0.0
    assert majority_correct([], []) == 0.0
    with pytest.raises(ValueError, match="grades"):
        majority_correct(["a"], [True, False])


def test_equivalent_answers_vote_together() -> None:
    # By raw strings "1/3" (2 votes) beats each spelling of one half (1 vote each): 0.
    # As answers, one half has 3 votes against 2: 1.
    answers = ["\\frac{1}{2}", "0.5", "1/3", "1/2", "1/3"]
    grades = [True, True, False, True, False]
    assert majority_correct(answers, grades) == 1.0
    # $0.50 and \dfrac12 are one half too; 025 and 25.0 are 25 (AIME spelling)
    assert majority_correct(["$0.50", "\\dfrac12", "3", "3", "x = 1/2"], [True, True, False, False, True]) == 1.0
    assert majority_correct(["025", "25.0", "24", "24", "\\boxed{25}"], [True, True, False, False, True], "aime24") == 1.0
    # equivalent spellings tie with another answer: the expected accuracy of a random pick
    assert majority_correct(["0.5", "1/2", "7", "7"], [True, True, False, False]) == 0.5
    # an answer that normalizes to nothing does not vote
    assert majority_correct(["$ $", "4"], [False, True]) == 1.0

    frame = predictions(
        [
            ("p", 0, True, "\\frac{1}{2}", 10, "stop"),
            ("p", 1, True, "0.5", 10, "stop"),
            ("p", 2, False, "1/3", 10, "stop"),
            ("p", 3, False, "1/3", 10, "stop"),
            ("p", 4, True, "1/2", 10, "stop"),
        ]
    )
    assert score_predictions(frame, k=5, benchmark="math500").maj_at_k == 1.0


def test_failed_calls_are_not_wrong_answers() -> None:
    # q1: s0 failed, s1 "7" wrong, s2 "5" right, s3 failed, s4 "5" right -> 3 answered, 2 correct.
    # q2: every call failed -> left out of the scores, counted in n_unanswered_problems.
    # q3: s0 "1" right, s1 "2" wrong.
    frame = predictions(
        [
            ("q1", 0, None, None, None, "error"),
            ("q1", 1, False, "7", 30, "stop"),
            ("q1", 2, True, "5", 10, "length"),
            ("q1", 3, None, None, None, "error"),
            ("q1", 4, True, "5", 20, "stop"),
            ("q2", 0, None, None, None, "error"),
            ("q2", 1, None, None, None, "error"),
            ("q3", 0, True, "1", 40, "stop"),
            ("q3", 1, False, "2", 60, "stop"),
        ]
    )
    scores = score_predictions(frame, k=2)
    assert (scores.n_problems, scores.n_answered, scores.n_errors, scores.n_unanswered_problems) == (2, 5, 4, 1)
    # pass@1 over answered samples: q1 2/3, q3 1/2 -> mean 7/12 (failed calls as wrong would give 2/5, 1/2 and q2 0)
    assert scores.pass_at_1 == pytest.approx(7 / 12)
    # SE: shares 2/3 and 1/2 around 7/12 -> deviations +-1/12, variance 2/144 / 1, SE sqrt(2)/12/sqrt(2) = 1/12
    assert scores.pass_at_1_se == pytest.approx(1 / 12)
    # pass@2 with n = answered samples: q1 n=3 c=2 -> 1; q3 n=2 c=1 -> 1
    assert scores.pass_at_k == pytest.approx(1.0)
    # maj@2 over the first two answered samples: q1 "7" (wrong) vs "5" (right) -> 0.5; q3 "1" vs "2" -> 0.5
    assert scores.maj_at_k == pytest.approx(0.5)
    # maj@3: q1 "5" twice -> 1; q3 -> 0.5
    assert score_predictions(frame, k=3).maj_at_k == pytest.approx(0.75)
    assert scores.mean_tokens == pytest.approx(160 / 5)
    assert scores.truncation_rate == pytest.approx(1 / 5)

    nothing = score_predictions(frame.filter(pl.col("problem_id") == "q2"), k=2)
    assert (nothing.n_problems, nothing.n_errors, nothing.n_unanswered_problems) == (0, 2, 1)
    assert math.isnan(nothing.pass_at_1) and math.isnan(nothing.maj_at_k)


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_combinatorial_definition() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
    # hand values: n=5, c=2, k=2 -> 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k = 1 is the share of correct samples
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # large n stays finite and exact enough: 1 - C(900,100)/C(1000,100)
    expected = 1 - math.comb(900, 100) / math.comb(1000, 100)
    assert pass_at_k(1000, 100, 100) == pytest.approx(expected, rel=1e-9)


def test_pass_at_k_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="at least one sample"):
        pass_at_k(0, 0, 1)


def test_errors_on_empty_or_malformed_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        score_predictions(PREDICTIONS.clear(), k=4)
    with pytest.raises(ValueError, match="finish_reason"):
        score_predictions(PREDICTIONS.drop("finish_reason"), k=4)
    with pytest.raises(ValueError, match="k >= 1"):
        score_predictions(PREDICTIONS, k=0)


def test_boxed_rate_counts_the_replies_whose_final_answer_is_a_non_empty_box() -> None:
    texts = [
        "3 + 4 = 7.\nThe final answer is $\\boxed{7}$.",  # boxed
        "So the answer is: 7",  # right, but not boxed
        "The answer is 7. The correct answer is \\boxed{}.",  # an empty box is no boxed answer
        "#### 7",
    ]
    frame = predictions([("p", i, True, "7", 9, "stop") for i in range(4)]).with_columns(text=pl.Series(texts))
    scores = score_predictions(frame, k=4)
    assert scores.boxed_rate == pytest.approx(1 / 4)
    assert scores.pass_at_1 == pytest.approx(1.0)  # the format is not the grade


def test_a_timed_out_sample_is_answered_and_wrong() -> None:
    # q1: one right answer and one timeout (wrong, whatever its correct column says) -> 1/2;
    # q2: a failed call (left out) and a right answer -> 1/1. pass@1 = 3/4, not (1 + 1) / 2.
    frame = predictions(
        [
            ("q1", 0, True, "4", 10, "stop"),
            ("q1", 1, True, None, None, "timeout"),
            ("q2", 0, False, None, None, "error"),
            ("q2", 1, True, "7", 30, "stop"),
        ]
    )
    scores = score_predictions(frame, k=2)
    assert scores.pass_at_1 == pytest.approx(3 / 4)
    assert (scores.n_answered, scores.n_errors, scores.n_problems) == (3, 1, 2)
    assert scores.timeout_rate == pytest.approx(1 / 3) and scores.truncation_rate == 0.0
    assert scores.mean_tokens == pytest.approx(20.0)  # a timeout has no token count
    assert scores.maj_at_k == 1.0  # a timeout has no answer to vote with: q1's "4" wins alone
    assert math.isnan(score_predictions(frame.filter(pl.col("finish_reason") == "error"), k=2).timeout_rate)


def _result(finish_reason: str, error: str | None = None) -> GenerationResult:
    return GenerationResult(
        call_id="c", text=None if error else "x", reasoning=None, finish_reason=finish_reason, prompt_tokens=None,
        completion_tokens=None, latency_s=None, retries=0, error=error, cached=False,
    )  # fmt: skip


def test_prediction_outcome_tells_a_timeout_from_a_failed_call() -> None:
    verdict = Verdict(correct=True, extracted="5", method="exact", reason="match")
    assert prediction_outcome(_result("stop"), verdict) == {
        "finish_reason": "stop", "correct": True, "grade_reason": "match", "extracted_answer": "5", "error": None}
    timeout = _result("error", "timeout after 1800s (2 timeouts; raise endpoints.student.timeout_s or timeout_retries)")
    assert timeout.timed_out and not timeout.ok
    assert prediction_outcome(timeout, None) == {
        "finish_reason": "timeout", "correct": False, "grade_reason": "timeout", "extracted_answer": None,
        "error": timeout.error}  # fmt: skip
    for error in ("HTTP 503: overloaded (gave up after 7 attempts)", "connection error (ConnectionResetError: x)",
                  "context_overflow: the prompt leaves 3 tokens"):  # fmt: skip
        failed = _result("error", error)
        assert not failed.timed_out
        assert prediction_outcome(failed, None) == {
            "finish_reason": "error", "correct": None, "grade_reason": None, "extracted_answer": None, "error": error}
