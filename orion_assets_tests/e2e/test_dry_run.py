"""The realistic dry run (``python -m orion_devtools.dry_run``): the ``paper`` profile at
small scale against a simulated R1-style teacher, vLLM-style student (4096-token context, LoRA
names) and judge. It checks what a real run must get right and a replayed, ideal one never shows."""

from __future__ import annotations

import pytest

from orion_assets.vocabulary import BASELINES
from orion_devtools.dry_run import TRAINED_VARIANTS, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("dry_run"))


def test_the_sft_variants_and_baselines_differ(summary):
    assert set(summary["sft_rows"]) == set(TRAINED_VARIANTS)
    assert all(n > 0 for n in summary["sft_rows"].values())
    assert summary["sft_identical_pairs"] == []


def test_yields_fallbacks_and_overflows_are_counted(summary):
    modes = {m["mode"]: m for m in summary["modes"]}
    assert set(modes) == {"orion", "no_error", "no_reflection"}
    for mode in modes.values():
        assert mode["refined"] + mode["teacher_fallback"] + mode["dropped"] == mode["problems"] > 0
        assert 0 < mode["refined"] < mode["problems"]
    # long teacher CoTs leave some reflect prompts no room in the student's 4096 tokens: skipped, counted
    assert modes["orion"]["context_overflow"] > 0
    assert sum(m["unsplittable"] for m in modes.values()) > 0
    # ... and never sent: the student server answered no request with HTTP 400
    requests = summary["requests"]
    assert requests["student_http_400"] == 0 and requests["teacher_http_400"] == 0
    assert requests["student_over_window"] == 0 and requests["student_by_kind"]["reflect_with_error"] > 0
    assert summary["teacher_with_thinking"] == summary["teacher_cots"] > 0


def test_the_report_shows_yields_and_failed_calls(summary):
    from pathlib import Path

    report = Path(summary["report"]).read_text()
    assert "## Self-reflection per mode" in report and "prompt over context" in report
    assert "gsm_hard" in report and "precision" in report
    for score in summary["scores"]:
        assert score["n_errors"] == 0 and score["n_answered"] > 0


def test_a_retrained_variant_is_evaluated_again(summary):
    assert summary["retrained"]["orion"] != summary["checkpoints"]["orion"]
    for variant in (v for v in TRAINED_VARIANTS if v != "orion"):
        assert summary["retrained"][variant] == summary["checkpoints"][variant]
    # the new adapter is served under its checkpoint's name; every math500 sample was asked again
    assert summary["second_eval_models"] == [f"orion-{summary['retrained']['orion'][:12]}"]
    assert summary["second_eval_requests"] == 5 * 2
    assert summary["predictions_checkpoint_orion_math500"] == [summary["retrained"]["orion"]]


def test_the_report_compares_the_baselines_and_the_cot_quality_of_every_variant(summary):
    from pathlib import Path

    report = Path(summary["report"]).read_text()
    board = report.split("## CoT quality by variant", 1)[0]
    for baseline in BASELINES:  # each has its paired delta over teacher_sft, on the same problems
        (line,) = [row for row in board.splitlines() if row.startswith(f"| `{baseline}` |") and "[" in row]
        assert line.count("[") >= 1
    quality = report.split("## CoT quality by variant", 1)[1].split("\n## ", 1)[0]
    for variant in TRAINED_VARIANTS:
        assert f"| `{variant}` |" in quality
    assert "### Judge scores: paired Δ over `teacher_sft`" in quality  # the dry run sets a judge
    assert "Common problems (`[sft] common_problems`)" in report and "`rft`:" in report
