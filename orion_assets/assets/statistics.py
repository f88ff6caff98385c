"""The CoT statistics of ``sql/`` as assets: each file's rows as the table ``orion.<name>``.

An asset's inputs are the tables its query reads (found by binding the file against the table specs,
so the lineage graph follows the SQL), all partitions of each; the vocabulary views it reads are the
store's, not an asset's, so no input. It runs the file through the store's connection, as ``orion sql``
does, on the DuckDB file and on a DuckLake alike. sql/README.md says more.
"""

import dagster as dg

from orion_assets.assets import evaluation, exposure, problems, quality, reflection, teacher, training
from orion_assets.ids import content_id
from orion_assets.io.blueprint import Blueprint
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import Rows, Table, TableSpec, orion_asset
from orion_assets.store.queries import Query, load_queries, run_query

GROUP = "statistics"
STATISTICS = ("cot_stats", "refinement_yield", "error_taxonomy", "length_vs_accuracy")

# Every asset's table, by name: what a query may read.
SPECS: dict[str, TableSpec] = {
    spec.name: spec
    for module in (problems, teacher, exposure, reflection, quality, training, evaluation)
    for spec in vars(module).values()
    if isinstance(spec, TableSpec)
}

# Refreshes once a table it reads changes (the automation sensor of `dagster dev`), once every such
# table has rows: eager() would wait for every partition, and those of the benchmarks a profile
# does not evaluate are never made.
REFRESH = (
    dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
    & dg.AutomationCondition.all_deps_match(~dg.AutomationCondition.missing())
).with_label("eager, once every table it reads has rows")


def statistics_asset(query: Query) -> Blueprint:
    """The asset of ``sql/<name>.sql``: downstream of every table the file reads."""
    name = query.name
    unknown = sorted(query.tables - SPECS.keys())
    if unknown:
        raise ValueError(f"{query.path} reads {unknown}, which no asset makes")
    # Each column is described in the file's `-- Columns:` block.
    spec = TableSpec(name, query.columns, id=None, descriptions=query.column_descriptions)
    ins = {
        table: dg.AssetIn(partition_mapping=dg.AllPartitionMapping() if SPECS[table].partition_by else None)
        for table in sorted(query.tables)
    }

    @orion_asset(
        spec,
        group_name=GROUP,
        description=query.summary,
        ins=ins,
        kinds={"sql"},
        code_version=content_id("sql", query.text, length=12),
        automation_condition=REFRESH,
        metadata={
            "sql_file": dg.MetadataValue.path(str(query.path)),
            "sql": dg.MetadataValue.md(f"```sql\n{query.text}\n```"),
        },
    )
    def statistic(context: dg.AssetExecutionContext, orion: OrionResource, **tables: Table) -> Rows:
        # The inputs are not read here: loading them records which materializations the rows came from.
        with orion.store.connect(read_only=True) as con:
            return Rows(run_query(con, query.text))

    return statistic


QUERIES = load_queries(STATISTICS, {table: spec.empty() for table, spec in SPECS.items()})
cot_stats, refinement_yield, error_taxonomy, length_vs_accuracy = (statistics_asset(QUERIES[name]) for name in STATISTICS)
