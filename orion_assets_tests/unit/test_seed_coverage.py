"""Seed-to-seed training noise in the paired interval: with several SFT seeds per variant the default
interval is the two-level bootstrap (seeds, then problems) and covers a known delta under seed noise
where the problem-only interval does not; one seed on a side keeps the problem-only interval,
labelled conditional on the training run."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest
from scipy import stats

from orion_assets.method.evaluation.paired import (
    METHOD_FIXED_RUNS,
    METHOD_ONE_RUN,
    METHOD_SEEDS,
    paired_delta,
    two_level_interval,
)
from orion_assets.method.evaluation.report.comparison import interval_rule, paired_deltas
from orion_assets.method.evaluation.report.curves import _short_rule


def frame(correct: np.ndarray) -> pl.DataFrame:
    """Graded predictions from a seeds x problems x samples array of booleans."""
    seeds, problems, samples = correct.shape
    grid = np.indices(correct.shape).reshape(3, -1)
    return pl.DataFrame({"seed": grid[0], "problem_id": [f"p{i:03d}" for i in grid[1]], "sample_index": grid[2],
                         "correct": correct.ravel()})


def test_the_two_level_interval_covers_a_known_delta_under_seed_noise() -> None:
    """150 problems drawn afresh each replication, b's success probability uniform in [0.2, 0.7] and
    a's higher by a per-problem gain uniform in [0, 0.1]; every training run (3 seeds per variant, drawn
    independently for a and b) shifts all its probabilities by a seed effect ~ N(0, 0.0325); k = 4
    samples. The true delta, over problems and training runs, is 0.05 (no probability is clipped). Over
    250 replications (B = 500) the two-level interval covers it 0.928 of the time, the problem-only one
    0.688: it leaves out the seed effects. (1000 replications: 0.936 and 0.672. With 3 seeds the
    two-level interval runs short as seed noise grows, 0.85 at a seed sd of 0.08, and long without
    seed noise, 0.99 and 1.5 times as wide as the problem-only one: docs/scoring.md.)"""
    n_problems, n_seeds, k, seed_sd, true_delta, replications = 150, 3, 4, 0.0325, 0.05, 250
    rng = np.random.default_rng(20240611)
    covered = {True: 0, False: 0}
    for replication in range(replications):
        p_b = rng.uniform(0.2, 0.7, n_problems)
        p_a = p_b + rng.uniform(0.0, 0.1, n_problems)
        q_a = p_a[None, :] + rng.normal(0.0, seed_sd, (n_seeds, 1))
        q_b = p_b[None, :] + rng.normal(0.0, seed_sd, (n_seeds, 1))
        assert 0.0 < q_a.min() and q_a.max() < 1.0 and 0.0 < q_b.min() and q_b.max() < 1.0  # the delta is exact
        a = frame(rng.random((n_seeds, n_problems, k)) < q_a[..., None])
        b = frame(rng.random((n_seeds, n_problems, k)) < q_b[..., None])
        for over_seeds in (True, False):
            result = paired_delta(a, b, resamples=500, seed=replication, over_seeds=over_seeds)
            covered[over_seeds] += result.ci_low <= true_delta <= result.ci_high
    two_level, problems_only = covered[True] / replications, covered[False] / replications
    assert two_level >= 0.90, f"two-level coverage {two_level:.3f}, problem-only {problems_only:.3f}"
    assert problems_only <= 0.75, f"problem-only coverage {problems_only:.3f}, two-level {two_level:.3f}"


def reviewer_case(a_rates: tuple[float, float, float]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """200 problems, one sample, 3 seeds per variant: b right with probability 0.5 on every seed, a's
    seed s with probability ``a_rates[s]``."""
    rng = np.random.default_rng(7)
    a = rng.random((3, 200, 1)) < np.asarray(a_rates)[:, None, None]
    b = rng.random((3, 200, 1)) < 0.5
    return frame(a), frame(b)


def test_seeds_far_apart_give_a_wider_interval_than_seeds_alike() -> None:
    """The reviewer's case: a's seeds at 0.9, 0.2, 0.5 disagree by 70 points; at 0.53 each they agree.
    The problem-only interval is about 0.11 wide in both; the two-level one widens with the spread."""
    alike, apart = reviewer_case((0.53, 0.53, 0.53)), reviewer_case((0.9, 0.2, 0.5))
    width = {}
    for name, (a, b) in {"alike": alike, "apart": apart}.items():
        for over_seeds in (True, False):
            result = paired_delta(a, b, over_seeds=over_seeds)
            assert result.method == (METHOD_SEEDS if over_seeds else METHOD_FIXED_RUNS)
            width[name, over_seeds] = result.ci_high - result.ci_low
    assert 0.09 < width["alike", False] < 0.14 and 0.09 < width["apart", False] < 0.14  # the finding
    assert width["alike", True] < 0.2  # agreeing seeds add little
    assert width["apart", True] > 3 * width["alike", True], width
    assert width["apart", True] > 3 * width["apart", False], width


def test_one_seed_on_a_side_keeps_the_problem_only_interval() -> None:
    rng = np.random.default_rng(11)
    a, b = frame(rng.random((1, 40, 4)) < 0.6), frame(rng.random((1, 40, 4)) < 0.5)
    result = paired_delta(a, b, resamples=2000, seed=3)
    # today's interval: scipy's percentile bootstrap of the per-problem differences, rng seeded with `seed`
    per_problem = a.join(b, on=["problem_id", "sample_index"], suffix="_b").group_by("problem_id").agg(
        (pl.col("correct").cast(pl.Int64) - pl.col("correct_b").cast(pl.Int64)).mean().alias("d")).sort("problem_id")
    today = stats.bootstrap((per_problem["d"].to_numpy(),), np.mean, n_resamples=2000, method="percentile",
                            confidence_level=0.95, vectorized=True, rng=np.random.default_rng(3))
    assert (result.ci_low, result.ci_high) == (today.confidence_interval.low, today.confidence_interval.high)
    assert result.method == METHOD_ONE_RUN and "conditional on this training run" in result.rule
    assert result.method in result.rule and "B=2000, seed=3" in result.rule
    # one seed against three (the untrained base against a trained variant): the same rule
    three = frame(rng.random((3, 40, 4)) < 0.5)
    for one_against_three in (paired_delta(a, three), paired_delta(three, a)):
        assert one_against_three.method == METHOD_ONE_RUN and "conditional on this training run" in one_against_three.rule
    # several seeds each but only one in common: one training run per side is paired
    shifted = frame(rng.random((2, 40, 4)) < 0.5).with_columns(pl.col("seed") + 1)  # seeds 1, 2 against 0, 1, 2
    assert paired_delta(three.filter(pl.col("seed") < 2), shifted).method == METHOD_ONE_RUN


def test_the_two_level_interval_handles_problems_some_seeds_lack() -> None:
    """A problem only one seed answered stays in the delta; a resample without that seed leaves it out."""
    rng = np.random.default_rng(3)
    a, b = frame(rng.random((3, 30, 2)) < 0.6), frame(rng.random((3, 30, 2)) < 0.4)
    a = a.filter(~((pl.col("problem_id") == "p000") & (pl.col("seed") > 0)))  # p000: seed 0 only
    result = paired_delta(a, b, resamples=2000)
    assert result.method == METHOD_SEEDS and result.n_problems == 30 and result.n_left_out_b == 0
    assert np.isfinite([result.ci_low, result.ci_high]).all() and result.ci_low <= result.delta <= result.ci_high


def test_the_two_level_interval_is_reproducible_and_fast() -> None:
    """B = 10 000 resamples of 500 problems x 5 seeds: the same seed gives the same interval, well under
    a second of work (the bound here leaves room for a busy machine)."""
    rng = np.random.default_rng(1)
    wins_a, wins_b = rng.binomial(4, 0.6, (5, 500)).astype(float), rng.binomial(4, 0.5, (5, 500)).astype(float)
    pairs = np.full((5, 500), 4.0)
    start = time.perf_counter()
    first = two_level_interval(wins_a, wins_b, pairs, resamples=10_000, seed=0, confidence=0.95)
    elapsed = time.perf_counter() - start
    assert first == two_level_interval(wins_a, wins_b, pairs, resamples=10_000, seed=0, confidence=0.95)
    assert first != two_level_interval(wins_a, wins_b, pairs, resamples=10_000, seed=1, confidence=0.95)
    assert first[0] < 0.1 < first[1]  # the true delta, 4 x (0.6 - 0.5) / 4
    assert elapsed < 5.0, elapsed


@pytest.mark.parametrize("over_seeds", [True, False])
def test_identical_variants_still_give_a_zero_interval(over_seeds: bool) -> None:
    a = frame(np.random.default_rng(0).random((3, 20, 2)) < 0.5)
    result = paired_delta(a, a, resamples=300, over_seeds=over_seeds)
    # two-level: a's and b's seeds are resampled independently, so the interval has width even here
    assert result.delta == 0.0 and result.p_value == 1.0
    if not over_seeds:
        assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    else:
        assert result.ci_low <= 0.0 <= result.ci_high


def test_the_report_names_the_method_of_each_delta() -> None:
    """Three seeds of `teacher_sft` and `orion`, one of `base`: the delta over `teacher_sft` is two-level, every
    delta over `base` conditional on its training run, and the report's rule says which is which."""
    rng = np.random.default_rng(0)
    frames = []
    for variant, seeds in (("base", 1), ("teacher_sft", 3), ("orion", 3)):
        frames.append(frame(rng.random((seeds, 30, 2)) < 0.5).with_columns(
            benchmark=pl.lit("gsm8k"), student=pl.lit("tiny"), variant=pl.lit(variant), finish_reason=pl.lit("stop")))
    deltas = paired_deltas(pl.concat(frames, how="diagonal"), resamples=300)
    methods = {(r["variant"], r["against"]): r["method"] for r in deltas.iter_rows(named=True)}
    assert methods == {("orion", "teacher_sft"): METHOD_SEEDS, ("orion", "base"): METHOD_ONE_RUN,
                       ("base", "teacher_sft"): METHOD_ONE_RUN, ("teacher_sft", "base"): METHOD_ONE_RUN}
    text = interval_rule(deltas)
    assert text.startswith("paired bootstrap, percentile, B=300, seed=0: ") and "; p: two-sided exact sign test" in text
    assert f"{METHOD_ONE_RUN} for Δ `teacher_sft` (`base`) and Δ `base`" in text
    assert f"{METHOD_SEEDS} for Δ `teacher_sft` (`orion`)" in text
    # the plot of the deltas over teacher_sft: its caption, without the p-value's half
    caption = _short_rule(interval_rule(deltas, "teacher_sft"))
    assert METHOD_SEEDS in caption and METHOD_ONE_RUN in caption and "sign test" not in caption
    only_orion = deltas.filter(pl.col("variant") == "orion", pl.col("against") == "teacher_sft")
    assert interval_rule(only_orion) == only_orion["rule"][0]  # one method: its full rule
    assert _short_rule(only_orion["rule"][0]) == f"paired {METHOD_SEEDS}, percentile, B=300, seed=0, confidence=0.95"
