"""Lake upkeep: writers SIGKILLed mid-write leave Parquet that no table references; the ``lake_upkeep`` job,
run through Dagster with the real resources, deletes it (and the expired snapshots' files) and leaves
every table as it was. Also: the schedule's default status, the ``[store.upkeep]`` keys' errors, and the
DuckDB file store's CHECKPOINT."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from orion_assets.assets.upkeep import lake_upkeep, upkeep_schedule
from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource
from orion_assets.profiles import ProfileError, load_profile
from orion_assets.profiles.upkeep import UpkeepSection
from orion_assets.store import Store
from orion_assets.store.ducklake import GUARD_SCHEMA, close_all
from orion_assets.store.upkeep import maintain
from orion_assets_tests.unit.test_ducklake_store import spawn, wait_ready, write_partition


@pytest.fixture(autouse=True)
def _close_lakes():
    yield
    close_all()


def every_table(store) -> dict[str, pl.DataFrame]:
    """Each table of the lake (``orion`` and the guards), its rows sorted: what upkeep must leave as it is."""
    with store.connect(read_only=True) as con:
        names = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_type = 'BASE TABLE' AND table_schema IN (?, ?) ORDER BY 1, 2", ["orion", GUARD_SCHEMA]).fetchall()
        tables = {}
        for schema, name in names:
            frame = con.execute(f'SELECT * FROM {schema}."{name}"').pl()
            tables[f"{schema}.{name}"] = frame.sort(frame.columns)
    return tables


def referenced_files(store) -> set[str]:
    """The files the lake's tables read now (data and delete files)."""
    with store.connect(read_only=True) as con:
        files: set[str] = set()
        for schema, name in [tuple(k.split(".", 1)) for k in every_table(store)]:
            for data, delete in con.execute(
                    "SELECT data_file, delete_file FROM ducklake_list_files(current_database(), ?, schema => ?)",
                    [name, schema]).fetchall():
                files |= {Path(f).as_posix() for f in (data, delete) if f}
    return files


def files_on_disk(folder: Path) -> set[str]:
    return {p.as_posix() for p in folder.rglob("*.parquet")}


def kill_mid_write(spec: dict, part: str, version: str, parquet: Path) -> None:
    """A writer of ``part`` SIGKILLed after its DELETE and INSERT (its Parquet written), before its COMMIT."""
    proc = spawn(spec, "hang", part=part, version=version, n=20000, parquet=str(parquet))
    assert wait_ready(proc) == [f"in transaction: 20000 rows of partition {part}"]
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL


@pytest.mark.slow  # a writer process killed mid-write, then the upkeep job: 11-14 s per catalog
@pytest.mark.parametrize("catalog", ["duckdb_file", "postgres"])
def test_lake_upkeep_deletes_a_killed_writers_files_and_leaves_every_table_intact(catalog, request, write_profile,
                                                                                   tmp_path: Path):
    data_dir = tmp_path / "data"
    if catalog == "postgres":
        service = request.getfixturevalue("postgres_service")
        catalog_setting = "postgres:" + service.dsn(service.new_database())
        spec_catalog = catalog_setting
    else:
        catalog_setting, spec_catalog = "lake.ducklake", str(data_dir / "lake.ducklake")
    profile = write_profile(f"""
        [store]
        backend = "ducklake"
        catalog = "{catalog_setting}"
        data_path = "lake_files"
        [store.upkeep]
        expire_older_than = "0 seconds"
        delete_older_than = "0 seconds"
    """)
    orion = OrionResource(profile=str(profile), data_dir=str(data_dir))
    store = orion.store
    lake_files = data_dir / "lake_files"
    spec = {"backend": "ducklake", "catalog": spec_catalog, "data_path": str(lake_files)}

    for version in ("v1", "v2"):  # partition a replaced: v1's files are only an old snapshot's now
        write_partition(store, "a", version, 50)
        write_partition(store, "b", version, 30)
    before = every_table(store)
    assert before["orion.events"].height == 80 and f"{GUARD_SCHEMA}.table_parents" in before

    written = files_on_disk(lake_files)
    kill_mid_write(spec, "a", "v3", tmp_path / "a.parquet")  # a partition's replacement
    kill_mid_write(spec, "new", "v1", tmp_path / "new.parquet")  # a first write
    orphans = files_on_disk(lake_files) - written
    assert orphans, "the killed writers wrote no Parquet: nothing to test"
    assert not orphans & referenced_files(store)  # no table references them
    assert every_table(store).keys() == before.keys()
    assert all(every_table(store)[k].equals(before[k]) for k in before)
    assert written - referenced_files(store), "no file only an old snapshot reads: nothing to expire"

    with dg.instance_for_test() as instance:
        defs = dg.Definitions(jobs=[lake_upkeep], resources=resources_for(orion))
        result = defs.resolve_job_def("lake_upkeep").execute_in_process(instance=instance)
    assert result.success
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    counts = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    assert counts["orphans_deleted"] == len(orphans)
    assert counts["snapshots_expired"] > 0 and counts["old_files_deleted"] > 0
    assert counts["files_merged"] > 0 and counts["merged_files_written"] > 0  # partitions a and b, one file now

    on_disk = files_on_disk(lake_files)
    assert not orphans & on_disk
    assert on_disk == referenced_files(store)  # nothing left that no table reads
    after = every_table(store)
    assert after.keys() == before.keys()
    for name, frame in before.items():
        assert after[name].equals(frame), name
    assert store.count("events", {"part": "a"}) == 50 and store.distinct("events", "version") == ["v2"]

    # the lake still takes writes, and upkeep again finds nothing to delete
    write_partition(store, "new", "v1", 20)
    assert store.count("events") == 100
    again = maintain(store, expire_older_than=timedelta(days=7), delete_older_than=timedelta(days=2))
    assert (again.orphans_deleted, again.old_files_deleted, again.snapshots_expired) == (0, 0, 0)


def test_the_schedule_is_stopped_unless_enabled(write_profile, monkeypatch):
    assert UpkeepSection().enabled is False
    off = upkeep_schedule(UpkeepSection())
    assert off.default_status == dg.DefaultScheduleStatus.STOPPED
    assert off.cron_schedule == "0 3 * * *" and off.job_name == "lake_upkeep" and off.execution_timezone == "UTC"
    profile = write_profile('[store.upkeep]\nenabled = true\nschedule = "30 4 * * 0"\n')
    on = upkeep_schedule(load_profile(str(profile)).config.store.upkeep)
    assert on.default_status == dg.DefaultScheduleStatus.RUNNING and on.cron_schedule == "30 4 * * 0"

    from orion_assets_tests.graph import defs

    assert defs.resolve_job_def("lake_upkeep").name == "lake_upkeep"
    assert defs.resolve_schedule_def("lake_upkeep_schedule").default_status == dg.DefaultScheduleStatus.STOPPED


@pytest.mark.parametrize(("body", "named"), [
    ('expire_older_than = "a week"', "expire_older_than"),
    ('delete_older_than = "2d"', "delete_older_than"),
    ('schedule = "daily"', "schedule"),
    ("every = 1", "every"),
])
def test_bad_upkeep_keys_are_refused_naming_the_key(body, named, write_profile):
    with pytest.raises(ProfileError) as caught:
        load_profile(str(write_profile(f"[store.upkeep]\n{body}\n")))
    assert named in str(caught.value)


def test_the_duckdb_file_is_checkpointed_and_left_as_it_was(tmp_path: Path):
    store = Store(tmp_path / "orion_store.duckdb")
    assert "nothing written yet" in maintain(store, expire_older_than=timedelta(0), delete_older_than=timedelta(0)).note
    write_partition(store, "a", "v1", 50)
    before = store.read("events").sort("event_id")
    report = maintain(store, expire_older_than=timedelta(0), delete_older_than=timedelta(0))
    assert "checkpointed" in report.note and set(report.counts().values()) == {0}
    assert store.read("events").sort("event_id").equals(before)
