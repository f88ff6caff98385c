"""The report's "CoT quality by variant" section, built from a real DuckDB file written through the Store, its
numbers checked against ones computed here from the same rows with polars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from orion_assets.method.evaluation.paired import bootstrap_interval
from orion_assets.method.evaluation.report import build_report
from orion_assets.method.evaluation.report.cot_quality import JUDGE_RESAMPLES, judge_delta_frame
from orion_assets.method.quality.rules import row_drop_reasons
from orion_assets.profiles.schema import QualityConfig
from orion_assets.store import Store

QUALITY = QualityConfig(min_tokens=4, max_tokens=4000, min_coherence=0.2)
PROBLEMS = [f"p{i}" for i in range(8)]
SECTION = "## CoT quality by variant"
TABLE = "### CoT quality — student `tiny`"
JUDGE_TABLE = "### Judge scores: paired Δ over `teacher_sft`"


def quality_rows(*, judge: bool) -> pl.DataFrame:
    """teacher_sft: one teacher CoT per problem, two on p0 and p1 (teacher samples); orion: one rewrite per problem,
    long on p7 (a teacher fallback), its first three incoherent (dropped by the gate). With ``judge``, 1-5 scores that
    differ between the two, null where the judge's reply could not be read."""
    rows = []
    for i, problem in enumerate(PROBLEMS):
        for sample in range(2 if i < 2 else 1):
            rows.append({
                "variant": "teacher_sft", "problem_id": problem, "source": "teacher", "n_tokens": 300 + 37 * i + 5 * sample,
                "coherence": 0.55 + 0.031 * i, "teacher_similarity": None, "reflection_markers": i % 2,
                "reflection_density": 0.1 * (i % 2), "judge_coherence": 4 - sample if judge else None,
                "judge_consistency": (3 + i % 3) if judge else None, "sample": sample,
            })  # fmt: skip
        fallback = i == 7
        rows.append({
            "variant": "orion", "problem_id": problem, "source": "teacher_fallback" if fallback else "refined",
            "n_tokens": 1000 if fallback else 150 + 11 * i, "coherence": 0.1 if i < 3 else 0.7 + 0.023 * i,
            "teacher_similarity": 1.0 if fallback else 0.3 + 0.047 * i, "reflection_markers": 3 + i,
            "reflection_density": 1.5 + 0.25 * i, "judge_coherence": (None if i == 5 else 3 + i % 3) if judge else None,
            "judge_consistency": (2 + i % 4) if judge else None, "sample": 0,
        })  # fmt: skip
    frame = pl.DataFrame(rows, schema_overrides={"teacher_similarity": pl.Float64, "judge_coherence": pl.Int64,
                                                 "judge_consistency": pl.Int64})
    frame = frame.with_columns(
        pl.lit("tiny").alias("student"),
        pl.format("q-{}-{}-{}", "variant", "problem_id", "sample").alias("cot_quality_id"),
        pl.format("h-{}-{}-{}", "variant", "problem_id", "sample").alias("cot_hash"),
        pl.lit(True).alias("verified"), pl.lit(False).alias("truncated"), pl.lit(False).alias("contaminated"),
    ).drop("sample")
    return row_drop_reasons(frame, QUALITY)


def write_quality(path: Path, frame: pl.DataFrame) -> Store:
    store = Store(path)
    store.replace_rows("cot_quality", frame, replace_where=None,
                       materialization={"asset_key": "cot_quality", "partition_key": "tiny"})
    return store


def section(markdown: str) -> str:
    assert SECTION in markdown, "no CoT quality section"
    return markdown.split(SECTION, 1)[1].split("\n## ", 1)[0]


def table(markdown: str, heading: str) -> dict[str, dict[str, str]]:
    """The table under ``heading`` in the section: variant -> column header -> cell."""
    block = section(markdown).split(heading, 1)[1].split("\n### ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return rows


def number(cell: str) -> float:
    """The leading number of a cell such as ``0.612 (8)`` or ``+0.25* [+0.10, +0.40] (7)``."""
    return float(cell.split()[0].rstrip("*"))


def close(cell: str, expected: float, digits: int) -> bool:
    """Whether ``cell`` shows ``expected`` rounded to ``digits`` (either rounding of a tie)."""
    return abs(number(cell) - expected) <= 0.5 * 10**-digits + 1e-9


def test_table_numbers_match_the_rows(tmp_path: Path) -> None:
    rows = quality_rows(judge=False)
    report = build_report(write_quality(tmp_path / "orion_store.duckdb", rows), tmp_path / "out")
    cells = table(report.markdown, TABLE)
    assert list(cells) == ["teacher_sft", "orion"]  # canonical order; no row for variants without candidates
    for variant, got in cells.items():
        mine = rows.filter(pl.col("variant") == variant)
        assert got["candidates"] == str(mine.height)
        assert close(got["tokens, mean"], mine["n_tokens"].mean(), 1)
        assert close(got["tokens, median"], mine["n_tokens"].median(), 1)
        assert close(got["reflection markers per CoT, mean"], mine["reflection_markers"].mean(), 2)
        assert close(got["markers per 100 words, mean"], mine["reflection_density"].mean(), 2)
    # the two variants differ, and the table says so
    assert number(cells["orion"]["tokens, mean"]) < number(cells["teacher_sft"]["tokens, mean"])
    assert number(cells["orion"]["reflection markers per CoT, mean"]) > number(cells["teacher_sft"]["reflection markers per CoT, mean"])
    # similarity: the true rewrites only (the fallback's 1.0 left out); teacher_sft's CoTs are the teacher's
    rewrites = rows.filter((pl.col("variant") == "orion") & (pl.col("source") == "refined"))["teacher_similarity"]
    assert close(cells["orion"]["similarity to teacher, mean (n)"], rewrites.mean(), 3)
    assert cells["orion"]["similarity to teacher, mean (n)"].endswith(f"({rewrites.len()})") and rewrites.len() == 7
    assert cells["teacher_sft"]["similarity to teacher, mean (n)"] == "—"
    # no judge: no judge columns, no delta table, and the page says why
    text = section(report.markdown)
    assert "No judge scores" in text and JUDGE_TABLE not in text and "judge coherence" not in text


def test_coherence_counts_the_dropped_candidates(tmp_path: Path) -> None:
    rows = quality_rows(judge=False)
    orion = rows.filter(pl.col("variant") == "orion")
    dropped = orion.filter(~pl.col("kept"))
    assert dropped.height == 3 and all(r == ["incoherent"] for r in dropped["drop_reasons"].to_list())
    report = build_report(write_quality(tmp_path / "orion_store.duckdb", rows), tmp_path / "out")
    cell = table(report.markdown, TABLE)["orion"]["coherence, mean (n)"]
    assert close(cell, orion["coherence"].mean(), 3) and cell.endswith(f"({orion.height})")
    kept_only = orion.filter(pl.col("kept"))["coherence"].mean()
    assert abs(number(cell) - kept_only) > 0.1  # not the kept rows' mean


def test_judge_table_only_with_judge_scores_and_its_interval(tmp_path: Path) -> None:
    rows = quality_rows(judge=True)
    report = build_report(write_quality(tmp_path / "orion_store.duckdb", rows), tmp_path / "out")
    cells = table(report.markdown, TABLE)
    for variant, got in cells.items():
        scored = rows.filter(pl.col("variant") == variant)["judge_coherence"].drop_nulls()
        assert close(got["judge coherence (1-5), mean (n)"], scored.mean(), 2)
        assert got["judge coherence (1-5), mean (n)"].endswith(f"({scored.len()})")
    deltas = table(report.markdown, JUDGE_TABLE)
    assert list(deltas) == ["orion"]  # teacher_sft is the reference
    frame = judge_delta_frame(rows)
    for column, name in (("judge_coherence", "coherence"), ("judge_consistency", "logical consistency")):
        # independently: each problem's mean score per variant, paired by problem_id
        per_problem = rows.drop_nulls(column).group_by("variant", "problem_id").agg(pl.col(column).mean())
        paired = (per_problem.filter(pl.col("variant") == "orion")
                  .join(per_problem.filter(pl.col("variant") == "teacher_sft"), on="problem_id", suffix="_ref")
                  .sort("problem_id"))
        differences = (paired[column] - paired[f"{column}_ref"]).to_numpy()
        expected = float(np.mean(differences))
        low, high = bootstrap_interval(differences, resamples=JUDGE_RESAMPLES, seed=0, confidence=0.95)
        (row,) = frame.filter(pl.col("score") == column).iter_rows(named=True)
        assert row["delta"] == pytest.approx(expected) and row["n_problems"] == len(differences)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
        assert row["ci_low"] <= row["delta"] <= row["ci_high"] and row["ci_low"] < row["ci_high"]
        cell = deltas["orion"][f"Δ judge {name} [95% CI] (n)"]
        shown_low, shown_high = (float(x) for x in cell.split("[", 1)[1].split("]", 1)[0].split(","))
        assert close(cell, expected, 2) and shown_low <= number(cell) <= shown_high
        assert abs(shown_low - low) <= 0.005 + 1e-9 and abs(shown_high - high) <= 0.005 + 1e-9
        assert cell.endswith(f"({len(differences)})")
    assert frame.filter(pl.col("score") == "judge_coherence")["n_problems"].item() == 7  # p5's reply unreadable
    assert "No judge scores" not in section(report.markdown)


def test_all_null_or_missing_columns_show_dashes_not_numbers(tmp_path: Path) -> None:
    rows = quality_rows(judge=True).with_columns(
        pl.when(pl.col("variant") == "orion").then(None).otherwise(pl.col("coherence")).alias("coherence"),
        pl.when(pl.col("variant") == "orion").then(None).otherwise(pl.col("judge_coherence")).alias("judge_coherence"),
        pl.lit(None, dtype=pl.Float64).alias("teacher_similarity"),
    ).drop("reflection_markers", "reflection_density")  # a store written before these columns
    report = build_report(write_quality(tmp_path / "orion_store.duckdb", rows), tmp_path / "out")
    cells = table(report.markdown, TABLE)
    for variant in ("teacher_sft", "orion"):
        assert cells[variant]["similarity to teacher, mean (n)"] == "—"
        assert cells[variant]["reflection markers per CoT, mean"] == "—"
        assert cells[variant]["markers per 100 words, mean"] == "—"
    assert cells["orion"]["coherence, mean (n)"] == "—" and cells["orion"]["judge coherence (1-5), mean (n)"] == "—"
    assert cells["teacher_sft"]["coherence, mean (n)"] != "—"
    delta = table(report.markdown, JUDGE_TABLE)["orion"]
    assert delta["Δ judge coherence [95% CI] (n)"] == "—"  # orion has no coherence score to pair
    assert delta["Δ judge logical consistency [95% CI] (n)"] != "—"
    assert "nan" not in section(report.markdown).lower()
    # every judge score null: neither judge columns nor the delta table, whatever rows there are
    unjudged = rows.with_columns(pl.lit(None, dtype=pl.Int64).alias("judge_coherence"),
                                 pl.lit(None, dtype=pl.Int64).alias("judge_consistency"))
    text = section(build_report(write_quality(tmp_path / "unjudged.duckdb", unjudged), tmp_path / "unjudged").markdown)
    assert JUDGE_TABLE not in text and "judge coherence" not in text and "No judge scores" in text
    # no cot_quality table at all: no section
    store = Store(tmp_path / "empty.duckdb")
    store.replace_rows("teacher_cots", pl.DataFrame({"teacher_cot_id": ["t0"], "n_tokens": [10]}), replace_where=None,
                       materialization={"asset_key": "teacher_cots"})
    assert SECTION not in build_report(store, tmp_path / "empty").markdown
