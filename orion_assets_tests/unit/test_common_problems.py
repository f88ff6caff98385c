"""[sft] common_problems: the set of problems every trained variant kept (the core function), the settings that
carry it (not a trainer key, not in the config hash), and ``sft_dataset`` on the tiny profile with it on: each
variant's Parquet holds exactly the common problems, its metadata counts the drops, and the report says so."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest

from orion_assets.assets.training import sft_parquet
from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.method.evaluation.report import build_report
from orion_assets.method.evaluation.report.sections import common_problems_frame
from orion_assets.method.quality.common import NOT_COMMON, common_problems
from orion_assets.method.quality.gate import run_gate
from orion_assets.method.quality.rules import row_drop_reasons
from orion_assets.method.quality.verdicts import GATE_SCHEMA, append_verdicts, verdict_rows
from orion_assets.profiles import load_profile
from orion_assets.profiles.schema import QualityConfig
from orion_assets.profiles.sft import SFTSection
from orion_assets.store import Store
from orion_assets.training import TrainParams, config_hash
from orion_assets_tests.graph import all_assets, sft_dataset


def _rows(kept: dict[str, list[str]], dropped: dict[str, list[str]] | None = None) -> pl.DataFrame:
    rows = [{"variant": v, "problem_id": p, "kept": True} for v, problems in kept.items() for p in problems]
    rows += [{"variant": v, "problem_id": p, "kept": False} for v, problems in (dropped or {}).items() for p in problems]
    return pl.DataFrame(rows, schema={"variant": pl.Utf8, "problem_id": pl.Utf8, "kept": pl.Boolean})


# -- the core function -------------------------------------------------------------------------------------------


def test_the_common_problems_are_those_every_variant_kept() -> None:
    rows = _rows(
        {"teacher_sft": ["p1", "p2", "p3", "p4"], "orion": ["p2", "p3", "p4", "p5", "p4"], "orion_no_error": ["p3", "p4"]},
        dropped={"teacher_sft": ["p5"], "orion": ["p1"], "orion_no_error": ["p1", "p2", "p5"]},
    )
    common = common_problems(rows)
    assert common.variants == ("orion", "orion_no_error", "teacher_sft")
    assert common.problems == {"p3", "p4"}
    assert common.dropped == {"p1", "p2", "p5"}  # kept by some variant, not by all
    assert common.dropped_of("teacher_sft") == {"p1", "p2"} and common.dropped_of("orion") == {"p2", "p5"}
    assert common.dropped_of("orion_no_error") == set()
    # over two of them only
    assert common_problems(rows, ["teacher_sft", "orion"]).problems == {"p2", "p3", "p4"}


def test_a_variant_that_kept_nothing_leaves_nothing_in_common() -> None:
    rows = _rows({"teacher_sft": ["p1", "p2"], "orion": ["p1"]}, dropped={"orion_no_error": ["p1", "p2"]})
    common = common_problems(rows)
    assert common.problems == set() and common.dropped == {"p1", "p2"}
    # a variant named but without a row at all (e.g. its reflection made nothing) is the same
    assert common_problems(rows.filter(pl.col("variant") != "orion_no_error"), ["teacher_sft", "orion", "x"]).problems == set()
    assert common_problems(rows.head(0)).problems == set()
    with pytest.raises(ValueError, match="kept"):
        common_problems(rows.drop("kept"))


# -- the setting -------------------------------------------------------------------------------------------------


def test_the_setting_is_off_by_default_on_in_paper_and_no_trainer_key() -> None:
    assert SFTSection().common_problems is False
    assert load_profile("tiny").config.sft.common_problems is False
    assert load_profile("paper").config.sft.common_problems is True
    paths = {"base_model_path": "b", "dataset_path": "missing.parquet", "output_dir": "o", "base_model_hash": "h"}
    off = TrainParams.from_sft_config(SFTSection(), **paths)
    on = TrainParams.from_sft_config(SFTSection(common_problems=True), **paths)
    assert on.common_problems is True and "common_problems" not in on.trainer_args()  # never reaches trl.SFTConfig
    # its effect is in the data set's bytes (hashed); the key itself leaves the hash, and old runs' ids, as they were
    assert config_hash(on) == config_hash(off)
    assert TrainParams.from_json(on.to_json()) == on


def test_the_report_shows_common_problems_only_where_the_variants_train_on_them() -> None:
    quality = _rows({"teacher_sft": ["p1", "p2", "p3"], "orion": ["p2", "p3", "p4"]}).with_columns(student=pl.lit("s"))
    both = pl.DataFrame({"student": "s", "variant": ["teacher_sft", "teacher_sft", "orion", "orion"],
                         "problem_id": ["p2", "p3", "p2", "p3"]})
    assert common_problems_frame(quality, both).to_dicts() == [
        {"student": "s", "variants": 2, "shared": 2, "dropped": 2, "own": {}}]
    # rft trains on the problems the student solved, outside the rule: counted apart, the others still share theirs
    with_rft = pl.concat([quality, _rows({"rft": ["p1"]}).with_columns(student=pl.lit("s"))])
    rft = pl.concat([both, pl.DataFrame({"student": "s", "variant": ["rft"], "problem_id": ["p1"]})])
    assert common_problems_frame(with_rft, rft).to_dicts() == [
        {"student": "s", "variants": 2, "shared": 2, "dropped": 2, "own": {"rft": 1}}]
    # without the rule each variant trains on what it kept: nothing to say
    own = pl.DataFrame({"student": "s", "variant": ["teacher_sft"] * 3 + ["orion"] * 3,
                        "problem_id": ["p1", "p2", "p3", "p2", "p3", "p4"]})
    assert common_problems_frame(quality, own).is_empty() and common_problems_frame(quality, None).is_empty()


# -- sft_dataset on the tiny profile ------------------------------------------------------------------------------

QUALITY = QualityConfig(min_tokens=4, max_tokens=1984, max_drop_rate=0.9)  # the profile's [quality]
PROBLEMS = [f"p{i:02d}" for i in range(20)]


def _cot_quality(too_long: dict[str, set[str]], unverified: dict[str, set[str]]) -> pl.DataFrame:
    """Twenty problems per variant, one CoT each (teacher_sft's from teacher_cots, orion's from refined_cots),
    with the row rules applied; ``too_long`` / ``unverified`` name the problems whose CoT breaks that rule."""
    rows = []
    for variant in too_long:
        refined = variant != "teacher_sft"
        for problem in PROBLEMS:
            quality_id = f"q-{variant}-{problem}"
            rows.append({
                "cot_quality_id": quality_id, "student": "tiny", "variant": variant, "problem_id": problem,
                "cot_table": "refined_cots" if refined else "teacher_cots", "teacher_cot_id": f"t-{problem}",
                "refined_cot_id": f"r-{variant}-{problem}" if refined else None, "baseline_cot_id": None,
                "source": "refined" if refined else "teacher", "cot_hash": f"h-{quality_id}",
                "verified": problem not in unverified[variant], "truncated": False,
                "n_tokens": 5000 if problem in too_long[variant] else 100, "coherence": 0.5,
                "repeated_4gram_ratio": 0.0, "contaminated": False, "dagster_run_id": "run-0",
            })  # fmt: skip
    return row_drop_reasons(pl.DataFrame(rows), QUALITY)


def _write_cot_quality(store, table: pl.DataFrame) -> None:
    """``table`` as the student's cot_quality materialization, gated as the quality_gate check gates it."""
    store.replace_rows("cot_quality", table, replace_where={"student": "tiny"},
                       materialization={"asset_key": "cot_quality", "partition_key": "tiny"})
    (checked,) = store.latest_materializations("cot_quality", "tiny")
    result, checked_at = run_gate(table, QUALITY, id_column="cot_quality_id"), datetime.now(UTC)
    rows = [{"checked_materialization_id": checked.materialization_id, "dagster_run_id": "run-0", **row,
             "checked_at": checked_at} for row in verdict_rows(result)]
    append_verdicts(store, pl.DataFrame(rows, schema=GATE_SCHEMA))


def test_sft_dataset_trains_every_variant_on_the_common_problems(tmp_path, write_profile) -> None:
    profile = write_profile("[quality]\nmax_drop_rate = 0.9\n[sft]\ncommon_problems = true\n")
    data_dir = tmp_path / "data"
    orion = OrionResource(profile=str(profile), data_dir=str(data_dir))
    store = Store(data_dir / "orion_store.duckdb")
    store.replace_rows("train_problems", pl.DataFrame({"problem_id": PROBLEMS, "problem": [f"What is {p}?" for p in PROBLEMS]}),
                       replace_where=None, materialization={"asset_key": "train_problems"})
    # teacher_sft loses p00 (its trace is over-long); orion loses p01 and p02 (unverified rewrites)
    table = _cot_quality(too_long={"teacher_sft": {"p00"}, "orion": set()},
                         unverified={"teacher_sft": set(), "orion": {"p01", "p02"}})
    store.replace_rows("teacher_cots", pl.DataFrame({"teacher_cot_id": [f"t-{p}" for p in PROBLEMS], "problem_id": PROBLEMS,
                                                     "cot": [f"Teacher on {p}: \\boxed{{1}}" for p in PROBLEMS]}),
                       replace_where=None, materialization={"asset_key": "teacher_cots"})
    refined = {"refined_cot_id": [f"r-orion-{p}" for p in PROBLEMS], "problem_id": PROBLEMS, "mode": "orion",
               "student": "tiny", "source": "refined", "cot": [f"Refined on {p}: \\boxed{{1}}" for p in PROBLEMS]}
    store.replace_rows("refined_cots", pl.DataFrame(refined), replace_where=None, materialization={"asset_key": "refined_cots"})
    _write_cot_quality(store, table)
    common = PROBLEMS[3:]

    expected = {"teacher_sft": ({"too_long": 1, NOT_COMMON: 2}, 2, 1), "orion": ({"unverified": 2, NOT_COMMON: 1}, 1, 2)}
    for variant, (by_reason, not_common, by_quality) in expected.items():
        built = dg.materialize(all_assets, selection=[sft_dataset.key], partition_key=f"tiny/{variant}",
                               resources=resources_for(orion))
        assert built.success
        parquet = pq.read_table(sft_parquet(orion, "tiny", variant)).to_pydict()
        assert sorted(parquet["problem_id"]) == common, variant  # exactly the problems both kept
        (mat,) = built.asset_materializations_for_node("sft_dataset")
        meta = {key: value.value for key, value in mat.metadata.items()}
        assert meta["examples"] == 17 and meta["candidates"] == 20
        assert meta["common_problems"] == {"variants": ["orion", "teacher_sft"], "kept": 17, "dropped": not_common}
        assert meta["dropped_by_common_problems"] == not_common and meta["dropped_by_quality"] == by_quality
        assert meta["dropped_by_reason"] == by_reason
    stored = store.read("sft_dataset")
    assert {v: sorted(g["problem_id"]) for (v,), g in stored.group_by("variant")} == {"teacher_sft": common, "orion": common}

    # the report says how many problems the variants share and how many the rule dropped
    report = build_report(store, tmp_path / "report")
    section = report.markdown.split("## SFT data quality per variant", 1)[1].split("\n## ", 1)[0]
    assert "Common problems (`[sft] common_problems`)" in section and "`tiny`: 17 shared, 3 dropped." in section

    # two variants that kept no problem in common: nothing to train on, and the message names the rule
    _write_cot_quality(store, _cot_quality(too_long={"teacher_sft": set(PROBLEMS[:3]), "orion": set(PROBLEMS[3:6])},
                                           unverified={"teacher_sft": set(PROBLEMS[6:]), "orion": set(PROBLEMS[6:])}))
    failed = dg.materialize(all_assets, selection=[sft_dataset.key], partition_key="tiny/teacher_sft",
                            resources=resources_for(orion), raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.event_specific_data.error)
    assert "no SFT examples for tiny/teacher_sft: nothing to train on" in text
    assert "[sft] common_problems" in text and "kept 3 problems, none of them kept by every variant" in text
