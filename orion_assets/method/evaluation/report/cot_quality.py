"""The report's "CoT quality by variant" section: per student and trained variant, what its candidate SFT
CoTs look like (length, embedding coherence, similarity to the teacher, reflection markers, LLM-judge scores)
and the judge scores' paired difference over ``teacher_sft``.

Read from ``orion.cot_quality`` over every candidate, kept or dropped, so that the numbers describe what each
method produced, not what the gate let through. The metrics are defined in ``docs/quality.md``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from orion_assets.method.evaluation.paired import bootstrap_interval
from orion_assets.method.evaluation.report.comparison import BOOTSTRAP_SEED
from orion_assets.method.evaluation.report.format import MISSING, _md_table, _ordered, _round
from orion_assets.method.evaluation.report.scores import label, with_model_keys
from orion_assets.store import SCHEMA
from orion_assets.vocabulary import REFERENCE_VARIANT, VARIANTS

# cot_quality's metric columns this section reads; a store without one shows "—" in its cells.
METRIC_COLUMNS: dict[str, type[pl.DataType]] = {
    "n_tokens": pl.Int64, "coherence": pl.Float64, "teacher_similarity": pl.Float64, "reflection_markers": pl.Int64,
    "reflection_density": pl.Float64, "judge_coherence": pl.Int64, "judge_consistency": pl.Int64,
}  # fmt: skip
JUDGE_SCORES: dict[str, str] = {"judge_coherence": "coherence", "judge_consistency": "logical consistency"}
CONFIDENCE = 0.95
# Fewer resamples than pass@1's 10,000: scipy holds resamples x problems at once, and the training pool
# can hold thousands of problems (2,000 x 8,000 problems is ~130 MB); ample for a 95% percentile interval.
JUDGE_RESAMPLES = 2_000

VARIANT_SCHEMA: dict[str, type[pl.DataType]] = {
    "student": pl.Utf8, "variant": pl.Utf8, "candidates": pl.Int64, "tokens_mean": pl.Float64,
    "tokens_median": pl.Float64, "coherence_mean": pl.Float64, "coherence_n": pl.Int64,
    "similarity_mean": pl.Float64, "similarity_n": pl.Int64, "markers_mean": pl.Float64, "density_mean": pl.Float64,
    "judge_coherence_mean": pl.Float64, "judge_coherence_n": pl.Int64,
    "judge_consistency_mean": pl.Float64, "judge_consistency_n": pl.Int64,
}  # fmt: skip
DELTA_SCHEMA: dict[str, type[pl.DataType]] = {
    "student": pl.Utf8, "variant": pl.Utf8, "score": pl.Utf8, "delta": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "n_problems": pl.Int64,
}  # fmt: skip


def _with_metrics(cot_quality: pl.DataFrame) -> pl.DataFrame:
    """``cot_quality`` with every metric column (null where the store lacks it, NaN read as null), ``student``
    and ``source``."""
    missing = {c: t for c, t in {**METRIC_COLUMNS, "source": pl.Utf8}.items() if c not in cot_quality.columns}
    frame = with_model_keys(cot_quality).with_columns(pl.lit(None, dtype=t).alias(c) for c, t in missing.items())
    floats = [c for c, t in METRIC_COLUMNS.items() if t == pl.Float64]
    return frame.filter(pl.col("variant").is_not_null()).with_columns(  # a NaN is no value, as the gate reads it
        pl.col(floats).cast(pl.Float64).fill_nan(None))


def cot_variant_frame(cot_quality: pl.DataFrame) -> pl.DataFrame:
    """One row per (student, variant), students in order of appearance, variants in the canonical order.

    Over all candidates (kept and dropped): ``candidates``, ``tokens_mean`` / ``tokens_median`` (``n_tokens``),
    ``coherence_mean`` over the ``coherence_n`` candidates with a coherence (2+ steps), ``markers_mean``
    (``reflection_markers`` per CoT) and ``density_mean`` (per 100 words), each judge score's mean over the
    candidates it scored (``_n``). ``similarity_mean`` is over the ``similarity_n`` true rewrites
    (``source == 'refined'``; a teacher fallback is a copy, teacher_sft's CoTs are the teacher's). Null where
    no row has a value.
    """
    if cot_quality.is_empty() or "variant" not in cot_quality.columns:
        return pl.DataFrame(schema=VARIANT_SCHEMA)
    frame = _with_metrics(cot_quality)
    rewrites = pl.col("source") == "refined"
    stats = frame.group_by("student", "variant").agg(
        pl.len().alias("candidates"),
        pl.col("n_tokens").mean().alias("tokens_mean"),
        pl.col("n_tokens").median().alias("tokens_median"),
        pl.col("coherence").mean().alias("coherence_mean"),
        pl.col("coherence").count().alias("coherence_n"),
        pl.col("teacher_similarity").filter(rewrites).mean().alias("similarity_mean"),
        pl.col("teacher_similarity").filter(rewrites).count().alias("similarity_n"),
        pl.col("reflection_markers").mean().alias("markers_mean"),
        pl.col("reflection_density").mean().alias("density_mean"),
        *(e for c in JUDGE_SCORES for e in (pl.col(c).mean().alias(f"{c}_mean"), pl.col(c).count().alias(f"{c}_n"))),
    )
    students = list(dict.fromkeys(frame["student"].to_list()))
    order = [(s, v) for s in students
             for v in _ordered(stats.filter(pl.col("student") == s)["variant"].to_list(), VARIANTS)]
    keyed = {(r["student"], r["variant"]): r for r in stats.iter_rows(named=True)}
    return pl.DataFrame([keyed[key] for key in order], schema=VARIANT_SCHEMA)


def judge_delta_frame(
    cot_quality: pl.DataFrame, *, resamples: int = JUDGE_RESAMPLES, seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> pl.DataFrame:
    """Per student, variant other than ``teacher_sft`` and judge score: the mean over problems of the variant's
    per-problem mean score minus ``teacher_sft``'s on the same problem (``delta``, 1-5 points), over the
    ``n_problems`` problems where both have a score, with a percentile bootstrap interval over those problems
    (:func:`paired.bootstrap_interval`). Rows only where some candidate of the student has that score;
    ``delta`` null where no problem pairs."""
    if cot_quality.is_empty() or "variant" not in cot_quality.columns or "problem_id" not in cot_quality.columns:
        return pl.DataFrame(schema=DELTA_SCHEMA)
    frame = _with_metrics(cot_quality)
    rows: list[dict[str, object]] = []
    for student in dict.fromkeys(frame["student"].to_list()):
        mine = frame.filter(pl.col("student") == student)
        for variant in _ordered(mine["variant"].unique().to_list(), VARIANTS):
            if variant == REFERENCE_VARIANT:
                continue
            for score in JUDGE_SCORES:
                if mine[score].is_null().all():
                    continue
                per_problem = (mine.filter(pl.col(score).is_not_null())
                               .group_by("variant", "problem_id").agg(pl.col(score).cast(pl.Float64).mean()))
                ours = per_problem.filter(pl.col("variant") == variant).select("problem_id", pl.col(score).alias("a"))
                theirs = per_problem.filter(pl.col("variant") == REFERENCE_VARIANT).select("problem_id", pl.col(score).alias("b"))
                pairs = ours.join(theirs, on="problem_id", how="inner").sort("problem_id")
                differences = (pairs["a"] - pairs["b"]).to_numpy()
                delta = low = high = None
                if differences.size:
                    delta = float(np.mean(differences))
                    low, high = bootstrap_interval(differences, resamples=resamples, seed=seed, confidence=confidence)
                rows.append({"student": student, "variant": variant, "score": score, "delta": delta, "ci_low": low,
                             "ci_high": high, "n_problems": int(differences.size)})
    return pl.DataFrame(rows, schema=DELTA_SCHEMA)


def _fixed(value: float | None, digits: int, n: int | None = None) -> str:
    """``value`` rounded half up to ``digits`` (— when null), with ``(n)`` the rows behind it when given."""
    if value is None:
        return MISSING
    return f"{_round(value, digits)}" + (f" ({n:,})" if n is not None else "")


def _signed(value: float | None) -> str:
    return MISSING if value is None else f"{_round(value, 2):+}"


def _judge_delta_cell(row: dict | None) -> str:
    if row is None or row["delta"] is None:
        return MISSING
    low, high = row["ci_low"], row["ci_high"]
    star = "*" if low > 0 or high < 0 else ""
    return f"{_signed(row['delta'])}{star} [{_signed(low)}, {_signed(high)}] ({row['n_problems']:,})"


def cot_quality_section(cot_quality: pl.DataFrame | None) -> list[str]:
    """Markdown lines: a table per student of :func:`cot_variant_frame`, and when any candidate has a judge
    score, its columns and a table of :func:`judge_delta_frame`. Empty without ``cot_quality`` rows."""
    if cot_quality is None or cot_quality.is_empty() or "variant" not in cot_quality.columns:
        return []
    frame = cot_variant_frame(cot_quality)
    if frame.is_empty():
        return []
    judged = any(frame[f"{c}_n"].sum() for c in JUDGE_SCORES)
    header = ["variant", "candidates", "tokens, mean", "tokens, median", "coherence, mean (n)",
              "similarity to teacher, mean (n)", "reflection markers per CoT, mean", "markers per 100 words, mean"]
    if judged:
        header += [f"judge {name} (1-5), mean (n)" for name in JUDGE_SCORES.values()]
    parts = [
        "## CoT quality by variant\n",
        f"Every candidate SFT CoT in `{SCHEMA}.cot_quality`, kept and dropped by the quality gate alike (the "
        "gate's drops are under \"SFT data quality per variant\"); definitions in docs/quality.md. Tokens: the "
        "student tokenizer's. Coherence: the mean cosine similarity of the embeddings of adjacent reasoning steps, "
        "over the candidates with 2+ steps (n; a one-step CoT has none). Similarity to teacher: the share of a "
        "true rewrite's word 4-grams found in the teacher CoT it rewrites (1.0 = a copy), over the rewrites with "
        f"one (n; teacher fallbacks left out, none for `{REFERENCE_VARIANT}`: its CoTs are the teacher's). "
        "Reflection markers: phrases such as \"wait\", \"hmm\", \"let me check\", \"on second thought\", counted as "
        "whole words (`REFLECTION_MARKERS`). — where no candidate has a value.\n",
    ]
    if judged:
        parts.append("Judge scores: the LLM judge's 1-5 ratings of each candidate (`[endpoints.judge]`), mean over "
                     "the candidates it scored (n; an unreadable reply scores nothing).\n")
    else:
        parts.append("No judge scores: `judge_coherence` and `judge_consistency` are null in every row (the profile "
                     "sets no `[endpoints.judge]`, or no judge reply could be read).\n")
    students = list(dict.fromkeys(frame["student"].to_list()))
    for student in students:
        rows = []
        for r in frame.filter(pl.col("student") == student).iter_rows(named=True):
            row = [f"`{r['variant']}`", f"{r['candidates']:,}", _fixed(r["tokens_mean"], 1), _fixed(r["tokens_median"], 1),
                   _fixed(r["coherence_mean"], 3, r["coherence_n"]),
                   _fixed(r["similarity_mean"], 3, r["similarity_n"]),
                   _fixed(r["markers_mean"], 2), _fixed(r["density_mean"], 2)]
            if judged:
                row += [_fixed(r[f"{c}_mean"], 2, r[f"{c}_n"]) for c in JUDGE_SCORES]
            rows.append(row)
        parts += [f"### CoT quality — student `{student}`\n", _md_table(header, rows), ""]
    if judged:
        parts += _judge_delta_lines(judge_delta_frame(cot_quality), several=len(students) > 1)
    return parts


def _judge_delta_lines(deltas: pl.DataFrame, *, several: bool) -> list[str]:
    if deltas.is_empty():
        return []
    cells = {(r["student"], r["variant"], r["score"]): r for r in deltas.iter_rows(named=True)}
    models = list(dict.fromkeys(deltas.select("student", "variant").iter_rows()))
    rows = [[f"`{label(s, v, several)}`", *(_judge_delta_cell(cells.get((s, v, c))) for c in JUDGE_SCORES)]
            for s, v in models]
    return [
        f"### Judge scores: paired Δ over `{REFERENCE_VARIANT}`\n",
        f"Per problem, the mean judge score of the variant's candidates minus that of `{REFERENCE_VARIANT}`'s on "
        "the same problem, in points of the 1-5 scale; Δ is the mean over the problems both have a score for "
        f"(n), with a {CONFIDENCE:.0%} percentile bootstrap interval over those problems (B={JUDGE_RESAMPLES:,}, "
        f"seed {BOOTSTRAP_SEED}; `method.evaluation.paired.bootstrap_interval`); `*` where it excludes 0.\n",
        _md_table(["model" if several else "variant",
                   *(f"Δ judge {name} [{CONFIDENCE:.0%} CI] (n)" for name in JUDGE_SCORES.values())], rows),
        "",
    ]
