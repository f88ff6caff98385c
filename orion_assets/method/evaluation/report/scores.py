"""The score tables: ``orion.benchmark_scores`` checked, the leaderboard frame, and the pass@1, maj@k,
pass@k and CoT length tables with the sentence on which rule graded GSM-Hard.

Every delta is taken against :data:`~orion_assets.vocabulary.REFERENCE_VARIANT`.
"""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import fields

import polars as pl

from orion_assets.method.evaluation.report.format import MISSING, _count, _delta, _md_table, _number, _ordered, _pct
from orion_assets.method.evaluation.scoring import Scores
from orion_assets.store import SCHEMA
from orion_assets.vocabulary import BENCHMARKS, REFERENCE_VARIANT, VARIANTS

# The columns of orion.benchmark_scores that the report reads: its keys, the Scores fields and the
# grading rule. A table may lack the Scores fields with a default (failed-call counts) and the
# grading rule: the report reads those as unknown (null).
SCORE_COLUMNS: tuple[str, ...] = ("benchmark", "variant", *(f.name for f in fields(Scores)), "grading_rule")
LATER_SCORE_COLUMNS: dict[str, type[pl.DataType]] = {
    **{f.name: pl.Float64 if f.type in (float, "float") else pl.Int64 for f in fields(Scores) if f.default is not NO_DEFAULT},
    "grading_rule": pl.Utf8,
}
GSM_HARD = "gsm_hard"  # the benchmark whose numbers the grading rule (`[eval] compat`) changes most
RULE_DESCRIPTIONS: dict[str, str] = {  # the GRADING_RULES, and the two GSM-Hard rules of older tables
    "strict": "integer golds exactly, other golds at the precision the answer shows; a cut reply never correct",
    "qwen_math": "Qwen2.5-Math's math_equal, relative tolerance 1e-4, as most published GSM-Hard numbers",
    "lighteval": "lighteval's math-verify metric, numbers at 5 decimals",
    "precision": "integer golds exactly, other golds at the precision the answer shows",
    "math_equal": "relative tolerance 1e-4, as most published GSM-Hard numbers",
}


def _clean_scores(scores: pl.DataFrame | None, notes: list[str]) -> pl.DataFrame:
    if scores is None:
        notes.append(f"Table `{SCHEMA}.benchmark_scores` does not exist yet: materialize `benchmark_scores` first.")
        return pl.DataFrame(
            schema={c: pl.Float64 for c in SCORE_COLUMNS}
            | LATER_SCORE_COLUMNS
            | {"benchmark": pl.Utf8, "variant": pl.Utf8}
        )
    scores = scores.with_columns(
        pl.lit(None, dtype=dtype).alias(column)
        for column, dtype in LATER_SCORE_COLUMNS.items()
        if column not in scores.columns
    )
    if "primary" in scores.columns:  # one row per grading rule: the report shows the `[eval] compat` one
        scores = scores.filter(pl.col("primary").fill_null(True))
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"{SCHEMA}.benchmark_scores lacks column(s) {', '.join(missing)}")
    if scores.is_empty():
        notes.append(f"Table `{SCHEMA}.benchmark_scores` is empty: no variant has been scored yet.")
    scores = scores.select(SCORE_COLUMNS)
    duplicated = scores.height - scores.unique(["benchmark", "variant"]).height
    if duplicated:
        notes.append(
            f"`{SCHEMA}.benchmark_scores` holds {duplicated} duplicate (benchmark, variant) row(s); the last of each is shown."
        )
        scores = scores.unique(["benchmark", "variant"], keep="last", maintain_order=True)
    return scores


def leaderboard_frame(scores: pl.DataFrame) -> pl.DataFrame:
    """One row per variant: per benchmark pass@1, its SE, the delta over teacher_sft (points) and
    the number of failed endpoint calls left out of the score (null where not recorded)."""
    variants = _ordered(scores["variant"].to_list(), VARIANTS)
    benchmarks = _ordered(scores["benchmark"].to_list(), BENCHMARKS)
    lookup = {(r["variant"], r["benchmark"]): r for r in scores.iter_rows(named=True)}
    rows: list[dict[str, object]] = []
    for variant in variants:
        row: dict[str, object] = {"variant": variant}
        for benchmark in benchmarks:
            cell = lookup.get((variant, benchmark))
            ref = lookup.get((REFERENCE_VARIANT, benchmark))
            value = _number(cell["pass_at_1"]) if cell else None
            ref_value = _number(ref["pass_at_1"]) if ref else None
            row[benchmark] = value
            row[f"{benchmark}_se"] = _number(cell["pass_at_1_se"]) if cell else None
            row[f"{benchmark}_delta"] = (
                100.0 * (value - ref_value) if value is not None and ref_value is not None else None
            )
            row[f"{benchmark}_n_errors"] = _count(cell.get("n_errors")) if cell else None
            row[f"{benchmark}_boxed"] = _number(cell.get("boxed_rate")) if cell else None
        rows.append(row)
    schema: dict[str, type[pl.DataType]] = {"variant": pl.Utf8}
    for benchmark in benchmarks:
        schema |= {benchmark: pl.Float64, f"{benchmark}_se": pl.Float64, f"{benchmark}_delta": pl.Float64,
                   f"{benchmark}_n_errors": pl.Int64, f"{benchmark}_boxed": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def _score_tables(scores: pl.DataFrame, board: pl.DataFrame) -> list[str]:
    variants = board["variant"].to_list()
    benchmarks = _ordered(scores["benchmark"].to_list(), BENCHMARKS)
    lookup = {(r["variant"], r["benchmark"]): r for r in scores.iter_rows(named=True)}
    parts: list[str] = []

    # pass@1 ± SE with the delta over teacher_sft
    header = ["variant"]
    for benchmark in benchmarks:
        header += [benchmark, f"Δ {benchmark}"]
    rows = []
    for record in board.iter_rows(named=True):
        row = [f"`{record['variant']}`"]
        for benchmark in benchmarks:
            value, se = record[benchmark], record[f"{benchmark}_se"]
            n_errors = record[f"{benchmark}_n_errors"]
            failed = f" ({n_errors} failed call{'s' if n_errors != 1 else ''})" if n_errors else ""
            row.append((MISSING if value is None else f"{_pct(value)} ± {_pct(se)}") + failed)
            if record["variant"] == REFERENCE_VARIANT and value is not None:
                row.append("ref")
            else:
                row.append(_delta(record[f"{benchmark}_delta"]))
        rows.append(row)
    parts.append("## pass@1 (%, ± standard error)\n")
    parts.append(
        f"Δ is the difference to `{REFERENCE_VARIANT}` (standard long-CoT distillation) in percentage points."
        + ("" if REFERENCE_VARIANT in variants else f" `{REFERENCE_VARIANT}` has no scores yet, so every Δ is {MISSING}.")
        + "\n"
    )
    parts.append(_md_table(header, rows) + "\n")
    failed = [r for r in scores.iter_rows(named=True) if _count(r["n_errors"])]
    if failed:
        unanswered = sum(_count(r["n_unanswered_problems"]) or 0 for r in failed)
        parts.append(
            "(N failed calls): samples whose endpoint call failed; they are not wrong answers, so every score "
            "here is over the answered samples only"
            + (f", and {unanswered} problem(s) without any answered sample are left out" if unanswered else "")
            + ". Re-materializing the partition sends only the failed calls again.\n"
        )
    rule = _grading_rule_sentence(scores)
    if rule:
        parts.append(rule + "\n")

    # maj@k and pass@k
    for column, title in (("maj_at_k", "maj@k"), ("pass_at_k", "pass@k")):
        ks = {int(r["k"]) for r in scores.iter_rows(named=True) if r["k"] is not None}
        uniform_k = next(iter(ks)) if len(ks) == 1 else None
        heading = title.replace("k", str(uniform_k)) if uniform_k is not None else title
        rows = []
        for variant in variants:
            row = [f"`{variant}`"]
            for benchmark in benchmarks:
                cell = lookup.get((variant, benchmark))
                if cell is None or _number(cell[column]) is None:
                    row.append(MISSING)
                else:
                    text = _pct(_number(cell[column]))
                    row.append(text if uniform_k is not None else f"{text} (k={cell['k']})")
            rows.append(row)
        parts.append(f"## {heading} (%)\n")
        parts.append(_md_table(["variant", *benchmarks], rows) + "\n")

    # length and truncation
    rows = []
    for variant in variants:
        row = [f"`{variant}`"]
        for benchmark in benchmarks:
            cell = lookup.get((variant, benchmark))
            tokens = _number(cell["mean_tokens"]) if cell else None
            truncation = _number(cell["truncation_rate"]) if cell else None
            if tokens is None and truncation is None:
                row.append(MISSING)
            else:
                tokens_text = MISSING if tokens is None else f"{tokens:.0f}"
                row.append(f"{tokens_text} / {_pct(truncation)}%")
        rows.append(row)
    parts.append("## Mean CoT length (tokens) / truncated samples (%)\n")
    parts.append(_md_table(["variant", *benchmarks], rows) + "\n")

    # answer format: what SFT on \boxed{}-closed CoTs should change first
    rows = [
        [f"`{variant}`", *(
            MISSING if (cell := lookup.get((variant, benchmark))) is None or _number(cell.get("boxed_rate")) is None
            else f"{_pct(_number(cell['boxed_rate']))}%"
            for benchmark in benchmarks
        )]
        for variant in variants
    ]
    parts.append("## Answers in \\boxed{} (% of answered samples)\n")
    parts.append(
        "The share of replies whose final answer is a non-empty `\\boxed{}`, the format every SFT variant's data "
        "ends in; the grader reads other formats too, so this measures format learning, not accuracy.\n"
    )
    parts.append(_md_table(["variant", *benchmarks], rows) + "\n")

    # problems per benchmark
    counts = []
    for benchmark in benchmarks:
        ns = sorted({int(n) for n in scores.filter(pl.col("benchmark") == benchmark)["n_problems"].drop_nulls()})
        if ns:
            counts.append(f"{benchmark} {ns[0]}" if len(ns) == 1 else f"{benchmark} {ns[0]}–{ns[-1]}")
    if counts:
        parts.append("Problems per benchmark: " + ", ".join(counts) + ".\n")
    return parts


def _grading_rule_sentence(scores: pl.DataFrame) -> str | None:
    """Which rule graded the GSM-Hard numbers (``[eval] compat``), from the stored column."""
    rows = scores.filter(pl.col("benchmark") == GSM_HARD)
    if rows.is_empty():
        return None
    by_rule: dict[str | None, list[str]] = {}
    for record in rows.iter_rows(named=True):
        by_rule.setdefault(record["grading_rule"], []).append(record["variant"])
    if len(by_rule) == 1:
        (rule,) = by_rule
        if rule is None:
            return (
                "GSM-Hard: these scores do not record which grading rule made them (scored before "
                "`grading_rule` was stored); re-materialize `benchmark_scores` to record it."
            )
        detail = f" ({RULE_DESCRIPTIONS[rule]})" if rule in RULE_DESCRIPTIONS else ""
        return f"GSM-Hard numbers were graded with the `{rule}` rule{detail} (`[eval] compat`)."
    described = "; ".join(
        f"{'not recorded' if rule is None else f'`{rule}`'} for {', '.join(f'`{v}`' for v in variants)}"
        for rule, variants in sorted(by_rule.items(), key=lambda item: (item[0] is None, item[0] or ""))
    )
    return (
        f"GSM-Hard numbers were graded with different rules ({described}): they are not comparable "
        "across those variants until all are re-graded with one `[eval] compat`."
    )
