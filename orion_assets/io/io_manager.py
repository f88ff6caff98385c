"""The I/O manager every ORION asset writes and reads through.

Writing (:meth:`OrionIOManager.handle_output`): an asset returns :class:`~orion_assets.io.tables.Rows`;
each chunk is checked against the table's spec and spilled to a Parquet file as it arrives, and one
store transaction then replaces the asset's partition (or table) with them, logs the
materialization with the upstream materializations its inputs came from, and records the spec's
lineage links. A run killed halfway leaves the table as it was.

Reading (:meth:`OrionIOManager.load_input`): an upstream table arrives as a lazy
:class:`~orion_assets.io.tables.Table`, filtered to the partitions the input maps to.

dagster-duckdb's I/O managers are not used: they load whole tables into memory and hold no
cross-process lock, while the store's readers and writers queue on one (``orion_assets.store.lock``).
"""

import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl

from orion_assets.io.duckdb_resource import RESOURCE_KEY, duckdb_resource
from orion_assets.io.metadata import column_descriptions, markdown_table, table_schema
from orion_assets.io.resource import OrionResource
from orion_assets.io.tables import (
    IO_MANAGER_KEY,
    SPEC_METADATA_KEY,
    Rows,
    Table,
    links_of,
)
from orion_assets.method.partition_keys import SEPARATOR
from orion_assets.store import SCHEMA, Upstream

PREVIEW_ROWS = 10

# Upstream materializations each running step read, by (run id, step key): load_input records
# them and handle_output logs them with the step's own materialization.
_READS: dict[tuple[str, str], list[Upstream]] = {}


class OrionIOManager(dg.ConfigurableIOManager):
    """Assets' tables in the ORION store (``orion.<asset>``), read lazily and written in chunks."""

    orion: OrionResource

    def handle_output(self, context: dg.OutputContext, obj: Rows) -> None:
        if not isinstance(obj, Rows):
            raise TypeError(f"asset {context.asset_key.to_user_string()} returned {type(obj).__name__}, not Rows")
        spec = context.definition_metadata[SPEC_METADATA_KEY]
        table, columns = spec["name"], list(spec["columns"])
        replace_where = _partition_where(spec, context) if context.has_asset_partitions else None
        staging = self.orion.data_path / "staging" / f"{table}-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        try:
            files, preview, rows = [], None, 0
            for index, chunk in enumerate(obj.iter_chunks()):
                if chunk.columns != columns:
                    raise ValueError(
                        f"asset {table} produced columns {chunk.columns}, but its table spec declares {columns}"
                    )
                chunk = chunk.with_columns(pl.lit(context.run_id).alias("dagster_run_id"))
                if preview is None or preview.height < PREVIEW_ROWS:
                    head = chunk.drop("dagster_run_id").head(PREVIEW_ROWS)
                    preview = head if preview is None else preview.vstack(head).head(PREVIEW_ROWS)
                if chunk.height or not files:
                    path = staging / f"{index:06d}.parquet"
                    chunk.write_parquet(path)
                    files.append(path)
                rows += chunk.height
            metadata = dict(obj.final_metadata())  # after the last chunk: counts gathered on the way
            if not files:
                raise ValueError(f"asset {table} returned no chunk at all (return an empty frame for no rows)")
            partition_key = str(context.partition_key) if context.has_asset_partitions else None
            materialization_id = self.orion.store.replace_rows(
                table,
                parquet=files,
                replace_where=replace_where,
                materialization={
                    "asset_key": table,
                    "partition_key": partition_key,
                    "dagster_run_id": context.run_id,
                    "profile_name": self.orion.active.name,
                    "profile_hash": self.orion.active.hash,
                    "code_version": _code_version(context),
                    "upstream": _READS.pop((context.run_id, context.step_key), []),
                },
                lineage=links_of(spec),
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        context.add_output_metadata(
            {
                "dagster/row_count": rows,
                "dagster/column_schema": (table_schema(preview, column_descriptions(context.definition_metadata))
                                          if preview is not None else None),
                "duckdb_table": f"{SCHEMA}.{table}",
                "materialization_id": materialization_id,
                "profile": self.orion.active.name,
                "profile_hash": self.orion.active.hash,
                "preview": dg.MetadataValue.md(markdown_table(preview, total=rows)),
                **metadata,
            }
        )
        if obj.fail_after_write is not None:
            raise obj.fail_after_write

    def load_input(self, context: dg.InputContext) -> Table:
        upstream_output = context.upstream_output
        spec = upstream_output.definition_metadata.get(SPEC_METADATA_KEY) if upstream_output else None
        if spec is None:
            raise TypeError(f"input {context.name} is not an ORION table (no {SPEC_METADATA_KEY} metadata)")
        table = spec["name"]
        where: dict[str, object] = {}
        partition_key: str | None = None
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            all_keys = context.asset_partitions_def.get_partition_keys()
            if len(keys) == 1:
                partition_key = str(keys[0])
                where = _partition_where(spec, keys[0])
            elif set(map(str, keys)) != set(map(str, all_keys)):
                raise ValueError(f"input {context.name}: reading {len(keys)} of the partitions of {table} is not supported")
        upstream = self.orion.store.latest_materializations(table, partition_key)
        step = context.step_context
        _READS.setdefault((step.run_id, step.step.key), []).extend(upstream)
        return Table(self.orion.store, table, where, tuple(upstream))


def _code_version(context: dg.OutputContext) -> str | None:
    return context.asset_spec.code_version

def _partition_where(spec: Mapping[str, Any], key_or_context: Any) -> dict[str, object]:
    """The column values a partition key fixes: its dimensions in name order (Dagster's order), each split on
    ``/`` (``tiny/orion/0`` fixes student, variant and seed), matched with ``partition_by`` in order."""
    key = key_or_context.partition_key if isinstance(key_or_context, dg.OutputContext) else key_or_context
    columns = spec["partition_by"]
    if isinstance(key, dg.MultiPartitionKey):
        dimensions = [key.keys_by_dimension[name] for name in sorted(key.keys_by_dimension)]
    else:
        dimensions = [str(key)]
    values = [part for value in dimensions for part in value.split(SEPARATOR)]
    if len(values) != len(columns):
        raise ValueError(f"table {spec['name']}: partition key {key!s} does not fix its partition columns {columns}")
    return {
        column: int(value) if spec["columns"][column].startswith("Int") else value
        for column, value in zip(columns, values, strict=True)
    }


def resources_for(orion: OrionResource) -> dict[str, object]:
    """``orion``, the I/O manager over its store and the Pipes client: what the assets need to run; and
    ``duckdb``, a read-only ``DuckDBResource`` on the store's file, for users' own assets."""
    return {"orion": orion, IO_MANAGER_KEY: OrionIOManager(orion=orion),
            "pipes_subprocess_client": dg.PipesSubprocessClient(), RESOURCE_KEY: duckdb_resource(orion.store)}
