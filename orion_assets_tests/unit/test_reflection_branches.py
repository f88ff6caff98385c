"""Every branch of exposure and self-reflection, driven by a scripted student over HTTP."""

import dagster as dg
import polars as pl
import pytest

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.store import Store
from orion_assets_tests.conftest import materialize_each
from orion_assets_tests.graph import refined_cots, student_attempts, student_base_model, student_errors, teacher_cots, train_problems
from orion_devtools.scripted_student import Script, scripted_student

ASSETS = [train_problems, student_base_model, teacher_cots, student_attempts, student_errors, refined_cots]


def _profile(write_profile, base_url: str, on_failure: str, name: str):
    return write_profile(
        f"""
        [data]
        train_limit = 4
        [student_model.tiny]
        vocab_size = 512
        [endpoints.student]
        backend = "openai"
        base_url = "{base_url}"
        model = "scripted-student"
        concurrency = 4
        max_retries = 0
        [exposure]
        n = 2
        [reflection]
        tries = 2
        on_failure = "{on_failure}"
        """,
        name=name,
    )


@pytest.mark.slow
def test_every_exposure_and_reflection_branch(orion_env, write_profile):
    data_dir = orion_env["data_dir"]
    store = Store(data_dir / "orion_store.duckdb")
    # First pass: learn which four problems the profile samples, to script the student on them.
    probe = _profile(write_profile, "http://127.0.0.1:9/v1", "teacher", "probe.toml")
    assert dg.materialize([train_problems], resources=resources_for(OrionResource(profile=str(probe), data_dir=str(data_dir)))).success
    problems = store.read("train_problems").sort("problem_id").to_dicts()
    assert len(problems) == 4
    behaviour = {
        "refined": Script(problems[0]["gold_answer"], solve_right=False, refine_right=True),
        "fails": Script(problems[1]["gold_answer"], solve_right=False, refine_right=False),
        "never_wrong": Script(problems[2]["gold_answer"], solve_right=True, refine_right=True),
        "sometimes": Script(problems[3]["gold_answer"], solve_right="alternate", refine_right=True),
    }
    ids = dict(zip(behaviour, (p["problem_id"] for p in problems), strict=True))
    scripts = {p["problem"]: s for p, s in zip(problems, behaviour.values(), strict=True)}

    with scripted_student(scripts) as (base_url, counts):
        profile = _profile(write_profile, base_url, "teacher", "teacher_fallback.toml")
        resources = resources_for(OrionResource(profile=str(profile), data_dir=str(data_dir)))
        assert materialize_each(ASSETS, resources).success

        attempts = store.read("student_attempts")
        wrong = attempts.group_by("problem_id").agg(pl.col("error_type").drop_nulls().len().alias("errors"))
        errors_by_problem = dict(wrong.iter_rows())
        assert errors_by_problem[ids["refined"]] == 2 and errors_by_problem[ids["fails"]] == 2
        assert errors_by_problem[ids["never_wrong"]] == 0 and errors_by_problem[ids["sometimes"]] == 1
        assert set(store.read("student_errors")["error_type"]) == {"wrong_answer"}

        refined = store.read("refined_cots").filter(pl.col("mode") == "orion")
        by_problem = {row["problem_id"]: row for row in refined.iter_rows(named=True)}
        ok = by_problem[ids["refined"]]
        assert ok["source"] == "refined" and ok["error_context"] and ok["tries_used"] == 1
        assert ok["reflection_notes"].startswith("my attempt") and "REFLECTION" not in ok["cot"]
        assert len(ok["error_attempt_ids"]) == 1 and ok["error_attempt_ids"][0] in set(attempts["attempt_id"])
        fallback = by_problem[ids["fails"]]
        assert fallback["source"] == "teacher_fallback" and fallback["tries_used"] == 2
        teacher = store.read("teacher_cots").filter(pl.col("problem_id") == ids["fails"])
        assert fallback["cot"] == teacher["cot"][0]
        never = by_problem[ids["never_wrong"]]
        assert never["source"] == "refined" and not never["error_context"] and not never["student_ever_wrong"]
        assert never["error_attempt_ids"] == []
        # the no_error ablation never shows an attempt, even where the student erred
        no_error = store.read("refined_cots").filter(pl.col("mode") == "no_error")
        assert not no_error["error_context"].any()
        assert counts["reflect_with_error"] > 0 and counts["reflect_without_error"] > 0

        sent = sum(counts.values())
        assert materialize_each(ASSETS, resources).success
        assert sum(counts.values()) == sent  # an unchanged re-run is served from the cache

        dropping = _profile(write_profile, base_url, "drop", "drop.toml")
        resources = resources_for(OrionResource(profile=str(dropping), data_dir=str(data_dir)))
        result = materialize_each(ASSETS, resources, selection=["refined_cots"])
        assert result.success
        (mat,) = result.asset_materializations_for_node("refined_cots")
        counts_by_mode = mat.metadata["counts_by_mode"].value
        assert counts_by_mode["orion"]["dropped"] == 1 and counts_by_mode["orion"]["refined"] == 3
        kept = set(store.read("refined_cots").filter(pl.col("mode") == "orion")["problem_id"])
        assert ids["fails"] not in kept and ids["refined"] in kept
