"""[tracking] backend = "mlflow" with no server: one checkpoint trained (real TRL, through Dagster Pipes) and
evaluated through the Dagster CLI on a copy of the tiny run, then read back through ``mlflow.MlflowClient``."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from orion_assets.method.evaluation.scoring import Scores
from orion_assets.method.partition_keys import model_key
from orion_assets.profiles import load_profile
from orion_assets.store import Store
from orion_assets.training.config import TRAIN_LOG_FILE
from orion_assets_tests.e2e.test_pipeline import REPO, _copy_run

pytestmark = pytest.mark.slow

MODEL = model_key("tiny", "orion", 0)
BENCHMARK = "math500"
SCORE_FIELDS = [name for name in Scores.__dataclass_fields__]


def _materialize(env: dict, select: str, partition: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orion_assets.definitions",
                           "--select", select, "--partition", partition],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _metadata(home: Path, asset: str) -> tuple[str, dict]:
    """The partition and metadata of the asset's latest materialization (this Dagster home's only one)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        materialization = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization
    return materialization.partition, {key: value.value for key, value in materialization.metadata.items()}


def test_sft_curves_and_scores_reach_one_mlflow_run_per_checkpoint_with_no_server(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path, '[tracking]\nbackend = "mlflow"\nexperiment = "orion-test"\n')
    shutil.rmtree(run["data_dir"] / "checkpoints" / "tiny" / "orion")  # so that it trains again, and logs
    store = Store(run["data_dir"] / "orion_store.duckdb")
    before = store.read("student_checkpoint", {"variant": "orion"}).row(0, named=True)

    _materialize(run["env"], "student_checkpoint", MODEL)
    eval_partition = f"{BENCHMARK}|{MODEL}"
    _materialize(run["env"], "benchmark_predictions,benchmark_scores", eval_partition)

    checkpoint = store.read("student_checkpoint", {"variant": "orion"}).row(0, named=True)
    # tracking changes no weight: the same configuration hash and checkpoint as the run without it
    assert (checkpoint["config_hash"], checkpoint["checkpoint_id"]) == (before["config_hash"], before["checkpoint_id"])
    assert checkpoint["dagster_run_id"] != before["dagster_run_id"]

    database = run["data_dir"] / "mlflow" / "mlflow.db"
    assert database.is_file()  # the local store, under $ORION_DATA_DIR
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("orion-test")
    (tracked,) = client.search_runs([experiment.experiment_id],
                                    f"tags.`orion.checkpoint_id` = '{checkpoint['checkpoint_id']}'")
    tags = tracked.data.tags
    assert tags["orion.profile_hash"] == load_profile(str(run["profile"])).hash
    assert tags["orion.student"] == "tiny" and tags["orion.variant"] == "orion" and tags["orion.seed"] == "0"
    assert tags["orion.config_hash"] == checkpoint["config_hash"]
    assert tags["dagster.run_id"] == checkpoint["dagster_run_id"]  # the tracker's run points at the Dagster run
    assert tracked.info.status == "FINISHED"

    # the SFT curve, through TRL's report_to: one point per logging step, the losses train_log.jsonl has
    log = [json.loads(line) for line in Path(checkpoint["path"]).parent.joinpath(TRAIN_LOG_FILE).read_text().splitlines()]
    history = sorted(client.get_metric_history(tracked.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [entry["step"] for entry in log] == [1, 2]
    assert [m.value for m in history] == pytest.approx([entry["loss"] for entry in log])
    assert tracked.data.params["max_steps"] == "2"

    # the scores, one metric per benchmark x grading rule x score, equal to the benchmark_scores rows
    scores = store.read("benchmark_scores", {"benchmark": BENCHMARK, "variant": "orion"})
    metrics = tracked.data.metrics
    logged = 0
    for row in scores.iter_rows(named=True):
        for name in SCORE_FIELDS:
            if row[name] is not None:
                assert metrics[f"{BENCHMARK}/{row['grading_rule']}/{name}"] == pytest.approx(row[name]), name
                logged += 1
    assert logged >= len(SCORE_FIELDS) - 2
    assert tags[f"dagster.eval_run_id.{BENCHMARK}"] == scores["dagster_run_id"][0]

    # ... and the Dagster side points at the tracker's run
    for asset, partition in (("student_checkpoint", MODEL), ("benchmark_scores", eval_partition)):
        assert _metadata(run["home"], asset)[0] == partition
        meta = _metadata(run["home"], asset)[1]
        assert meta["tracking_run_id"] == tracked.info.run_id
        assert meta["tracking_link"] == (f"mlflow ui --backend-store-uri sqlite:///{database.resolve()}, then open "
                                         f"#/experiments/{experiment.experiment_id}/runs/{tracked.info.run_id}")
