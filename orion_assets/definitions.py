"""The code location: ``dagster dev`` and ``dagster asset materialize -m orion_assets.definitions``.

Its partitions are those of the profile in ``ORION_PROFILE`` when it loads (``orion_assets/io/partitions.py``):
only what that profile makes, so a key it does not make is refused by Dagster before any run starts (reload the
code location after changing the profile)."""

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
from orion_assets.io.io_manager import resources_for
from orion_assets.io.resource import OrionResource

all_assets = dg.load_assets_from_modules([problems, teacher, exposure, reflection, baselines, quality, training,
                                              evaluation, statistics])
all_checks = dg.load_asset_checks_from_modules([quality])

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[upkeep.lake_upkeep, export.export_job],
    schedules=[upkeep.lake_upkeep_schedule],
    resources=resources_for(OrionResource.from_env()),
)
