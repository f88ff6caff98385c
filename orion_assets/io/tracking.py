"""The assets' side of [tracking]: the checkpoint's tracker run from the active profile, and what its
materialization metadata say about it (the run id and a link to it)."""

from __future__ import annotations

import dagster as dg

from orion_assets.io.resource import OrionResource
from orion_assets.training.tracking import CheckpointIdentity, TrackedRun, Tracker


def tracker_of(orion: OrionResource) -> Tracker:
    return Tracker.of(orion.active.config.tracking, orion.data_path, orion.active.name)


def checkpoint_identity(orion: OrionResource, student: str, variant: str, seed: int, checkpoint_id: str,
                        config_hash: str | None = None) -> CheckpointIdentity:
    return CheckpointIdentity(profile=orion.active.name, profile_hash=orion.active.hash, student=student,
                              variant=variant, seed=seed, checkpoint_id=checkpoint_id, config_hash=config_hash)


def tracking_metadata(run: TrackedRun | None) -> dict[str, dg.MetadataValue]:
    """``tracking_run_id`` and ``tracking_link`` (the run in the tracker's UI, or the command that serves it)."""
    if run is None:
        return {}
    link = dg.MetadataValue.url(run.link) if run.link_is_url else dg.MetadataValue.text(run.link)
    return {"tracking_backend": dg.MetadataValue.text(run.backend), "tracking_run_id": dg.MetadataValue.text(run.run_id),
            "tracking_link": link}
