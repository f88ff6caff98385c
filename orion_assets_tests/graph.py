"""The asset graph the tests run: ``build_definitions`` for the shipped ``tiny`` profile, built once.

``from orion_assets_tests.graph import teacher_cots, all_assets`` gives tiny's built asset of that name (or
check, like ``quality_gate``), and every asset; :func:`definitions_for` builds another profile's."""

from __future__ import annotations

from functools import cache

import dagster as dg

from orion_assets.definitions import build_definitions
from orion_assets.profiles import load_profile


@cache
def definitions_for(profile: str = "tiny") -> dg.Definitions:
    return build_definitions(load_profile(profile))


def built(name: str, profile: str = "tiny") -> dg.AssetsDefinition:
    """The asset or check ``name`` as ``profile``'s definitions hold it."""
    defs = definitions_for(profile)
    for item in [*(defs.assets or ()), *(defs.asset_checks or ())]:
        keys = [*item.keys, *item.check_keys]
        if any(getattr(key, "name", None) == name or key.to_user_string() == name for key in keys):
            return item
    raise AttributeError(f"profile {profile} defines no asset or check {name}")


def __getattr__(name: str):
    if name == "all_assets":
        return list(definitions_for().assets or ())
    if name == "defs":
        return definitions_for()
    if name.startswith("__"):
        raise AttributeError(name)
    return built(name)
