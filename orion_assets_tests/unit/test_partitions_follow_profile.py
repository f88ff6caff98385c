"""The partitions follow what the active profile makes (issue 30): its ``[data] benchmarks``, and ``base`` plus the
trained variants it makes (``skipped_variants`` leaves out the others), each once per seed (``base`` once). A
partition the profile can never make is not in the definitions, so the UI shows none and "materialize missing"
launches none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orion_assets.definitions import build_definitions
from orion_assets.io import partitions
from orion_assets.method import partition_keys
from orion_assets.method.variants import made_variants, skipped_variants
from orion_assets.profiles import load_profile
from orion_assets_tests.graph import all_assets, sft_dataset, student_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY_MADE = ["base", "teacher_sft", "orion", "orion_no_error"]  # a replay teacher makes no orion_no_reflection
PAPER_BENCHMARKS = ["gsm_hard", "math500", "aime24", "amc23"]


def _keys(partitions_def) -> list[str]:
    return [str(k) for k in partitions_def.get_partition_keys()]


def test_tiny_declares_exactly_the_partitions_a_tiny_run_makes() -> None:
    config = load_profile("tiny").config
    parts = partitions.partitions_of(config)
    assert _keys(parts.benchmark) == PAPER_BENCHMARKS  # not gsm8k or arithmetic: tiny does not evaluate them
    assert _keys(parts.student) == ["tiny"]
    assert _keys(parts.sft) == [f"tiny/{v}" for v in TINY_MADE]
    assert _keys(parts.model) == [f"tiny/{v}/0" for v in TINY_MADE]
    predictions = _keys(parts.benchmark_model)
    assert sorted(predictions) == sorted(f"{b}|tiny/{v}/0" for b in PAPER_BENCHMARKS for v in TINY_MADE)
    # counted from the profile: its benchmarks x (base + the trained variants it makes) x seeds
    trained = [v for v in config.sft.variants if v not in skipped_variants(config)]
    assert len(predictions) == len(config.data.benchmarks) * (1 + len(trained)) * len(config.sft.all_seeds) == 16


def test_paper_makes_every_variant_on_its_four_benchmarks() -> None:
    config = load_profile("paper").config
    parts = partitions.partitions_of(config)
    variants = ["base", "teacher_sft", "orion", "orion_no_error", "orion_no_reflection", "rft", "short_cot", "mix_long"]
    assert made_variants(config) == variants
    assert _keys(parts.benchmark) == PAPER_BENCHMARKS
    assert _keys(parts.model) == [f"qwen2.5-1.5b-instruct/{v}/0" for v in variants]
    assert len(_keys(parts.benchmark_model)) == 4 * 8 == 32


def test_seeds_variants_and_benchmarks_chosen_by_a_profile(write_profile) -> None:
    config = load_profile(str(write_profile("""
        [data]
        benchmarks = ["arithmetic", "gsm8k"]
        [sft]
        variants = ["teacher_sft", "orion"]
        seeds = [3, 4]
        """))).config
    parts = partitions.partitions_of(config)
    assert partition_keys.benchmarks_of(config) == _keys(parts.benchmark) == ["gsm8k", "arithmetic"]  # vocabulary order
    assert _keys(parts.sft) == ["tiny/base", "tiny/teacher_sft", "tiny/orion"]
    assert _keys(parts.model) == ["tiny/base/3", "tiny/teacher_sft/3", "tiny/teacher_sft/4", "tiny/orion/3", "tiny/orion/4"]
    assert len(_keys(parts.benchmark_model)) == 2 * 5
    # each checkpoint reads its own variant's SFT data and nothing of a variant the profile leaves out
    assert parts.sft_to_model.downstream_partition_keys_by_upstream_partition_key == {
        "tiny/base": ["tiny/base/3"], "tiny/teacher_sft": ["tiny/teacher_sft/3", "tiny/teacher_sft/4"],
        "tiny/orion": ["tiny/orion/3", "tiny/orion/4"]}


def test_two_profiles_build_their_own_definitions_in_one_process(write_profile) -> None:
    """The profile is a value (issue 29): tiny's and a paper-like profile's definitions, built side by side in one
    process, each hold what their own profile makes (partitions, SFT pod tags, schedule) and a resource naming
    their own profile and data folder; building one changes nothing of the other."""
    import dagster as dg

    paper = load_profile(str(write_profile("""
        [sft.k8s.container_config.resources]
        limits = { "nvidia.com/gpu" = 2 }
        [store.upkeep]
        enabled = true
        """, name="paper_k8s.toml", extends="paper")))
    tiny_defs = build_definitions(load_profile("tiny"), "/data/tiny")
    paper_defs = build_definitions(paper, "/data/paper")

    def keys(defs: dg.Definitions, asset: str) -> list[str]:
        return _keys(defs.resolve_asset_graph().get(dg.AssetKey(asset)).partitions_def)

    student = "qwen2.5-1.5b-instruct"
    assert keys(paper_defs, "sft_dataset") == [f"{student}/{v}" for v in (
        "base", "teacher_sft", "orion", "orion_no_error", "orion_no_reflection", "rft", "short_cot", "mix_long")]
    assert len(keys(paper_defs, "benchmark_predictions")) == 4 * 8
    assert keys(tiny_defs, "sft_dataset") == [f"tiny/{v}" for v in TINY_MADE]
    assert len(keys(tiny_defs, "benchmark_predictions")) == 16
    assert "nvidia.com/gpu" in json.dumps(paper_defs.resolve_assets_def("student_checkpoint").op.tags)
    assert "nvidia.com/gpu" not in json.dumps(tiny_defs.resolve_assets_def("student_checkpoint").op.tags)
    status = {name: defs.resolve_schedule_def("lake_upkeep_schedule").default_status
              for name, defs in (("tiny", tiny_defs), ("paper", paper_defs))}
    assert status == {"tiny": dg.DefaultScheduleStatus.STOPPED, "paper": dg.DefaultScheduleStatus.RUNNING}
    assert (tiny_defs.resources["orion"].profile, tiny_defs.resources["orion"].data_dir) == (
        str(load_profile("tiny").path), "/data/tiny")
    assert (paper_defs.resources["orion"].active.name, paper_defs.resources["orion"].data_dir) == (
        paper.name, "/data/paper")
    assert keys(build_definitions(load_profile("tiny")), "benchmark_predictions") == keys(
        tiny_defs, "benchmark_predictions")


@pytest.mark.slow  # dagster's code location loaded in a subprocess: about 6 s
def test_the_code_location_loaded_with_tiny_shows_only_what_tiny_makes() -> None:
    code = ("import json, warnings; warnings.simplefilter('ignore')\n"
            "from orion_assets.definitions import defs\n"
            "graph = defs().resolve_asset_graph()  # what dagster loads: the profile in ORION_PROFILE\n"
            "print(json.dumps({k.to_user_string(): [str(p) for p in graph.get(k).partitions_def.get_partition_keys()]"
            " for k in graph.toposorted_asset_keys if graph.get(k).partitions_def is not None}))")
    env = {**os.environ, "ORION_PROFILE": "tiny"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    keys = json.loads(done.stdout.splitlines()[-1])
    assert keys["benchmark_problems"] == PAPER_BENCHMARKS
    assert keys["sft_dataset"] == [f"tiny/{v}" for v in TINY_MADE]
    assert len(keys["benchmark_predictions"]) == len(keys["benchmark_scores"]) == 16
    assert not [k for k in keys["benchmark_predictions"] if "gsm8k" in k or "orion_no_reflection" in k]


@pytest.mark.parametrize(("key", "reason"), [
    ("gsm8k", "gsm8k is not among its [data] benchmarks (gsm_hard, math500, aime24, amc23)"),
    ("gsm8k|tiny/orion/0", "gsm8k is not among its [data] benchmarks"),
    ("bogus|tiny/orion/0", "no benchmark bogus (known: gsm_hard, "),
    ("tiny/orion_no_reflection", "it leaves out orion_no_reflection: the replay teacher"),
    ("aime24|tiny/rft/0", "it leaves out rft: not in [sft] variants"),
    ("tiny/orion/1", "it trains orion with seed 0 ([sft] seeds)"),
    ("tiny/base/1", "it makes base with seed 0 only"),
    ("other/orion", "it has no student other (its students: tiny)"),
    ("tiny/orionx", "no variant orionx (known: base, "),
    ("tiny/orion", None),
    ("tiny", None),
    ("aime24|tiny/base/0", None),
])
def test_why_a_key_is_not_made_names_the_profile_setting(key, reason) -> None:
    why = partition_keys.why_not_made(load_profile("tiny").config, key)
    assert why == reason if reason is None else why is not None and why.startswith(reason), why


def test_a_variant_the_profile_cannot_make_has_no_partition_and_the_asset_still_refuses_it(orion_env) -> None:
    """With a replay teacher, orion_no_reflection would be teacher_sft under another name: the definitions have no
    partition of it, so Dagster refuses to launch one; and the asset refuses it with the reason where the run's
    profile (its resource) is not the one the definitions were built from. (Was e2e/test_pipeline.py's
    ``test_a_variant_the_profile_cannot_make_is_refused_with_its_reason``, which launched the partition.)"""
    import dagster as dg

    from orion_assets.assets.training import _refuse_unless_gated
    from orion_assets.io.io_manager import resources_for
    from orion_assets.io.resource import OrionResource

    orion = OrionResource(profile="tiny", data_dir=str(orion_env["data_dir"]))
    resources = {**resources_for(orion), "pipes_subprocess_client": dg.PipesSubprocessClient()}
    for asset, partition in ((sft_dataset, "tiny/orion_no_reflection"), (student_checkpoint, "tiny/orion_no_reflection/0")):
        assert not asset.partitions_def.has_partition_key(partition)
        with pytest.raises(dg.DagsterUnknownPartitionError, match="tiny/orion_no_reflection"):
            dg.materialize(all_assets, selection=[asset.key], partition_key=partition, resources=resources,
                           raise_on_error=False)
    with pytest.raises(dg.Failure, match=r"refusing orion_no_reflection in profile tiny: the replay teacher"):
        _refuse_unless_gated(orion, None, "tiny", "orion_no_reflection", "build SFT data for")


def test_orion_run_says_what_it_leaves_out_once_per_reason_and_an_endpoint_it_never_asks(write_profile) -> None:
    from orion_assets.cli.run import _left_out

    config = load_profile(str(write_profile("""
        [endpoints.student.variants.orion_no_reflection]
        base_url = "http://127.0.0.1:8001/v1"
        [endpoints.student.variants.orion]
        base_url = "http://127.0.0.1:8002/v1"
        """))).config
    lines = _left_out(config)
    assert [line.split(":")[0] for line in lines] == [
        "leaving out variant orion_no_reflection", "leaving out variant rft", "leaving out variant short_cot",
        "leaving out variant mix_long", "warning"]
    assert lines[0].startswith("leaving out variant orion_no_reflection: the replay teacher answers every prompt")
    assert lines[-1].startswith("warning: [endpoints.student.variants.orion_no_reflection] is never asked: the profile "
                                "does not make orion_no_reflection (the replay teacher")


@pytest.mark.slow  # the real command in a subprocess, 10-25 s
def test_orion_run_select_of_a_partition_says_why(orion_env) -> None:
    """``--select`` takes asset keys (orion run makes every partition the profile makes); a partition named there
    is explained, with the profile's reason when it does not make it, before anything runs."""
    selected = ["benchmark_predictions[gsm8k|tiny/orion/0]", "sft_dataset[tiny/orion_no_reflection]",
                "benchmark_problems[aime24]"]
    done = subprocess.run([sys.executable, "-m", "orion_assets.cli", "run", "--no-check", "--select", *selected],
                          cwd=REPO, env={**os.environ, "ORION_PROFILE": "tiny"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.splitlines()
    prefix = "orion run: --select takes asset keys, not partitions: "
    assert err[0] == (f"{prefix}{selected[0]}: profile tiny does not make it, so its definitions have no such "
                      "partition: gsm8k is not among its [data] benchmarks (gsm_hard, math500, aime24, amc23)")
    assert err[1] == (f"{prefix}{selected[2]}: profile tiny makes it: --select benchmark_problems runs it with every "
                      "other partition of benchmark_problems")
    assert err[2].startswith(f"{prefix}{selected[1]}: profile tiny does not make it, so its definitions have no such "
                             "partition: it leaves out orion_no_reflection: the replay teacher")
    assert err[3] == f"orion run: unknown asset(s): {', '.join(sorted(selected))}"


def test_export_of_a_variant_the_profile_does_not_make_says_why(tmp_path) -> None:
    from orion_assets.export.core import ExportRequest, ExportResult, _choose
    from orion_assets.store import Store

    store = Store(tmp_path / "orion_store.duckdb")
    with store.connect() as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS orion; CREATE TABLE orion.sft_dataset (student VARCHAR, variant VARCHAR);"
                    "INSERT INTO orion.sft_dataset VALUES ('tiny', 'teacher_sft')")
    request = ExportRequest(out=tmp_path / "out", variants=("orion_no_reflection",))
    result = ExportResult(request.out)
    assert _choose(store, request, result, load_profile("tiny")) == {}
    (skipped,) = result.skipped
    assert skipped["reason"].startswith("profile tiny does not make it (the replay teacher answers every prompt")
    _choose(store, request, bare := ExportResult(request.out))  # no profile: what the store lacks
    assert bare.skipped[0]["reason"] == "no SFT examples in the store (sft_dataset not materialized)"
