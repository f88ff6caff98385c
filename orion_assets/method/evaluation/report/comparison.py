"""The comparison a researcher quotes: pass@1 per student as mean ± sd over seeds, every variant's paired
delta over ``teacher_sft`` and ``base`` with its bootstrap interval, whether a gain holds on every student,
and what each variant trained on (examples, tokens, optimizer steps, dropped rows).

The statistics are ``method.evaluation.paired`` (docs/scoring.md, "Paired comparisons").
"""

from __future__ import annotations

import polars as pl

from orion_assets.method.evaluation import paired
from orion_assets.method.evaluation.report.format import MISSING, _delta, _md_table, _number, _ordered, _pct, _round
from orion_assets.method.evaluation.report.scores import label, model_order, with_model_keys
from orion_assets.vocabulary import BASE_VARIANT, BENCHMARKS, REFERENCE_VARIANT

AGAINST: tuple[str, ...] = (REFERENCE_VARIANT, BASE_VARIANT)  # every delta is taken against these
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SUFFIX = {REFERENCE_VARIANT: "delta", BASE_VARIANT: "delta_base"}
PREDICTION_COLUMNS = ("benchmark", "student", "variant", "seed", "problem_id", "sample_index", "correct", "finish_reason")


def paired_deltas(predictions: pl.DataFrame | None, *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> pl.DataFrame:
    """One row per (benchmark, student, variant, against): :class:`paired.PairedDelta`'s fields, for every
    variant against ``teacher_sft`` and ``base`` of the same student on the same benchmark."""
    rows: list[dict] = []
    needed = set(PREDICTION_COLUMNS) - {"student", "seed", "finish_reason"}  # a store may predate those
    if predictions is not None and predictions.height and needed <= set(predictions.columns):
        frame = with_model_keys(predictions)
        if "finish_reason" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias("finish_reason"))
        frame = frame.select(PREDICTION_COLUMNS)
        groups = {key: group for key, group in frame.group_by("benchmark", "student", "variant")}
        for (benchmark, student, variant), group in sorted(groups.items()):
            for against in AGAINST:
                other = groups.get((benchmark, student, against))
                if other is None or variant == against:
                    continue
                try:
                    result = paired.paired_delta(group, other, resamples=resamples, seed=seed)
                except ValueError:  # nothing answered by both: no delta
                    continue
                rows.append({"benchmark": benchmark, "student": student, "variant": variant, "against": against,
                             **result.to_row()})
    schema = {"benchmark": pl.Utf8, "student": pl.Utf8, "variant": pl.Utf8, "against": pl.Utf8}
    return pl.DataFrame(rows) if rows else pl.DataFrame(schema=schema)


def budget_frame(checkpoints: pl.DataFrame | None, quality: pl.DataFrame | None) -> pl.DataFrame:
    """Per (student, variant, seed): SFT examples, training tokens, optimizer steps, and the candidate rows the
    quality rules dropped (per student and variant). Training tokens are the loss tokens where recorded
    (``completion_tokens``), else every token TRL saw (``tokens_seen``)."""
    schema = {"student": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64, "examples": pl.Int64, "train_tokens": pl.Int64,
              "steps": pl.Int64, "epochs": pl.Float64, "dropped": pl.Int64}
    if checkpoints is None or checkpoints.is_empty():
        return pl.DataFrame(schema=schema)
    checkpoints = with_model_keys(checkpoints)
    tokens = pl.col("completion_tokens") if "completion_tokens" in checkpoints.columns else pl.col("tokens_seen")
    epochs = pl.col("epochs") if "epochs" in checkpoints.columns else pl.lit(None, dtype=pl.Float64)
    frame = checkpoints.select(
        "student", "variant", pl.col("seed").cast(pl.Int64), pl.col("sft_examples").cast(pl.Int64).alias("examples"),
        tokens.cast(pl.Int64).alias("train_tokens"), pl.col("steps").cast(pl.Int64), epochs.cast(pl.Float64).alias("epochs"),
    )
    if quality is not None and "kept" in quality.columns:
        dropped = with_model_keys(quality).group_by("student", "variant").agg((~pl.col("kept")).sum().cast(pl.Int64).alias("dropped"))
        frame = frame.join(dropped, on=["student", "variant"], how="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("dropped"))
    return frame.select(list(schema)).cast(schema)


def leaderboard_frame(averaged: pl.DataFrame, deltas: pl.DataFrame, budgets: pl.DataFrame) -> pl.DataFrame:
    """One row per (student, variant): its training budget (means over seeds) and, per benchmark ``b``, pass@1
    (``b``: mean over seeds; ``b_sd`` over seeds, ``b_se`` the mean per-seed standard error over problems,
    ``b_seeds``), the paired deltas in points over ``teacher_sft`` (``b_delta``, ``b_delta_low``,
    ``b_delta_high``, ``b_delta_p``, ``b_significant``) and over ``base`` (``b_delta_base``...), the problems
    the delta over ``teacher_sft`` was taken on (``b_n_common``), failed calls and the boxed-answer rate."""
    benchmarks = _ordered(averaged["benchmark"].to_list(), BENCHMARKS)
    cells = {(r["student"], r["variant"], r["benchmark"]): r for r in averaged.iter_rows(named=True)}
    found = {(r["student"], r["variant"], r["benchmark"], r["against"]): r for r in deltas.iter_rows(named=True)}
    budget = _mean_budgets(budgets)
    rows = []
    for student, variant in model_order(averaged):
        row: dict[str, object] = {"student": student, "variant": variant, **budget.get((student, variant), {})}
        for b in benchmarks:
            cell = cells.get((student, variant, b))
            row |= {b: _number(cell["pass_at_1"]) if cell else None,
                    f"{b}_sd": _number(cell["pass_at_1_sd"]) if cell else None,
                    f"{b}_se": _number(cell["pass_at_1_se"]) if cell else None,
                    f"{b}_seeds": cell["seeds"] if cell else None,
                    f"{b}_n_errors": cell["n_errors"] if cell else None,
                    f"{b}_boxed": _number(cell["boxed_rate"]) if cell else None}
            for against, suffix in SUFFIX.items():
                d = found.get((student, variant, b, against))
                same = variant == against and cell is not None
                row |= {f"{b}_{suffix}": 0.0 if same else 100.0 * d["delta"] if d else None,
                        f"{b}_{suffix}_low": 0.0 if same else 100.0 * d["ci_low"] if d else None,
                        f"{b}_{suffix}_high": 0.0 if same else 100.0 * d["ci_high"] if d else None,
                        f"{b}_{suffix}_p": 1.0 if same else d["p_value"] if d else None}
                if against == REFERENCE_VARIANT:
                    row[f"{b}_significant"] = False if same else bool(d["significant"]) if d else None
                    row[f"{b}_n_common"] = (cell["n_problems"] if same else d["n_problems"] if d else None)
        rows.append(row)
    schema = {"student": pl.Utf8, "variant": pl.Utf8, **LEADERBOARD_BUDGET,
              **{c: t for b in benchmarks for c, t in benchmark_columns(b).items()}}
    return pl.DataFrame(rows, schema=schema)


LEADERBOARD_BUDGET: dict[str, type[pl.DataType]] = {"examples": pl.Float64, "train_tokens": pl.Float64,
                                                    "steps": pl.Float64, "dropped": pl.Int64}


def benchmark_columns(b: str) -> dict[str, type[pl.DataType]]:
    """The leaderboard's columns for benchmark ``b`` (:func:`leaderboard_frame`)."""
    columns: dict[str, type[pl.DataType]] = {b: pl.Float64, f"{b}_sd": pl.Float64, f"{b}_se": pl.Float64,
                                             f"{b}_seeds": pl.Int64}
    for suffix in SUFFIX.values():
        columns |= {f"{b}_{suffix}": pl.Float64, f"{b}_{suffix}_low": pl.Float64, f"{b}_{suffix}_high": pl.Float64,
                    f"{b}_{suffix}_p": pl.Float64}
    return columns | {f"{b}_significant": pl.Boolean, f"{b}_n_common": pl.Int64, f"{b}_n_errors": pl.Int64,
                      f"{b}_boxed": pl.Float64}


def _mean_budgets(budgets: pl.DataFrame) -> dict[tuple[str, str], dict]:
    if budgets.is_empty():
        return {}
    means = budgets.group_by("student", "variant").agg(
        pl.col("examples").mean(), pl.col("train_tokens").mean(), pl.col("steps").mean(), pl.col("dropped").first())
    return {(r.pop("student"), r.pop("variant")): r for r in means.iter_rows(named=True)}


def _interval(low: float | None, high: float | None) -> str:
    return MISSING if low is None or high is None else f"[{_round(low):+}, {_round(high):+}]"


def comparison_sections(board: pl.DataFrame, deltas: pl.DataFrame, grading: str | None) -> list[str]:
    """Per student, pass@1 with the paired deltas; then whether each gain holds on every student."""
    benchmarks = [b for b in BENCHMARKS if b in board.columns]
    students = list(dict.fromkeys(board["student"].to_list()))
    parts: list[str] = []
    for student in students:
        rows = []
        for record in board.filter(pl.col("student") == student).iter_rows(named=True):
            row = [f"`{record['variant']}`"]
            for b in benchmarks:
                value, sd, se, seeds = record[b], record[f"{b}_sd"], record[f"{b}_se"], record[f"{b}_seeds"]
                spread = f" ± {_pct(sd)}" if sd is not None else f" ± {_pct(se)} SE" if se is not None else ""
                n_errors = record[f"{b}_n_errors"]
                failed = f" ({n_errors} failed call{'s' if n_errors != 1 else ''})" if n_errors else ""
                row.append(MISSING if value is None else
                           f"{_pct(value)}{spread}" + (f" ({seeds} seeds)" if seeds and seeds > 1 else "") + failed)
                for against, suffix in SUFFIX.items():
                    if record["variant"] == against:
                        row.append("ref" if value is not None else MISSING)
                        continue
                    delta = record[f"{b}_{suffix}"]
                    star = "*" if delta is not None and _excludes_zero(record[f"{b}_{suffix}_low"], record[f"{b}_{suffix}_high"]) else ""
                    row.append(MISSING if delta is None else
                               f"{_delta(delta)}{star} {_interval(record[f'{b}_{suffix}_low'], record[f'{b}_{suffix}_high'])}")
            rows.append(row)
        header = ["variant"]
        for b in benchmarks:
            header += [b, f"Δ {REFERENCE_VARIANT}", f"Δ {BASE_VARIANT}"]
        parts.append(f"## pass@1 — student `{student}` (%)\n")
        parts.append(_md_table(header, rows) + "\n")
    parts.append(_rule_text(board, deltas, grading) + "\n")
    parts += _backbone_section(board, students, benchmarks)
    return parts


def _excludes_zero(low: float | None, high: float | None) -> bool:
    return low is not None and high is not None and (low > 0 or high < 0)


def _rule_text(board: pl.DataFrame, deltas: pl.DataFrame, grading: str | None) -> str:
    seeds = sorted({int(s) for b in BENCHMARKS if f"{b}_seeds" in board.columns for s in board[f"{b}_seeds"].drop_nulls()})
    spread = (f"mean ± sd over {seeds[-1]} seeds" if seeds and seeds[-1] > 1
              else "one seed: ± the standard error over problems (SE)")
    common = []
    for b in BENCHMARKS:
        if f"{b}_n_common" in board.columns and board[f"{b}_n_common"].drop_nulls().len():
            values = board[f"{b}_n_common"].drop_nulls()
            common.append(f"{b} {values.min()}" + (f"–{values.max()}" if values.max() != values.min() else ""))
    text = (f"pass@1: {spread}. Δ: the variant minus `{REFERENCE_VARIANT}` (or `{BASE_VARIANT}`) in points, over the "
            f"problems both answered ({', '.join(common) or MISSING} problems), with its 95% interval by "
            f"{interval_rule(deltas)}. "
            "`*`: the interval excludes 0 (distinguishable from no difference at 95%); a failed call is no answer, "
            "a timeout or a cut-off reply a wrong one.")
    return text + (f" {grading}" if grading else "")


def interval_rule(deltas: pl.DataFrame, against: str | None = None) -> str:
    """The rule that made the intervals of ``deltas`` (those over ``against`` if given): the one rule, or, where
    the methods differ (a side with one seed, e.g. ``base``, is conditional on its training run), each method with
    the deltas it made."""
    if against is not None and "against" in deltas.columns:
        deltas = deltas.filter(pl.col("against") == against)
    if "rule" not in deltas.columns or not deltas.height:
        return f"paired bootstrap, B={RESAMPLES}"
    rules = list(dict.fromkeys(deltas["rule"].to_list()))
    if len(rules) == 1 or "method" not in deltas.columns:
        return rules[0]
    parts = []
    for method in dict.fromkeys(deltas["method"].to_list()):
        which = []
        for other in AGAINST:
            every = deltas.filter(pl.col("against") == other)
            made = every.filter(pl.col("method") == method)
            if made.height:
                variants = ", ".join(f"`{v}`" for v in dict.fromkeys(made["variant"].to_list()))
                which.append(f"Δ `{other}`" + ("" if made.height == every.height else f" ({variants})"))
        parts.append(f"{method} for {' and '.join(which)}")
    first = deltas.row(0, named=True)
    return (f"paired bootstrap, percentile, B={first['resamples']}, seed={first['seed']}: {'; '.join(parts)}; p:"
            + rules[0].split("; p:", 1)[-1])


def _backbone_section(board: pl.DataFrame, students: list[str], benchmarks: list[str]) -> list[str]:
    """For each trained variant and benchmark: its delta over teacher_sft on each student, and whether it holds."""
    if len(students) < 2:
        return []
    rows = []
    variants = [v for v in _ordered(board["variant"].to_list(), ()) if v not in AGAINST]
    cell = {(r["student"], r["variant"]): r for r in board.iter_rows(named=True)}
    for variant in variants:
        row = [f"`{variant}`"]
        for b in benchmarks:
            found = [(s, cell[(s, variant)]) for s in students if (s, variant) in cell and cell[(s, variant)][f"{b}_delta"] is not None]
            if len(found) < len(students):
                row.append(f"{MISSING} (not on every student)")
                continue
            gains = [r[f"{b}_delta_low"] > 0 for _, r in found]
            losses = [r[f"{b}_delta_high"] < 0 for _, r in found]
            verdict = ("holds on every student" if all(gains) else "worse on every student" if all(losses)
                       else f"gain on {sum(gains)} of {len(found)}")
            detail = "; ".join(f"{s} {_delta(r[f'{b}_delta'])}" for s, r in found)
            row.append(f"{verdict} ({detail})")
        rows.append(row)
    return [f"## Does the gain hold on every student? (Δ over `{REFERENCE_VARIANT}`, 95% paired intervals)\n",
            _md_table(["variant", *benchmarks], rows) + "\n"]


def budget_section(budgets: pl.DataFrame) -> list[str]:
    """Examples, tokens, optimizer steps, epochs and dropped rows per student, variant and seed."""
    if budgets.is_empty():
        return []
    several = budgets["student"].n_unique() > 1
    order = {pair: i for i, pair in enumerate(model_order(budgets))}
    rows = []
    for record in sorted(budgets.iter_rows(named=True), key=lambda r: (order[(r["student"], r["variant"])], r["seed"])):
        rows.append([f"`{label(record['student'], record['variant'], several)}`", str(record["seed"]),
                     *(MISSING if record[c] is None else f"{record[c]:,}" for c in ("examples", "train_tokens", "steps")),
                     MISSING if record["epochs"] is None else f"{record['epochs']:.2f}",
                     MISSING if record["dropped"] is None else f"{record['dropped']:,}"])
    return ["## Training budgets\n",
            "What each checkpoint trained on: SFT examples, training tokens (the loss-bearing completion tokens where "
            "recorded, else every token seen), optimizer steps and epochs, and the candidate rows the quality rules "
            "dropped from the variant (`[sft] budget` matches them across variants; docs/sft.md).\n",
            _md_table(["model" if several else "variant", "seed", "examples", "tokens", "steps", "epochs", "dropped"], rows) + "\n"]
