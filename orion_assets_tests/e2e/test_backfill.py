"""A backfill as a team deploys it: Dagster's instance on Postgres (deploy/dagster.yaml), the
daemon's queued runs as separate processes, the pipeline's tables in DuckLake (Postgres catalog,
Parquet on an S3 endpoint). The runs share nothing but those two services."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets_tests.conftest import REPO, lineage_walk
from orion_assets_tests.graph import all_assets
from orion_devtools.services import PG_USER, free_port, lake_store_section

pytestmark = pytest.mark.slow

KEPT = "gsm_hard|tiny/base/0"  # materialized before the backfill; the backfill must not touch it
BACKFILLED = ["math500|tiny/base/0", "aime24|tiny/base/0", "amc23|tiny/base/0"]


@pytest.fixture
def postgres_url(postgres_service):
    """``postgres_url(prefix)``: a fresh database's SQLAlchemy URL (psycopg2, which dagster-postgres ships)."""
    def url(prefix: str) -> str:
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{postgres_service.port}/{postgres_service.new_database(prefix)}"
    return url


@pytest.fixture
def lake_profile(postgres_service, s3_service, tmp_path, monkeypatch):
    """``lake_profile(body)``: a tiny profile whose tables go to a fresh DuckLake (a Postgres catalog,
    Parquet on moto's S3); the S3 keys are in the environment, named by the profile."""
    for name, value in s3_service.key_env().items():
        monkeypatch.setenv(name, value)

    def write(body: str) -> Path:
        path = tmp_path / "lake.toml"
        path.write_text('extends = "tiny"\n' + textwrap.dedent(body) + lake_store_section(postgres_service, s3_service))
        return path
    return write


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def _graphql(port: int, query: str, variables: dict) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _rows(store, where: str) -> list[tuple]:
    with store.connect(read_only=True) as con:
        return con.execute(f"SELECT prediction_id, benchmark, variant FROM orion.benchmark_predictions "
                           f"WHERE {where} ORDER BY prediction_id").fetchall()


def test_backfill_runs_partitions_as_concurrent_processes_on_postgres_and_ducklake(
        tmp_path, monkeypatch, lake_profile, postgres_url):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    profile = lake_profile("""
        [data]
        benchmark_limit = 2
        [endpoints.student]
        max_tokens = 16
        [eval]
        max_tokens = 16
        """)
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_POSTGRES_URL": postgres_url("dagster"),
           "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(tmp_path / "data")}
    for key in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL", "ORION_PROFILE", "ORION_DATA_DIR"):
        monkeypatch.setenv(key, env[key])
    orion = OrionResource(profile=str(profile), data_dir=str(tmp_path / "data"))
    store = orion.store

    # Upstream, and one partition of the backfilled assets, in this process on the same instance.
    with dg.DagsterInstance.get() as instance:
        def materialize(selection: list[str], partition: str | None = None) -> None:
            result = dg.materialize(all_assets, selection=selection, partition_key=partition, instance=instance,
                                    resources=resources_for(orion))
            assert result.success

        materialize(["student_base_model"], "tiny")
        materialize(["student_checkpoint"], "tiny/base/0")
        for benchmark in ("gsm_hard", "math500", "aime24", "amc23"):
            materialize(["benchmark_problems"], benchmark)
        materialize(["benchmark_predictions", "benchmark_scores"], KEPT)
    kept_rows = _rows(store, "benchmark = 'gsm_hard'")
    kept_mats = store.latest_materializations("benchmark_predictions", KEPT)
    assert kept_rows

    # The webserver (where a user clicks "backfill") and the daemon (which launches the queued runs).
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    workspace = ["-w", str(REPO / "workspace.yaml")]
    web = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), *workspace, "-h", "127.0.0.1", "-p", str(port)],
                           cwd=REPO, env=env, stdout=open(logs / "web.log", "w"), stderr=subprocess.STDOUT)
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", *workspace], cwd=REPO, env=env,
                              stdout=open(logs / "daemon.log", "w"), stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/server_info", web)
        launched = _graphql(port, LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": {
            "partitionNames": BACKFILLED,
            "assetSelection": [{"path": ["benchmark_predictions"]}, {"path": ["benchmark_scores"]}],
        }})["data"]["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 600
            while True:
                backfill = instance.get_backfill(backfill_id)
                if backfill.status != BulkActionStatus.REQUESTED:
                    break
                assert time.monotonic() < deadline, (logs / "daemon.log").read_text()[-3000:]
                assert daemon.poll() is None, (logs / "daemon.log").read_text()[-3000:]
                time.sleep(1)
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            stats = {run.run_id: instance.get_run_stats(run.run_id) for run in runs}
    finally:
        for proc in (daemon, web):
            proc.terminate()
        for proc in (daemon, web):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS and not failed, (backfill.status, failed)
    # one run per partition (the two assets of a partition share it), each its own process
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(BACKFILLED)
    spans = sorted((s.launch_time or s.start_time, s.end_time) for s in stats.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # some ran at once

    # every backfilled partition's rows are there once; the partition made before is untouched
    for key in BACKFILLED:
        benchmark = key.split("|")[0]
        rows = _rows(store, f"benchmark = '{benchmark}' AND variant = 'base'")
        assert len(rows) == 2 and len({r[0] for r in rows}) == 2, (key, rows)
        assert len(store.latest_materializations("benchmark_predictions", key)) == 1
    assert _rows(store, "benchmark = 'gsm_hard'") == kept_rows
    assert store.latest_materializations("benchmark_predictions", KEPT) == kept_mats

    # the lineage walk from a backfilled score reaches its benchmark problems and the checkpoint
    with store.connect(read_only=True) as con:
        reached = lineage_walk(con, "benchmark = 'math500' AND variant = 'base'")
    assert reached.get("benchmark_problems") == 2 and reached.get("student_checkpoint") == 1, reached
