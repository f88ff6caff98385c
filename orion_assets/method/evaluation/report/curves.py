"""The training-loss and pass@1-interval plots: the report's ``loss_curves.png`` and ``pass1_intervals.png``, and
one checkpoint's loss curve as a PNG for its materialization metadata.

Drawn like the other plots (``report.plots``: matplotlib's Agg canvas, no pyplot); what they show is in
``docs/report.md``.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import polars as pl

from orion_assets.method.evaluation.report.plots import _figure, _save
from orion_assets.method.evaluation.report.scores import label, model_order, with_model_keys
from orion_assets.store import SCHEMA
from orion_assets.vocabulary import BASE_VARIANT, BENCHMARKS, REFERENCE_VARIANT, VARIANTS

LOSS_CURVES_PNG = "loss_curves.png"
PASS1_INTERVALS_PNG = "pass1_intervals.png"
SEED_STYLES = ("-", "--", ":", "-.")  # the seeds of one variant: one colour, these line styles in turn


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown showing ``png`` inline (a ``data:`` URL), as Dagster's UI renders ``MetadataValue.md``."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _variant_colours(variants: list[str]) -> dict[str, str]:
    """One colour per variant, the same in every plot and for every student (the vocabulary's order)."""
    known = [v for v in VARIANTS if v in variants] + sorted(set(variants) - set(VARIANTS))
    return {v: f"C{(VARIANTS.index(v) if v in VARIANTS else len(VARIANTS) + known.index(v)) % 10}" for v in known}


def loss_curve_png(curve: list[dict], title: str) -> bytes:
    """One run's training loss per logged step (and its learning rate, right axis) as PNG bytes."""
    from matplotlib.ticker import MaxNLocator  # deferred: heavy

    figure = _figure(6.4, 3.4)
    axes = figure.add_subplot(1, 1, 1)
    points = [p for p in curve if p.get("loss") is not None]
    axes.plot([p["step"] for p in points], [p["loss"] for p in points], color="C0", marker="." if len(points) < 60 else None,
              label="training loss")
    axes.set_xlabel("optimizer step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("training loss (completion tokens)")
    rates = [p for p in points if p.get("learning_rate") is not None]
    if rates:
        right = axes.twinx()
        right.plot([p["step"] for p in rates], [p["learning_rate"] for p in rates], color="C7", linestyle=":",
                   label="learning rate")
        right.set_ylabel("learning rate", color="C7")
        right.tick_params(axis="y", labelcolor="C7")
    axes.set_title(title, fontsize="medium")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def loss_curve_rows(checkpoints: pl.DataFrame | None, notes: list[str]) -> pl.DataFrame:
    """``student``, ``variant``, ``seed``, ``loss_curve`` of the trained checkpoints with a curve; a note says
    why there are none (no table, a table from before the column, no trained checkpoint)."""
    empty = pl.DataFrame(schema={"student": pl.Utf8, "variant": pl.Utf8, "seed": pl.Int64, "loss_curve": pl.List(pl.Null)})
    table = f"`{SCHEMA}.student_checkpoint`"
    if checkpoints is None:
        notes.append(f"`{LOSS_CURVES_PNG}` skipped: {table} does not exist.")
        return empty
    if "loss_curve" not in checkpoints.columns:
        notes.append(f"`{LOSS_CURVES_PNG}` skipped: {table} was written before checkpoints kept their loss curve "
                     "(column `loss_curve`); re-materialize `student_checkpoint` (a finished run trains nothing again).")
        return empty
    rows = with_model_keys(checkpoints).filter(pl.col("loss_curve").list.len() > 0)
    if rows.is_empty():
        notes.append(f"`{LOSS_CURVES_PNG}` skipped: no checkpoint in {table} has a logged training step.")
        return empty
    return rows.select("student", "variant", pl.col("seed").cast(pl.Int64), "loss_curve").sort("student", "variant", "seed")


def plot_loss_curves(rows: pl.DataFrame, path: Path) -> Path:
    """Per student, each variant's training loss per step: one line per seed, a colour per variant."""
    from matplotlib.ticker import MaxNLocator  # deferred: heavy

    students = list(dict.fromkeys(rows["student"].to_list()))
    colours = _variant_colours(rows["variant"].unique().to_list())
    figure = _figure(7.0, 3.6 * len(students))
    for i, student in enumerate(students):
        axes = figure.add_subplot(len(students), 1, i + 1)
        mine = rows.filter(pl.col("student") == student)
        for variant in [v for v in colours if v in set(mine["variant"].to_list())]:
            runs = mine.filter(pl.col("variant") == variant)
            for j, run in enumerate(runs.iter_rows(named=True)):
                points = [p for p in run["loss_curve"] if p["loss"] is not None]
                axes.plot([p["step"] for p in points], [p["loss"] for p in points], color=colours[variant], alpha=0.85,
                          linewidth=1.4, linestyle=SEED_STYLES[j % len(SEED_STYLES)], marker="." if len(points) < 60 else None,
                          label=f"{variant} seed {run['seed']}")
        axes.set_title(f"Training loss — student `{student}` (a colour per variant, a line style per seed)",
                       fontsize="medium")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("training loss")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


def plot_pass1_intervals(board: pl.DataFrame, scores: pl.DataFrame, rule: str, path: Path) -> Path:
    """Per student and benchmark: each variant's pass@1 (mean over seeds, each seed a dot, ± sd over seeds or
    ± 1 SE with one seed), and its paired Δ over ``teacher_sft`` with the 95% interval ``rule`` names."""
    benchmarks = [b for b in BENCHMARKS if b in board.columns and board[b].is_not_null().any()]
    students = list(dict.fromkeys(board["student"].to_list()))
    several = len(students) > 1
    colours = _variant_colours(board["variant"].unique().to_list())
    per_seed = with_model_keys(scores)
    panels = [(s, b) for s in students for b in benchmarks]
    height = max(2.0, 0.45 * max(board.group_by("student").len()["len"].to_list()) + 1.4)
    figure = _figure(10.0, height * len(panels) + 0.9)
    for k, (student, benchmark) in enumerate(panels):
        mine = board.filter(pl.col("student") == student)
        order = [v for _, v in model_order(mine)][::-1]  # first variant on top
        left = figure.add_subplot(len(panels), 2, 2 * k + 1)
        right = figure.add_subplot(len(panels), 2, 2 * k + 2, sharey=left)
        for y, variant in enumerate(order):
            record = mine.filter(pl.col("variant") == variant).row(0, named=True)
            colour = colours[variant]
            if record[benchmark] is not None:
                spread = record[f"{benchmark}_sd"] if record[f"{benchmark}_sd"] is not None else record[f"{benchmark}_se"]
                left.errorbar(100 * record[benchmark], y, xerr=None if spread is None else 100 * spread, fmt="o",
                              color=colour, capsize=3)
                seeds = per_seed.filter((pl.col("benchmark") == benchmark) & (pl.col("student") == student)
                                        & (pl.col("variant") == variant))["pass_at_1"].drop_nulls()
                if seeds.len() > 1:
                    left.scatter(100 * seeds.to_numpy(), [y] * seeds.len(), s=12, color=colour, alpha=0.45, zorder=3)
            delta, low, high = (record[f"{benchmark}_delta{s}"] for s in ("", "_low", "_high"))
            if record[benchmark] is None:
                left.text(0.01, y, "no score", transform=left.get_yaxis_transform(), va="center", color="0.5")
            if variant == REFERENCE_VARIANT and record[benchmark] is not None:
                right.text(0.0, y, " reference", va="center", ha="left", color=colour)
            elif delta is not None:
                excludes = low > 0 or high < 0
                right.errorbar(delta, y, xerr=[[delta - low], [high - delta]], fmt="o", color=colour, capsize=3,
                               markerfacecolor=colour if excludes else "white")
        left.set_yticks(range(len(order)), [label(student, v, several) for v in order])
        left.set_ylim(-0.6, len(order) - 0.4)
        left.set_title(f"{benchmark}" + (f" — student `{student}`" if several else ""), fontsize="medium", loc="left")
        left.set_xlabel("pass@1 (%)")
        left.grid(axis="x", alpha=0.3)
        right.axvline(0.0, color="0.4", linewidth=0.9)
        right.set_xlabel(f"Δ pass@1 over {REFERENCE_VARIANT} (points)")
        right.tick_params(labelleft=False)
        right.margins(x=0.2)  # room for the reference's label at 0
        right.grid(axis="x", alpha=0.3)
        low, high = left.get_xlim()
        left.set_xlim(max(low, -1.0), max(high, 5.0))  # pass@1 is at least 0; all zeros still show a scale
        low, high = right.get_xlim()
        right.set_xlim(min(low, -5.0), max(high, 5.0))
    figure.suptitle("Left: pass@1, mean over seeds (small dots: each seed), bar ± sd over seeds (one seed: ± 1 SE "
                    "over problems).\n"
                    f"Right: paired Δ over {REFERENCE_VARIANT}, bar = its 95% interval (filled dot: the interval "
                    "excludes 0).\n"
                    f"Interval: {_short_rule(rule)}. {BASE_VARIANT}: the untrained student.", fontsize="small")
    return _save(figure, path)


def _short_rule(rule: str) -> str:
    """The interval half of a :class:`~orion_assets.method.evaluation.paired.PairedDelta` rule (not the p-value's),
    without its parenthesised detail."""
    return re.sub(r" \([^()]*\)", "", rule.split("; p:")[0])
