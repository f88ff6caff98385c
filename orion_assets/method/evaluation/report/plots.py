"""The report's PNG plots: pass@1 per benchmark and variant, CoT lengths by mode, student error types.

Drawn on matplotlib's Agg canvas directly (no pyplot), so building a report changes no global
matplotlib state; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from orion_assets.method.evaluation.report.format import _ordered
from orion_assets.store import SCHEMA
from orion_assets.vocabulary import BENCHMARKS, MODES

ACCURACY_PNG = "accuracy.png"
COT_LENGTHS_PNG = "cot_lengths.png"
ERROR_TYPES_PNG = "error_types.png"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: heavy
    from matplotlib.figure import Figure  # deferred: heavy

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def _plot_accuracy(board: pl.DataFrame, path: Path) -> Path:
    benchmarks = [b for b in BENCHMARKS if b in board.columns]
    several = "student" in board.columns and board["student"].n_unique() > 1
    variants = [f"{r['student']}/{r['variant']}" if several else r["variant"] for r in board.iter_rows(named=True)]
    figure = _figure(max(6.0, 1.6 * len(benchmarks) + 2.5), 4.2)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(variants), 1)
    for i, record in enumerate(board.iter_rows(named=True)):
        xs, heights, errors = [], [], []
        for j, benchmark in enumerate(benchmarks):
            if record[benchmark] is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(100.0 * record[benchmark])
            errors.append(100.0 * (record[f"{benchmark}_se"] or 0.0))
        axes.bar(xs, heights, width=width, yerr=errors, capsize=3, label=variants[i], color=f"C{i % 10}")
    axes.set_xticks(range(len(benchmarks)), benchmarks)
    axes.set_ylabel("pass@1 (%)")
    axes.set_title("pass@1 per benchmark and variant (error bars: ± 1 SE)")
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", ncols=min(len(variants), 3))
    return _save(figure, path)


def _plot_cot_lengths(series: list[tuple[str, list[float]]], path: Path) -> Path:
    values = np.concatenate([np.asarray(v, dtype=float) for _, v in series])
    low, high = float(values.min()), float(values.max())
    largest = max(len(v) for _, v in series)
    n_bins = int(min(40, max(10, 2 * math.sqrt(largest))))
    bins = np.linspace(low, high if high > low else low + 1.0, n_bins + 1)
    figure = _figure(7.0, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    for i, (label, lengths) in enumerate(series):
        data = np.asarray(lengths, dtype=float)
        axes.hist(
            data,
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.8,
            color=f"C{i}",
            label=f"{label} (n={data.size}, median {np.median(data):.0f})",
        )
    axes.set_xlabel("CoT length (tokens)")
    axes.set_ylabel("density")
    axes.set_title("CoT lengths: teacher vs refined, by mode")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _plot_error_types(counts: pl.DataFrame, path: Path) -> Path:
    labels = counts["error_type"].to_list()
    heights = counts["count"].to_list()
    figure = _figure(max(5.0, 1.2 * len(labels) + 2.0), 3.8)
    axes = figure.add_subplot(1, 1, 1)
    bars = axes.bar(range(len(labels)), heights, color=[f"C{i}" for i in range(len(labels))])
    axes.bar_label(bars, labels=[str(h) for h in heights])
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel("student errors")
    axes.set_title("Student errors on the training problems, by type")
    axes.set_ylim(0, max(heights) * 1.15 + 0.5)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def _cot_length_series(
    teacher: pl.DataFrame | None, refined: pl.DataFrame | None, notes: list[str]
) -> list[tuple[str, list[float]]]:
    series: list[tuple[str, list[float]]] = []
    if teacher is None:
        notes.append(f"`{SCHEMA}.teacher_cots` does not exist: no teacher lengths in `{COT_LENGTHS_PNG}`.")
    elif "n_tokens" not in teacher.columns or teacher["n_tokens"].drop_nulls().is_empty():
        notes.append(f"`{SCHEMA}.teacher_cots` is empty: no teacher lengths in `{COT_LENGTHS_PNG}`.")
    else:
        series.append(("teacher", teacher["n_tokens"].drop_nulls().cast(pl.Float64).to_list()))
    if refined is None:
        notes.append(f"`{SCHEMA}.refined_cots` does not exist: no refined lengths in `{COT_LENGTHS_PNG}`.")
        return series
    if "n_tokens" not in refined.columns or "mode" not in refined.columns or refined.is_empty():
        notes.append(f"`{SCHEMA}.refined_cots` is empty: no refined lengths in `{COT_LENGTHS_PNG}`.")
        return series
    if "source" in refined.columns:
        fallbacks = refined.filter(pl.col("source") != "refined").height
        if fallbacks:
            notes.append(
                f"`{COT_LENGTHS_PNG}` leaves out {fallbacks} refined_cots row(s) that are not refinements "
                "(e.g. `teacher_fallback`: copies of teacher CoTs)."
            )
        refined = refined.filter(pl.col("source") == "refined")
    refined = refined.filter(pl.col("n_tokens").is_not_null())
    for mode in _ordered(refined["mode"].drop_nulls().unique().to_list(), MODES):
        lengths = refined.filter(pl.col("mode") == mode)["n_tokens"].cast(pl.Float64).to_list()
        if lengths:
            series.append((f"refined ({mode})", lengths))
    return series
