"""Every column of every table the store holds is described once, beside its type: the asset tables' specs
(shown in the Dagster UI as the ``dagster/column_schema`` of the definitions and of each materialization), the
statistics tables (their ``sql/`` file's ``Columns:`` block) and the store's own tables (the call cache, the
materialization log, the lineage, the quality gate's verdicts); ``docs/tables.md`` is generated from them."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import SPEC_METADATA_KEY, Rows, TableSpec, col, described, orion_asset
from orion_assets.llm import cache
from orion_assets.method.quality.verdicts import GATE_SCHEMA, append_verdicts
from orion_assets.store import SCHEMA, store_in
from orion_assets_tests.conftest import REPO_ROOT
from orion_assets_tests.graph import defs
from orion_devtools import tables_doc


def _asset_tables() -> list[dg.AssetSpec]:
    return [spec for spec in defs.resolve_all_asset_specs() if SPEC_METADATA_KEY in spec.metadata]


def test_every_asset_table_describes_each_of_its_columns_in_the_ui():
    specs = _asset_tables()
    assert len(specs) >= 18
    undescribed = {}
    for spec in specs:
        table = spec.metadata[SPEC_METADATA_KEY]
        schema = spec.metadata.get("dagster/column_schema")
        assert isinstance(schema, dg.TableSchema), spec.key
        assert [(c.name, c.type) for c in schema.columns] == list(table["columns"].items()), spec.key
        missing = [c.name for c in schema.columns if not (c.description or "").strip()]
        if missing:
            undescribed[table["name"]] = missing
    assert undescribed == {}


def test_the_store_own_tables_describe_each_of_their_columns_and_match_the_real_tables(tmp_path):
    """Every table the store creates that no asset makes is declared, and each declaration (tables and the
    lineage view) names exactly the columns the store creates, in order."""
    store = store_in(tmp_path)
    cache.ensure_table(store)
    store.replace_rows("toy", pl.DataFrame({"toy_id": ["t1"], "parent_id": ["p1"]}), replace_where=None,
                       materialization={"asset_key": "toy"}, lineage=[("toy", "toy_id", "parent_id", "parent")])
    append_verdicts(store, pl.DataFrame([{"variant": "orion", "passed": True}], schema=GATE_SCHEMA))
    with store.connect(read_only=True) as con:
        rows = con.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = "
                           "current_database() AND table_schema = ? ORDER BY table_name, ordinal_position",
                           [SCHEMA]).fetchall()
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_catalog = "
                                            "current_database() AND table_schema = ? AND table_type = 'BASE TABLE'",
                                            [SCHEMA]).fetchall()}
    made: dict[str, list[str]] = {}
    for table, column in rows:
        made.setdefault(table, []).append(column)
    declared = {t.name: t for t in tables_doc.STORE_TABLES}
    assert tables - {"toy"} <= set(declared)
    assert set(declared) <= set(made)
    for name, table in declared.items():
        assert list(table.columns) == made[name], name
        assert all(c.description.strip() for c in table.columns.values()), name


def test_a_column_cannot_be_declared_without_a_description():
    with pytest.raises(ValueError, match="description"):
        col(pl.Utf8, " ")
    with pytest.raises(ValueError, match="'b'.* no description"):
        described({"a": pl.Utf8, "b": pl.Int64}, {"a": "the a"}, table="t")
    with pytest.raises(ValueError, match="not among its columns"):
        TableSpec("t", {"a": col(pl.Utf8, "the a")}, id="a", descriptions={"b": "no such column"})
    spec = TableSpec("t", {"a": col(pl.Utf8, "the a"), "b": pl.Int64}, id="a")
    assert spec.columns == {"a": pl.Utf8, "b": pl.Int64}  # name -> type, as every caller reads it
    assert spec.descriptions == {"a": "the a"} and spec.undescribed == ["b"]


@pytest.fixture
def orion(orion_env) -> OrionResource:
    return OrionResource(profile="tiny", data_dir=str(orion_env["data_dir"]))


TOY = TableSpec("toy_described", {"toy_id": col(pl.Utf8, "the toy's id"), "n": col(pl.Int64, "how many")}, id="toy_id")


@orion_asset(TOY)
def toy_described() -> Rows:
    return Rows(pl.DataFrame({"toy_id": ["a", "b"], "n": [1, 2]}, schema=TOY.columns))


def test_a_materialization_shows_the_descriptions_too(orion):
    """The I/O manager's column schema (which the UI shows once an asset has run) keeps the spec's descriptions."""
    result = dg.materialize([toy_described.build()], resources=resources_for(orion))
    (materialization,) = result.asset_materializations_for_node("toy_described")
    columns = materialization.metadata["dagster/column_schema"].schema.columns
    assert [(c.name, c.type, c.description) for c in columns] == [("toy_id", "String", "the toy's id"),
                                                                  ("n", "Int64", "how many")]


def test_the_docs_page_is_what_the_specs_generate():
    page = REPO_ROOT / "docs" / "tables.md"
    assert page.read_text(encoding="utf-8") == tables_doc.render(), (
        "docs/tables.md is stale: regenerate it with `python -m orion_devtools.tables_doc`")
    text = page.read_text(encoding="utf-8")
    for spec in _asset_tables():
        assert f"## `{spec.metadata[SPEC_METADATA_KEY]['name']}`" in text
    for table in tables_doc.STORE_TABLES:
        assert f"## `{table.name}`" in text
