"""``orion check``: what a run of a profile needs, checked before any money or GPU time is spent.

Only what the selected assets need is checked; each check ends in findings (ok, warn, problem, skip)
and a problem stops ``orion run``. How the checks and the plan work: docs/preflight.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from orion_assets.cli.common import data_dir_of, definitions, profile_of, selectable_keys, unknown_assets
from orion_assets.cli.preflight.context import HTTP_TIMEOUT_S, Context
from orion_assets.cli.preflight.endpoints import check_endpoint
from orion_assets.cli.preflight.inputs import check_profile, check_store, check_student_model, check_train_sources
from orion_assets.cli.preflight.machine import check_cuda, check_disk
from orion_assets.cli.preflight.plan import plan_lines, problems_planned, stages
from orion_assets.cli.preflight.report import Report
from orion_assets.profiles import Profile
from orion_assets.vocabulary import ROLES


def run_preflight(profile: Profile, data_dir: Path, selection: Iterable[str] | None = None,
                  timeout_s: float = HTTP_TIMEOUT_S) -> Report:
    """Every check of ``profile`` for the assets in ``selection`` (None: the whole graph), and the plan."""
    ctx = Context(profile, data_dir, selection, timeout_s)
    check_profile(ctx)
    check_store(ctx)
    problems = problems_planned(ctx)
    planned = stages(ctx, problems)
    roles = {s.role for s in planned}
    for role in ROLES:
        check_endpoint(ctx, role, needed=role in roles, stages=[s for s in planned if s.role == role])
    if ctx.selected("student_base_model"):
        check_student_model(ctx)
    if ctx.selected("train_problems"):
        check_train_sources(ctx)
    check_disk(ctx)
    check_cuda(ctx)
    ctx.report.plan += plan_lines(ctx, problems, planned)
    return ctx.report


def check(args: argparse.Namespace) -> int:
    profile = profile_of(args)
    if args.select:
        graph = definitions(profile, data_dir_of(args)).resolve_asset_graph()
        unknown = unknown_assets(args.select, selectable_keys(graph))
        if unknown:
            print(f"orion check: unknown asset(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
    report_ = run_preflight(profile, data_dir_of(args), selection=args.select, timeout_s=args.timeout)
    print(report_.render(), flush=True)
    warnings = f", {len(report_.warnings)} warning(s)" if report_.warnings else ""
    if report_.problems:
        for line in report_.problems:
            print(f"orion check: {line}", file=sys.stderr)
        return 2
    print(f"orion check: ok{warnings}", flush=True)
    return 0
