import json
from pathlib import Path

import polars as pl
import pytest

from orion_assets.method import problems as problem_sets
from orion_assets.profiles.schema import TrainSource

FULL_SIZES = {"gsm_hard": 1319, "math500": 500, "aime24": 30, "amc23": 40}


@pytest.mark.parametrize("name, size", FULL_SIZES.items())
def test_benchmarks_load_in_full_with_normalized_gold(name, size):
    frame, report = problem_sets.load_benchmark(name)
    assert frame.height == size and report.rejected_count == 0
    assert frame["problem_id"].n_unique() == size
    assert frame["gold_answer"].null_count() == 0
    assert set(frame["benchmark"]) == {name}


def test_gold_answers_are_normalized_per_benchmark():
    aime = problem_sets.load_benchmark("aime24")[0]
    assert not any(g.startswith("0") for g in aime["gold_answer"])  # "025" -> "25"
    amc = problem_sets.load_benchmark("amc23")[0]
    assert "27" in amc["gold_answer"].to_list() and not any(g.endswith(".0") for g in amc["gold_answer"])
    math500 = problem_sets.load_benchmark("math500")[0]
    assert math500["subject"].null_count() == 0 and math500["level"].null_count() == 0


def test_the_shipped_files_are_the_upstream_originals():
    """Every shipped data file hashes (``git hash-object``) to the blob id its README names."""
    import hashlib
    import re

    readme = (problem_sets.PACKAGE_DATA / "README.md").read_text(encoding="utf-8")
    # | `file` | rows | source | commit | blob | licence |
    blobs = dict(re.findall(r"^\| `([^`]+)`[^|]*\|.*?\| [0-9a-f]{40} \| ([0-9a-f]{40}) \|", readme, flags=re.M))
    files = sorted((problem_sets.PACKAGE_DATA / "benchmarks").iterdir()) + sorted((problem_sets.PACKAGE_DATA / "train").iterdir())
    files = [f for f in files if not f.name.startswith("arithmetic_")]  # generated (test_arithmetic.py)
    assert {f.name for f in files} == set(blobs), (sorted(blobs), [f.name for f in files])
    for path in files:
        data = path.read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blobs[path.name], path.name


def test_malformed_jsonl_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": \n')
    source = TrainSource(name="bad", path=str(path))
    with pytest.raises(problem_sets.InputError) as excinfo:
        problem_sets.load_train_source(source)
    assert str(path) in str(excinfo.value) and "line 2" in str(excinfo.value)


def test_rows_without_gold_are_rejected_and_counted(tmp_path: Path):
    path = tmp_path / "pool.jsonl"
    rows = [
        {"q": "What is 1+1?", "a": "#### 2"},
        {"q": "What is 2+2?", "a": "no final answer line"},
        {"q": "What is 3+3?", "a": None},
        {"q": "", "a": "#### 4"},
        {"q": "What is 5+5?", "a": "The total is 10\n#### 1,000"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = TrainSource(name="pool", path=str(path), problem_field="q", answer_field="a", answer_format="gsm8k", solution_field="a")
    frame, report = problem_sets.load_train_source(source)
    assert frame.height == 2 and report.loaded == 2
    assert [r["row"] for r in report.rejected] == [2, 3, 4]
    assert {r["field"] for r in report.rejected} == {"a", "q"}
    assert frame["gold_answer"].to_list() == ["2", "1000"]


def test_parquet_and_json_sources_and_field_mapping(tmp_path: Path):
    frame = pl.DataFrame({"text": ["Find x if x+1=3.", "Find y if 2y=8."], "sol": ["$\\boxed{2}$", "so \\boxed{4}"],
                          "topic": ["alg", "alg"]})
    frame.write_parquet(tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(frame.to_dicts()))
    for name in ("p.parquet", "p.json"):
        source = TrainSource(
            name="x", path=str(tmp_path / name), problem_field="text", answer_field="sol",
            answer_format="boxed", solution_field="sol", subject_field="topic",
        )
        loaded, report = problem_sets.load_train_source(source)
        assert loaded["gold_answer"].to_list() == ["2", "4"] and report.rejected_count == 0
        assert loaded["subject"].to_list() == ["alg", "alg"]


def test_local_hf_dataset_directory_loads_offline(tmp_path: Path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text(json.dumps({"question": "What is 6*7?", "answer": "#### 42"}) + "\n")
    source = TrainSource(name="local", hf_dataset=str(tmp_path / "ds"), problem_field="question", answer_format="gsm8k")
    frame, _ = problem_sets.load_train_source(source)
    assert frame["gold_answer"].to_list() == ["42"]


def test_decontamination_removes_benchmark_overlap_only():
    benchmarks = problem_sets.all_benchmarks()
    index = problem_sets.ContaminationIndex.build(benchmarks, 13)
    bench_problem = problem_sets.load_benchmark("math500")[0]["problem"][3]
    train = pl.DataFrame(
        {
            "problem_id": ["a", "b", "c"],
            "problem": [
                "Prelude sentence. " + bench_problem.upper() + " Extra words.",  # the same text, reformatted
                "A farmer has 17 sheep and buys 5 more; how many sheep are there now in the field?",
                "What is 1+1?",
            ],
        }
    )
    kept, removed = problem_sets.decontaminate(train, index)
    assert kept["problem_id"].to_list() == ["b", "c"]
    assert removed[0]["problem_id"] == "a" and removed[0]["benchmark"] == "math500"


def test_deterministic_sample_is_stable_and_seeded():
    frame = problem_sets.load_benchmark("math500")[0]
    a = problem_sets.deterministic_sample(frame, 8, seed=0)
    b = problem_sets.deterministic_sample(frame.reverse(), 8, seed=0)
    c = problem_sets.deterministic_sample(frame, 8, seed=1)
    assert sorted(a["problem_id"]) == sorted(b["problem_id"])
    assert set(a["problem_id"]) != set(c["problem_id"])
    assert problem_sets.deterministic_sample(frame, 0, seed=0).height == 500
