"""The code location, built for a profile: :func:`build_definitions` takes the profile as a value.

``dagster dev`` and ``dagster asset materialize -m orion_assets.definitions`` load :func:`defs`, which reads
``ORION_PROFILE`` and ``ORION_DATA_DIR`` once, when Dagster loads the code location; ``orion`` passes its
``--profile`` to :func:`build_definitions` instead. The partitions are those of that profile
(:mod:`orion_assets.io.partitions`): only what it makes, so a key it does not make is refused by Dagster before
any run starts (reload the code location after changing the profile)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from orion_assets.assets import (
    baselines,
    evaluation,
    export,
    exposure,
    problems,
    quality,
    reflection,
    statistics,
    teacher,
    training,
    upkeep,
)
from orion_assets.io.blueprint import Blueprint
from orion_assets.io.io_manager import resources_for
from orion_assets.io.partitions import partitions_of
from orion_assets.io.resource import OrionResource
from orion_assets.profiles import Profile, load_profile

ASSET_MODULES = (problems, teacher, exposure, reflection, baselines, quality, training, evaluation, statistics)


def blueprints() -> list[Blueprint]:
    """Every asset and check the asset modules declare, in graph order."""
    return [value for module in ASSET_MODULES for value in vars(module).values() if isinstance(value, Blueprint)]


def build_definitions(profile: Profile, data_dir: str | Path = "data") -> dg.Definitions:
    """The assets, checks, jobs, schedule and resources of ``profile``, its tables under ``data_dir``."""
    parts = partitions_of(profile.config)
    built = [declared.build(parts, profile.config) for declared in blueprints()]
    checks = [item for item in built if isinstance(item, dg.AssetChecksDefinition)]
    return dg.Definitions(
        assets=[item for item in built if not isinstance(item, dg.AssetChecksDefinition)],
        asset_checks=checks,
        jobs=[upkeep.lake_upkeep, export.export_job],
        schedules=[upkeep.upkeep_schedule(profile.config.store.upkeep)],
        resources=resources_for(OrionResource.of(profile, data_dir)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The definitions ``dagster`` loads: the profile in ``ORION_PROFILE`` (default: the shipped default), its
    tables under ``ORION_DATA_DIR`` (default ``data/``)."""
    return build_definitions(load_profile(), os.environ.get("ORION_DATA_DIR", "data"))
