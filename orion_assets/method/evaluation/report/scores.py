"""The score tables: ``orion.benchmark_scores`` checked and averaged over seeds, the leaderboard frame, and
the maj@k, pass@k, CoT length and answer-format tables with the sentence on which rule graded GSM-Hard.

Every delta is taken against :data:`~orion_assets.vocabulary.REFERENCE_VARIANT` and the untrained
:data:`~orion_assets.vocabulary.BASE_VARIANT`, paired (``report.comparison``).
"""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import fields

import polars as pl

from orion_assets.method.evaluation.report.format import MISSING, _md_table, _number, _ordered, _pct
from orion_assets.method.evaluation.scoring import Scores
from orion_assets.store import SCHEMA
from orion_assets.vocabulary import BENCHMARKS, VARIANTS

KEYS: tuple[str, ...] = ("benchmark", "student", "variant", "seed")
# The columns of orion.benchmark_scores that the report reads: its keys, the Scores fields and the
# grading rule. A table may lack the Scores fields with a default, the grading rule, and the student and
# seed (a store written before several students): the report reads those as unknown, one student, seed 0.
SCORE_COLUMNS: tuple[str, ...] = (*KEYS, *(f.name for f in fields(Scores)), "grading_rule", "primary")
LATER_SCORE_COLUMNS: dict[str, type[pl.DataType]] = {
    **{f.name: pl.Float64 if f.type in (float, "float") else pl.Int64 for f in fields(Scores) if f.default is not NO_DEFAULT},
    "grading_rule": pl.Utf8,
    "primary": pl.Boolean,
}
ONE_STUDENT, ONE_SEED = "student", 0  # what a store without those columns held
RULE_DESCRIPTIONS: dict[str, str] = {  # the GRADING_RULES, and the two GSM-Hard rules of older tables
    "strict": "integer golds exactly, other golds at the precision the answer shows; a cut reply never correct",
    "qwen_math": "Qwen2.5-Math's math_equal, relative tolerance 1e-4, a cut reply read as it is, as most "
                 "published numbers",
    "lighteval": "lighteval's math-verify metric, numbers at 5 decimals, a boxed answer before the cut graded",
    "precision": "integer golds exactly, other golds at the precision the answer shows",
    "math_equal": "relative tolerance 1e-4, as most published GSM-Hard numbers",
}
AVERAGED = ("pass_at_1", "pass_at_1_se", "maj_at_k", "pass_at_k", "mean_tokens", "truncation_rate", "timeout_rate",
            "boxed_rate")


def with_model_keys(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``student`` and ``seed`` columns (one student, seed 0, where a store predates them)."""
    return frame.with_columns(
        *([] if "student" in frame.columns else [pl.lit(ONE_STUDENT).alias("student")]),
        *([] if "seed" in frame.columns else [pl.lit(ONE_SEED, dtype=pl.Int64).alias("seed")]),
    )


def _clean_scores(scores: pl.DataFrame | None, notes: list[str]) -> pl.DataFrame:
    if scores is None:
        notes.append(f"Table `{SCHEMA}.benchmark_scores` does not exist yet: materialize `benchmark_scores` first.")
        return pl.DataFrame(
            schema={c: pl.Float64 for c in SCORE_COLUMNS}
            | LATER_SCORE_COLUMNS
            | {"benchmark": pl.Utf8, "student": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64}
        )
    scores = with_model_keys(scores).with_columns(
        pl.lit(None, dtype=dtype).alias(column)
        for column, dtype in LATER_SCORE_COLUMNS.items()
        if column not in scores.columns
    )
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"{SCHEMA}.benchmark_scores lacks column(s) {', '.join(missing)}")
    if scores.is_empty():
        notes.append(f"Table `{SCHEMA}.benchmark_scores` is empty: no variant has been scored yet.")
    scores = scores.select(SCORE_COLUMNS)
    # one row per grading rule: the comparison is the `[eval] compat` one's (rule_table shows the others)
    scores = scores.filter(pl.col("primary").fill_null(True))
    duplicated = scores.height - scores.unique(list(KEYS)).height
    if duplicated:
        notes.append(
            f"`{SCHEMA}.benchmark_scores` holds {duplicated} duplicate (benchmark, student, variant, seed) row(s); "
            "the last of each is shown."
        )
        scores = scores.unique(list(KEYS), keep="last", maintain_order=True)
    return scores


def over_seeds(scores: pl.DataFrame) -> pl.DataFrame:
    """One row per (benchmark, student, variant): the scores' means over seeds, pass@1's sd over seeds
    (null for one seed) and the number of seeds."""
    return scores.group_by("benchmark", "student", "variant", maintain_order=True).agg(
        *(pl.col(c).cast(pl.Float64).fill_nan(None).mean() for c in AVERAGED),
        pl.col("pass_at_1").cast(pl.Float64).fill_nan(None).std(ddof=1).alias("pass_at_1_sd"),
        pl.col("seed").n_unique().alias("seeds"),
        *(pl.when(pl.col(c).is_not_null().any()).then(pl.col(c).sum()).alias(c)  # null where never recorded
          for c in ("n_errors", "n_unanswered_problems")),
        pl.col("n_problems").max(),
        pl.col("k").max(),
        pl.col("grading_rule").drop_nulls().first(),
    )


def model_order(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """(student, variant) pairs: students in order of appearance, variants in the canonical order."""
    students = list(dict.fromkeys(frame["student"].to_list()))
    pairs = set(frame.select("student", "variant").iter_rows())
    return [(s, v) for s in students for v in _ordered([v for t, v in pairs if t == s], VARIANTS)]


def label(student: str, variant: str, several: bool) -> str:
    return f"{student}/{variant}" if several else variant


def _cell(lookup: dict, student: str, variant: str, benchmark: str, column: str) -> float | None:
    row = lookup.get((student, variant, benchmark))
    return _number(row.get(column)) if row else None


def _score_tables(averaged: pl.DataFrame) -> list[str]:
    """maj@k, pass@k, length and truncation, and answer format, per (student, variant), means over seeds."""
    models = model_order(averaged)
    several = len({s for s, _ in models}) > 1
    benchmarks = _ordered(averaged["benchmark"].to_list(), BENCHMARKS)
    lookup = {(r["student"], r["variant"], r["benchmark"]): r for r in averaged.iter_rows(named=True)}
    parts: list[str] = []
    for column, title in (("maj_at_k", "maj@k"), ("pass_at_k", "pass@k")):
        ks = {int(k) for k in averaged["k"].drop_nulls()}
        uniform_k = next(iter(ks)) if len(ks) == 1 else None
        heading = title.replace("k", str(uniform_k)) if uniform_k is not None else title
        rows = []
        for student, variant in models:
            row = [f"`{label(student, variant, several)}`"]
            for benchmark in benchmarks:
                value = _cell(lookup, student, variant, benchmark, column)
                k = lookup[(student, variant, benchmark)]["k"] if (student, variant, benchmark) in lookup else None
                row.append(MISSING if value is None else _pct(value) if uniform_k is not None else f"{_pct(value)} (k={k})")
            rows.append(row)
        parts.append(f"## {heading} (%)\n")
        parts.append(_md_table(["model" if several else "variant", *benchmarks], rows) + "\n")

    rows = []
    for student, variant in models:
        row = [f"`{label(student, variant, several)}`"]
        for benchmark in benchmarks:
            tokens = _cell(lookup, student, variant, benchmark, "mean_tokens")
            truncation = _cell(lookup, student, variant, benchmark, "truncation_rate")
            timeouts = _cell(lookup, student, variant, benchmark, "timeout_rate")
            if tokens is None and truncation is None:
                row.append(MISSING)
            else:
                text = f"{MISSING if tokens is None else f'{tokens:.0f}'} / {_pct(truncation)}%"
                row.append(text + (f" / {_pct(timeouts)}% timed out" if timeouts else ""))
        rows.append(row)
    parts.append("## Mean CoT length (tokens) / truncated samples (%)\n")
    parts.append("A timed-out sample is a wrong answer (docs/scoring.md); its share is shown where there are any.\n")
    parts.append(_md_table(["model" if several else "variant", *benchmarks], rows) + "\n")

    rows = [
        [f"`{label(student, variant, several)}`", *(
            MISSING if (value := _cell(lookup, student, variant, benchmark, "boxed_rate")) is None else f"{_pct(value)}%"
            for benchmark in benchmarks
        )]
        for student, variant in models
    ]
    parts.append("## Answers in \\boxed{} (% of answered samples)\n")
    parts.append(
        "The share of replies whose final answer is a non-empty `\\boxed{}`, the format every SFT variant's data "
        "ends in; the grader reads other formats too, so this measures format learning, not accuracy.\n"
    )
    parts.append(_md_table(["model" if several else "variant", *benchmarks], rows) + "\n")

    counts = []
    for benchmark in benchmarks:
        ns = sorted({int(n) for n in averaged.filter(pl.col("benchmark") == benchmark)["n_problems"].drop_nulls()})
        if ns:
            counts.append(f"{benchmark} {ns[0]}" if len(ns) == 1 else f"{benchmark} {ns[0]}–{ns[-1]}")
    if counts:
        parts.append("Problems per benchmark: " + ", ".join(counts) + ".\n")
    return parts


def failed_calls_note(averaged: pl.DataFrame) -> list[str]:
    """What "(N failed calls)" in the pass@1 tables means, when there are any."""
    failed = averaged.filter(pl.col("n_errors").fill_null(0) > 0)
    if failed.is_empty():
        return []
    unanswered = int(failed["n_unanswered_problems"].fill_null(0).sum())
    return [
        "(N failed calls): samples whose endpoint call failed (over every seed); they are no answers, not wrong "
        "ones, so a score is over the answered samples and a delta over the problems both variants answered"
        + (f", and {unanswered} problem(s) without any answered sample are left out" if unanswered else "")
        + ". Re-materializing the partition sends only the failed calls again.\n"
    ]


def _grading_rule_sentence(scores: pl.DataFrame) -> str | None:
    """Which rule graded the numbers (``[eval] compat``), from the stored column."""
    rows = scores
    if rows.is_empty():
        return None
    by_rule: dict[str | None, list[str]] = {}
    for record in rows.unique(["student", "variant", "grading_rule"], maintain_order=True).iter_rows(named=True):
        by_rule.setdefault(record["grading_rule"], []).append(record["variant"])
    if len(by_rule) == 1:
        (rule,) = by_rule
        if rule is None:
            return (
                "These scores do not record which grading rule made them (scored before "
                "`grading_rule` was stored); re-materialize `benchmark_scores` to record it."
            )
        detail = f" ({RULE_DESCRIPTIONS[rule]})" if rule in RULE_DESCRIPTIONS else ""
        return f"Graded with the `{rule}` rule{detail} (`[eval] compat`; docs/grading.md)."
    described = "; ".join(
        f"{'not recorded' if rule is None else f'`{rule}`'} for {', '.join(f'`{v}`' for v in _ordered(variants, VARIANTS))}"
        for rule, variants in sorted(by_rule.items(), key=lambda item: (item[0] is None, item[0] or ""))
    )
    return (
        f"The numbers were graded with different rules ({described}): they are not comparable "
        "across those variants until all are re-graded with one `[eval] compat`."
    )


def rule_table(scores: pl.DataFrame | None) -> list[str]:
    """pass@1 (mean over seeds) under every grading rule the predictions were graded by, side by side, so a
    number can be set beside a published one graded by the same rule. Nothing when one rule was graded."""
    if scores is None or "grading_rule" not in scores.columns or scores["grading_rule"].drop_nulls().n_unique() < 2:
        return []
    frame = with_model_keys(scores).filter(pl.col("grading_rule").is_not_null())
    if "primary" not in frame.columns:
        frame = frame.with_columns(pl.lit(True).alias("primary"))
    means = frame.group_by("benchmark", "student", "variant", "grading_rule").agg(pl.col("pass_at_1").mean())
    rules = sorted(means["grading_rule"].unique(), key=lambda r: (r not in RULE_DESCRIPTIONS, r))
    primary = frame.filter(pl.col("primary").fill_null(True))["grading_rule"].drop_nulls()
    rules = sorted(rules, key=lambda r: r != (primary[0] if primary.len() else None))
    benchmarks = _ordered(means["benchmark"].to_list(), BENCHMARKS)
    models = model_order(means)
    several = len({s for s, _ in models}) > 1
    lookup = {(r["student"], r["variant"], r["benchmark"], r["grading_rule"]): r["pass_at_1"]
              for r in means.iter_rows(named=True)}
    rows = [[f"`{label(s, v, several)}`", *(MISSING if (x := _number(lookup.get((s, v, b, r)))) is None else _pct(x)
                                            for b in benchmarks for r in rules)] for s, v in models]
    header = ["model" if several else "variant", *(f"{b} `{r}`" for b in benchmarks for r in rules)]
    described = "; ".join(f"`{r}`: {RULE_DESCRIPTIONS.get(r, 'see docs/grading.md')}" for r in rules)
    return ["## pass@1 under each grading rule (%)\n",
            "The same replies graded by each rule (the first is `[eval] compat`, the one every table above uses): "
            f"{described}.\n",
            _md_table(header, rows) + "\n"]
