"""The profile's ``[store.upkeep]`` section: when the ``lake_upkeep`` job runs on its schedule and how old a
snapshot or a file must be before it removes it (``orion_assets/store/upkeep.py`` does the work)."""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import field_validator

from orion_assets.profiles.section import Section

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(second|minute|hour|day|week)s?\s*$", re.IGNORECASE)


def parse_age(text: str) -> timedelta:
    """``"7 days"``, ``"12 hours"``, ``"1 week"``, ``"0 seconds"``: a number and a unit (seconds to weeks)."""
    match = _AGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an age: write a number and a unit, e.g. \"7 days\", \"12 hours\", "
                         "\"30 minutes\" (seconds, minutes, hours, days or weeks)")
    return timedelta(**{match.group(2).lower() + "s": float(match.group(1))})


class UpkeepSection(Section):
    """Lake upkeep: DuckLake keeps every snapshot (each write, each guard bump) and every Parquet file it
    ever wrote, plus the files of writes that were killed before their commit; the ``lake_upkeep`` job
    expires old snapshots, deletes the files nothing references any more, and merges small files.
    ``enabled`` starts its schedule (``schedule``, cron, UTC) in the Dagster daemon; off, the job still
    runs by hand (``dagster job execute -m orion_assets.definitions -j lake_upkeep``)."""

    enabled: bool = False
    schedule: str = "0 3 * * *"  # daily at 03:00
    # Snapshots older than this are expired: time travel to them ends and the files only they read are
    # scheduled for deletion. The newest snapshot is always kept.
    expire_older_than: str = "7 days"
    # A file scheduled for deletion, or one in the data path that no snapshot references (a killed or
    # retried write's), is deleted once it is older than this: a write in progress has unreferenced
    # files too, and a long read may still scan a scheduled one. DuckLake's own default is 2 days.
    delete_older_than: str = "2 days"
    # Merge each table's small adjacent Parquet files (every partition write adds one) into bigger ones.
    merge_files: bool = True

    @field_validator("expire_older_than", "delete_older_than")
    @classmethod
    def _an_age(cls, value: str) -> str:
        parse_age(value)
        return value

    @field_validator("schedule")
    @classmethod
    def _a_cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a cron schedule: five fields, minute hour day month weekday "
                             "(e.g. \"0 3 * * *\", daily at 03:00)")
        return value

    @property
    def expire_age(self) -> timedelta:
        return parse_age(self.expire_older_than)

    @property
    def delete_age(self) -> timedelta:
        return parse_age(self.delete_older_than)
