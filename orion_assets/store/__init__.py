"""The store: schema ``orion``, a table per asset, plus its own lineage, on one of two backends: the
DuckDB file (:class:`Store`, the default) or a DuckLake (:class:`DuckLakeStore`). :func:`store_for`
builds the one a profile names; docs/store.md describes both.
"""

from __future__ import annotations

from pathlib import Path

from orion_assets.profiles.schema import StoreConfig
from orion_assets.store.base import (
    CATALOG,
    MATERIALIZATIONS_DDL,
    SCHEMA,
    TABLE_PARENTS_DDL,
    BaseStore,
    Link,
    Upstream,
    refresh_lineage_view,
    write_guard,
)
from orion_assets.store.ducklake import DuckLakeStore
from orion_assets.store.file import OLD_STORE_FILE, STORAGE_VERSION, STORE_FILE, Store, store_in
from orion_assets.store.lock import LOCK_TIMEOUT_S, StoreLockTimeout

__all__ = [
    "CATALOG", "LOCK_TIMEOUT_S", "MATERIALIZATIONS_DDL", "OLD_STORE_FILE", "SCHEMA", "STORAGE_VERSION", "STORE_FILE",
    "TABLE_PARENTS_DDL", "BaseStore", "DuckLakeStore", "Link", "Store", "StoreLockTimeout", "Upstream",
    "refresh_lineage_view", "store_for", "store_in", "write_guard",
]


def store_for(settings: StoreConfig | None, data_dir: str | Path) -> BaseStore:
    """The store a profile's ``[store]`` section names: the DuckDB file in ``data_dir`` (the default),
    or a DuckLake, whose local paths (catalog file, data folder) are relative to ``data_dir``."""
    if settings is None or settings.backend == "duckdb":
        return store_in(data_dir)
    return DuckLakeStore.from_settings(settings, data_dir)
