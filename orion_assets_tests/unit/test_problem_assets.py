"""The problem assets through a real Dagster instance, the dagster CLI and the orion CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.store import Store
from orion_assets_tests.graph import benchmark_problems, train_problems

REPO = Path(__file__).resolve().parents[2]
FULL_SIZES = {"gsm_hard": 1319, "math500": 500, "aime24": 30, "amc23": 40}


def _materialize(assets, profile: Path | str, data_dir: Path, partition: str | None = None, instance=None):
    return dg.materialize(
        assets,
        partition_key=partition,
        resources=resources_for(OrionResource(profile=str(profile), data_dir=str(data_dir))),
        instance=instance,
    )


def _counts(store: Store) -> dict[str, int]:
    with store.connect(read_only=True) as con:
        return dict(con.execute("SELECT benchmark, count(*) FROM orion.benchmark_problems GROUP BY ALL").fetchall())


def test_every_benchmark_partition_in_full_and_rematerializing_replaces(orion_env, write_profile):
    profile = write_profile("[data]\nbenchmark_limit = 0\n")
    data_dir = orion_env["data_dir"]
    with dg.instance_for_test() as instance:
        for name in FULL_SIZES:
            result = _materialize([benchmark_problems], profile, data_dir, name, instance)
            assert result.success
            (mat,) = result.asset_materializations_for_node("benchmark_problems")
            assert mat.metadata["dagster/row_count"].value == FULL_SIZES[name]
            assert "preview" in mat.metadata and "dagster/column_schema" in mat.metadata
        store = Store(data_dir / "orion_store.duckdb")
        assert _counts(store) == FULL_SIZES
        again = _materialize([benchmark_problems], profile, data_dir, "aime24", instance)
        assert again.success
        assert _counts(store) == FULL_SIZES  # replaced, not appended
        with store.connect(read_only=True) as con:
            log = con.execute(
                "SELECT partition_key, row_count, dagster_run_id, profile_hash, code_version "
                "FROM orion.materializations ORDER BY materialized_at"
            ).fetchall()
            run_ids = {r[0] for r in con.execute(
                "SELECT DISTINCT dagster_run_id FROM orion.benchmark_problems WHERE benchmark='aime24'").fetchall()}
        assert [r[0] for r in log] == [*FULL_SIZES, "aime24"]
        assert log[-1][1] == 30 and log[-1][4] == "1"
        assert run_ids == {again.run_id}
        # the run shows up in the instance with its partition
        records = instance.fetch_materializations(dg.AssetKey("benchmark_problems"), limit=10).records
        assert {r.partition_key for r in records} == set(FULL_SIZES)


def test_benchmark_limit_takes_a_deterministic_sample(orion_env, write_profile):
    profile = write_profile("[data]\nbenchmark_limit = 5\n")
    data_dir = orion_env["data_dir"]
    store = Store(data_dir / "orion_store.duckdb")
    ids = []
    for _ in range(2):
        assert _materialize([benchmark_problems], profile, data_dir, "math500").success
        ids.append(sorted(store.read("benchmark_problems")["problem_id"].to_list()))
    assert len(ids[0]) == 5 and ids[0] == ids[1]


def test_train_problems_are_decontaminated_with_metadata(orion_env, write_profile):
    profile = write_profile("[data]\ntrain_limit = 0\n")
    result = _materialize([train_problems], profile, orion_env["data_dir"])
    assert result.success
    (mat,) = result.asset_materializations_for_node("train_problems")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["per_source"] == {"gsm8k_train": {"loaded": 7473, "rejected": 0}, "aime_1983_2023": {"loaded": 975, "rejected": 0}}
    assert meta["removed_contaminated"] > 0
    assert meta["pool_after_decontamination"] == meta["pool_after_dedup"] - meta["removed_contaminated"]
    assert "ngram" in meta["removed_sample"]
    frame = Store(orion_env["data_dir"] / "orion_store.duckdb").read("train_problems")
    assert frame.height == meta["pool_after_decontamination"]
    assert frame["problem_id"].n_unique() == frame.height
    assert frame["solution"].null_count() == 0  # kept for replay
    assert set(frame["source"]) == {"gsm8k_train", "aime_1983_2023"}


def test_bad_training_file_fails_naming_file_and_line_and_keeps_earlier_data(orion_env, write_profile, tmp_path):
    data_dir = orion_env["data_dir"]
    assert _materialize([train_problems], "tiny", data_dir).success
    before = Store(data_dir / "orion_store.duckdb").read("train_problems")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "oops", \n')
    profile = write_profile(f'[[data.train_sources]]\nname = "broken"\npath = "{bad}"\n')
    result = dg.materialize(
        [train_problems],
        resources=resources_for(OrionResource(profile=str(profile), data_dir=str(data_dir))),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.to_string()
    assert str(bad) in message and "line 2" in message
    after = Store(data_dir / "orion_store.duckdb").read("train_problems")
    assert after.equals(before)  # nothing already computed was lost


def _env(orion_env, profile: Path) -> dict[str, str]:
    return {**os.environ, "ORION_PROFILE": str(profile), "ORION_DATA_DIR": str(orion_env["data_dir"]),
            "DAGSTER_HOME": str(orion_env["dagster_home"])}


@pytest.mark.slow
def test_parallel_dagster_cli_partition_runs_share_the_duckdb_file(orion_env, write_profile):
    """Four `dagster asset materialize` processes at once, as a backfill launches them."""
    profile = write_profile("[data]\nbenchmark_limit = 0\n")
    env = _env(orion_env, profile)
    # Create the instance's SQLite storage once, as `dagster dev` has done before any backfill.
    subprocess.run([sys.executable, "-c", "import dagster; dagster.DagsterInstance.get()"], env=env, check=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orion_assets.definitions",
             "--select", "benchmark_problems", "--partition", name],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in FULL_SIZES
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    assert _counts(Store(orion_env["data_dir"] / "orion_store.duckdb")) == FULL_SIZES


@pytest.mark.slow
def test_orion_run_and_orion_sql(orion_env, write_profile):
    profile = write_profile("[data]\nbenchmarks = [\"aime24\", \"amc23\"]\n")
    env = _env(orion_env, profile)
    run = subprocess.run([sys.executable, "-m", "orion_assets.cli", "run", "--select", "benchmark_problems", "train_problems"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[1/3] benchmark_problems[aime24]" in run.stdout and "train_problems ... ok (32 rows" in run.stdout
    query = subprocess.run([sys.executable, "-m", "orion_assets.cli", "sql", "--format", "json",
                            "SELECT benchmark, count(*) AS n FROM orion.benchmark_problems GROUP BY ALL ORDER BY 1"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stderr
    assert [json.loads(line) for line in query.stdout.splitlines()] == [{"benchmark": "aime24", "n": 8}, {"benchmark": "amc23", "n": 8}]
    sql_file = orion_env["tmp"] / "q.sql"
    sql_file.write_text("-- rows per asset\nSELECT asset_key, sum(row_count) AS n FROM orion.materializations GROUP BY ALL ORDER BY 1;\n")
    from_file = subprocess.run([sys.executable, "-m", "orion_assets.cli", "sql", "--format", "csv", str(sql_file)],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert from_file.stdout.splitlines() == ["asset_key,n", "benchmark_problems,16", "train_problems,32"]
    for statement in ["DROP TABLE orion.train_problems", "SELECT 1; DELETE FROM orion.train_problems",
                      "COPY orion.train_problems TO 'x.csv'", "CREATE TABLE t AS SELECT 1", "ATTACH 'other.db'"]:
        refused = subprocess.run([sys.executable, "-m", "orion_assets.cli", "sql", statement],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "read-only" in refused.stderr, statement
    with duckdb.connect(str(orion_env["data_dir"] / "orion_store.duckdb"), read_only=True) as con:
        # the plain client, as the README shows it: the catalog is orion_store, the schema orion
        assert con.execute("SELECT count(*) FROM orion.train_problems").fetchone()[0] == 32
