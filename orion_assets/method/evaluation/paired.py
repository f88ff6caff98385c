"""Paired comparison of two model variants on one benchmark: the difference in pass@1 over the
problems both answered, a bootstrap interval (over seeds then problems when both variants have
several SFT seeds, else over problems only) and an exact sign test.

Plain functions (no Dagster), numpy and scipy underneath; the statistics are specified in
``docs/scoring.md`` ("Paired comparisons").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from scipy import stats

from orion_assets.method.evaluation.scoring import ERROR_FINISH_REASON

PAIRED_COLUMNS: tuple[str, ...] = ("problem_id", "sample_index", "correct")
SINGLE_SEED = 0  # the seed of a frame without a ``seed`` column
METHOD_SEEDS = "two-level bootstrap over seeds then problems"
METHOD_ONE_RUN = "problems only, conditional on this training run"
METHOD_FIXED_RUNS = "problems only, conditional on these training runs"
BLOCK_CELLS = 100_000  # resamples x problems per block of the two-level bootstrap (cache-sized: faster than one big block)


@dataclass(frozen=True)
class PairedDelta:
    """``a`` minus ``b`` in pass@1 over their common problems (fractions, not percent).

    ``n_problems`` problems had at least one matched pair; ``n_left_out_a`` / ``n_left_out_b``
    count each variant's answered problems without one. ``n_positive`` / ``n_negative`` /
    ``n_ties`` count problems where a did better / worse / the same. ``method`` says what the
    interval resampled (``METHOD_SEEDS``, ``METHOD_ONE_RUN`` or ``METHOD_FIXED_RUNS``); ``rule``
    names the method with its settings.
    """

    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    significant: bool
    pass_at_1_a: float
    pass_at_1_b: float
    n_problems: int
    n_pairs: int
    n_left_out_a: int
    n_left_out_b: int
    n_seeds_a: int
    n_seeds_b: int
    n_positive: int
    n_negative: int
    n_ties: int
    pairing: str
    method: str
    resamples: int
    seed: int
    rule: str

    def to_row(self) -> dict[str, int | float | bool | str]:
        """The comparison as one table row (column name to value, in field order)."""
        return asdict(self)


def _graded(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """``seed``, ``problem_id``, ``sample_index``, ``correct`` (null is wrong) of the answered rows."""
    missing = [c for c in PAIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"paired_delta: variant {name} lacks column(s) {', '.join(missing)}")
    if "finish_reason" in frame.columns:  # a failed call is no answer (docs/scoring.md)
        frame = frame.filter(pl.col("finish_reason").fill_null("") != ERROR_FINISH_REASON)
    if frame.height == 0:
        raise ValueError(f"paired_delta: variant {name} has no answered predictions")
    if frame.schema["correct"] not in (pl.Boolean, pl.Null) and not frame.schema["correct"].is_integer():
        raise ValueError(f"paired_delta: variant {name}'s 'correct' is {frame.schema['correct']}, not boolean")
    seed = pl.col("seed").cast(pl.Int64) if "seed" in frame.columns else pl.lit(SINGLE_SEED, pl.Int64)
    graded = frame.select(
        seed.alias("seed"),
        pl.col("problem_id").cast(pl.Utf8),
        pl.col("sample_index").cast(pl.Int64),
        pl.col("correct").cast(pl.Boolean).fill_null(False).cast(pl.Int64),
    )
    for column in ("seed", "problem_id", "sample_index"):
        if graded[column].null_count():
            raise ValueError(f"paired_delta: variant {name} has null values in '{column}'")
    duplicated = graded.select("seed", "problem_id", "sample_index").is_duplicated()
    if duplicated.any():
        first = graded.filter(duplicated).row(0, named=True)
        raise ValueError(
            f"paired_delta: variant {name} has {int(duplicated.sum())} rows sharing (seed, problem_id, sample_index), "
            f"e.g. {first['seed']}, {first['problem_id']!r}, {first['sample_index']}"
        )
    return graded


def _pairs(a: pl.DataFrame, b: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """Matched rows (``seed``, ``problem_id``, ``correct_a``, ``correct_b``) and the pairing rule used;
    ``seed`` is the common seed when both variants have several, else a's."""
    seeds_a, seeds_b = a["seed"].n_unique(), b["seed"].n_unique()
    keys = ["problem_id", "sample_index"]
    if seeds_a == 1 and seeds_b == 1:
        rule = "one seed each: paired on (problem_id, sample_index)"
    elif seeds_a == 1:
        rule = f"a's one seed against each of b's {seeds_b} seeds, on (problem_id, sample_index)"
    elif seeds_b == 1:
        rule = f"each of a's {seeds_a} seeds against b's one seed, on (problem_id, sample_index)"
        b = b.drop("seed")
    else:
        rule = "paired on (seed, problem_id, sample_index)"
        keys = ["seed", *keys]
    joined = a.join(b, on=keys, how="inner", suffix="_b")
    pairs = joined.select("seed", "problem_id", pl.col("correct").alias("correct_a"), pl.col("correct_b"))
    return pairs, rule


def bootstrap_interval(
    differences: np.ndarray, *, resamples: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile interval of the mean of per-problem ``differences``, problems resampled with
    replacement (``scipy.stats.bootstrap``, ``rng`` seeded with ``seed``)."""
    if differences.size == 1:  # one problem: every resample is that problem
        value = float(differences[0])
        return value, value
    result = stats.bootstrap(
        (differences,), np.mean, n_resamples=resamples, method="percentile", confidence_level=confidence,
        vectorized=True, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` resamples of ``n`` items with replacement, as how often each item was drawn (rows x n)."""
    draws = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def two_level_interval(
    wins_a: np.ndarray, wins_b: np.ndarray, pairs: np.ndarray, *, resamples: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile interval of the mean per-problem difference by a two-level bootstrap: each resample
    draws a's seeds and b's seeds with replacement (independently: they are different training runs),
    then the problems with replacement (the same problems for both, keeping the pairing). ``wins_*`` and
    ``pairs`` are seeds x problems: correct answers and matched pairs per (seed, problem). Davison &
    Hinkley (1997) §3.8; for seeds crossed with problems, Owen (2007), "The pigeonhole bootstrap"."""
    n_seeds, n_problems = pairs.shape
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_CELLS // n_problems)
    means = np.empty(resamples)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        seeds_a, seeds_b = _counts(rng, rows, n_seeds), _counts(rng, rows, n_seeds)
        problems = _counts(rng, rows, n_problems)
        n_a, n_b = seeds_a @ pairs, seeds_b @ pairs  # matched pairs per (resample, problem) on each side
        answered = (n_a > 0) & (n_b > 0)  # a problem only some seeds answered may drop out of a resample
        with np.errstate(invalid="ignore", divide="ignore"):
            differences = np.where(answered, (seeds_a @ wins_a) / n_a - (seeds_b @ wins_b) / n_b, 0.0)
            weights = problems * answered
            means[start : start + rows] = (weights * differences).sum(axis=1) / weights.sum(axis=1)
    means = means[np.isfinite(means)]  # a resample of problems none of its seeds answered: no mean
    if not means.size:
        raise ValueError("paired_delta: no resample of seeds and problems left a problem both variants answered")
    low, high = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def sign_test(n_positive: int, n_negative: int) -> float:
    """Two-sided exact binomial (sign) test of ``n_positive`` against ``n_negative`` (ties dropped
    by the caller), p = 1/2; 1.0 when nothing is left to test."""
    n = n_positive + n_negative
    if n == 0:
        return 1.0
    return float(stats.binomtest(n_positive, n, 0.5, alternative="two-sided").pvalue)


def _seed_matrices(pairs: pl.DataFrame, problems: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a's and b's correct answers and the matched pairs per (seed, problem), seeds x problems, the
    problems in the order of ``problems``; a cell no seed answered holds 0 pairs."""
    cells = pairs.group_by("seed", "problem_id").agg(
        pl.len().alias("n"), pl.col("correct_a").sum().alias("c_a"), pl.col("correct_b").sum().alias("c_b")
    )
    seeds = sorted(cells["seed"].unique().to_list())
    row = cells["seed"].replace_strict(seeds, list(range(len(seeds))), return_dtype=pl.Int64).to_numpy()
    column = cells["problem_id"].replace_strict(problems, pl.int_range(problems.len(), eager=True), return_dtype=pl.Int64)
    shape = (len(seeds), problems.len())
    matrices = []
    for name in ("c_a", "c_b", "n"):
        matrix = np.zeros(shape)
        matrix[row, column.to_numpy()] = cells[name].to_numpy()
        matrices.append(matrix)
    return matrices[0], matrices[1], matrices[2]


def paired_delta(
    a: pl.DataFrame, b: pl.DataFrame, *, resamples: int = 10000, seed: int = 0, confidence: float = 0.95,
    over_seeds: bool = True,
) -> PairedDelta:
    """pass@1 of ``a`` minus that of ``b`` on one benchmark, paired by problem, with a bootstrap
    interval and a sign test. Both variants with two or more (common) seeds and ``over_seeds``: the
    two-level bootstrap over seeds then problems (:func:`two_level_interval`); else over problems only,
    conditional on the training runs. The rules are in ``docs/scoring.md``."""
    if resamples < 1:
        raise ValueError(f"paired_delta needs resamples >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_delta needs 0 < confidence < 1, got {confidence}")
    graded_a, graded_b = _graded(a, "a"), _graded(b, "b")
    pairs, pairing = _pairs(graded_a, graded_b)
    if pairs.height == 0:
        raise ValueError(
            "paired_delta: the variants share no (problem_id, sample_index) pair"
            + ("" if graded_a["seed"].n_unique() == 1 or graded_b["seed"].n_unique() == 1 else " on a common seed")
        )
    per_problem = pairs.group_by("problem_id").agg(
        pl.len().alias("n"), pl.col("correct_a").sum().alias("c_a"), pl.col("correct_b").sum().alias("c_b")
    ).sort("problem_id")
    n = per_problem["n"].to_numpy().astype(np.float64)
    wins_a, wins_b = per_problem["c_a"].to_numpy(), per_problem["c_b"].to_numpy()
    differences = (wins_a - wins_b) / n  # exactly 0.0 where the counts agree: a tie
    several = min(graded_a["seed"].n_unique(), graded_b["seed"].n_unique(), pairs["seed"].n_unique()) > 1
    settings = f"percentile, B={resamples}, seed={seed}, confidence={confidence:g}"
    if several and over_seeds:
        seed_wins_a, seed_wins_b, seed_pairs = _seed_matrices(pairs, per_problem["problem_id"])
        low, high = two_level_interval(seed_wins_a, seed_wins_b, seed_pairs, resamples=resamples, seed=seed,
                                       confidence=confidence)
        method = METHOD_SEEDS
        rule = (f"paired {METHOD_SEEDS} (a's and b's seeds resampled independently, then the common problems, "
                f"the same ones for both), {settings}")
    else:
        low, high = bootstrap_interval(differences, resamples=resamples, seed=seed, confidence=confidence)
        method = METHOD_FIXED_RUNS if several else METHOD_ONE_RUN
        why = "seeds not resampled" if several else "one seed on a side cannot show retraining noise"
        rule = (f"paired bootstrap over {method} (seeds and samples of a problem resampled together, {why}), "
                f"{settings}")
    rule += "; p: two-sided exact sign test over per-problem differences, ties dropped"
    n_positive, n_negative = int((differences > 0).sum()), int((differences < 0).sum())
    common = set(per_problem["problem_id"].to_list())
    return PairedDelta(
        delta=float(differences.mean()),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=sign_test(n_positive, n_negative),
        significant=not low <= 0.0 <= high,
        pass_at_1_a=float((wins_a / n).mean()),
        pass_at_1_b=float((wins_b / n).mean()),
        n_problems=len(common),
        n_pairs=pairs.height,
        n_left_out_a=graded_a["problem_id"].n_unique() - len(common),
        n_left_out_b=graded_b["problem_id"].n_unique() - len(common),
        n_seeds_a=graded_a["seed"].n_unique(),
        n_seeds_b=graded_b["seed"].n_unique(),
        n_positive=n_positive,
        n_negative=n_negative,
        n_ties=len(common) - n_positive - n_negative,
        pairing=pairing,
        method=method,
        resamples=resamples,
        seed=seed,
        rule=rule,
    )


def seed_summary(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """(mean, sample standard deviation with ddof=1, n) of one score over SFT seeds; the standard
    deviation is NaN for a single seed (one run says nothing about the seed-to-seed spread)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("seed_summary needs at least one value")
    if not np.isfinite(array).all():
        raise ValueError(f"seed_summary: non-finite value(s) among {array.tolist()}")
    sd = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), sd, int(array.size)
