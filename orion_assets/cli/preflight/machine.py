"""The preflight checks of the machine: free disk under the data folder, and CUDA where the profile asks for it."""

from __future__ import annotations

import shutil

from orion_assets.cli.preflight.context import Context
from orion_assets.vocabulary import ROLES

MIN_FREE_BYTES = 1 << 30
REAL_RUN_FREE_BYTES = 20 << 30


def check_disk(ctx: Context) -> None:
    where = ctx.data_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    section = ctx.report.section(f"disk: {free / (1 << 30):.1f} GiB free under {ctx.data_dir}")
    if free < MIN_FREE_BYTES:
        section.add("problem", f"under 1 GiB free under {ctx.data_dir}: checkpoints and the DuckDB file need room")
    elif free < REAL_RUN_FREE_BYTES and ctx.cfg.student_model.source == "pretrained":
        section.add("warn", "under 20 GiB free: a pretrained student's checkpoints (one per variant) may not fit")


def check_cuda(ctx: Context) -> None:
    asked = [role for role in ROLES
             if (c := getattr(ctx.cfg.endpoints, role)) is not None and c.backend == "hf"
             and c.device.startswith("cuda")]
    if not asked:
        ctx.report.section("CUDA: not asked for by the profile")
        return
    # Deferred: torch takes seconds to import; only a profile with a CUDA device needs it.
    import torch

    section = ctx.report.section(f"CUDA: asked for by [endpoints.{'/'.join(asked)}] device")
    if torch.cuda.is_available():
        section.add("ok", f"{torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}")
    else:
        section.add("problem", "device = \"cuda\" but torch sees no CUDA device")
