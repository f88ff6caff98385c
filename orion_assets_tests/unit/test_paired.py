"""Paired comparisons of two variants: hand-checked cases, the pairing rules, and the bootstrap
interval's coverage on synthetic data with a known difference."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from orion_assets.method.evaluation.paired import PairedDelta, paired_delta, seed_summary, sign_test


def graded(rows: list[tuple], *, seed: bool = False) -> pl.DataFrame:
    """(problem_id, sample_index, correct) rows, or (seed, problem_id, sample_index, correct)."""
    schema = {"problem_id": pl.Utf8, "sample_index": pl.Int64, "correct": pl.Boolean}
    if seed:
        schema = {"seed": pl.Int64, **schema}
    return pl.DataFrame(rows, schema=schema, orient="row")


# p1: a 2/2, b 1/2 -> +0.5;  p2: a 0/2 (one null = wrong), b 0/2 -> 0;  p3: a 1/2, b 0/2 -> +0.5
A = graded([("p1", 0, True), ("p1", 1, True), ("p2", 0, False), ("p2", 1, None), ("p3", 0, True), ("p3", 1, False)])
B = graded([("p1", 0, False), ("p1", 1, True), ("p2", 0, False), ("p2", 1, False), ("p3", 0, False), ("p3", 1, False)])


def test_a_hand_checked_case() -> None:
    result = paired_delta(A, B, resamples=2000, seed=1)
    assert result.delta == pytest.approx(1 / 3)  # (0.5 + 0 + 0.5) / 3
    assert result.pass_at_1_a == pytest.approx(0.5) and result.pass_at_1_b == pytest.approx(1 / 6)
    assert (result.n_problems, result.n_pairs, result.n_left_out_a, result.n_left_out_b) == (3, 6, 0, 0)
    assert (result.n_positive, result.n_negative, result.n_ties) == (2, 0, 1)
    assert result.p_value == pytest.approx(0.5)  # two of two non-tied problems favour a: 2 * (1/2)^2
    # resamples of {0.5, 0, 0.5}: the mean takes values k/6, from 0 (all p2) to 0.5 (no p2)
    assert 0.0 <= result.ci_low <= result.delta <= result.ci_high <= 0.5
    assert result.significant == (result.ci_low > 0)
    assert "bootstrap over problems" in result.rule and "B=2000" in result.rule and "seed=1" in result.rule
    assert "sign test" in result.rule
    row = result.to_row()
    assert row["delta"] == result.delta and row["rule"] == result.rule and list(row) == list(PairedDelta.__dataclass_fields__)


def test_identical_variants_give_delta_zero_and_p_one() -> None:
    result = paired_delta(A, A)
    assert result.delta == 0.0 and result.p_value == 1.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0) and not result.significant
    assert result.n_ties == result.n_problems == 3


def test_one_sided_wins_are_significant() -> None:
    rows_a = [(f"p{i}", 0, True) for i in range(12)]
    rows_b = [(f"p{i}", 0, False) for i in range(12)]
    result = paired_delta(graded(rows_a), graded(rows_b), resamples=500)
    assert result.delta == 1.0 and result.significant
    assert result.p_value == pytest.approx(2 * 0.5**12)
    assert sign_test(3, 3) == pytest.approx(1.0) and sign_test(0, 0) == 1.0
    assert sign_test(0, 10) == pytest.approx(sign_test(10, 0))  # two-sided


def test_pairing_drops_problems_only_one_variant_answered() -> None:
    # a has p4 (b never answered it), b has p5 and a failed call on p1; a's p3 sample 1 has no partner.
    a = graded([("p1", 0, True), ("p1", 1, True), ("p3", 0, True), ("p3", 1, True), ("p4", 0, True)])
    b = pl.DataFrame(
        {
            "problem_id": ["p1", "p1", "p3", "p5"],
            "sample_index": [0, 1, 0, 0],
            "correct": [False, None, False, True],
            "finish_reason": ["stop", "error", "stop", "stop"],
        }
    )
    result = paired_delta(a, b, resamples=200)
    # pairs: (p1, 0) and (p3, 0): both a right, b wrong -> delta 1 over 2 problems
    assert (result.n_problems, result.n_pairs) == (2, 2)
    assert result.n_left_out_a == 1 and result.n_left_out_b == 1  # p4, p5
    assert result.delta == 1.0


def test_seeds_are_paired_and_a_single_seed_is_paired_against_each() -> None:
    # Two SFT seeds of a; on p1 seed 0 solves both samples, seed 1 neither.
    a = graded([(0, "p1", 0, True), (0, "p1", 1, True), (1, "p1", 0, False), (1, "p1", 1, False),
                (0, "p2", 0, True), (1, "p2", 0, True)], seed=True)  # fmt: skip
    base = graded([("p1", 0, True), ("p1", 1, False), ("p2", 0, False)])  # the untrained base: one seed
    result = paired_delta(a, base, resamples=200)
    assert result.n_seeds_a == 2 and result.n_seeds_b == 1 and "each of a's 2 seeds" in result.pairing
    # p1: a 2/4, base (broadcast to both seeds) 2/4 -> 0;  p2: a 2/2, base 0/2 -> 1
    assert result.n_pairs == 6 and result.delta == pytest.approx(0.5)
    assert paired_delta(base, a, resamples=200).delta == pytest.approx(-0.5)

    # Both with several seeds: only matching seeds pair (b's seed 2 has no partner).
    b = graded([(0, "p1", 0, False), (0, "p1", 1, False), (1, "p1", 0, False), (1, "p1", 1, False),
                (2, "p2", 0, False), (2, "p2", 1, False)], seed=True)  # fmt: skip
    both = paired_delta(a, b, resamples=200)
    assert "(seed, problem_id, sample_index)" in both.pairing
    assert (both.n_problems, both.n_pairs, both.n_left_out_a, both.n_left_out_b) == (1, 4, 1, 1)  # p2 in each
    assert both.delta == pytest.approx(0.5)  # p1: a 2/4 against b 0/4


def test_bad_input_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="lacks column"):
        paired_delta(A.drop("sample_index"), B)
    with pytest.raises(ValueError, match="share no"):
        paired_delta(A, graded([("q1", 0, True)]))
    with pytest.raises(ValueError, match="sharing"):
        paired_delta(pl.concat([A, A]), B)
    with pytest.raises(ValueError, match="resamples"):
        paired_delta(A, B, resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_delta(A, B, confidence=1.0)
    with pytest.raises(ValueError, match="no answered"):
        paired_delta(A.with_columns(finish_reason=pl.lit("error")), B)


def test_the_interval_is_reproducible_for_a_seed() -> None:
    rng = np.random.default_rng(5)
    a = graded([(f"p{i}", j, bool(rng.random() < 0.6)) for i in range(30) for j in range(4)])
    b = graded([(f"p{i}", j, bool(rng.random() < 0.5)) for i in range(30) for j in range(4)])
    first, again = paired_delta(a, b, resamples=1000, seed=3), paired_delta(a, b, resamples=1000, seed=3)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    # Other seeds draw other resamples (the means are multiples of 1/120, so two seeds' endpoints may agree).
    others = [paired_delta(a, b, resamples=1000, seed=s) for s in range(4, 10)]
    assert len({(o.ci_low, o.ci_high) for o in others}) > 1 and {o.delta for o in others} == {first.delta}
    shuffled = paired_delta(a.sample(fraction=1.0, shuffle=True, seed=9), b, resamples=1000, seed=3)
    assert (shuffled.ci_low, shuffled.ci_high) == (first.ci_low, first.ci_high)  # row order does not matter


def test_the_95_percent_interval_covers_a_known_difference() -> None:
    """60 problems drawn afresh each replication, b's success probability uniform in [0.15, 0.8] and
    a's 0.05 higher (true delta 0.05), k = 4 samples: the interval's empirical coverage over 500
    replications (B = 1000) is within binomial tolerance of 0.95 (the percentile bootstrap runs a
    little short at 60 problems: about 0.94)."""
    n_problems, k, replications = 60, 4, 500
    rng = np.random.default_rng(2024)
    problem_ids = np.repeat([f"p{i:02d}" for i in range(n_problems)], k)
    sample_index = np.tile(np.arange(k), n_problems)
    covered = 0
    for replication in range(replications):
        p_b = rng.uniform(0.15, 0.8, n_problems)
        p_a = p_b + 0.05
        correct_a = rng.random((n_problems, k)) < p_a[:, None]
        correct_b = rng.random((n_problems, k)) < p_b[:, None]
        a = pl.DataFrame({"problem_id": problem_ids, "sample_index": sample_index, "correct": correct_a.ravel()})
        b = pl.DataFrame({"problem_id": problem_ids, "sample_index": sample_index, "correct": correct_b.ravel()})
        result = paired_delta(a, b, resamples=1000, seed=replication)
        covered += result.ci_low <= 0.05 <= result.ci_high
    assert 0.90 <= covered / replications <= 0.985, covered / replications


def test_seed_summary() -> None:
    mean, sd, n = seed_summary([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and sd == pytest.approx(0.1) and n == 3
    mean, sd, n = seed_summary([0.42])
    assert mean == 0.42 and math.isnan(sd) and n == 1
    with pytest.raises(ValueError, match="at least one"):
        seed_summary([])
    with pytest.raises(ValueError, match="non-finite"):
        seed_summary([0.5, float("nan")])
