"""``dagster_duckdb.DuckDBResource`` on the store's file, for users' own assets (resource key ``duckdb``).

Read-only, and queued on the store's sidecar lock like every reader: DuckDB lets one process write a
file or several read it, never both, so a connection opened while ``orion run`` writes would fail
(and make the writer fail while it is held). Holding the shared lock, it waits for the write instead,
and the next write waits for it. A DuckLake store has no such file: the resource then refuses to
connect and names the alternative. sql/README.md shows a user's asset on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster_duckdb import DuckDBResource

from orion_assets.store import LOCK_TIMEOUT_S, BaseStore, Store
from orion_assets.store.lock import file_lock

RESOURCE_KEY = "duckdb"
LAKE_REFUSAL = (
    "the profile's [store] is a DuckLake, which DuckDBResource (one DuckDB file) cannot attach: read the lake "
    "through the `orion` resource instead: `with orion.store.connect(read_only=True) as con: ...`"
)


class StoreDuckDBResource(DuckDBResource):
    """A :class:`DuckDBResource` that holds the store's shared lock (``lock_path``) while a connection
    is open; ``lake``: the store is a DuckLake, and :meth:`get_connection` raises."""

    lock_path: str = ""
    lake: bool = False

    @contextmanager
    def get_connection(self) -> Iterator:
        if self.lake:
            raise RuntimeError(LAKE_REFUSAL)
        with file_lock(Path(self.lock_path), exclusive=False, timeout_s=LOCK_TIMEOUT_S):
            with super().get_connection() as con:
                yield con


def duckdb_resource(store: BaseStore) -> StoreDuckDBResource:
    """The resource on ``store``'s file, read-only (DuckDB's ``access_mode``)."""
    if isinstance(store, Store):
        return StoreDuckDBResource(database=str(store.path), connection_config={"access_mode": "READ_ONLY"},
                                   lock_path=str(store.lock_path))
    return StoreDuckDBResource(database=":memory:", lake=True)
