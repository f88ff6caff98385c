"""The ``lake_upkeep`` job (no assets: :func:`orion_assets.store.upkeep.maintain` on the active profile's store,
with its ``[store.upkeep]`` ages) and its schedule, running only when ``[store.upkeep] enabled = true``."""

import dagster as dg

from orion_assets.io.resource import OrionResource
from orion_assets.profiles.upkeep import UpkeepSection
from orion_assets.store.upkeep import maintain


@dg.op(out=dg.Out(dg.Nothing))
def lake_upkeep_op(context: dg.OpExecutionContext, orion: OrionResource) -> dg.Output:
    """Expire old snapshots, merge small files, delete scheduled and orphaned Parquet; counts as metadata."""
    settings = orion.active.config.store.upkeep
    report = maintain(orion.store, expire_older_than=settings.expire_age, delete_older_than=settings.delete_age,
                      merge_files=settings.merge_files)
    context.log.info(report.summary())
    for path in report.deleted:
        context.log.debug(f"deleted {path}")
    metadata = {**report.counts(), "store": report.location,
                "expire_older_than": settings.expire_older_than, "delete_older_than": settings.delete_older_than}
    if report.note:
        metadata["note"] = report.note
    return dg.Output(None, metadata=metadata)


@dg.job(description="DuckLake upkeep: expire snapshots older than [store.upkeep] expire_older_than, merge small "
        "files, delete the files no snapshot needs (orphans of killed writes too) older than delete_older_than")
def lake_upkeep() -> None:
    lake_upkeep_op()


def upkeep_schedule(settings: UpkeepSection) -> dg.ScheduleDefinition:
    """``lake_upkeep`` on ``settings.schedule`` (UTC); started in the daemon only when ``settings.enabled``."""
    status = dg.DefaultScheduleStatus.RUNNING if settings.enabled else dg.DefaultScheduleStatus.STOPPED
    return dg.ScheduleDefinition(name="lake_upkeep_schedule", job=lake_upkeep, cron_schedule=settings.schedule,
                                 execution_timezone="UTC", default_status=status)

