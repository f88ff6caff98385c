"""The leaderboard page: :func:`build_report` reads the store once, draws the plots and writes
``leaderboard.md`` with its sections. What the page holds: ``docs/report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from orion_assets.method.evaluation.report.comparison import (
    budget_frame,
    budget_section,
    comparison_sections,
    interval_rule,
    leaderboard_frame,
    paired_deltas,
)
from orion_assets.method.evaluation.report.cot_quality import cot_quality_section
from orion_assets.method.evaluation.report.curves import (
    LOSS_CURVES_PNG,
    PASS1_INTERVALS_PNG,
    loss_curve_rows,
    plot_loss_curves,
    plot_pass1_intervals,
)
from orion_assets.method.evaluation.report.plots import (
    ACCURACY_PNG,
    COT_LENGTHS_PNG,
    ERROR_TYPES_PNG,
    _cot_length_series,
    _plot_accuracy,
    _plot_cot_lengths,
    _plot_error_types,
)
from orion_assets.method.evaluation.report.read import (
    _connection,
    _profiles,
    _read,
    _read_quality,
    _read_sft_problems,
    usage_frame,
)
from orion_assets.method.evaluation.report.scores import (
    _clean_scores,
    _grading_rule_sentence,
    _score_tables,
    failed_calls_note,
    over_seeds,
    rule_table,
)
from orion_assets.method.evaluation.report.sections import (
    Prices,
    _quality_section,
    _reflection_section,
    _usage_section,
    reflection_frame,
)
from orion_assets.store import SCHEMA, BaseStore
from orion_assets.vocabulary import BASELINE_TABLE, REFERENCE_VARIANT

MARKDOWN_NAME = "leaderboard.md"


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote.

    ``leaderboard`` has one row per (student, variant) (``comparison.leaderboard_frame``: pass@1 as mean
    and sd over seeds, paired deltas over ``teacher_sft`` and ``base`` with their intervals, training
    budgets); null where a score is missing. ``deltas`` holds every paired comparison. A plot path is
    ``None`` when the plot was skipped; ``notes`` says why.
    """

    out_dir: Path
    markdown_path: Path
    markdown: str
    leaderboard: pl.DataFrame
    deltas: pl.DataFrame
    accuracy_png: Path | None
    cot_lengths_png: Path | None
    error_types_png: Path | None
    notes: list[str] = field(default_factory=list)
    loss_curves_png: Path | None = None
    pass1_intervals_png: Path | None = None

    @property
    def pngs(self) -> list[Path]:
        return [p for p in (self.accuracy_png, self.pass1_intervals_png, self.loss_curves_png, self.cot_lengths_png,
                            self.error_types_png) if p is not None]


def build_report(
    source: BaseStore | duckdb.DuckDBPyConnection | str | Path,
    out_dir: Path,
    *,
    now: datetime | None = None,
    prices: Prices | None = None,
) -> Report:
    """Write ``leaderboard.md`` and its plots into ``out_dir`` and return what was written.

    ``source`` is a :class:`Store`, the path of a DuckDB file, or an open connection whose current
    database holds schema ``orion``. Raises FileNotFoundError when the DuckDB file does not exist.
    ``prices`` (:func:`prices_of` a profile) turn the LLM usage table's tokens into dollars.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with _connection(source) as con:
        raw_scores = _read(con, "benchmark_scores")
        predictions = _read(con, "benchmark_predictions")
        checkpoints = _read(con, "student_checkpoint")
        teacher = _read(con, "teacher_cots")
        refined = _read(con, "refined_cots")
        errors = _read(con, "student_errors")
        profiles = _profiles(con)
        cot_quality = _read_quality(con)
        sft_problems = _read_sft_problems(con)
        usage = usage_frame(con)
    location = source.location if isinstance(source, BaseStore) else (Path(source) if isinstance(source, str | Path) else None)

    scores = _clean_scores(raw_scores, notes)
    averaged = over_seeds(scores)
    deltas = paired_deltas(predictions)
    if scores.height and deltas.is_empty():
        notes.append(f"No paired deltas: `{SCHEMA}.benchmark_predictions` holds no graded samples of two variants on "
                     "the same problems (materialize `benchmark_predictions` for `teacher_sft` or `base` too).")
    budgets = budget_frame(checkpoints, cot_quality)
    board = leaderboard_frame(averaged, deltas, budgets)

    # plots, each skipped with a note when its data is missing
    for stale in (ACCURACY_PNG, PASS1_INTERVALS_PNG, LOSS_CURVES_PNG, COT_LENGTHS_PNG, ERROR_TYPES_PNG):
        (out_dir / stale).unlink(missing_ok=True)  # a skipped plot must not leave an old file behind
    accuracy_png = intervals_png = curves_png = cot_png = errors_png = None
    if board.height and any(board[b].is_not_null().any() for b in averaged["benchmark"].unique()):
        accuracy_png = _plot_accuracy(board, out_dir / ACCURACY_PNG)
        rule = interval_rule(deltas, REFERENCE_VARIANT) if deltas.height else "no paired delta"  # the plot's Δ
        intervals_png = plot_pass1_intervals(board, scores, rule, out_dir / PASS1_INTERVALS_PNG)
    else:
        notes.append(f"`{ACCURACY_PNG}` and `{PASS1_INTERVALS_PNG}` skipped: no benchmark scores.")
    curves = loss_curve_rows(checkpoints, notes)
    if curves.height:
        curves_png = plot_loss_curves(curves, out_dir / LOSS_CURVES_PNG)
    series = _cot_length_series(teacher, refined, notes)
    if series:
        cot_png = _plot_cot_lengths(series, out_dir / COT_LENGTHS_PNG)
    else:
        notes.append(f"`{COT_LENGTHS_PNG}` skipped: neither teacher nor refined CoTs have lengths.")
    if errors is None:
        notes.append(f"`{ERROR_TYPES_PNG}` skipped: `{SCHEMA}.student_errors` does not exist.")
    elif "error_type" not in errors.columns or errors.is_empty():
        notes.append(f"`{ERROR_TYPES_PNG}` skipped: `{SCHEMA}.student_errors` is empty.")
    else:
        counts = (
            errors.select(pl.col("error_type").fill_null("unknown"))
            .group_by("error_type")
            .len("count")
            .sort(["count", "error_type"], descending=[True, False])
        )
        errors_png = _plot_error_types(counts, out_dir / ERROR_TYPES_PNG)

    # markdown
    generated = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    lines = ["# ORION leaderboard", "", f"Generated {generated}" + (f" from `{location}`." if location else ".")]
    if profiles is not None and profiles.height:
        described = [
            f"`{r['profile_name'] or '?'}` (hash `{r['profile_hash'] or '?'}`)" for r in profiles.iter_rows(named=True)
        ]
        if len(described) == 1:
            lines.append(f"Profile: {described[0]}.")
        else:
            lines.append(f"Profiles (the scores mix {len(described)}, newest first): " + ", ".join(described) + ".")
    lines.append("")
    if scores.height:
        lines += comparison_sections(board, deltas, _grading_rule_sentence(scores))
        lines += failed_calls_note(averaged)
        lines += rule_table(raw_scores)
        lines += budget_section(budgets)
        lines += _score_tables(averaged)
    lines += _reflection_section(reflection_frame(teacher, refined))
    lines += _quality_section(cot_quality, sft_problems)
    lines += cot_quality_section(cot_quality)
    made = set(sft_problems["variant"].drop_nulls().to_list()) if sft_problems is not None and sft_problems.height else None
    lines += _usage_section(usage, prices, made)
    plots = [
        ("pass@1 per benchmark and variant", accuracy_png),
        ("pass@1 and paired deltas with their intervals", intervals_png),
        ("Training loss per step", curves_png),
        ("CoT lengths: teacher vs refined", cot_png),
        ("Student error types", errors_png),
    ]
    if any(path for _, path in plots):
        lines.append("## Plots\n")
        for title, path in plots:
            if path is not None:
                lines.append(f"![{title}]({path.name})\n")
    if notes:
        lines.append("## Notes\n")
        lines += [f"- {note}" for note in notes]
        lines.append("")
    lines += [
        "## How this was made\n",
        "Each model variant (`base`: the student as it is; `teacher_sft`: fine-tuned on verified teacher CoTs; "
        "`orion`: on CoTs the student refined after seeing its own errors; `orion_no_error` and "
        "`orion_no_reflection`: the two ablations; the field's baselines, "
        + "; ".join(f"`{b.variant}`: {b.trains_on} ({b.reference})" for b in BASELINE_TABLE)
        + ", docs/baselines.md) answered every problem of each benchmark with k samples, "
        "and math-verify graded each sample against the gold answer (GSM-Hard by the rule named under the "
        "pass@1 table, integers for AIME); a sample whose endpoint call failed is not graded and counts in no "
        "score. pass@1 is the mean over problems of each problem's share of correct samples, with the "
        "standard error over problems; maj@k scores the most frequent answer, equivalent answers (`1/2`, "
        "`0.5`, `\\frac{1}{2}`) voting together (ties count as the expected "
        "accuracy of a random pick among the tied answers); pass@k is the unbiased estimator of Chen et al. "
        "(2021). Δ is a variant's pass@1 minus `teacher_sft`'s, in percentage points. The numbers come from "
        f"`{SCHEMA}.benchmark_scores`; walk them back to predictions, checkpoints and CoTs with "
        f"`orion sql \"SELECT * FROM {SCHEMA}.lineage_edges\"`, and rebuild this page with `orion report`.",
        "",
    ]
    markdown = "\n".join(lines)
    markdown_path = out_dir / MARKDOWN_NAME
    markdown_path.write_text(markdown, encoding="utf-8")
    return Report(
        out_dir=out_dir,
        markdown_path=markdown_path,
        markdown=markdown,
        leaderboard=board,
        deltas=deltas,
        accuracy_png=accuracy_png,
        cot_lengths_png=cot_png,
        error_types_png=errors_png,
        notes=notes,
        loss_curves_png=curves_png,
        pass1_intervals_png=intervals_png,
    )
