"""The I/O manager and table specs: chunked writes, partition replacement, lazy reads, lineage."""

import dagster as dg
import duckdb
import polars as pl
import pytest

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, lineage_links, orion_asset
from orion_assets.store import OLD_STORE_FILE, STORE_FILE, store_in
from orion_assets_tests.conftest import gsm8k_train_rows
from orion_assets_tests.graph import all_assets

PARENT = TableSpec("toy_parent", {"parent_id": pl.Utf8, "group": pl.Utf8, "n": pl.Int64}, id="parent_id")
CHILD = TableSpec("toy_child", {"child_id": pl.Utf8, "parent_id": pl.Utf8, "part": pl.Utf8, "n": pl.Int64},
                  id="child_id", parents={"parent_id": "toy_parent"}, partition_by=("part",))
PARTS = dg.StaticPartitionsDefinition(["a", "b"])


class Toy(dg.Config):
    fail_after_chunks: int = -1
    chunk_size: int = 2
    rows: int = 7


@orion_asset(PARENT)
def toy_parent(config: Toy) -> Rows:
    def chunks():
        for start in range(0, config.rows, config.chunk_size):
            if start // config.chunk_size == config.fail_after_chunks:
                raise RuntimeError("killed halfway")
            ids = range(start, min(start + config.chunk_size, config.rows))
            yield pl.DataFrame({"parent_id": [f"p{i}" for i in ids], "group": [f"g{i % 3}" for i in ids],
                                "n": list(ids)}, schema=PARENT.columns)

    return Rows(chunks(), lambda: {"made_in_chunks": True})


@orion_asset(CHILD, partitions_def=PARTS)
def toy_child(context: dg.AssetExecutionContext, toy_parent: Table) -> Rows:
    part = context.partition_key
    frames = [
        chunk.select(pl.format("{}-{}", pl.col("parent_id"), pl.lit(part)).alias("child_id"), "parent_id",
                     pl.lit(part).alias("part"), "n")
        for chunk in toy_parent.chunks("group", 1)
    ]
    return Rows(frames)


@pytest.fixture
def orion(orion_env) -> OrionResource:
    return OrionResource(profile="tiny", data_dir=str(orion_env["data_dir"]))


def run(orion: OrionResource, selection: str, partition: str | None = None, **config) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"toy_parent": {"config": config}}} if config else None
    return dg.materialize([toy_parent.build(), toy_child.build()], selection=[selection], partition_key=partition,
                          resources=resources_for(orion), run_config=run_config, raise_on_error=False)


def test_chunks_land_as_one_table_with_metadata_gathered_on_the_way(orion):
    result = run(orion, "toy_parent", chunk_size=2, rows=7)
    assert result.success
    (mat,) = result.asset_materializations_for_node("toy_parent")
    assert mat.metadata["dagster/row_count"].value == 7 and mat.metadata["made_in_chunks"].value is True
    frame = orion.store.read("toy_parent").sort("n")
    assert frame["n"].to_list() == list(range(7)) and set(frame["dagster_run_id"]) == {result.run_id}


def test_a_run_killed_halfway_leaves_the_table_as_it_was(orion):
    assert run(orion, "toy_parent", rows=5).success
    before = orion.store.read("toy_parent")
    failed = run(orion, "toy_parent", rows=9, fail_after_chunks=2)
    assert not failed.success
    after = orion.store.read("toy_parent")
    assert after.equals(before)  # not 4 of the 9 new rows, not a mix
    assert not list((orion.data_path / "staging").glob("*")), "the chunks spilled before the failure are removed"


def test_partitions_replace_only_themselves_and_log_what_they_read(orion):
    assert run(orion, "toy_parent", rows=6).success
    assert run(orion, "toy_child", "a").success
    assert run(orion, "toy_child", "b").success
    assert run(orion, "toy_child", "a").success  # again: replaces a, keeps b
    child = orion.store.read("toy_child")
    assert sorted(child.group_by("part").len().iter_rows()) == [("a", 6), ("b", 6)]
    assert child["child_id"].n_unique() == 12
    (parent_mat,) = orion.store.latest_materializations("toy_parent")
    with orion.store.connect(read_only=True) as con:
        upstream = con.execute("SELECT upstream FROM orion.materializations WHERE asset_key = 'toy_child' "
                               "AND partition_key = 'a' ORDER BY materialized_at DESC LIMIT 1").fetchone()[0]
        edges = con.execute("SELECT DISTINCT child_table, parent_table FROM orion.lineage_edges").fetchall()
    assert parent_mat.materialization_id in upstream
    assert edges == [("toy_child", "toy_parent")]


def test_table_chunks_keep_every_row_of_a_key_together(orion):
    assert run(orion, "toy_parent", rows=10).success
    table = Table(orion.store, "toy_parent")
    chunks = list(table.chunks("group", 2))
    assert [c["group"].unique().sort().to_list() for c in chunks] == [["g0", "g1"], ["g2"]]
    assert sum(c.height for c in chunks) == 10
    assert table.filter(group="g1").count() == 3
    assert table.rows_for("parent_id", ["p3", "p1"], ["parent_id"])["parent_id"].to_list() == ["p1", "p3"]


def test_rows_that_break_the_spec_are_refused_naming_the_columns(orion):
    @orion_asset(TableSpec("toy_bad", {"a": pl.Int64, "b": pl.Utf8}, id="a"))
    def toy_bad() -> Rows:
        return Rows(pl.DataFrame({"a": [1], "c": ["x"]}))

    result = dg.materialize([toy_bad.build()], resources=resources_for(orion), raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    cause = failure.step_failure_data.error.cause.message
    assert "toy_bad" in cause and "['a', 'c']" in cause and "['a', 'b']" in cause, cause


def test_every_asset_declares_its_table_and_the_lineage_comes_from_the_specs():
    links = lineage_links(all_assets)
    assert ("refined_cots", "refined_cot_id", "error_attempt_ids", "student_attempts") in links
    assert ("benchmark_predictions", "prediction_id", "checkpoint_id", "student_checkpoint") in links
    for asset in all_assets:
        assert "orion/table" in asset.specs_by_key[asset.key].metadata, asset.key


def test_the_old_file_name_is_renamed_and_orion_tables_resolve_in_a_plain_client(tmp_path):
    old = tmp_path / OLD_STORE_FILE
    with duckdb.connect(str(old)) as con:
        con.execute("CREATE SCHEMA orion.orion; CREATE TABLE orion.orion.t AS SELECT 42 AS x")  # the old ambiguity
    store = store_in(tmp_path)
    assert store.path == tmp_path / STORE_FILE and not old.exists()
    assert store.read("t")["x"].to_list() == [42]
    with duckdb.connect(str(store.path), read_only=True) as con:  # what `duckdb data/orion_store.duckdb` does
        assert con.execute("SELECT x FROM orion.t").fetchall() == [(42,)]


def test_long_texts_are_stored_compressed_in_the_file(tmp_path):
    """CoT-sized texts (real GSM8K solutions, eight to a text, none twice) take less room in the file than their
    bytes: DuckDB's default 0.10 storage format kept them uncompressed (the file was 1.3x the text; now 0.7x)."""
    rows = gsm8k_train_rows(7200)
    texts = ["\n\n".join(f"{r['question']}\n{r['answer']}" for r in rows[i : i + 8]) for i in range(0, 7200, 8)]
    store = store_in(tmp_path)
    store.append("long_texts", pl.DataFrame({"text_id": [str(i) for i in range(len(texts))], "text": texts}))
    with store.connect() as con:
        con.execute("CHECKPOINT")
    text_bytes = sum(len(t.encode()) for t in texts)
    assert store.read("long_texts")["text"].to_list() == texts
    assert store.path.stat().st_size < 0.85 * text_bytes, (store.path.stat().st_size, text_bytes)
