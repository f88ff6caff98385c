"""The field's baselines (docs/baselines.md): rft, short_cot and mix_long made from the teacher CoTs and exposure
attempts every variant draws on (the core functions), the profile's choice of variants, and ``baseline_cots``
materialized by Dagster into the candidate rows the quality gate reads."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from orion_assets.ids import content_id
from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.method import baselines
from orion_assets.method.quality.candidates import candidates
from orion_assets.method.reflection import drawn_teacher_cots
from orion_assets.method.variants import NOT_CHOSEN, skipped_modes, skipped_variants
from orion_assets.profiles import load_profile
from orion_assets.profiles.sft import SFTSection
from orion_assets.store import Store
from orion_assets.training import TrainParams, config_hash
from orion_assets.vocabulary import BASELINES, TRAINING_VARIANTS, VARIANTS
from orion_assets_tests.graph import all_assets, baseline_cots

TEACHER_COTS = pl.DataFrame({
    "teacher_cot_id": ["b1", "a1", "a0", "c0", "d1"],
    "problem_id": ["b", "a", "a", "c", "d"],
    "sample_index": [1, 1, 0, 0, 1],  # d's sample 0 did not verify
})
# every exposure call on c failed; a, b and d reached the student
ATTEMPTS = pl.DataFrame({"problem_id": ["a", "b", "c", "d"], "finish_reason": ["stop", "length", "error", "stop"]})


def test_every_variant_draws_on_the_chosen_teacher_cots_of_problems_exposure_reached():
    assert drawn_teacher_cots(TEACHER_COTS, ATTEMPTS, "first")["teacher_cot_id"].to_list() == ["a0", "b1", "d1"]
    assert drawn_teacher_cots(TEACHER_COTS, ATTEMPTS, "all")["teacher_cot_id"].to_list() == ["a0", "a1", "b1", "d1"]


def _teacher(n: int, *, thinking: bool = True) -> pl.DataFrame:
    ids = [f"t{i:03d}" for i in range(n)]
    solutions = [f"So the answer is $\\boxed{{{i}}}$." for i in range(n)]
    return pl.DataFrame({
        "teacher_cot_id": ids, "problem_id": [f"p{i:03d}" for i in range(n)], "sample_index": [0] * n,
        "cot": [f"Let me think about {i}. Wait, check.\n\n{s}" if thinking else s for i, s in enumerate(solutions)],
        "solution": solutions, "finish_reason": ["stop"] * n,
    })  # fmt: skip


def test_short_cot_is_the_teacher_solution_without_its_thinking():
    rows = baselines.short_cot_rows(_teacher(3), "s")
    assert rows["cot"].to_list() == [f"So the answer is $\\boxed{{{i}}}$." for i in range(3)]
    assert set(rows["source"]) == {"teacher_solution"} and rows["verified"].all() and set(rows["variant"]) == {"short_cot"}
    assert rows["teacher_cot_id"].to_list() == ["t000", "t001", "t002"] and rows["attempt_id"].is_null().all()
    assert rows["baseline_cot_id"].n_unique() == 3
    # a table written before `solution` existed is refused with what to do, not read as empty CoTs
    with pytest.raises(ValueError, match="materialize teacher_cots again"):
        baselines.short_cot_rows(_teacher(2).with_columns(pl.lit(None, dtype=pl.Utf8).alias("solution")), "s")


def test_mix_long_keeps_the_share_long_exactly_over_the_chunks_by_a_fixed_draw():
    teacher = _teacher(103)
    tally = baselines.MixTally(0.2)
    chunks = [baselines.mix_long_rows(teacher.slice(start, 10), "s", tally) for start in range(0, 103, 10)]
    rows = pl.concat(chunks)
    long = rows.filter(pl.col("source") == "teacher_cot")
    assert rows.height == 103 and long.height == round(0.2 * 103) == 21 and (tally.seen, tally.long) == (103, 21)
    # long rows carry the whole CoT (thinking and solution), the others the solution alone
    whole = dict(teacher.select("teacher_cot_id", "cot").iter_rows())
    short = dict(teacher.select("teacher_cot_id", "solution").iter_rows())
    assert all(cot == whole[t] for t, cot in long.select("teacher_cot_id", "cot").iter_rows())
    assert all(cot == short[t] for t, cot in rows.filter(pl.col("source") == "teacher_solution")
               .select("teacher_cot_id", "cot").iter_rows())
    # the draw depends on the ids only: texts of another length choose the same CoTs
    longer, tally = teacher.with_columns((pl.col("cot") + " More words.").alias("cot")), baselines.MixTally(0.2)
    again = pl.concat([baselines.mix_long_rows(longer.slice(start, 10), "s", tally) for start in range(0, 103, 10)])
    assert set(again.filter(pl.col("source") == "teacher_cot")["teacher_cot_id"]) == set(long["teacher_cot_id"])
    # every share is reached: none long, all long
    assert baselines.mix_long_rows(teacher, "s", baselines.MixTally(0.0))["source"].unique().to_list() == ["teacher_solution"]
    assert baselines.mix_long_rows(teacher, "s", baselines.MixTally(1.0))["source"].unique().to_list() == ["teacher_cot"]


def test_rft_trains_on_the_students_distinct_verified_solutions():
    attempts = pl.DataFrame({
        "attempt_id": ["a0", "a1", "a2", "a3", "b0", "b1", "c0"],
        "problem_id": ["a", "a", "a", "a", "b", "b", "c"],
        "sample_index": [0, 1, 2, 3, 0, 1, 0],
        "text": ["x = 2 \\boxed{2}", " x = 2 \\boxed{2} ", "so \\boxed{2}", "\\boxed{3}", "cut \\boxed{5", "\\boxed{5}",
                 "\\boxed{7}"],
        "correct": [True, True, True, False, True, True, True],
        "finish_reason": ["stop", "stop", "stop", "stop", "length", "stop", "stop"],
    })  # fmt: skip
    rows = baselines.rft_rows(attempts, ["a", "b"], "s", "all")  # c is not a drawn problem
    # a1 repeats a0 (whitespace aside), a3 is wrong, b0 was cut off
    assert rows["attempt_id"].to_list() == ["a0", "a2", "b1"]
    assert rows["cot"].to_list() == ["x = 2 \\boxed{2}", "so \\boxed{2}", "\\boxed{5}"]
    assert set(rows["source"]) == {"student_solution"} and rows["teacher_cot_id"].is_null().all()
    assert baselines.rft_rows(attempts, ["a", "b"], "s", "first")["attempt_id"].to_list() == ["a0", "b1"]
    with pytest.raises(ValueError, match="rft_solutions"):
        baselines.rft_rows(attempts, ["a"], "s", "best")


def test_baseline_rows_become_candidates_and_the_other_rows_keep_their_ids():
    teacher = _teacher(2)
    frame = candidates(teacher, pl.DataFrame(schema={c: pl.Utf8 for c in
                                                     ("mode", "problem_id", "teacher_cot_id", "refined_cot_id", "source",
                                                      "cot", "finish_reason")} | {"verified": pl.Boolean}),
                       baselines.short_cot_rows(teacher, "s"), "s")
    assert frame["variant"].to_list() == ["teacher_sft", "teacher_sft", "short_cot", "short_cot"]
    short = frame.filter(pl.col("variant") == "short_cot")
    assert set(short["cot_table"]) == {"baseline_cots"} and short["baseline_cot_id"].is_not_null().all()
    # teacher_sft's ids are what they were before baselines existed: same rows, same cot_quality ids
    ref = frame.filter(pl.col("variant") == "teacher_sft")
    assert ref["cot_quality_id"].to_list() == [content_id("cot_quality", "s", "teacher_sft", "teacher_cots", t, None)
                                               for t in ("t000", "t001")]


def test_a_profile_chooses_its_variants():
    assert SFTSection().variants == list(TRAINING_VARIANTS) and set(BASELINES) <= set(VARIANTS)
    paper = load_profile("paper").config
    assert paper.sft.variants == list(TRAINING_VARIANTS) and skipped_variants(paper) == {}
    chosen = paper.model_copy(update={"sft": paper.sft.model_copy(update={"variants": ["teacher_sft", "orion", "rft"]})})
    skipped = skipped_variants(chosen)
    assert sorted(skipped) == ["mix_long", "orion_no_error", "orion_no_reflection", "short_cot"]
    assert set(skipped.values()) == {NOT_CHOSEN}
    assert sorted(skipped_modes(chosen)) == ["no_error", "no_reflection"]  # no calls for what is not trained
    # a replay teacher reading dataset solutions has no thinking: short_cot and mix_long would copy teacher_sft
    tiny = load_profile("tiny").config
    assert "byte for byte" in skipped_variants(tiny)["short_cot"] and "byte for byte" in skipped_variants(tiny)["mix_long"]
    for bad in (["orion"], ["teacher_sft", "nope"], ["teacher_sft", "teacher_sft"]):
        with pytest.raises(ValueError, match="variants"):
            SFTSection(variants=bad)
    # which variants run is not how one trains: not a trainer key, not in the config hash
    paths = {"base_model_path": "b", "dataset_path": "missing.parquet", "output_dir": "o", "base_model_hash": "h"}
    assert config_hash(TrainParams.from_sft_config(SFTSection(variants=["teacher_sft"]), **paths)) == config_hash(
        TrainParams.from_sft_config(SFTSection(), **paths))


REASONING_TEACHER = """
[endpoints.teacher]
backend = "openai"                 # never called here: baseline_cots makes no LLM call
base_url = "http://127.0.0.1:9/v1"
model = "deepseek-reasoner"
[sft]
variants = ["teacher_sft", "orion", "rft", "short_cot", "mix_long"]
[baselines]
long_share = 0.5
"""


def test_baseline_cots_materializes_each_baseline_with_its_lineage(tmp_path, write_profile, tiny_student_model):
    orion = OrionResource(profile=str(write_profile(REASONING_TEACHER)), data_dir=str(tmp_path / "data"))
    store = Store(tmp_path / "data" / "orion_store.duckdb")
    store.replace_rows("student_base_model", pl.DataFrame({"model_id": "m", "student": "tiny",
                                                           "path": str(tiny_student_model.path)}),
                       replace_where={"student": "tiny"}, materialization={"asset_key": "student_base_model",
                                                                          "partition_key": "tiny"})
    teacher = _teacher(4).with_columns(pl.lit(True).alias("has_thinking"))
    store.replace_rows("teacher_cots", teacher, replace_where=None, materialization={"asset_key": "teacher_cots"})
    attempts = pl.DataFrame({
        "attempt_id": ["x0", "x1", "x2", "x3"], "student": "tiny", "problem_id": ["p000", "p000", "p001", "p003"],
        "sample_index": [0, 1, 0, 0], "text": ["\\boxed{0}", "\\boxed{9}", "\\boxed{1}", "\\boxed{3}"],
        "correct": [True, False, True, False], "finish_reason": ["stop", "stop", "stop", "error"],
    })  # fmt: skip  (p002: no attempt at all, p003: its call failed: exposure never reached the student)
    store.replace_rows("student_attempts", attempts, replace_where={"student": "tiny"},
                       materialization={"asset_key": "student_attempts", "partition_key": "tiny"})

    built = dg.materialize(all_assets, selection=[baseline_cots.key], partition_key="tiny", resources=resources_for(orion))
    assert built.success
    rows = store.read("baseline_cots")
    by_variant = {v: sorted(g["problem_id"]) for (v,), g in rows.group_by("variant")}
    assert by_variant == {"rft": ["p000", "p001"], "short_cot": ["p000", "p001"], "mix_long": ["p000", "p001"]}
    assert rows.filter(pl.col("variant") == "mix_long")["source"].sort().to_list() == ["teacher_cot", "teacher_solution"]
    assert rows["n_tokens"].min() > 0
    (mat,) = built.asset_materializations_for_node("baseline_cots")
    meta = {key: value.value for key, value in mat.metadata.items()}
    assert meta["mix_long"] == {"long": 1, "of": 2, "long_share": 0.5} and meta["rows_by_variant"]["rft"] == 2
    # each row points at the teacher CoT or the attempt it was made from
    with store.connect(read_only=True) as con:
        edges = con.execute("SELECT parent_table, count(*) FROM orion.lineage_edges WHERE child_table = 'baseline_cots' "
                            "GROUP BY ALL ORDER BY 1").fetchall()
    assert dict(edges) == {"student_attempts": 2, "teacher_cots": 4, "train_problems": 6}


def test_baseline_chunks_make_each_chosen_baseline_per_chunk_without_dagster():
    teacher = _teacher(10)
    attempts = pl.DataFrame({"attempt_id": [f"x{i}" for i in range(10)], "problem_id": teacher["problem_id"],
                             "sample_index": [0] * 10, "text": [f"\\boxed{{{i}}}" for i in range(10)],
                             "correct": [i % 2 == 0 for i in range(10)], "finish_reason": ["stop"] * 10})
    stats = baselines.BaselineStats(baselines.MixTally(0.2))
    chunks = list(baselines.baseline_chunks(
        [teacher.head(5), teacher.tail(5)], lambda ids: attempts.filter(pl.col("problem_id").is_in(ids)), student="s",
        made=["rft", "mix_long"], teacher_samples="first", rft_solutions="all",
        count_tokens=lambda texts: [len(t.split()) for t in texts], stats=stats))
    assert len(chunks) == 2 and set(pl.concat(chunks)["variant"]) == {"rft", "mix_long"}
    assert stats.rows == {"rft": 5, "mix_long": 10} and (stats.tally.seen, stats.tally.long) == (10, 2)
    assert len(stats.tokens) == 15 and all(n > 0 for n in stats.tokens)
