"""What the ``orion`` subcommands share: the data folder, the profile's store and the asset graph."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from orion_assets.profiles import Profile, ProfileError, load_profile
from orion_assets.store import BaseStore, store_for

# The exit status of a user error (a wrong option, a bad profile or input file), as the README promises.
USAGE_EXIT = 2


def usage_error(command: str, message: object) -> int:
    """Say a user error in one line on stderr, ``orion <command>: <message>``; the exit status to return."""
    print(f"orion {command}: {message}", file=sys.stderr)
    return USAGE_EXIT


def data_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("ORION_DATA_DIR", "data")).expanduser().resolve()


def profile_of(args: argparse.Namespace) -> Profile:
    """The profile ``--profile`` names (where the command has it), else ``$ORION_PROFILE``, else the default."""
    return load_profile(getattr(args, "profile", None))


def open_store(args: argparse.Namespace, command: str, profile: Profile | None = None) -> BaseStore:
    """The store the active profile's ``[store]`` names; the DuckDB file in the data folder when
    the profile does not load (said on stderr)."""
    data_dir = data_dir_of(args)
    if profile is None:
        try:
            profile = profile_of(args)
        except ProfileError as exc:
            print(f"orion {command}: {exc}; reading the DuckDB file in {data_dir}", file=sys.stderr)
    return store_for(profile.config.store if profile is not None else None, data_dir)


def definitions(profile: Profile, data_dir: Path):
    """The definitions built for ``profile`` (``build_definitions``), without Dagster's beta-API warnings (for
    developers, not users)."""
    # Deferred: dagster and every asset take seconds to import; orion sql/report and a plain orion check skip them.
    import dagster as dg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        from orion_assets.definitions import build_definitions

        return build_definitions(profile, data_dir)


def selectable_keys(graph) -> list:
    return [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]


def unknown_assets(wanted: Sequence[str] | None, keys) -> list[str]:
    return sorted(set(wanted or ()) - {k.to_user_string() for k in keys})
