"""What every store backend shares: the ``orion`` schema's bookkeeping tables, :class:`BaseStore`
(reads, partition replacement with its materialization log and lineage, appends), the write guards
and the SQL helpers, and the ``lineage_edges`` view. A backend adds its connections and transactions.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import duckdb
import polars as pl
import pyarrow as pa

from orion_assets.ids import content_id
from orion_assets.store.columns import StoreTable, col

SCHEMA = "orion"
CATALOG = "orion_db"

# No table has a PRIMARY KEY (DuckLake has none either): DuckDB loads and rewrites a table's whole
# key index whenever a connection writes it, so each short write cost time in proportion to the rows
# stored (benchmarks/bench_cache_flush.py). Writers keep one row per key themselves (upsert_sql).
MATERIALIZATIONS = StoreTable("materializations", "one row per write of an asset's table or partition (BaseStore.replace_rows)", {
    "materialization_id": col("VARCHAR NOT NULL", "the write's id (a random uuid, hex)"),
    "asset_key": col("VARCHAR NOT NULL", "the asset written, which is also its table's name"),
    "partition_key": col("VARCHAR", "the partition written (NULL: the whole table)"),
    "dagster_run_id": col("VARCHAR", "the Dagster run that wrote it"),
    "profile_name": col("VARCHAR", "the name of the profile the run used"),
    "profile_hash": col("VARCHAR", "the hash of that profile's settings"),
    "code_version": col("VARCHAR", "the asset's code version when it was written"),
    "row_count": col("BIGINT", "rows written (the partition's, or the whole table's)"),
    "upstream": col("JSON", "the parent materializations the asset read: a list of {asset_key, partition_key, "
                            "materialization_id, dagster_run_id}"),
    "materialized_at": col("TIMESTAMPTZ", "when the write's transaction ran (UTC)"),
})
MATERIALIZATIONS_DDL = MATERIALIZATIONS.ddl(SCHEMA)

# The lineage edges each table declares (its spec's parent columns), written with its rows, so
# the ``lineage_edges`` view covers exactly the tables that exist, at every stage of a run.
TABLE_PARENTS = StoreTable("table_parents", "one row per parent-id column a table's spec declares (its lineage links)", {
    "child_table": col("VARCHAR NOT NULL", "the table whose rows point at parent rows"),
    "child_id": col("VARCHAR NOT NULL", "its row id column"),
    "parent_column": col("VARCHAR NOT NULL", "its column holding the parent row's id, or a list of ids"),
    "parent_table": col("VARCHAR NOT NULL", "the table those ids are row ids of"),
})
TABLE_PARENTS_DDL = TABLE_PARENTS.ddl(SCHEMA)
# The view refresh_lineage_view makes over the links in table_parents: one row per (child row, parent row).
LINEAGE_EDGES = StoreTable("lineage_edges", "a view: one row per edge from a row to a parent row it was made from", {
    "child_table": col("VARCHAR", "the table of the row"),
    "child_id": col("VARCHAR", "the row's id"),
    "parent_table": col("VARCHAR", "the table of the parent row"),
    "parent_id": col("VARCHAR", "the parent row's id (a list of parent ids gives one edge each)"),
}, kind="view")

Link = tuple[str, str, str, str]  # (child table, child id column, parent-id column, parent table)
T = TypeVar("T")


@dataclass(frozen=True)
class Upstream:
    """A parent materialization that an asset read, as recorded in ``orion.materializations``."""

    asset_key: str
    partition_key: str | None
    materialization_id: str | None
    dagster_run_id: str | None

    def to_json(self) -> dict[str, str | None]:
        return {
            "asset_key": self.asset_key,
            "partition_key": self.partition_key,
            "materialization_id": self.materialization_id,
            "dagster_run_id": self.dagster_run_id,
        }


class BaseStore:
    """What every backend answers: reads of ``orion.<table>``, partition replacement with its
    materialization log and lineage, appends. A backend provides :meth:`connect` (a connection
    whose current catalog holds schema ``orion``, with the materialization log and the lineage
    links), :meth:`transaction`, :meth:`exists` and :attr:`location`."""

    @property
    def location(self) -> str:
        """Where the store is, for messages (never a credential)."""
        raise NotImplementedError

    def exists(self) -> bool:
        """Whether anything was ever written (a reader of a store that does not exist finds nothing)."""
        raise NotImplementedError

    def connect(self, read_only: bool = False) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        raise NotImplementedError

    def transaction(
        self, work: Callable[[duckdb.DuckDBPyConnection], T], *, guard: str | None = None, what: str = "a write"
    ) -> T:
        """Run ``work(con)`` in one transaction and return its result. ``guard`` names what the
        transaction writes (a table, or a partition: :func:`write_guard`), for a backend whose
        concurrent writers of the same rows must conflict (and retry) rather than both commit;
        ``what`` says what is written, for the error raised when that never succeeds."""
        raise NotImplementedError

    def _guard(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        """Make the open transaction conflict with every concurrent one that takes guard ``name``
        (a backend whose writers exclude each other already has nothing to do)."""

    def upsert_sql(self, table: str, source: str, key: str, columns: Sequence[str], *, replace: bool) -> list[str]:
        """Statements that write ``source``'s rows into ``orion.<table>`` once per ``key``: replacing
        a stored row of the same key (``replace``) or leaving it (``replace=False``)."""
        cols = ", ".join(columns)
        if replace:
            return [
                f"DELETE FROM {SCHEMA}.{table} WHERE {key} IN (SELECT {key} FROM {source})",
                f"INSERT INTO {SCHEMA}.{table} ({cols}) SELECT {cols} FROM {source}",
            ]
        return [
            f"INSERT INTO {SCHEMA}.{table} ({cols}) SELECT {cols} FROM {source} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.{table} t WHERE t.{key} = s.{key})"
        ]

    # -- reads ---------------------------------------------------------------------------------

    def table_exists(self, table: str) -> bool:
        if not self.exists():
            return False
        with self.connect(read_only=True) as con:
            return has_table(con, table)

    def read(self, table: str, where: dict[str, object] | None = None) -> pl.DataFrame:
        """Rows of ``orion.<table>``, optionally filtered by column equality."""
        return self.select(table, where=where)

    def select(
        self,
        table: str,
        *,
        columns: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        where: Mapping[str, object] | None = None,
        key: tuple[str, Sequence[object]] | None = None,
    ) -> pl.DataFrame:
        """``columns`` (default all) of the rows matching ``where`` (column equality) and, with
        ``key = (column, values)``, whose ``column`` is one of ``values`` (ordered by it)."""
        clause, params = _where(dict(where) if where else None)
        cols = ", ".join(f't."{c}"' for c in columns) if columns else "t.*"
        if exclude:
            cols += " EXCLUDE (" + ", ".join(f'"{c}"' for c in exclude) + ")"
        with self.connect(read_only=True) as con:
            self._require(con, table)
            if key is None:
                return con.execute(f"SELECT {cols} FROM {SCHEMA}.{table} t{clause}", params).pl()
            column, values = key
            con.register("_keys", pa.table({"_k": pa.array(list(values))}))
            try:
                join = f'JOIN _keys k ON t."{column}" = k._k'
                return con.execute(
                    f'SELECT {cols} FROM {SCHEMA}.{table} t {join}{clause} '
                    f'ORDER BY t."{column}"',
                    params,
                ).pl()
            finally:
                con.unregister("_keys")

    def count(self, table: str, where: Mapping[str, object] | None = None) -> int:
        clause, params = _where(dict(where) if where else None)
        with self.connect(read_only=True) as con:
            self._require(con, table)
            return con.execute(f"SELECT count(*) FROM {SCHEMA}.{table}{clause}", params).fetchone()[0]

    def distinct(self, table: str, column: str, where: Mapping[str, object] | None = None) -> list[object]:
        clause, params = _where(dict(where) if where else None)
        with self.connect(read_only=True) as con:
            self._require(con, table)
            rows = con.execute(f'SELECT DISTINCT "{column}" FROM {SCHEMA}.{table}{clause} ORDER BY 1', params)
            return [r[0] for r in rows.fetchall()]

    def _require(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        if not has_table(con, table):
            raise LookupError(
                f"table {SCHEMA}.{table} does not exist in {self.location}: materialize asset '{table}' first"
            )

    def latest_materializations(self, asset_key: str, partition_key: str | None = None) -> list[Upstream]:
        """The newest recorded materialization of an asset's partition, or of each of its
        partitions when ``partition_key`` is None (what a reader of the whole table depends on)."""
        rows: list[tuple] = []
        if self.exists():
            with self.connect(read_only=True) as con:
                if has_table(con, "materializations"):
                    rows = con.execute(
                        f"""SELECT partition_key, arg_max(materialization_id, materialized_at),
                                   arg_max(dagster_run_id, materialized_at)
                            FROM {SCHEMA}.materializations
                            WHERE asset_key = ? AND (? IS NULL OR partition_key = ?)
                            GROUP BY partition_key ORDER BY partition_key NULLS FIRST""",
                        [asset_key, partition_key, partition_key],
                    ).fetchall()
        if not rows:
            return [Upstream(asset_key, partition_key, None, None)]
        return [Upstream(asset_key, key, mid, run) for key, mid, run in rows]

    # -- writes --------------------------------------------------------------------------------

    def replace_rows(
        self,
        table: str,
        frame: pl.DataFrame | None = None,
        *,
        parquet: Sequence[Path] = (),
        replace_where: dict[str, object] | None,
        materialization: dict[str, object],
        lineage: Sequence[Link] = (),
    ) -> str:
        """Write ``frame`` (or the rows of the ``parquet`` files an asset wrote chunk by chunk) into
        ``orion.<table>``, log the materialization and the table's ``lineage`` links, in one
        transaction.

        ``replace_where=None`` replaces the whole table; otherwise only the rows matching it (one
        partition) are deleted first, so re-materializing a partition never duplicates rows.
        Returns the new materialization id.
        """
        materialization_id = uuid.uuid4().hex
        upstream = _flatten(materialization.get("upstream") or [])
        incoming = None if parquet else (frame if frame is not None else pl.DataFrame()).to_arrow()

        def work(con: duckdb.DuckDBPyConnection) -> None:
            if parquet:
                files = ", ".join(f"'{sql_quote(Path(f))}'" for f in parquet)
                source = f"read_parquet([{files}])"
            else:
                con.register("_incoming", incoming)
                source = "_incoming"
            try:
                if replace_where is None or not has_table(con, table):
                    verb = "CREATE OR REPLACE TABLE" if replace_where is None else "CREATE TABLE"
                    con.execute(f"{verb} {SCHEMA}.{table} AS SELECT * FROM {source}")
                    row_count = con.execute(f"SELECT count(*) FROM {SCHEMA}.{table}").fetchone()[0]
                else:
                    _conform_columns(con, table, source)
                    clause, params = _where(replace_where)
                    con.execute(f"DELETE FROM {SCHEMA}.{table}{clause}", params)
                    row_count = con.execute(f"INSERT INTO {SCHEMA}.{table} BY NAME SELECT * FROM {source}").fetchone()[0]
                con.execute(
                    f"INSERT INTO {SCHEMA}.materializations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        materialization_id,
                        materialization["asset_key"],
                        materialization.get("partition_key"),
                        materialization.get("dagster_run_id"),
                        materialization.get("profile_name"),
                        materialization.get("profile_hash"),
                        materialization.get("code_version"),
                        row_count,
                        json.dumps([u.to_json() if isinstance(u, Upstream) else u for u in upstream]),
                        datetime.now(UTC),
                    ],
                )
                if lineage:
                    self._record_links(con, table, lineage)
                refresh_lineage_view(con)
            finally:
                if not parquet:
                    con.unregister("_incoming")

        what = f"{SCHEMA}.{table}" + (" (whole table)" if replace_where is None else f" partition {replace_where}")
        self.transaction(work, guard=write_guard(table, replace_where), what=what)
        return materialization_id

    def _record_links(self, con: duckdb.DuckDBPyConnection, table: str, lineage: Sequence[Link]) -> None:
        """Record ``table``'s lineage links in ``orion.table_parents`` (one row per child table and
        parent column); a write that finds them recorded already changes nothing."""
        rows = sorted({(link[0], link[2]): list(link) for link in lineage}.values())
        # One row per (child table, parent column): the rows that differ are deleted and written
        # anew. The caller's transaction holds the file lock or is guarded, so two writers of one
        # table never both do this.
        have = {
            tuple(r)
            for r in con.execute(
                f"SELECT child_table, child_id, parent_column, parent_table FROM {SCHEMA}.table_parents "
                f"WHERE child_table IN (SELECT UNNEST(?))",
                [sorted({row[0] for row in rows})],
            ).fetchall()
        }
        missing = [row for row in rows if tuple(row) not in have]
        if missing:  # writers of other partitions of this table may be recording the same links
            self._guard(con, "table_parents")
        for child, _, parent_column, _ in missing:
            con.execute(f"DELETE FROM {SCHEMA}.table_parents WHERE child_table = ? AND parent_column = ?",
                        [child, parent_column])
        if missing:
            con.executemany(f"INSERT INTO {SCHEMA}.table_parents VALUES (?, ?, ?, ?)", missing)

    def append(self, table: str, frame: pl.DataFrame) -> None:
        """Append rows to a log table (created on first use); no materialization is recorded."""
        incoming = frame.to_arrow()

        def work(con: duckdb.DuckDBPyConnection) -> None:
            con.register("_incoming", incoming)
            try:
                if has_table(con, table):
                    con.execute(f"INSERT INTO {SCHEMA}.{table} BY NAME SELECT * FROM _incoming")
                else:
                    con.execute(f"CREATE TABLE {SCHEMA}.{table} AS SELECT * FROM _incoming")
            finally:
                con.unregister("_incoming")

        self.transaction(work, guard=table, what=f"{frame.height} rows appended to {SCHEMA}.{table}")


def write_guard(table: str, replace_where: Mapping[str, object] | None) -> str:
    """The guard that concurrent writes of the same rows share: the table for a whole-table write,
    the table and partition for a partition's, so writers of different partitions (a backfill's
    runs) do not wait for each other, and two writers of one partition never both commit."""
    if replace_where is None:
        return table
    return f"{table}__{content_id(table, sorted((k, str(v)) for k, v in replace_where.items()), length=12)}"


def _flatten(items: Sequence[object]) -> list[object]:
    flat: list[object] = []
    for item in items:
        flat.extend(_flatten(item) if isinstance(item, list | tuple) else [item])
    return flat


def sql_quote(value: object) -> str:
    """``value`` as the inside of a single-quoted SQL string."""
    return str(value).replace("'", "''")


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether ``orion.<table>`` exists in the connection's current catalog."""
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
            [SCHEMA, table],
        ).fetchone()[0]
    )


def _where(where: dict[str, object] | None) -> tuple[str, list[object]]:
    if not where:
        return "", []
    parts = [f'"{column}" IS NOT DISTINCT FROM ?' for column in where]
    return " WHERE " + " AND ".join(parts), list(where.values())


def _conform_columns(con: duckdb.DuckDBPyConnection, table: str, source: str) -> None:
    """Before a partition's rows are inserted: add the columns the asset gained since the table was made (its
    older rows read null there, e.g. ``student_checkpoint.loss_curve``); refuse rows that lack a column."""
    existing = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
            [SCHEMA, table],
        ).fetchall()
    }
    incoming = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    missing = sorted(existing - set(incoming))
    if missing:
        raise ValueError(
            f"{SCHEMA}.{table} has column(s) {missing} that the new rows lack; the asset's schema changed: drop the "
            f"table (or the partitions written before) and re-materialize"
        )
    for column, dtype in incoming.items():
        if column not in existing:
            con.execute(f'ALTER TABLE {SCHEMA}.{table} ADD COLUMN "{column}" {dtype}')


def refresh_lineage_view(con: duckdb.DuckDBPyConnection, links: Sequence[Link] | None = None) -> None:
    """(Re)create ``orion.lineage_edges`` over the declared parent-id columns (``links``, default the
    ones recorded in ``orion.table_parents``) of the tables that exist, unless it is that already.

    A parent-id column may hold one id or a list of ids (e.g. the error attempts a refinement
    used); lists are unnested into one edge per id.
    """
    if links is None:
        links = con.execute(
            f"SELECT child_table, child_id, parent_column, parent_table FROM {SCHEMA}.table_parents "
            "ORDER BY child_table, parent_column"
        ).fetchall()
    selects: list[str] = []
    for child, child_id, parent_column, parent in links:
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
                [SCHEMA, child],
            ).fetchall()
        )
        if child_id not in types or parent_column not in types:
            continue
        parent_ids = f"UNNEST({parent_column})" if types[parent_column].endswith("[]") else parent_column
        selects.append(
            f"SELECT '{child}' AS child_table, CAST({child_id} AS VARCHAR) AS child_id, "
            f"'{parent}' AS parent_table, CAST({parent_ids} AS VARCHAR) AS parent_id "
            f"FROM {child} WHERE {parent_column} IS NOT NULL"
        )
    if not selects:
        selects.append(
            "SELECT NULL::VARCHAR AS child_table, NULL::VARCHAR AS child_id, "
            "NULL::VARCHAR AS parent_table, NULL::VARCHAR AS parent_id WHERE false"
        )
    definition = "\nUNION ALL\n".join(selects)
    # The view carries a digest of its definition as its comment, and is only replaced when that
    # changed: on DuckLake two transactions that both replace a view conflict, and every partition
    # write of every table comes here.
    digest = "lineage_edges:" + hashlib.sha256(definition.encode()).hexdigest()[:16]
    current = con.execute(
        "SELECT comment FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = ? AND view_name = 'lineage_edges'",
        [SCHEMA],
    ).fetchone()
    if current is not None and current[0] == digest:
        return
    con.execute(f"CREATE OR REPLACE VIEW {SCHEMA}.lineage_edges AS " + definition)
    con.execute(f"COMMENT ON VIEW {SCHEMA}.lineage_edges IS '{digest}'")


