"""The leaderboard report, built from a real DuckDB file written through the Store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from orion_assets.method.evaluation.report import build_report
from orion_assets.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (benchmark, variant, n_problems, k, pass@1, SE, maj@k, pass@k, mean tokens, truncation)
SCORES = [
    ("gsm_hard", "base", 8, 4, 0.125, 0.05, 0.125, 0.25, 300.0, 0.5),
    ("gsm_hard", "teacher_sft", 8, 4, 0.375, 0.10, 0.375, 0.625, 512.4, 0.125),
    ("gsm_hard", "orion", 8, 4, 0.4375, 0.09, 0.5, 0.75, 410.0, 0.0),
    ("math500", "base", 8, 4, 0.0, 0.0, 0.0, 0.0, 250.0, 0.75),
    ("math500", "teacher_sft", 8, 4, 0.25, 0.08, 0.25, 0.5, 700.0, 0.25),
    # orion has no math500 score: its cells must show "—"
    ("aime24", "teacher_sft", 8, 4, 0.03125, 0.03125, 0.0, 0.125, 900.0, 0.375),
    ("aime24", "orion", 8, 4, 0.0, 0.0, 0.0, 0.0, 880.0, 0.5),
]


def scores_frame() -> pl.DataFrame:
    frame = pl.DataFrame(
        SCORES,
        schema=[
            "benchmark",
            "variant",
            "n_problems",
            "k",
            "pass_at_1",
            "pass_at_1_se",
            "maj_at_k",
            "pass_at_k",
            "mean_tokens",
            "truncation_rate",
        ],
        orient="row",
    )
    boxed = pl.Series("boxed_rate", [0.0, 0.5, 0.625, 0.0, 0.75, 1.0, 0.875])  # per SCORES row
    return frame.with_columns(pl.lit("run-1").alias("dagster_run_id"), pl.lit("x").alias("benchmark_score_id"), boxed)


def predictions_frame() -> pl.DataFrame:
    """Graded samples behind SCORES' pass@1: 8 problems x k = 4 of each (benchmark, variant), sample j of
    problem i correct when 4 * i + j < pass@1 * 32 (the first problems are the ones answered right)."""
    rows = []
    for benchmark, variant, n, k, pass_at_1, *_ in SCORES:
        correct = round(pass_at_1 * n * k)
        rows += [{"prediction_id": f"{benchmark}-{variant}-{i}-{j}", "benchmark": benchmark, "variant": variant,
                  "problem_id": f"{benchmark}-p{i}", "sample_index": j, "correct": k * i + j < correct,
                  "finish_reason": "stop"} for i in range(n) for j in range(k)]
    return pl.DataFrame(rows)


def materialization(asset: str) -> dict[str, object]:
    return {"asset_key": asset, "dagster_run_id": "run-1", "profile_name": "tiny", "profile_hash": "feedc0de"}


def write_store(path: Path, tables: set[str]) -> Store:
    store = Store(path)
    if "benchmark_scores" in tables:
        store.replace_rows("benchmark_scores", scores_frame(), replace_where=None, materialization=materialization("benchmark_scores"))
        store.replace_rows("benchmark_predictions", predictions_frame(), replace_where=None,
                           materialization=materialization("benchmark_predictions"))
    if "teacher_cots" in tables:
        teacher = pl.DataFrame({"teacher_cot_id": [f"t{i}" for i in range(40)], "n_tokens": [200 + 10 * i for i in range(40)]})
        store.replace_rows("teacher_cots", teacher, replace_where=None, materialization=materialization("teacher_cots"))
    if "refined_cots" in tables:
        modes = ["orion", "no_error", "no_reflection"]
        refined = pl.DataFrame(
            {
                "refined_cot_id": [f"r{i}" for i in range(60)],
                "n_tokens": [100 + 7 * i for i in range(60)],
                "mode": [modes[i % 3] for i in range(60)],
                "source": ["teacher_fallback" if i % 10 == 0 else "refined" for i in range(60)],
            }
        )
        store.replace_rows("refined_cots", refined, replace_where=None, materialization=materialization("refined_cots"))
    if "student_errors" in tables:
        errors = pl.DataFrame(
            {"attempt_id": [f"a{i}" for i in range(11)],  # every type in ERROR_TYPES
             "error_type": ["wrong_answer"] * 5 + ["no_answer"] * 3 + ["truncated"] + ["repetition_loop"] * 2}
        )
        store.replace_rows("student_errors", errors, replace_where=None, materialization=materialization("student_errors"))
    return store


ALL_TABLES = {"benchmark_scores", "teacher_cots", "refined_cots", "student_errors"}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, path


def table_row(markdown: str, section: str, variant: str) -> list[str]:
    """The cells of ``variant``'s row in the table under heading ``section``."""
    block = markdown.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    for line in block.splitlines():
        if line.startswith(f"| `{variant}` |"):
            return [cell.strip() for cell in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row for {variant} under {section}")


def test_report_numbers_deltas_and_plots(tmp_path: Path) -> None:
    store = write_store(tmp_path / "orion_store.duckdb", ALL_TABLES)
    report = build_report(store, tmp_path / "out")
    md = report.markdown
    assert report.markdown_path == tmp_path / "out" / "leaderboard.md"
    assert report.markdown_path.read_text(encoding="utf-8") == md
    assert md.startswith("# ORION leaderboard")
    assert "Generated " in md
    assert "`tiny` (hash `feedc0de`)" in md

    # pass@1 table: per benchmark pass@1, Δ over teacher_sft, Δ over base, paired over problems (amc23 has no
    # scores: no column). gsm_hard: orion answers problems 0-2 and half of problem 3 (14 of 32), teacher_sft
    # problems 0-2 (12 of 32): one problem differs by +0.5, Δ = 0.5 / 8 = +6.25 points -> "+6.3"; a bootstrap
    # resample without problem 3 gives 0, so the interval starts at 0 and no "*" marks it.
    # aime24: orion 0 against teacher_sft's 1 of 32: Δ = -0.25 / 8 = -3.125 -> "-3.1".
    orion = table_row(md, "pass@1", "orion")
    assert orion[0] == "43.8 ± 9.0 SE" and orion[1].startswith("+6.3 [+0.0, +") and "*" not in orion[1]
    assert orion[3:6] == ["—", "—", "—"]  # no math500 score
    assert orion[6] == "0.0 ± 0.0 SE" and orion[7].startswith("-3.1 [")
    # base: gsm_hard 4 of 32 (problem 0) against teacher_sft's problems 0-2: -2 / 8 = -25 points
    base = table_row(md, "pass@1", "base")
    assert base[0] == "12.5 ± 5.0 SE" and base[1].startswith("-25.0 [") and base[2] == "ref"
    assert base[3] == "0.0 ± 0.0 SE" and base[4].startswith("-25.0 [") and base[6:] == ["—", "—", "—"]
    teacher = table_row(md, "pass@1", "teacher_sft")
    assert teacher[0::3] == ["37.5 ± 10.0 SE", "25.0 ± 8.0 SE", "3.1 ± 3.1 SE"] and teacher[1::3] == ["ref"] * 3
    assert teacher[2].startswith("+25.0 [")  # over base, paired: +2 problems of 8
    assert table_row(md, "Answers in", "teacher_sft") == ["50.0%", "75.0%", "100.0%"]
    assert table_row(md, "Answers in", "orion") == ["62.5%", "—", "87.5%"]
    assert ("| variant | gsm_hard | Δ teacher_sft | Δ base | math500 | Δ teacher_sft | Δ base | aime24 | Δ teacher_sft "
            "| Δ base |") in md
    assert "amc23" not in md.split("## pass@1", 1)[1].split("## Plots", 1)[0]
    assert "over the problems both answered (gsm_hard 8, math500 8, aime24 8 problems)" in md
    assert "paired bootstrap over problems" in md and "B=10000, seed=0" in md
    # variant order: base, teacher_sft, orion
    assert md.index("| `base` |") < md.index("| `teacher_sft` |") < md.index("| `orion` |")

    # maj@k and pass@k tables, k = 4 everywhere
    assert table_row(md, "maj@4", "orion") == ["50.0", "—", "0.0"]
    assert table_row(md, "pass@4", "teacher_sft") == ["62.5", "50.0", "12.5"]
    # length / truncation: 512.4 tokens -> "512", 12.5% truncated
    assert table_row(md, "Mean CoT length", "teacher_sft")[0] == "512 / 12.5%"
    assert "Problems per benchmark: gsm_hard 8, math500 8, aime24 8." in md

    # the leaderboard frame: one row per (student, variant), pass@1 fractions and paired deltas in points
    board = report.leaderboard
    assert board["variant"].to_list() == ["base", "teacher_sft", "orion"]
    assert board["student"].to_list() == ["student"] * 3  # a store without a student column: one student
    assert board.columns[:6] == ["student", "variant", "examples", "train_tokens", "steps", "dropped"]
    assert {"gsm_hard", "gsm_hard_sd", "gsm_hard_seeds", "gsm_hard_delta", "gsm_hard_delta_low", "gsm_hard_delta_high",
            "gsm_hard_delta_p", "gsm_hard_significant", "gsm_hard_delta_base", "gsm_hard_n_common"} <= set(board.columns)
    assert "amc23" not in board.columns
    # these scores were written before failed calls and grading rules were recorded
    assert board["gsm_hard_n_errors"].null_count() == board.height
    assert "failed calls)" not in md
    assert "These scores do not record which grading rule made them" in md
    orion = board.row(2, named=True)
    assert orion["gsm_hard"] == pytest.approx(0.4375) and orion["gsm_hard_seeds"] == 1 and orion["gsm_hard_sd"] is None
    assert orion["gsm_hard_delta"] == pytest.approx(6.25) and orion["gsm_hard_delta_low"] == pytest.approx(0.0)
    assert orion["gsm_hard_delta_high"] > 6.25 and orion["gsm_hard_delta_p"] == pytest.approx(1.0)  # 1 win, 0 losses
    assert orion["gsm_hard_significant"] is False and orion["gsm_hard_n_common"] == 8
    assert orion["math500"] is None and orion["math500_delta"] is None
    assert orion["aime24_delta"] == pytest.approx(-3.125)
    teacher = board.row(1, named=True)
    assert teacher["gsm_hard_delta"] == 0.0 and teacher["gsm_hard_delta_base"] == pytest.approx(25.0)
    assert report.deltas.height == 2 * 2 + 2 + 1  # orion, base against teacher_sft; orion, teacher_sft against base

    # plots exist, are PNGs, and are linked relatively
    assert [p.name for p in report.pngs] == ["accuracy.png", "pass1_intervals.png", "cot_lengths.png", "error_types.png"]
    for png in report.pngs:
        assert png.parent == tmp_path / "out"
        assert_png(png)
        assert f"]({png.name})" in md
    # no student_checkpoint table: no loss curves, and the page says why
    assert report.loss_curves_png is None and "`loss_curves.png` skipped: `orion.student_checkpoint` does not exist." in md
    # 6 of 60 refined rows are teacher fallbacks and are left out of the length plot
    assert "leaves out 6 refined_cots row(s)" in md
    assert "## How this was made" in md


def test_failed_calls_and_grading_rule_are_shown(tmp_path: Path) -> None:
    # The scores as benchmark_scores writes them now: failed-call counts and the grading rule.
    counts = {("gsm_hard", "orion"): (3, 1), ("aime24", "teacher_sft"): (1, 0)}
    frame = scores_frame().with_columns(
        pl.Series("n_answered", [29] * len(SCORES)),
        pl.Series("n_errors", [counts.get((b, v), (0, 0))[0] for b, v, *_ in SCORES]),
        pl.Series("n_unanswered_problems", [counts.get((b, v), (0, 0))[1] for b, v, *_ in SCORES]),
        pl.Series("grading_rule", ["qwen_math"] * len(SCORES)),
    )
    store = Store(tmp_path / "orion_store.duckdb")
    store.replace_rows("benchmark_scores", frame, replace_where=None, materialization=materialization("benchmark_scores"))
    store.replace_rows("benchmark_predictions", predictions_frame(), replace_where=None,
                       materialization=materialization("benchmark_predictions"))
    report = build_report(store, tmp_path / "out")
    md = report.markdown
    orion = table_row(md, "pass@1", "orion")
    assert orion[0] == "43.8 ± 9.0 SE (3 failed calls)" and orion[6] == "0.0 ± 0.0 SE"
    assert table_row(md, "pass@1", "teacher_sft")[6] == "3.1 ± 3.1 SE (1 failed call)"
    assert table_row(md, "pass@1", "base")[0] == "12.5 ± 5.0 SE"
    assert "1 problem(s) without any answered sample are left out" in md
    assert "Graded with the `qwen_math` rule (Qwen2.5-Math's math_equal, relative tolerance 1e-4" in md
    board = report.leaderboard
    assert board.filter(pl.col("variant") == "orion")["gsm_hard_n_errors"].item() == 3
    assert board.filter(pl.col("variant") == "base")["gsm_hard_n_errors"].item() == 0
    assert report.accuracy_png is not None

    # variants graded under different rules are called out, by variant
    mixed = frame.with_columns(
        pl.when((pl.col("benchmark") == "gsm_hard") & (pl.col("variant") == "base"))
        .then(pl.lit("strict"))
        .otherwise(pl.col("grading_rule"))
        .alias("grading_rule")
    )
    store.replace_rows("benchmark_scores", mixed, replace_where=None, materialization=materialization("benchmark_scores"))
    md = build_report(store, tmp_path / "mixed").markdown
    assert "The numbers were graded with different rules (`qwen_math` for `base`, `teacher_sft`, `orion`; " \
           "`strict` for `base`)" in md


def test_the_primary_rule_s_scores_are_shown_when_several_rules_are_stored(tmp_path: Path) -> None:
    # benchmark_scores holds one row per grading rule; the comparison shows the [eval] compat one, and one
    # table sets every rule's pass@1 side by side.
    primary = scores_frame().with_columns(pl.lit("strict").alias("grading_rule"), pl.lit(True).alias("primary"))
    other = primary.with_columns(pl.lit("qwen_math").alias("grading_rule"), pl.lit(False).alias("primary"),
                                 pl.lit(0.99).alias("pass_at_1"))
    store = Store(tmp_path / "orion_store.duckdb")
    store.replace_rows("benchmark_scores", pl.concat([other, primary]), replace_where=None,
                       materialization=materialization("benchmark_scores"))
    md = build_report(store, tmp_path / "out").markdown
    assert table_row(md, "pass@1 —", "base")[0] == "12.5 ± 5.0 SE"
    assert "duplicate" not in md and "99.0" not in md.split("## pass@1 under each grading rule")[0]
    assert "Graded with the `strict` rule" in md and "(`[eval] compat`; docs/grading.md)" in md
    assert "| variant | gsm_hard `strict` | gsm_hard `qwen_math` | math500 `strict` |" in md
    assert table_row(md, "pass@1 under each grading rule", "base")[:2] == ["12.5", "99.0"]


def test_missing_tables_are_skipped_with_notes(tmp_path: Path) -> None:
    store = write_store(tmp_path / "orion_store.duckdb", {"benchmark_scores"})
    report = build_report(store, tmp_path / "out")
    assert report.accuracy_png is not None
    assert_png(report.accuracy_png)
    assert report.cot_lengths_png is None and report.error_types_png is None
    assert not (tmp_path / "out" / "cot_lengths.png").exists()
    assert "`cot_lengths.png` skipped" in report.markdown
    assert "`error_types.png` skipped: `orion.student_errors` does not exist." in report.markdown
    assert "](cot_lengths.png)" not in report.markdown

    # only the training-side tables: no scores, but the CoT and error plots are drawn
    store = write_store(tmp_path / "other.duckdb", {"teacher_cots", "student_errors"})
    report = build_report(store, tmp_path / "other")
    assert report.leaderboard.height == 0
    assert report.accuracy_png is None
    assert "`orion.benchmark_scores` does not exist yet" in report.markdown
    assert "`orion.refined_cots` does not exist" in report.markdown
    assert report.cot_lengths_png is not None and report.error_types_png is not None
    assert report.loss_curves_png is None and "`loss_curves.png` skipped: `orion.student_checkpoint` does not" in report.markdown
    assert_png(report.cot_lengths_png)
    assert_png(report.error_types_png)

    # checkpoints written before the loss_curve column: the page says how to get the curves
    from orion_assets.assets.training import checkpoint_row

    old = checkpoint_row(checkpoint_id="c", student="tiny", variant="orion", seed=0, sft_examples=4, steps=2,
                         tokens_seen=100).drop("loss_curve")
    store.replace_rows("student_checkpoint", old, replace_where=None, materialization=materialization("student_checkpoint"))
    report = build_report(store, tmp_path / "old")
    assert report.loss_curves_png is None and not (tmp_path / "old" / "loss_curves.png").exists()
    assert ("`loss_curves.png` skipped: `orion.student_checkpoint` was written before checkpoints kept their loss "
            "curve (column `loss_curve`); re-materialize `student_checkpoint`") in report.markdown

    # empty tables are handled like missing ones
    empty = Store(tmp_path / "empty.duckdb")
    empty.replace_rows(
        "benchmark_scores", scores_frame().clear(), replace_where=None, materialization=materialization("benchmark_scores")
    )
    empty.replace_rows(
        "student_errors",
        pl.DataFrame(schema={"attempt_id": pl.Utf8, "error_type": pl.Utf8}),
        replace_where=None,
        materialization=materialization("student_errors"),
    )
    report = build_report(empty, tmp_path / "empty")
    assert report.pngs == []
    assert "`orion.benchmark_scores` is empty" in report.markdown
    assert "`error_types.png` skipped: `orion.student_errors` is empty." in report.markdown

    with pytest.raises(FileNotFoundError):
        build_report(Store(tmp_path / "nothing.duckdb"), tmp_path / "nothing")


def test_report_from_path_or_open_connection(tmp_path: Path) -> None:
    store = write_store(tmp_path / "orion_store.duckdb", {"benchmark_scores"})
    by_path = build_report(str(tmp_path / "orion_store.duckdb"), tmp_path / "by-path")
    with store.connect(read_only=True) as con:
        by_connection = build_report(con, tmp_path / "by-connection")
    assert by_path.leaderboard.equals(by_connection.leaderboard)
    tables = by_path.markdown.split("## pass@1", 1)[1]
    assert tables == by_connection.markdown.split("## pass@1", 1)[1]


@pytest.mark.slow  # orion report in a subprocess: about 10 s
def test_orion_report_command(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_store(data_dir / "orion_store.duckdb", ALL_TABLES)
    out = tmp_path / "cli-report"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("ORION_DATA_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "orion_assets.cli", "--data-dir", str(data_dir), "report", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "leaderboard.md")
    for name in ("leaderboard.md", "accuracy.png", "cot_lengths.png", "error_types.png"):
        assert (out / name).is_file(), name
    for name in ("accuracy.png", "cot_lengths.png", "error_types.png"):
        assert_png(out / name)
    # the same tables as a report built in-process
    in_process = build_report(Store(data_dir / "orion_store.duckdb"), tmp_path / "in-process").markdown
    cli_md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert cli_md.split("## pass@1", 1)[1] == in_process.split("## pass@1", 1)[1]



def test_orion_report_default_folder_and_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orion_assets.cli.main import main

    data_dir = tmp_path / "data"
    write_store(data_dir / "orion_store.duckdb", {"benchmark_scores"})
    # default folder: $ORION_DATA_DIR/reports
    monkeypatch.setenv("ORION_DATA_DIR", str(data_dir))
    assert main(["report"]) == 0
    assert capsys.readouterr().out.strip() == str(data_dir / "reports" / "leaderboard.md")
    assert_png(data_dir / "reports" / "accuracy.png")
    assert "`cot_lengths.png` skipped" in (data_dir / "reports" / "leaderboard.md").read_text(encoding="utf-8")

    # no DuckDB file: a clear error, exit 1
    assert main(["--data-dir", str(tmp_path / "empty"), "report"]) == 1
    assert "no DuckDB file" in capsys.readouterr().err
