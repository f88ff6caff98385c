"""The store: schema ``orion``, a table per asset, plus its own lineage, on one of two backends.

:class:`Store` (``[store] backend = "duckdb"``, the default) is one DuckDB file. DuckDB allows one
writing process at a time, and a second process that opens the file while another holds it fails
at once. Every connection here first takes an advisory lock on a sidecar file (shared for readers,
exclusive for writers), so the runs of a multi-partition backfill queue for the file instead of
failing. Assets do their work without a connection and hold the lock only while they write.

:class:`~orion_assets.store.ducklake.DuckLakeStore` (``backend = "ducklake"``) keeps the same
tables in a DuckLake (catalog in Postgres or a local file, data as Parquet in a folder or S3), with
many writers and no lock; :func:`store_for` builds the one a profile names. Both attach the
catalog as ``orion_db`` and answer the same interface (:class:`BaseStore`), so ``orion.<table>``
means the same in every query.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import duckdb
import polars as pl
import pyarrow as pa

from orion_assets.ids import content_id

if TYPE_CHECKING:
    from orion_assets.profiles.schema import StoreConfig

SCHEMA = "orion"
CATALOG = "orion_db"
LOCK_TIMEOUT_S = 1800.0
# The file is written in DuckDB 1.5's storage format, not the 0.10 format DuckDB keeps by default
# for older readers: only the newer one compresses long strings (zstd), which CoTs and prompts
# are. The file is then less than half the size, and readable by DuckDB 1.5 or newer only.
STORAGE_VERSION = "v1.5.0"

# No table has a PRIMARY KEY, in the DuckDB file as on DuckLake (which has none): DuckDB loads a
# table's whole key index when a connection first writes it and writes the index anew at every
# checkpoint, so each short locked write (a cache flush, a chunk) to a keyed table cost time in
# proportion to the rows already there (a 256-row cache flush into 100k keyed rows: 11.5 s of CPU,
# 0.15 s without the key; benchmarks/bench_cache_flush.py). Writers keep one row per key themselves
# (:meth:`BaseStore.upsert_sql`), under the file lock or the lake's guarded transactions.
MATERIALIZATIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.materializations (
    materialization_id VARCHAR NOT NULL,
    asset_key VARCHAR NOT NULL,
    partition_key VARCHAR,
    dagster_run_id VARCHAR,
    profile_name VARCHAR,
    profile_hash VARCHAR,
    code_version VARCHAR,
    row_count BIGINT,
    upstream JSON,
    materialized_at TIMESTAMPTZ
)"""

# The lineage edges each table declares (its spec's parent columns), written with its rows, so
# the ``lineage_edges`` view covers exactly the tables that exist, at every stage of a run.
TABLE_PARENTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.table_parents (
    child_table VARCHAR NOT NULL,
    child_id VARCHAR NOT NULL,
    parent_column VARCHAR NOT NULL,
    parent_table VARCHAR NOT NULL
)"""

Link = tuple[str, str, str, str]  # (child table, child id column, parent-id column, parent table)
T = TypeVar("T")


class StoreLockTimeout(RuntimeError):
    pass


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


@contextmanager
def _file_lock(path: Path, exclusive: bool, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            try:
                fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreLockTimeout(
                        f"waited {timeout_s:.0f}s for the DuckDB lock {path}; another process holds it"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


STORE_FILE = "orion_store.duckdb"
# The file's name before 2026-12: a catalog "orion" holding the schema "orion" made every
# "orion.<table>" ambiguous in the plain duckdb client.
OLD_STORE_FILE = "orion.duckdb"


def store_in(data_dir: str | Path) -> Store:
    """The store of a data folder, renaming a file of the old name (and its WAL) on first use."""
    data_dir = Path(data_dir)
    path, old = data_dir / STORE_FILE, data_dir / OLD_STORE_FILE
    if old.exists() and not path.exists():
        for suffix in (".wal", ""):
            if old.with_name(old.name + suffix).exists():
                old.with_name(old.name + suffix).rename(path.with_name(path.name + suffix))
    return Store(path)


def store_for(settings: StoreConfig | None, data_dir: str | Path) -> BaseStore:
    """The store a profile's ``[store]`` section names: the DuckDB file in ``data_dir`` (the default),
    or a DuckLake, whose local paths (catalog file, data folder) are relative to ``data_dir``."""
    if settings is None or settings.backend == "duckdb":
        return store_in(data_dir)
    from orion_assets.store.ducklake import DuckLakeStore

    return DuckLakeStore.from_settings(settings, data_dir)


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
            return _table_exists(con, table)

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
        if not _table_exists(con, table):
            raise LookupError(
                f"table {SCHEMA}.{table} does not exist in {self.location}: materialize asset '{table}' first"
            )

    def latest_materializations(self, asset_key: str, partition_key: str | None = None) -> list[Upstream]:
        """The newest recorded materialization of an asset's partition, or of each of its
        partitions when ``partition_key`` is None (what a reader of the whole table depends on)."""
        rows: list[tuple] = []
        if self.exists():
            with self.connect(read_only=True) as con:
                if _table_exists(con, "materializations"):
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
                files = ", ".join(f"'{_sql_quote(Path(f))}'" for f in parquet)
                source = f"read_parquet([{files}])"
            else:
                con.register("_incoming", incoming)
                source = "_incoming"
            try:
                if replace_where is None or not _table_exists(con, table):
                    verb = "CREATE OR REPLACE TABLE" if replace_where is None else "CREATE TABLE"
                    con.execute(f"{verb} {SCHEMA}.{table} AS SELECT * FROM {source}")
                    row_count = con.execute(f"SELECT count(*) FROM {SCHEMA}.{table}").fetchone()[0]
                else:
                    _check_columns(con, table, con.execute(f"SELECT * FROM {source} LIMIT 0").pl())
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
                if _table_exists(con, table):
                    con.execute(f"INSERT INTO {SCHEMA}.{table} BY NAME SELECT * FROM _incoming")
                else:
                    con.execute(f"CREATE TABLE {SCHEMA}.{table} AS SELECT * FROM _incoming")
            finally:
                con.unregister("_incoming")

        self.transaction(work, guard=table, what=f"{frame.height} rows appended to {SCHEMA}.{table}")


class Store(BaseStore):
    """Access to ``orion_store.duckdb``; every connection is serialized across processes."""

    def __init__(self, path: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S):
        self.path = Path(path).resolve()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def location(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no DuckDB file at {self.path}: materialize some assets first")
        with _file_lock(self.lock_path, exclusive=not read_only, timeout_s=self.lock_timeout_s):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The file is attached under another name: a catalog called "orion" (from the file
            # name) would make every "orion.<table>" reference ambiguous with the schema.
            con = duckdb.connect()
            try:
                mode = " (READ_ONLY)" if read_only else f" (STORAGE_VERSION '{STORAGE_VERSION}')"
                con.execute(f"ATTACH '{_sql_quote(self.path)}' AS {CATALOG}{mode}")
                con.execute(f"USE {CATALOG}")
                if not read_only:
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                    con.execute(MATERIALIZATIONS_DDL)
                    con.execute(TABLE_PARENTS_DDL)
                yield con
            finally:
                con.close()

    def transaction(
        self, work: Callable[[duckdb.DuckDBPyConnection], T], *, guard: str | None = None, what: str = "a write"
    ) -> T:
        # One writer at a time (the file lock), so there is nothing to retry.
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                result = work(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return result


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


def _sql_quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
            [SCHEMA, table],
        ).fetchone()[0]
    )


def _where(where: dict[str, object] | None) -> tuple[str, list[object]]:
    if not where:
        return "", []
    parts = [f'"{column}" IS NOT DISTINCT FROM ?' for column in where]
    return " WHERE " + " AND ".join(parts), list(where.values())


def _check_columns(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> None:
    existing = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
            [SCHEMA, table],
        ).fetchall()
    }
    if set(frame.columns) != existing:
        added = sorted(set(frame.columns) - existing)
        missing = sorted(existing - set(frame.columns))
        raise ValueError(
            f"{SCHEMA}.{table} has other columns than the new rows (new: {added}, gone: {missing}); "
            f"the asset's schema changed: drop the table (or the partitions written before) and re-materialize"
        )


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


