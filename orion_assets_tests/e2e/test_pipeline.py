"""The whole tiny graph through `orion run` (real Dagster, DuckDB, transformers, TRL), then the
gate blocking planted bad data, and a killed training run resuming."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from orion_assets.ids import content_id
from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.method.problems import load_benchmark
from orion_assets.store import Store
from orion_assets_tests.conftest import lineage_walk
from orion_assets_tests.graph import defs

# Every test here reads the whole tiny graph, run once per session (minutes).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# The tiny profile's replay teacher cannot rewrite, so orion_no_reflection is left out of its runs.
VARIANTS = ["teacher_sft", "orion", "orion_no_error"]


def test_orion_run_materializes_the_graph_with_progress(tiny_run):
    out = tiny_run["stdout"]
    for asset in ["train_problems", "teacher_cots"]:
        assert f"] {asset} ... ok" in out
    for asset in ["student_base_model", "student_attempts", "student_errors", "refined_cots", "cot_quality"]:
        assert f"] {asset}[tiny] ... ok" in out  # per student
    for variant in VARIANTS:
        assert f"] sft_dataset[tiny/{variant}] ... ok" in out and f"] student_checkpoint[tiny/{variant}/0] ... ok" in out
    assert "] sft_dataset[tiny/base] ... ok (0 rows" in out and "] student_checkpoint[tiny/base/0] ... ok" in out
    # each step's wall time and CPU (the SFT child's included: more CPU than a bare wait)
    cpu = re.search(r"\] student_checkpoint\[tiny/orion/0\] \.\.\. ok \((?:\d+ rows, )?([\d.]+)s, ([\d.]+)s CPU\)", out)
    assert cpu and float(cpu.group(2)) > 1.0, out
    assert "leaving out variant orion_no_reflection: the replay teacher" in out
    assert "orion_no_reflection]" not in out and "|orion_no_reflection" not in out
    store = Store(tiny_run["data_dir"] / "orion_store.duckdb")
    log = store.read("materializations")
    assert set(log["asset_key"]) >= {"cot_quality", "sft_dataset", "student_checkpoint"}
    # every upstream a materialization names is itself in the log
    ids = set(log["materialization_id"])
    for upstream in log["upstream"]:
        for parent in json.loads(upstream):
            assert parent["materialization_id"] in ids
    gate = store.read("quality_gate_results")
    assert gate["passed"].all()


def test_each_checkpoint_loads_and_generates(tiny_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    checkpoints = Store(tiny_run["data_dir"] / "orion_store.duckdb").read("student_checkpoint")
    assert sorted(checkpoints["variant"]) == sorted([*VARIANTS, "base"])
    assert checkpoints.filter(pl.col("variant") == "base")["kind"].to_list() == ["base"]
    for row in checkpoints.filter(pl.col("kind") != "base").iter_rows(named=True):
        assert row["steps"] == 2 and row["truncated_examples"] == 0 and row["kind"] == "lora_adapter"
        model = AutoPeftModelForCausalLM.from_pretrained(row["path"])
        tokenizer = AutoTokenizer.from_pretrained(row["path"])
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
        assert output.shape[1] > prompt["input_ids"].shape[1]


def test_lineage_joins_back_without_orphans(tiny_run):
    with Store(tiny_run["data_dir"] / "orion_store.duckdb").connect(read_only=True) as con:
        orphans = con.execute("""
            SELECT count(*) FILTER (WHERE s.refined_cot_id IS NOT NULL AND r.refined_cot_id IS NULL),
                   count(*) FILTER (WHERE t.teacher_cot_id IS NULL),
                   count(*) FILTER (WHERE p.problem_id IS NULL),
                   count(*) FILTER (WHERE s.source = 'teacher' AND s.refined_cot_id IS NOT NULL),
                   count(*)
            FROM orion.sft_dataset s
            LEFT JOIN orion.refined_cots r USING (refined_cot_id)
            LEFT JOIN orion.teacher_cots t ON t.teacher_cot_id = s.teacher_cot_id
            LEFT JOIN orion.train_problems p ON p.problem_id = s.problem_id
        """).fetchone()
        assert orphans[:4] == (0, 0, 0, 0) and orphans[4] > 0
        tables = [r[0] for r in con.execute("SELECT DISTINCT parent_table FROM orion.lineage_edges").fetchall()]
        keys = {"train_problems": "problem_id", "teacher_cots": "teacher_cot_id", "refined_cots": "refined_cot_id",
                "student_attempts": "attempt_id", "cot_quality": "cot_quality_id", "sft_dataset": "sft_example_id",
                "student_base_model": "model_id", "llm_calls": "call_id", "student_checkpoint": "checkpoint_id",
                "benchmark_predictions": "prediction_id", "benchmark_problems": "problem_id",
                "benchmark_scores": "score_id"}
        for table in tables:
            missing = con.execute(f"""SELECT count(*) FROM orion.lineage_edges e
                LEFT JOIN orion.{table} p ON CAST(p.{keys[table]} AS VARCHAR) = e.parent_id
                WHERE e.parent_table = '{table}' AND p.{keys[table]} IS NULL""").fetchone()[0]
            assert missing == 0, table
        # a score walks down to the predictions, checkpoint, SFT rows, CoTs and problems behind it
        reached = lineage_walk(con, "variant = 'orion' AND benchmark = 'math500'")
        assert set(reached) >= {"benchmark_predictions", "benchmark_problems", "student_checkpoint",
                                "sft_dataset", "cot_quality", "refined_cots", "teacher_cots",
                                "student_attempts", "train_problems"}


def _env(data_dir: Path, dagster_home: Path, profile: Path) -> dict[str, str]:
    return {**os.environ, "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(dagster_home)}


def _copy_run(tiny_run, tmp_path: Path, body: str) -> dict:
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_run["data_dir"], data_dir, ignore=shutil.ignore_patterns("*.lock"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    profile = tmp_path / "profile.toml"
    profile.write_text(f'extends = "{tiny_run["profile"]}"\n' + body)
    return {"data_dir": data_dir, "home": home, "profile": profile, "env": _env(data_dir, home, profile)}


def _plant(store: Store) -> dict[str, str]:
    """Insert bad refined CoTs (mode orion); returns planted kind -> refined_cot_id."""
    refined = store.read("refined_cots").filter(pl.col("mode") == "orion")
    template = refined.row(0, named=True)
    other_cot = refined.row(1, named=True)["cot"]
    math500 = load_benchmark("math500")[0]["problem"][10]
    incoherent = "\n".join([
        "The mitochondria is the powerhouse of the cell.", "Paris hosted the Olympic games in 1924.",
        "Quantum chromodynamics describes the strong interaction.", "Bake the bread at 220 degrees for forty minutes.",
        "The violin has four strings tuned in fifths.", "So the answer is \\boxed{7}.",
    ])
    planted = {
        "too_long": ("Add the parts step by step. " * 400) + "\\boxed{1}",
        "unverified": "We add 2 and 2 to get 5.\nSo \\boxed{5}.",
        "duplicate": other_cot,
        "contaminated": f"Recall the problem: {math500}\nThen we compute it.\nSo \\boxed{{3}}.",
        "incoherent": incoherent,
    }
    rows = []
    for kind, cot in planted.items():
        row = dict(template)
        row.update(cot=cot, verified=(kind != "unverified"), source="refined",
                   refined_cot_id=content_id("planted", kind), teacher_cot_id=template["teacher_cot_id"])
        rows.append(row)
    with store.connect() as con:
        con.register("planted", pl.DataFrame(rows, schema=refined.schema).to_arrow())
        con.execute("INSERT INTO orion.refined_cots BY NAME SELECT * FROM planted")
    return {kind: content_id("planted", kind) for kind in planted}


def test_planted_bad_rows_fail_the_gate_for_their_variant_and_the_passing_variant_still_trains(tiny_run, tmp_path):
    """Each planted row is dropped with its reason; so many of them (a poisoned batch) fail the
    variant's drop-rate expectation: its SFT data and checkpoint are refused, while a variant that
    passed trains."""
    # (6 rows a variant: one real tiny CoT below 0.35 is a 17% drop, the planted batch in orion far more)
    run = _copy_run(tiny_run, tmp_path, "[quality]\nmax_tokens = 600\nmin_coherence = 0.35\nmax_drop_rate = 0.34\n"
                    "coherence_mostly = 0.8\n")
    store = Store(run["data_dir"] / "orion_store.duckdb")
    planted = _plant(store)
    shutil.rmtree(run["data_dir"] / "checkpoints")
    with duckdb.connect(str(run["data_dir"] / "orion_store.duckdb")) as con:
        con.execute("DELETE FROM orion.student_checkpoint")
    resources = {**resources_for(OrionResource(profile=str(run["profile"]), data_dir=str(run["data_dir"]))),
                 "pipes_subprocess_client": dg.PipesSubprocessClient()}
    # The student's cot_quality with its check (which fails, and blocks nothing by itself).
    job = dg.define_asset_job("gate", selection=dg.AssetSelection.assets("cot_quality")
                              | dg.AssetSelection.checks_for_assets("cot_quality"))
    job_defs = dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=[job], resources=resources)
    with dg.instance_for_test() as instance:
        result = job_defs.resolve_job_def("gate").execute_in_process(
            instance=instance, partition_key="tiny", raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    # (at min_coherence 0.35 a real tiny CoT or two in other variants is incoherent too)
    assert "orion" in evaluation.metadata["failed_variants"].value
    orion_verdict = evaluation.metadata["variants"].value["orion"]
    assert "drop_rate" in orion_verdict["failed_expectations"]
    cot_quality = store.read("cot_quality").filter(pl.col("variant") == "orion")
    reasons = {r: set(d) for r, d in cot_quality.select("refined_cot_id", "drop_reasons").iter_rows()}
    quality_id = dict(cot_quality.select("refined_cot_id", "cot_quality_id").iter_rows())
    for kind in ("too_long", "unverified", "contaminated", "incoherent"):
        assert kind in reasons[planted[kind]], (kind, reasons[planted[kind]])
        assert quality_id[planted[kind]] in orion_verdict["expectations"]["drop_rate"]["flagged_ids"], kind
    # the duplicate and the row it copies: exactly one of the two is dropped as a duplicate
    copied = cot_quality.filter(pl.col("refined_cot_id") == planted["duplicate"])["cot_hash"][0]
    copies = cot_quality.filter(pl.col("cot_hash") == copied)
    assert copies.height == 2 and sum("duplicate" in d for d in copies["drop_reasons"]) == 1
    # One `orion run` of the training assets: the failed variants are refused with their reasons, the
    # variants that passed the same check train, and the run goes on to the end and exits 1.
    passing = [v for v, verdict in evaluation.metadata["variants"].value.items() if verdict["passed"]]
    failing = [v for v, verdict in evaluation.metadata["variants"].value.items() if not verdict["passed"]]
    assert passing and "orion" in failing, evaluation.metadata["variants"].value
    done = subprocess.run([sys.executable, "-m", "orion_assets.cli", "run", "--no-check", "--select", "sft_dataset",
                           "student_checkpoint"], cwd=REPO, env=run["env"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    for variant in failing:
        assert re.search(rf"\] sft_dataset\[tiny/{variant}\] \.\.\. FAILED", done.stdout), done.stdout
        assert re.search(rf"\] student_checkpoint\[tiny/{variant}/0\] skipped: sft_dataset\[tiny/{variant}\] failed",
                         done.stdout), done.stdout
        assert f"refusing to build SFT data for tiny/{variant}: the quality gate failed for variant {variant}" in done.stderr
    for variant in passing:
        assert re.search(rf"\] student_checkpoint\[tiny/{variant}/0\] \.\.\. ok ", done.stdout), done.stdout
    assert f"{len(failing)} model(s) failed and were left out of what followed" in done.stderr.splitlines()[-1]
    assert sorted(store.read("student_checkpoint")["variant"]) == sorted(["base", *passing])
    assert not (run["data_dir"] / "checkpoints" / "tiny" / "orion").exists()


def test_killed_training_resumes_from_its_last_checkpoint(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path, "[sft]\nmax_steps = 40\nsave_steps = 4\nper_device_train_batch_size = 1\n")
    shutil.rmtree(run["data_dir"] / "checkpoints")  # only this run's checkpoints count
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orion_assets.definitions",
               "--select", "student_checkpoint", "--partition", "tiny/orion/0"]
    proc = subprocess.Popen(command, cwd=REPO, env=run["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    checkpoints: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        checkpoints = list((run["data_dir"] / "checkpoints" / "tiny" / "orion").glob("*/checkpoint-*/trainer_state.json"))
        if checkpoints:
            break
        time.sleep(0.2)
    assert checkpoints and proc.poll() is None, "training finished or failed before its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = max(int(p.parent.name.split("-")[1]) for p in checkpoints)
    again = subprocess.run(command, cwd=REPO, env=run["env"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    row = Store(run["data_dir"] / "orion_store.duckdb").read("student_checkpoint", {"variant": "orion"}).row(0, named=True)
    assert row["steps"] == 40
    assert row["resumed_from_step"] >= saved > 0


def _partition_counts(store: Store, table: str) -> dict[tuple[str, str], tuple[int, frozenset]]:
    frame = store.read(table).group_by("benchmark", "variant").agg(
        pl.len().alias("n"), pl.col("dagster_run_id").unique().alias("runs"))
    return {(b, v): (n, frozenset(r)) for b, v, n, r in frame.iter_rows()}


def test_backfilling_one_partition_leaves_every_other_partition_untouched(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path, "[eval]\nk = 1\nk_overrides = { aime24 = 3 }\n")
    store = Store(run["data_dir"] / "orion_store.duckdb")
    before = {t: _partition_counts(store, t) for t in ("benchmark_predictions", "benchmark_scores")}
    assert len(before["benchmark_predictions"]) == 4 * 4  # benchmarks x variants (no orion_no_reflection with a replay teacher)
    for asset in ("benchmark_predictions", "benchmark_scores"):
        done = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orion_assets.definitions",
                               "--select", asset, "--partition", "aime24|tiny/orion/0"],
                              cwd=REPO, env=run["env"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for table in ("benchmark_predictions", "benchmark_scores"):
        after = _partition_counts(store, table)
        assert after.keys() == before[table].keys()
        for key, value in after.items():
            if key == ("aime24", "orion"):
                assert value[1] != before[table][key][1]  # rewritten by the backfill's run
            else:
                assert value == before[table][key], key  # same rows, same run ids
    predictions = store.read("benchmark_predictions", {"benchmark": "aime24", "variant": "orion"})
    assert predictions.height == 3 * 2 and sorted(set(predictions["sample_index"])) == [0, 1, 2]
    score = store.read("benchmark_scores", {"benchmark": "aime24", "variant": "orion"}).row(0, named=True)
    assert score["k"] == 3
    log = store.read("materializations").sort("materialized_at").tail(2)
    assert log["partition_key"].to_list() == ["aime24|tiny/orion/0", "aime24|tiny/orion/0"]
