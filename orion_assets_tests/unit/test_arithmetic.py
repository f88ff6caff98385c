"""The generated arithmetic task: the shipped files are what the seed makes, the splits are disjoint and clean,
every worked solution boxes its gold answer, and both load as a benchmark and a training source."""

from __future__ import annotations

import polars as pl

from orion_assets.method import problems as problem_sets
from orion_assets.method.grading import extract_answer
from orion_assets.profiles import load_profile
from orion_devtools import arithmetic


def test_the_shipped_files_are_what_the_seed_makes():
    assert arithmetic.main(["--check"]) == 0


def test_splits_are_disjoint_and_share_no_13_gram():
    test, train = arithmetic.generate()
    assert len(test) == arithmetic.TEST_SIZE and len(train) == arithmetic.TRAIN_SIZE
    questions = {problem_sets.normalize_text(p.question) for p in test}
    assert len(questions) == len(test) and not questions & {problem_sets.normalize_text(p.question) for p in train}
    benchmark = problem_sets.load_benchmark("arithmetic")[0]
    index = problem_sets.ContaminationIndex.build(benchmark, n=13)
    pool = problem_sets.load_train_source(load_profile("arithmetic").config.data.train_sources[0])[0]
    kept, removed = problem_sets.decontaminate(pool, index)
    assert kept.height == arithmetic.TRAIN_SIZE and removed == []


def test_every_solution_boxes_its_gold_answer_and_the_levels_take_turns():
    test, train = arithmetic.generate()
    for problem in test + train:
        assert extract_answer(problem.solution) == (str(problem.answer), "boxed"), problem
        assert problem.answer >= 0
    assert [p.level for p in test[:6]] == [1, 2, 3, 1, 2, 3]


def test_another_seed_makes_other_problems():
    assert arithmetic.generate(seed=1, test_size=5, train_size=5) != arithmetic.generate(seed=2, test_size=5, train_size=5)


def test_it_loads_as_a_benchmark_with_levels_and_reference_solutions():
    frame, report = problem_sets.load_benchmark("arithmetic")
    assert frame.height == arithmetic.TEST_SIZE and report.rejected_count == 0
    assert frame["level"].unique().sort().to_list() == ["1", "2", "3"]
    assert frame.filter(pl.col("reference_solution").is_null()).height == 0
