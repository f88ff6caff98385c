"""Lake upkeep: DuckLake never removes anything by itself. Every write (and every guard bump) is a snapshot
kept for time travel, a replaced partition's Parquet stays on disk for the snapshots that still read it, a
write killed or retried before its commit leaves Parquet that no snapshot references, and each partition
write adds a small file. :func:`maintain` runs DuckLake's maintenance functions through the store's own
connection, in this order (names and parameters as in the ducklake extension's
``src/functions/ducklake_cleanup_files.cpp`` and ducklake.select/docs/stable/duckdb/maintenance/):

1. ``ducklake_expire_snapshots(older_than)``: snapshots older than ``expire_older_than`` go (never the newest);
   the files only they referenced are scheduled for deletion.
2. ``ducklake_merge_adjacent_files``: each table's small adjacent files merged into one (time travel to the
   snapshots left is kept); the merged-away files are scheduled for deletion.
3. ``ducklake_cleanup_old_files(older_than)``: files scheduled for deletion longer ago than
   ``delete_older_than`` are deleted (a read that started before may still scan a newer one).
4. ``ducklake_delete_orphaned_files(older_than)``: ``.parquet`` files under the data path that the catalog
   does not know at all (a killed or retried write's), last modified over ``delete_older_than`` ago: that
   window is what keeps the files of a write still in progress, unknown to the catalog until its commit.

On the DuckDB file store (``[store] backend = "duckdb"``) there are no snapshots or loose files: a killed
writer's uncommitted blocks are free blocks of the file, reused by later writes. :func:`maintain` runs
``CHECKPOINT`` there (the write-ahead log folded into the file) and says so; it reclaims no disk space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from orion_assets.store.base import CATALOG, BaseStore
from orion_assets.store.ducklake import DuckLakeStore
from orion_assets.store.file import Store

__all__ = ["UpkeepReport", "maintain"]


@dataclass(frozen=True)
class UpkeepReport:
    """What one :func:`maintain` did: counts, the deleted files' paths, and a note on anything it skipped."""

    location: str
    snapshots_expired: int = 0
    files_merged: int = 0  # small files merged away (scheduled for deletion)
    merged_files_written: int = 0
    old_files_deleted: int = 0  # scheduled files deleted
    orphans_deleted: int = 0  # files no snapshot referenced, deleted
    deleted: tuple[str, ...] = field(default=(), repr=False)
    note: str = ""

    def counts(self) -> dict[str, int]:
        return {"snapshots_expired": self.snapshots_expired, "files_merged": self.files_merged,
                "merged_files_written": self.merged_files_written, "old_files_deleted": self.old_files_deleted,
                "orphans_deleted": self.orphans_deleted}

    def summary(self) -> str:
        counts = ", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in self.counts().items())
        return f"upkeep of {self.location}: {self.note or counts}"


def maintain(
    store: BaseStore,
    *,
    expire_older_than: timedelta,
    delete_older_than: timedelta,
    merge_files: bool = True,
    now: datetime | None = None,
) -> UpkeepReport:
    """Expire ``store``'s snapshots older than ``expire_older_than``, merge small files (``merge_files``),
    and delete the files scheduled for deletion or unreferenced (orphans) once older than
    ``delete_older_than``, ages counted back from ``now`` (default: when each step starts). Each step is one
    transaction, retried like a write when it conflicts with another writer's commit."""
    if isinstance(store, Store):
        return _checkpoint(store)
    if not isinstance(store, DuckLakeStore):
        raise TypeError(f"no upkeep for a {type(store).__name__} ({store.location})")
    if not store.exists():
        return UpkeepReport(store.location, note="nothing written yet, nothing to do")
    lake = f"'{CATALOG}'"

    def before(age: timedelta) -> str:  # each step's cutoff counts back from when it starts
        return _timestamp((now or datetime.now(UTC)) - age)

    def call(function: str, *args: str) -> tuple[list[str], list[tuple]]:
        def work(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
            result = con.execute(f"SELECT * FROM {function}({', '.join((lake, *args))})")
            return [column[0] for column in result.description], result.fetchall()

        return store.transaction(work, what=f"{function} on {store.location}")

    _, expired = call("ducklake_expire_snapshots", f"older_than => {before(expire_older_than)}")
    merged_away = written = 0
    if merge_files:
        columns, merges = call("ducklake_merge_adjacent_files")
        merged_away = sum(row[columns.index("files_processed")] for row in merges)
        written = sum(row[columns.index("files_created")] for row in merges)
    _, old = call("ducklake_cleanup_old_files", f"older_than => {before(delete_older_than)}")
    _, orphans = call("ducklake_delete_orphaned_files", f"older_than => {before(delete_older_than)}")
    return UpkeepReport(
        store.location,
        snapshots_expired=len(expired),
        files_merged=int(merged_away),
        merged_files_written=int(written),
        old_files_deleted=len(old),
        orphans_deleted=len(orphans),
        deleted=tuple(row[0] for row in old + orphans),
    )


def _timestamp(moment: datetime) -> str:
    """A TIMESTAMPTZ literal of an aware ``moment``."""
    return f"TIMESTAMPTZ '{moment.astimezone(UTC).isoformat()}'"


def _checkpoint(store: Store) -> UpkeepReport:
    if not store.exists():
        return UpkeepReport(store.location, note="nothing written yet, nothing to do")
    with store.connect() as con:
        con.execute(f"CHECKPOINT {CATALOG}")
    return UpkeepReport(store.location, note=(
        "the DuckDB file keeps no snapshots and leaves no orphan files: checkpointed it (its write-ahead log "
        "folded in); a killed write's blocks are free space the next writes reuse"))
