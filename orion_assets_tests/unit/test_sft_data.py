"""``sft_dataset``'s core without Dagster: kept candidates become solve-prompt examples, the common-problems rule
leaves out the others' problems, and the statistics say what was left out and why."""

from __future__ import annotations

import polars as pl

from orion_assets.method import prompts, sft_data
from orion_assets.method.quality.common import NOT_COMMON, common_problems


def _candidates(problems: list[str], kept: list[bool]) -> pl.DataFrame:
    return pl.DataFrame({
        "cot_quality_id": [f"q-{p}" for p in problems], "cot_table": "teacher_cots", "problem_id": problems,
        "teacher_cot_id": [f"t-{p}" for p in problems], "refined_cot_id": None, "baseline_cot_id": None,
        "source": "teacher", "n_tokens": [10 * (i + 1) for i in range(len(problems))], "kept": kept,
        "drop_reasons": [[] if k else ["too_long"] for k in kept],
    }, schema_overrides={"refined_cot_id": pl.Utf8, "baseline_cot_id": pl.Utf8})  # fmt: skip


def test_kept_candidates_of_the_common_problems_become_examples():
    chunks = [_candidates(["p1", "p2", "p3"], [True, True, False]), _candidates(["p4"], [True])]
    stats = sft_data.SftStats()
    made = list(sft_data.sft_records(
        chunks, student="s", variant="teacher_sft", overrides={}, problems_of=lambda ids: {p: f"What is {p}?" for p in ids},
        texts_of=lambda cots: {q: f"CoT {q}" for q in cots["cot_quality_id"]}, common=frozenset({"p1", "p3", "p4"}),
        stats=stats))
    records = [r for chunk in made for r in chunk]
    assert [r["problem_id"] for r in records] == ["p1", "p4"]  # p2 is not common, p3 was dropped by the rules
    assert records[0]["prompt"] == list(prompts.messages("solve", {}, problem="What is p1?"))
    assert records[0]["completion"] == [{"role": "assistant", "content": "CoT q-p1"}]
    assert (stats.candidates, stats.examples, stats.not_common) == (4, 2, 1) and stats.tokens == [10, 10]
    shared = common_problems(pl.DataFrame({"variant": ["teacher_sft", "orion"], "problem_id": ["p1", "p1"],
                                           "kept": [True, True]}))
    meta = stats.metadata("teacher_sft", shared)
    assert meta["dropped_by_reason"] == {"too_long": 1, NOT_COMMON: 1} and meta["dropped_by_quality"] == 1
    assert "nothing to train on" in stats.nothing_to_train_on("s", "teacher_sft", None)
