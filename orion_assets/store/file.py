"""The DuckDB file store (``[store] backend = "duckdb"``, the default): ``orion_store.duckdb`` in the
data folder. DuckDB allows one writing process per file, so every connection first takes the sidecar
file lock (:mod:`orion_assets.store.lock`): the runs of a backfill queue for the file, not fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from orion_assets.store.base import CATALOG, MATERIALIZATIONS_DDL, SCHEMA, TABLE_PARENTS_DDL, BaseStore, T, sql_quote
from orion_assets.store.lock import LOCK_TIMEOUT_S, file_lock
from orion_assets.store.vocabulary import write_vocabulary

STORE_FILE = "orion_store.duckdb"
# A file of this name is renamed to STORE_FILE on first use: a catalog "orion" holding the schema
# "orion" would make every "orion.<table>" ambiguous in the plain duckdb client.
OLD_STORE_FILE = "orion.duckdb"
# DuckDB 1.5's storage format, not DuckDB's default one: only it compresses long strings (zstd),
# which CoTs and prompts are, so the file is less than half the size; it needs DuckDB 1.5 to read.
STORAGE_VERSION = "v1.5.0"


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
        with file_lock(self.lock_path, exclusive=not read_only, timeout_s=self.lock_timeout_s):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The file is attached under another name: a catalog called "orion" (from the file
            # name) would make every "orion.<table>" reference ambiguous with the schema.
            con = duckdb.connect()
            try:
                mode = " (READ_ONLY)" if read_only else f" (STORAGE_VERSION '{STORAGE_VERSION}')"
                con.execute(f"ATTACH '{sql_quote(self.path)}' AS {CATALOG}{mode}")
                con.execute(f"USE {CATALOG}")
                if not read_only:
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                    con.execute(MATERIALIZATIONS_DDL)
                    con.execute(TABLE_PARENTS_DDL)
                    write_vocabulary(con)  # the views the sql/ files take names from, when they changed
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


def store_in(data_dir: str | Path) -> Store:
    """The store of a data folder, renaming a file of the old name (and its WAL) on first use."""
    data_dir = Path(data_dir)
    path, old = data_dir / STORE_FILE, data_dir / OLD_STORE_FILE
    if old.exists() and not path.exists():
        for suffix in (".wal", ""):
            if old.with_name(old.name + suffix).exists():
                old.with_name(old.name + suffix).rename(path.with_name(path.name + suffix))
    return Store(path)
