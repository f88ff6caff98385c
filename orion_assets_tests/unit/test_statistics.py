"""The sql/ statistics as assets (their lineage follows the SQL, their rows are the file's through
`orion sql`), and the read-only DuckDBResource users write their own assets on."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource
from duckdb import Error as DuckDBError
from polars.testing import assert_frame_equal

from orion_assets.assets import statistics
from orion_assets.cli.main import main
from orion_assets.io.duckdb_resource import RESOURCE_KEY, duckdb_resource
from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.store import DuckLakeStore, Store
from orion_assets.store.lock import file_lock
from orion_assets.store.queries import SQL_DIR, tables_read
from orion_assets_tests.conftest import materialize_each
from orion_assets_tests.graph import all_assets, defs

REPO = Path(__file__).resolve().parents[2]
# What each file reads, by reading it.
READS = {
    "cot_stats": {"teacher_cots", "refined_cots", "cot_quality"},
    "refinement_yield": {"teacher_cots", "refined_cots", "train_problems"},
    "error_taxonomy": {"student_errors", "student_attempts", "train_problems"},
    "length_vs_accuracy": {"benchmark_predictions"},
}
# The vocabulary views each reads (the store's, not an asset's: no input).
VOCABULARY_READS = {
    "cot_stats": {"vocabulary_modes"},
    "refinement_yield": {"vocabulary_modes"},
    "error_taxonomy": set(),
    "length_vs_accuracy": {"vocabulary_variants"},
}
SMALL_EXPOSURE = """
[data]
train_limit = 4
[student_model]
source = "pretrained"
name_or_path = "{model}"
[exposure]
n = 2
max_tokens = 16
"""


def test_each_statistic_is_downstream_of_exactly_the_tables_its_file_reads():
    graph = defs.resolve_asset_graph()
    order = [k.to_user_string() for k in graph.toposorted_asset_keys]
    assert set(statistics.STATISTICS) == set(READS)
    for name, tables in READS.items():
        node = graph.get(dg.AssetKey(name))
        assert {k.to_user_string() for k in node.parent_keys} == tables, name
        with duckdb.connect() as con:
            read = tables_read(con, duckdb.extract_statements((SQL_DIR / f"{name}.sql").read_text())[-1].query)
        assert read == tables | VOCABULARY_READS[name], name
        assert statistics.QUERIES[name].tables == tables and statistics.QUERIES[name].vocabulary == VOCABULARY_READS[name]
        for table in tables:  # in the graph below each table, and after all its partitions in `orion run`'s order
            assert dg.AssetKey(name) in graph.get(dg.AssetKey(table)).child_keys
            assert order.index(table) < order.index(name)
        asset = next(a for a in all_assets if a.key == dg.AssetKey(name))
        schema = asset.specs_by_key[asset.key].metadata["dagster/column_schema"]
        header = (SQL_DIR / f"{name}.sql").read_text().split("USE orion;")[0]
        assert all(f" {column.name}" in header for column in schema.columns), (name, "columns undocumented")
        for dep in asset.specs_by_key[asset.key].deps:
            partitioned = graph.get(dep.asset_key).partitions_def is not None
            assert isinstance(dep.partition_mapping, dg.AllPartitionMapping) == partitioned, (name, dep.asset_key)


def test_tables_read_leaves_out_ctes_and_sees_subqueries():
    with duckdb.connect() as con:
        found = tables_read(con, "WITH a AS (SELECT * FROM t1) SELECT * FROM a JOIN t2 USING (x) "
                                 "WHERE x IN (SELECT x FROM t3)")
    assert found == {"t1", "t2", "t3"}


@pytest.fixture(scope="module")
def exposure_store(tmp_path_factory, tiny_student_model):
    """A real store: the tiny student's error exposure on four problems (train_problems, student_base_model,
    student_attempts, student_errors), then the error_taxonomy asset over it, in one Dagster instance."""
    root = tmp_path_factory.mktemp("statistics")
    profile = root / "profile.toml"
    profile.write_text('extends = "tiny"\n' + SMALL_EXPOSURE.format(model=tiny_student_model.path))
    orion = OrionResource(profile=str(profile), data_dir=str(root / "data"))
    instance = dg.DagsterInstance.ephemeral()
    chosen = ["train_problems", "student_base_model", "student_attempts", "student_errors"]
    for name in chosen:  # in this order (materialize_each keeps the definitions' order)
        assert materialize_each(all_assets, resources_for(orion), [name], instance=instance).success, name
    result = dg.materialize(all_assets, selection=["error_taxonomy"], resources=resources_for(orion), instance=instance)
    return {"root": root, "profile": profile, "orion": orion, "instance": instance, "result": result}


def test_error_taxonomy_asset_rows_are_the_file_through_orion_sql(exposure_store, monkeypatch, capsys):
    orion, result = exposure_store["orion"], exposure_store["result"]
    assert result.success
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ORION_PROFILE", orion.profile)
    capsys.readouterr()
    assert main(["--data-dir", orion.data_dir, "sql", "sql/error_taxonomy.sql", "--format", "json"]) == 0
    cli = capsys.readouterr()
    expected = pl.DataFrame([json.loads(line) for line in cli.out.splitlines()], infer_schema_length=None)
    stored = orion.store.read("error_taxonomy").drop("dagster_run_id")
    assert expected.height > 0 and stored.columns == expected.columns
    assert_frame_equal(stored, expected, check_dtypes=False)
    (materialization,) = result.asset_materializations_for_node("error_taxonomy")
    assert materialization.metadata["dagster/row_count"].value == stored.height
    assert [c.name for c in materialization.metadata["dagster/column_schema"].schema.columns] == stored.columns
    # the log names the upstream materializations the rows came from (each partition of each table read)
    (upstream,) = orion.store.select("materializations", columns=["upstream"], where={"asset_key": "error_taxonomy"})["upstream"]
    read = {(u["asset_key"], u["partition_key"]) for u in json.loads(upstream)}
    assert read == {("train_problems", None), ("student_attempts", "tiny"), ("student_errors", "tiny")}


def test_a_statistic_is_requested_again_when_a_table_it_reads_changes(exposure_store):
    orion, instance = exposure_store["orion"], exposure_store["instance"]
    automation = dg.Definitions(assets=all_assets, resources=resources_for(orion))
    first = dg.evaluate_automation_conditions(defs=automation, instance=instance)
    assert first.get_num_requested(dg.AssetKey("cot_stats")) == 0  # its tables were never made: nothing to run on
    assert materialize_each(all_assets, resources_for(orion), ["student_errors"], instance=instance).success
    second = dg.evaluate_automation_conditions(defs=automation, instance=instance, cursor=first.cursor)
    assert second.get_num_requested(dg.AssetKey("error_taxonomy")) == 1
    assert second.get_num_requested(dg.AssetKey("length_vs_accuracy")) == 0  # it reads no table that changed


# A pipeline write from another process (as `orion run`'s): ready once imported, it writes when told to.
WRITER = """
import sys
import polars as pl
from orion_assets.store import Store
print("ready", flush=True)
sys.stdin.readline()
Store(sys.argv[1]).append("probe_log", pl.DataFrame({"x": [1]}))
"""


def test_a_users_asset_on_the_duckdb_resource_reads_takes_turns_with_writers_and_cannot_write(exposure_store):
    orion = exposure_store["orion"]
    store = orion.store
    assert isinstance(store, Store)
    seen: dict[str, object] = {}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    entered = threading.Event()

    @dg.asset
    def problems_per_source(duckdb: DuckDBResource) -> dg.MaterializeResult:
        started = time.monotonic()
        entered.set()
        with duckdb.get_connection() as con:
            seen["waited_s"] = time.monotonic() - started
            assert writer.stdout.readline().strip() == "ready"
            writer.stdin.write("go\n")
            writer.stdin.flush()
            time.sleep(0.5)  # the pipeline's write starts while this connection is open
            seen["writer_waiting"] = writer.poll() is None
            rows = con.sql("SELECT source, count(*) AS n FROM orion.train_problems GROUP BY source").fetchall()
            try:
                con.execute("DELETE FROM orion.train_problems")
            except DuckDBError as exc:  # (the parameter `duckdb` hides the module here)
                seen["write"] = str(exc)
        return dg.MaterializeResult(metadata={"problems": sum(n for _, n in rows)})

    held = threading.Event()

    def pipeline_step() -> None:  # a write in progress when the asset starts: the store's exclusive lock
        with file_lock(store.lock_path, exclusive=True, timeout_s=10):
            held.set()
            entered.wait(120)  # released only after the asset asked for its connection, however slow the start
            time.sleep(0.5)

    thread = threading.Thread(target=pipeline_step)
    thread.start()
    held.wait(5)
    result = dg.materialize([problems_per_source], resources={RESOURCE_KEY: resources_for(orion)[RESOURCE_KEY]},
                            instance=exposure_store["instance"])
    thread.join()
    _, err = writer.communicate(timeout=60)
    assert result.success
    # the write that came while it read waited for it, then committed (a bare DuckDBResource made it fail:
    # "Could not set lock on file ... Conflicting lock is held")
    assert seen["writer_waiting"] and writer.returncode == 0, err[-2000:]
    assert seen["waited_s"] >= 0.3  # it queued behind the write in progress instead of failing to open the file
    assert store.count("probe_log") == 1
    (materialization,) = result.asset_materializations_for_node("problems_per_source")
    assert materialization.metadata["problems"].value == store.count("train_problems") == 4
    assert "read-only" in str(seen["write"])


def test_on_a_lake_the_duckdb_resource_names_the_alternative(tmp_path):
    resource = duckdb_resource(DuckLakeStore(f"sqlite:{tmp_path / 'catalog.sqlite'}", tmp_path / "lake"))
    with pytest.raises(RuntimeError, match=r"DuckLake.*orion\.store\.connect\(read_only=True\)"):
        with resource.get_connection():
            pass
    assert not (tmp_path / "catalog.sqlite").exists()  # nothing was opened
