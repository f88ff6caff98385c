"""The leaderboard report: a Markdown page with tables and plots, built from the store (``docs/report.md``).

This package only re-exports: ``page`` assembles and writes the page from ``read`` (the store),
``scores``, ``sections`` and ``cot_quality`` (its tables) and ``plots`` and ``curves`` (its PNGs).
"""

from orion_assets.method.evaluation.report.comparison import (
    LEADERBOARD_BUDGET,
    benchmark_columns,
    leaderboard_frame,
    paired_deltas,
)
from orion_assets.method.evaluation.report.cot_quality import cot_variant_frame, judge_delta_frame
from orion_assets.method.evaluation.report.curves import (
    LOSS_CURVES_PNG,
    PASS1_INTERVALS_PNG,
    loss_curve_png,
    png_markdown,
)
from orion_assets.method.evaluation.report.page import MARKDOWN_NAME, Report, build_report
from orion_assets.method.evaluation.report.plots import ACCURACY_PNG, COT_LENGTHS_PNG, ERROR_TYPES_PNG
from orion_assets.method.evaluation.report.read import usage_frame
from orion_assets.method.evaluation.report.sections import Prices, prices_of, quality_frame, reflection_frame

__all__ = [
    "LEADERBOARD_BUDGET",
    "benchmark_columns",
    "ACCURACY_PNG",
    "COT_LENGTHS_PNG",
    "ERROR_TYPES_PNG",
    "LOSS_CURVES_PNG",
    "PASS1_INTERVALS_PNG",
    "MARKDOWN_NAME",
    "Prices",
    "Report",
    "build_report",
    "cot_variant_frame",
    "judge_delta_frame",
    "leaderboard_frame",
    "loss_curve_png",
    "paired_deltas",
    "png_markdown",
    "prices_of",
    "quality_frame",
    "reflection_frame",
    "usage_frame",
]
