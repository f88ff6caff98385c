"""The code location: ``dagster dev`` and ``dagster asset materialize -m orion_assets.definitions``."""

import dagster as dg

from orion_assets.assets import exposure, problems, reflection, teacher
from orion_assets.resources import OrionResource

all_assets = dg.load_assets_from_modules([problems, teacher, exposure, reflection])

defs = dg.Definitions(
    assets=all_assets,
    resources={"orion": OrionResource.from_env()},
)
