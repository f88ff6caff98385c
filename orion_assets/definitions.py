"""The code location: ``dagster dev`` and ``dagster asset materialize -m orion_assets.definitions``."""

import dagster as dg

from orion_assets.assets import problems
from orion_assets.resources import OrionResource

all_assets = dg.load_assets_from_modules([problems])

defs = dg.Definitions(
    assets=all_assets,
    resources={"orion": OrionResource.from_env()},
)
